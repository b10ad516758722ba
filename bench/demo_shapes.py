"""`ganforge demo` as a new user runs it, judged: wall time, and whether each class is drawn.

Runs `ganforge demo` in a fresh process with an empty data cache and an empty torch extensions
folder (a new machine, install excepted), then judges the demo's EMA generator: a small
classifier trained here on the demo's real shapes (`bench.shapes_judge`) labels `--per-class`
generated images of each class, and the share it assigns to the intended class is that class's
accuracy (chance: 1/6). The machine's load average is recorded: on a shared machine the wall
time includes other people's work.

    python -m bench.demo_shapes --out bench/results/demo-shapes-cpu.json --grid docs/demo/grid.png
    python -m bench.demo_shapes --fresh-clone .  # `make demo` in a fresh clone, install included
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import environment
from bench.shapes_judge import JudgeRecipe, judge_generator, train_judge


def run_demo(run: Path, work: Path, max_steps: int | None, timeout: float) -> tuple[float, str]:
    """`ganforge demo --out RUN` in a fresh process, as on a new machine; -> (seconds, output)."""
    env = os.environ | {
        "GANFORGE_CACHE": str(work / "cache"),
        "TORCH_EXTENSIONS_DIR": str(work / "torch_extensions"),
    }
    cmd = [sys.executable, "-m", "ganforge.cli", "demo", "--out", str(run)]
    cmd += ["--max-steps", str(max_steps)] if max_steps else []
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return seconds, res.stdout


def run_make_demo(repo: str, work: Path, timeout: float) -> tuple[float, str, float | None]:
    """`make demo` in a fresh clone of REPO (new venv, install included, as the README's quick
    start); -> (seconds, output, seconds until the install finished)."""
    clone = work / "clone"
    subprocess.run(["git", "clone", "--quiet", repo, str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "RAY_ADDRESS")}
    env |= {
        "GANFORGE_CACHE": str(work / "cache"),
        "TORCH_EXTENSIONS_DIR": str(work / "torch_extensions"),
    }
    stamp = clone / ".venv" / ".ganforge-installed"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["make", "demo"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    installed = None
    lines = []
    for line in proc.stdout:  # the stamp appears when the install step ends
        lines.append(line)
        if installed is None and stamp.exists():
            installed = time.perf_counter() - t0
    rc = proc.wait(timeout=timeout)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"make demo failed ({rc}):\n{''.join(lines)[-3000:]}")
    (work / "run").symlink_to(clone / "runs" / "demo")
    return seconds, "".join(lines), installed


def main() -> None:
    from ganforge.data.demos import demo_shards
    from ganforge.models import load_model
    from ganforge.rundir import RunDir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="Write the JSON here too.")
    p.add_argument("--grid", type=Path, help="Copy the demo's last sample grid here.")
    p.add_argument("--max-steps", type=int, help="Override the demo's steps.")
    p.add_argument("--per-class", type=int, default=200, help="Generated images per class.")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument(
        "--work",
        type=Path,
        help="Keep the run, data and judge here (default: a temporary folder). When it holds a "
        "finished run (WORK/timing.json), only the judging is done again.",
    )
    p.add_argument(
        "--fresh-clone",
        metavar="REPO",
        help="Time `make demo` in a fresh clone of this git repository (install included) "
        "instead of `ganforge demo` alone.",
    )
    a = p.parse_args()
    with contextlib.ExitStack() as stack:
        work = a.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="demo-")))
        run, timing_file = work / "run", work / "timing.json"
        if not timing_file.is_file():
            load_before = os.getloadavg()
            install_s = None
            if a.fresh_clone:
                seconds, output, install_s = run_make_demo(a.fresh_clone, work, a.timeout)
            else:
                seconds, output = run_demo(run, work, a.max_steps, a.timeout)
            timing = {"seconds": seconds, "output": output, "load": [load_before, os.getloadavg()]}
            timing |= {
                "install_seconds": install_s,
                "command": "make demo" if a.fresh_clone else "ganforge demo",
            }
            timing_file.write_text(json.dumps(timing))
        timing = json.loads(timing_file.read_text())
        seconds, output = timing["seconds"], timing["output"]
        os.environ["GANFORGE_CACHE"] = str(work / "cache")  # the shards the demo trained on
        t0 = time.perf_counter()
        sidecar = train_judge(demo_shards("shapes"), work / "judge.pt", JudgeRecipe())
        judge_s = time.perf_counter() - t0
        acc = judge_generator(run, work / "judge.pt", a.per_class)
        meta = load_model(run).meta
        grid = RunDir(run).sample_grids()[-1]
        if a.grid:
            a.grid.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, a.grid)
    result = {
        "benchmark": "demo_shapes",
        **environment(),
        "timed": timing.get("command", "ganforge demo"),
        "install_seconds": timing.get("install_seconds"),
        "demo_seconds": round(seconds, 1),
        "demo_minutes": round(seconds / 60, 2),
        "load_average_1_5_15min": dict(zip(("before", "after"), timing["load"], strict=True)),
        "steps": int(meta["step"]),
        "images_seen": int(meta["images_seen"]),
        "per_class_accuracy": {k: round(v, 3) for k, v in acc.items()},
        "mean_accuracy": round(sum(acc.values()) / len(acc), 3),
        "min_accuracy": round(min(acc.values()), 3),
        "chance": round(1 / len(acc), 3),
        "generated_per_class": a.per_class,
        "judge": {
            "min_class_test_accuracy": round(min(sidecar["test_accuracy_per_class"].values()), 4),
            "min_class_degraded_test_accuracy": round(
                min(sidecar["degraded_test_accuracy_per_class"].values()), 4
            ),
            "train_images": sidecar["train_images"],
            "recipe": sidecar["recipe"],
            "seconds": round(judge_s, 1),
        },
        "grid": str(a.grid) if a.grid else None,
        "demo_output_tail": output.strip().splitlines()[-8:],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

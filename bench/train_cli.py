"""The users' path of the training benchmark: `ganforge train` as a subprocess.

`run_training()` called in-process and the `ganforge train` command once differed by a quarter
(the command dropped `--set` values of keys that also have a flag, so
`--set cluster.cpus_per_worker=2` trained on one thread). Timing the command itself, with the
same overrides passed as `--set`, catches what the in-process figure cannot see.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.serve_load_servers import ganforge_cmd
from bench.worker_probe import WorkerProbe
from ganforge.rundir import RunDir

# Ray waits a fixed 30 s for its new node to register (ray/_private/node.py); on a loaded
# machine it can take longer, and the start fails with this message. The benchmark starts again.
RAY_START_TIMEOUT = "timed out during startup"
START_TRIES = 3


@dataclass
class CliRun:
    img_s: float
    """Median images/s over the metrics windows after the first (compile/warm-up)."""
    wall_s: float
    """The whole command: Ray start, worker start-up, training, shutdown."""
    cpus_per_worker: int | None
    """What the worker's config held (the final checkpoint marker's config)."""
    torch_threads: int | None
    """torch.get_num_threads() on rank 0 (the final marker), when the marker records it."""
    probe: dict[str, Any]
    """Rank 0's busy threads and the driver's CPU while training (bench/worker_probe.py)."""
    starts: int
    """Tries it took (a Ray start-up timeout starts the command again)."""


def train_command(variant: str, overrides: dict[str, Any], run_dir: str) -> list[str]:
    """`ganforge train --config VARIANT --run-dir RUN --max-steps N --no-progress --set k=v ...`:
    the run dir and step budget as flags (the README's usage), every other setting as `--set`,
    as a user overriding a shipped config writes it."""
    steps = str(overrides["train.max_steps"])
    cmd = ganforge_cmd("train", "--config", variant, "--run-dir", run_dir, "--max-steps", steps)
    cmd.append("--no-progress")
    for key, value in overrides.items():
        if value is not None and key != "train.max_steps":
            cmd += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    return cmd


def median_rate(run_dir: str | Path) -> float:
    """Median images/s of rank 0's metrics windows, the first (warm-up) excluded."""
    lines = RunDir(run_dir).metrics_path.read_text().splitlines()
    rates = [json.loads(x)["images_per_s"] for x in lines]
    rates = [r for r in rates[1:] if r is not None]
    if not rates:
        raise RuntimeError(f"{run_dir}: fewer than two metrics windows; raise --steps")
    return statistics.median(rates)


def final_marker(run_dir: str | Path) -> dict[str, Any]:
    from ganforge.checkpoint import list_checkpoints, read_marker

    done = list_checkpoints(RunDir(run_dir).checkpoints)
    return read_marker(done[0][1]) if done else {}


def run_cli(variant: str, overrides: dict[str, Any], run_dir: str, log: Path) -> CliRun:
    """Run the command to the end (an embedded Ray cluster of its own: RAY_ADDRESS=local, so that
    a `ray start` cluster elsewhere on the machine is not joined) and read what it measured."""
    env = {**os.environ, "RAY_ADDRESS": "local"}
    cmd = train_command(variant, overrides, run_dir)
    for starts in range(1, START_TRIES + 1):
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            with WorkerProbe(run_dir, proc.pid) as probe:
                proc.wait()
        wall = time.perf_counter() - t0
        if proc.returncode == 0 or starts == START_TRIES:
            break
        if RAY_START_TIMEOUT not in log.read_text():
            break  # failed for another reason: no retry
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"ganforge train exited {proc.returncode}; its last lines:\n{tail}")
    marker = final_marker(run_dir)
    cpus = (marker.get("config") or {}).get("cluster", {}).get("cpus_per_worker")
    threads = marker.get("torch_threads")
    return CliRun(median_rate(run_dir), wall, cpus, threads, probe.report(), starts)

"""What a training run does while it trains, seen from outside: how many of rank 0's threads are
busy, what the driver process costs, and the environment and CPU affinity the worker started
with. On a machine shared with other work, wall-clock figures swing by several times; these do
not, so the training benchmark can tell a thread-count difference between two paths from a
driver or environment one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil

from ganforge.rundir import RunDir

# Environment variables that set thread pools (OpenMP, MKL, OpenBLAS, ...).
THREAD_VARS = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "NUMEXPR_")


def _thread_cpu(proc: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def summarize(
    first: dict[int, float], last: dict[int, float], driver_cpu_s: float, seconds: float
) -> dict[str, Any]:
    """Per-thread CPU seconds of the worker between two samples -> the busiest four, how many
    threads did at least half the busiest one's work, and the driver's CPU in cores."""
    used = sorted((last[t] - first.get(t, 0.0) for t in last), reverse=True)
    top = used[0] if used else 0.0
    return {
        "window_s": round(seconds, 1),
        "worker_thread_cpu_s": [round(u, 2) for u in used[:4]],
        "busy_threads": sum(1 for u in used if top > 0 and u >= 0.5 * top),
        "driver_cpu_cores": round(driver_cpu_s / max(seconds, 1e-9), 3),
    }


class WorkerProbe:
    """Samples rank 0's worker (its pid from RUN_DIR/pids/rank-0) and the driver every
    `interval`; the window runs from the first metrics record (compile and warm-up before it) to
    the last one seen. Not to the worker's end: a thread that exits takes its CPU time out of
    the per-thread figures, and at teardown nearly all of them do. `report()` afterwards."""

    def __init__(self, run_dir: str | Path, driver_pid: int, interval: float = 1.0):
        self.run = RunDir(run_dir)
        self.driver = psutil.Process(driver_pid)
        self.interval = interval
        self.worker: psutil.Process | None = None
        self.started: dict[str, Any] = {}
        self.first: tuple[float, dict[int, float], float] | None = None
        self.last: tuple[float, dict[int, float], float] | None = None
        self.records = 0  # metrics records seen at the last sample kept
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-probe", daemon=True)

    def __enter__(self) -> WorkerProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except (psutil.Error, OSError):
                continue  # a thread or the worker ended while being read: keep what was kept

    def _sample(self) -> None:
        pid_file = self.run.pid_file(0)
        if self.worker is None:
            if not pid_file.is_file() or not pid_file.read_text().strip():
                return
            self.worker = psutil.Process(int(pid_file.read_text()))
            env = self.worker.environ()
            self.started = {
                "worker_thread_env": {k: v for k, v in env.items() if k.startswith(THREAD_VARS)},
                "worker_affinity": sorted(self.worker.cpu_affinity()),
            }
        metrics = self.run.metrics_path
        records = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
        if records <= self.records:
            return
        sample = (time.monotonic(), _thread_cpu(self.worker), _cpu(self.driver))
        if self.first is None:
            self.first = sample
        else:
            self.last = sample
        self.records = records

    def report(self) -> dict[str, Any]:
        if self.first is None or self.last is None:
            return {"error": "no sample of a training window (run too short?)", **self.started}
        (t0, threads0, driver0), (t1, threads1, driver1) = self.first, self.last
        return summarize(threads0, threads1, driver1 - driver0, t1 - t0) | self.started

"""Driver crash recovery: `ganforge train` killed with SIGKILL (driver, its embedded Ray cluster
and the workers: the whole process group, as when the launching machine dies), then the same
command relaunched on the same run dir resumes from the latest complete checkpoint and ends with
the step count and images seen of an uninterrupted run. Real processes, real Ray; slow."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ganforge.checkpoint import list_checkpoints, verify
from tests.train_helpers import pack

pytestmark = pytest.mark.slow

STEPS, MICRO = 12, 8


def _command(shards: Path, run_dir: Path) -> list[str]:
    sets = {
        "data.num_workers": 0,
        "model.width": 8,
        "model.z_dim": 16,
        "train.micro_batch": MICRO,
        "train.log_every": 1,
        "train.checkpoint_every": 3,
        "train.sample_every": 100,
    }
    cmd = [sys.executable, "-m", "ganforge.cli", "train", "--config", "dcgan"]
    cmd += ["--data", str(shards), "--run-dir", str(run_dir), "--max-steps", str(STEPS)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


@pytest.mark.e2e  # minutes of CI; the node-loss scenarios are in the same tier
def test_relaunch_after_driver_crash_resumes_and_finishes(tmp_path):
    shards = pack(tmp_path, shard_size=8)
    run_dir = tmp_path / "run"
    # No RAY_ADDRESS: the driver starts an embedded local cluster that dies with it.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen(
        _command(shards, run_dir),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes Ray down with it
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            if list_checkpoints(run_dir / "checkpoints"):
                break
            time.sleep(0.2)
        assert first.poll() is None, "the first launch ended before it could be killed"
        assert list_checkpoints(run_dir / "checkpoints"), "no checkpoint within 300 s"
        os.killpg(first.pid, signal.SIGKILL)
        # The raylet starts the Ray workers; one outlived the group kill long enough to finish
        # the run and write the last checkpoint (seen once in a full suite). A dying machine
        # takes them too.
        for pid_file in (run_dir / "pids").glob("rank-*"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    killed_at = list_checkpoints(run_dir / "checkpoints")[0][0]
    assert killed_at < STEPS

    second = subprocess.run(
        _command(shards, run_dir), env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resum" in (second.stdout + second.stderr).lower()
    meta = verify(list_checkpoints(run_dir / "checkpoints")[0][1])
    assert meta["step"] == STEPS
    assert meta["images_seen"] == STEPS * MICRO
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == STEPS
    assert steps.count(1) == 1, f"the relaunch trained from scratch: {steps}"

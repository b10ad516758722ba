"""Job submission against a real local Ray cluster (`ray start --head` on loopback): both
`ray job submit -- ganforge train ...` and `ganforge submit -- train ...` reach SUCCEEDED and
leave checkpoints in the run dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ganforge.checkpoint import list_checkpoints
from tests.serve_helpers import free_port
from tests.train_helpers import pack, tiny_config

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _ray(*args, env=None, timeout=180):
    return subprocess.run(
        [str(BIN / "ray"), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    port, dash = free_port(), free_port()
    # Like a user who activated the virtualenv before `ray start`: jobs inherit the head's PATH,
    # and `ganforge submit` runs the `ganforge` found there (as in the Docker image).
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "PATH": path}
    started = _ray(
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--num-cpus=2",
        "--disable-usage-stats",
        env=env,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    # Ray 2.60 may enable token auth for new clusters; clients then must send the token
    # (RAY_AUTH_MODE=token reads ~/.ray/auth_token). Never disable auth to make this pass.
    if (Path.home() / ".ray" / "auth_token").exists():
        env["RAY_AUTH_MODE"] = "token"
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dash}"
    yield env
    _ray("stop", "--force", env=env)


def _job_config(tmp_path, shards, name) -> Path:
    cfg = tiny_config("dcgan", shards, tmp_path / name, **{"train.max_steps": 2})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_ray_job_submit_and_ganforge_submit(head, tmp_path):
    shards = pack(tmp_path)
    cfg = _job_config(tmp_path, shards, "raysubmit")
    res = _ray(
        "job",
        "submit",
        "--address",
        head["RAY_ADDRESS"],
        "--",
        str(BIN / "ganforge"),
        "train",
        "--config",
        str(cfg),
        "--no-progress",
        env=head,
        timeout=400,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "succeeded" in (res.stdout + res.stderr).lower()
    assert [s for s, _ in list_checkpoints(tmp_path / "raysubmit" / "checkpoints")] == [2]

    cfg = _job_config(tmp_path, shards, "gfsubmit")
    res = subprocess.run(
        [str(BIN / "ganforge"), "submit", "--", "train", "--config", str(cfg), "--no-progress"],
        capture_output=True,
        text=True,
        env=head,
        timeout=400,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "SUCCEEDED" in res.stdout
    assert [s for s, _ in list_checkpoints(tmp_path / "gfsubmit" / "checkpoints")] == [2]


def test_failed_job_exit_code(head, tmp_path):
    res = subprocess.run(
        [str(BIN / "ganforge"), "submit", "--", "train", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        env=head,
        timeout=300,
    )
    assert res.returncode == 1, res.stdout[-2000:]
    assert "FAILED" in res.stdout


def test_submit_without_address_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run(
        [str(BIN / "ganforge"), "submit", "--", "train"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 2
    assert "RAY_ADDRESS" in res.stderr
    assert shutil.which("ray") or (BIN / "ray").exists()

"""Run dirs in an object store: `ganforge train --run-dir s3://...`, resume from the store,
serve/eval loading from it.

S3 cannot exist here, so the store is moto's S3 server (`moto.server`) on loopback: real S3 HTTP
requests from pyarrow (the client Ray Train uses), a stand-in only for AWS itself. Real `ganforge
train` processes with their embedded Ray clusters, so the workers get the endpoint and
credentials from the environment exactly as on a cluster. Slow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3  # installed with moto[server] (the dev extra)
import pytest
import torch

from ganforge.checkpoint import CheckpointError
from ganforge.models import load_model
from ganforge.quality.evaluate import select_checkpoints
from ganforge.storage import RemoteRun, mirror_path
from tests.serve_helpers import free_port
from tests.train_helpers import pack

pytestmark = pytest.mark.slow
MICRO = 8
SETS = {
    "data.num_workers": 0,
    "model.width": 8,
    "model.z_dim": 16,
    "train.micro_batch": MICRO,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.sample_every": 2,
    "train.seed": 3,
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with bucket `runs`; yields the environment a client needs."""
    port = free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "GANFORGE_CACHE": str(tmp_path_factory.mktemp("cache")),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "moto server did not start in 30 s"
                time.sleep(0.2)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], **_creds(env))
        client.create_bucket(Bucket="runs")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _creds(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


@pytest.fixture
def use_s3(s3, monkeypatch):
    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    return s3


def _train(shards: Path, run_dir: str, steps: int, env: dict[str, str]):
    cmd = [sys.executable, "-m", "ganforge.cli", "train", "--config", "dcgan", "--no-progress"]
    cmd += ["--data", str(shards), "--run-dir", run_dir, "--max-steps", str(steps)]
    for k, v in SETS.items():
        cmd += ["--set", f"{k}={v}"]
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(cmd, env=base | env, capture_output=True, text=True, timeout=600)


def _objects(env: dict[str, str], prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], **_creds(env))
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="runs", Prefix=prefix)
    return [o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])]


def test_train_resume_serve_and_eval_from_an_object_store(tmp_path, s3, use_s3):
    shards = pack(tmp_path, shard_size=8)
    uri = "s3://runs/exp/dcgan"

    first = _train(shards, uri, 2, s3)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    keys = _objects(s3, "exp/dcgan/")
    assert "config.yaml" in keys and "metrics.jsonl" in keys
    assert "checkpoints/step-000002/ganforge.json" in keys
    assert "checkpoints/step-000002/weights.pt" in keys
    assert "samples/step-000002.png" in keys
    assert any(k.startswith("tensorboard/") for k in keys)

    # A new launch with a fresh mirror: everything it needs comes from the store.
    shutil.rmtree(mirror_path(uri))
    second = _train(shards, uri, 4, s3)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-3000:]
    assert f"resumed from {uri} at step 2" in out

    # The resumed run ends bitwise equal to an uninterrupted local one.
    straight = _train(shards, str(tmp_path / "straight"), 4, s3)
    assert straight.returncode == 0, straight.stderr[-3000:]
    local = load_model(tmp_path / "straight")
    shutil.rmtree(mirror_path(uri))
    remote = load_model(uri)  # serving's loader, through a fresh download
    assert remote.meta["step"] == 4 and remote.meta["images_seen"] == 4 * MICRO
    # Serving downloads the weights of the checkpoint it serves, not of the older ones.
    ckpts = mirror_path(uri) / "checkpoints"
    assert (ckpts / "step-000004" / "weights.pt").is_file()
    assert (ckpts / "step-000002" / "ganforge.json").is_file()
    assert not (ckpts / "step-000002" / "weights.pt").exists()
    for k, v in local.generator.state_dict().items():
        assert torch.equal(v, remote.generator.state_dict()[k]), k

    # The store's metrics continue the first launch's, once per step, no step twice.
    body = RemoteRun(uri)
    assert body.pull_file("metrics.jsonl")
    steps = [json.loads(x)["step"] for x in (body.local / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

    # `ganforge eval --checkpoint latest` (or a step) downloads only the weights it evaluates.
    shutil.rmtree(mirror_path(uri))
    assert [s for s, _ in select_checkpoints(uri, "latest")] == [4]
    assert not (ckpts / "step-000002" / "weights.pt").exists()
    shutil.rmtree(mirror_path(uri))
    assert [s for s, _ in select_checkpoints(uri, "2")] == [2]
    assert not (ckpts / "step-000004" / "weights.pt").exists()
    # `all` sees and fetches every checkpoint of the run; a checkpoint URI loads on its own.
    assert [s for s, _ in select_checkpoints(uri, "all")] == [2, 4]
    assert (ckpts / "step-000004" / "weights.pt").is_file()
    assert load_model(f"{uri}/checkpoints/step-000002").meta["step"] == 2


def test_object_store_errors_are_clear(tmp_path, s3, use_s3):
    shards = pack(tmp_path, shard_size=8)
    missing = _train(shards, "s3://no-such-bucket/run", 2, s3)
    assert missing.returncode == 2
    assert "no-such-bucket" in missing.stderr and "cannot write config.yaml" in missing.stderr
    unknown = _train(shards, "nosuch://bucket/run", 2, s3)
    assert unknown.returncode == 2 and "not a storage URI" in unknown.stderr
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_model("s3://runs/never-trained")


def test_serving_skips_partial_checkpoints_in_the_store(tmp_path, s3, use_s3):
    """A checkpoint still uploading (no marker) or cut short (marker, no weights.pt) is skipped
    with a warning; the newest complete one is served."""
    from tests.serve_helpers import make_checkpoint

    src = tmp_path / "src"
    good = make_checkpoint(src, "dcgan")  # checkpoints/step-000010
    cut = src / "checkpoints" / "step-000020"
    shutil.copytree(good, cut)
    marker = json.loads((cut / "ganforge.json").read_text())
    (cut / "ganforge.json").write_text(json.dumps({**marker, "step": 20}))
    (cut / "weights.pt").unlink()
    uploading = src / "checkpoints" / "step-000030"
    shutil.copytree(good, uploading)
    (uploading / "ganforge.json").unlink()
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], **_creds(s3))
    for p in src.rglob("*"):
        if p.is_file():
            client.upload_file(str(p), "runs", f"partial/{p.relative_to(src).as_posix()}")

    model = load_model("s3://runs/partial")
    assert model.meta["step"] == 10
    assert model.path == mirror_path("s3://runs/partial") / "checkpoints" / "step-000010"

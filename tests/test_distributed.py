"""Multi-worker data parallelism, fault tolerance and training metrics on a real local Ray
cluster (2 CPU workers, gloo). Marked slow; CI runs them."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import urllib.request

import pytest
import torch

from ganforge.checkpoint import list_checkpoints, verify
from ganforge.cluster.launch import run_training
from ganforge.config import ConfigError
from tests.train_helpers import pack, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 4 classes x 16 = 64 images in 8 shards of 8 = one micro-batch per shard.
    return pack(tmp_path_factory.mktemp("data"), shard_size=8)


def _final_weights(run):
    return torch.load(list_checkpoints(run / "checkpoints")[0][1] / "weights.pt", weights_only=True)


def test_two_workers_match_one_worker_with_twice_the_batch(shards, tmp_path, ray_cluster):
    """Same global batch, same noise, same data: equal weights within float tolerance.
    One-pass data in shard order (no shuffle, no flip) and BatchNorm synchronised across
    ranks make the two runs the same computation up to all-reduce summation order."""
    common = {
        "data.resample": False,
        "data.shuffle_buffer": 0,
        "data.hflip": False,
        "train.sync_batchnorm": True,
        "train.max_steps": 3,
        "model.variant": "dcgan",
    }
    two = run_training(
        tiny_config(
            "dcgan",
            shards,
            tmp_path / "two",
            **common,
            **{"cluster.num_workers": 2, "train.micro_batch": 8},
        ),
        show_progress=False,
    )
    one = run_training(
        tiny_config(
            "dcgan",
            shards,
            tmp_path / "one",
            **common,
            **{"cluster.num_workers": 1, "train.micro_batch": 16, "cluster.cpus_per_worker": 2},
        ),
        show_progress=False,
    )
    a, b = _final_weights(two), _final_weights(one)
    for part in ("generator", "discriminator"):
        for k in a[part]:
            torch.testing.assert_close(
                a[part][k].float(),
                b[part][k].float(),
                rtol=1e-4,
                atol=1e-5,
                msg=lambda m, k=k, part=part: f"{part}.{k}: {m}",
            )
    assert verify(list_checkpoints(two / "checkpoints")[0][1])["images_seen"] == 3 * 16


def _corrupt_first_image(shard) -> None:
    """Rewrite a tar shard with its first image's bytes replaced by garbage (same member name)."""
    import io
    import tarfile

    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    image = next(m.name for m, _ in members if m.name.rsplit(".", 1)[-1] in ("png", "jpg"))
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            data = b"not an image" if m.name == image else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_one_pass_data_with_a_corrupt_sample_ends_together_on_every_rank(
    tmp_path_factory, tmp_path, ray_cluster
):
    """8 shards of 8 images, 2 ranks x micro-batch 8: the plan gives each rank 4 batches. One
    corrupt image (skipped) leaves one rank 3; both must stop after step 3 instead of one rank
    waiting forever in an all-reduce for its finished peer."""
    data = pack(tmp_path_factory.mktemp("corrupt"), shard_size=8)
    _corrupt_first_image(sorted(data.rglob("*.tar"))[0])
    cfg = tiny_config(
        "dcgan",
        data,
        tmp_path / "o",
        **{
            "data.resample": False,
            "cluster.num_workers": 2,
            "train.max_steps": 10,
            "train.checkpoint_every": 100,
        },
    )
    run = run_training(cfg, show_progress=False)
    meta = verify(list_checkpoints(run / "checkpoints")[0][1])
    assert meta["step"] == 3
    assert meta["images_seen"] == 3 * 8 * 2


def _kill_rank0_after_first_checkpoint(run_dir, killed: list):
    deadline = time.time() + 240
    while time.time() < deadline and not killed:
        if list_checkpoints(run_dir / "checkpoints") and (run_dir / "pids" / "rank-0").exists():
            pid = int((run_dir / "pids" / "rank-0").read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.2)


def _scrape(port: int) -> dict[str, float] | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except (OSError, http.client.HTTPException):
        # Refused while no rank 0 runs, or cut off mid-body when the kill lands during a
        # scrape (IncompleteRead): either way, no scrape this time; the poller keeps going.
        return None
    return {
        s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
    }


def _poll_metrics(port: int, scrapes: list, stop: threading.Event) -> None:
    while not stop.is_set():
        got = _scrape(port)
        if got:
            scrapes.append(got)
        time.sleep(0.1)


@pytest.mark.e2e
def test_killed_worker_restarts_from_checkpoint_and_finishes(shards, tmp_path, ray_cluster):
    from tests.serve_helpers import free_port

    port = free_port()
    cfg = tiny_config(
        "wgan-gp",
        shards,
        tmp_path / "k",
        **{
            "cluster.num_workers": 2,
            "train.max_steps": 8,
            "train.checkpoint_every": 2,
            "cluster.max_failures": 3,
            "cluster.metrics_port": port,
        },
    )
    killed: list[int] = []
    scrapes: list[dict] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=_kill_rank0_after_first_checkpoint, args=(tmp_path / "k", killed), daemon=True
    )
    poller = threading.Thread(target=_poll_metrics, args=(port, scrapes, stop), daemon=True)
    watcher.start()
    poller.start()
    run = run_training(cfg, show_progress=False)
    stop.set()
    watcher.join(timeout=1)
    poller.join(timeout=5)
    assert killed, "the worker was never killed (no checkpoint appeared)"
    # The restarted rank 0 exports the restart count and the penalty. The checkpoint duration
    # is checked over the whole run: when the restart resumes from the second-to-last
    # checkpoint, its only save is the final one, and the exporter closes right after it.
    after = [s for s in scrapes if s.get("ganforge_train_restarts") == 1]
    assert after, f"no scrape after the restart showed ganforge_train_restarts=1 ({len(scrapes)})"
    assert any(s["ganforge_train_gp"] > 0 for s in after), "gp gauge never set after restart"
    assert any(s["ganforge_train_checkpoint_seconds"] > 0 for s in scrapes), "no checkpoint time"
    meta = verify(list_checkpoints(run / "checkpoints")[0][1])
    assert meta["step"] == 8
    assert meta["images_seen"] == 8 * 5 * 8 * 2  # steps x n_critic x micro x workers
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 8
    starts = [int(p.read_text()) for p in (run / ".launches").iterdir()]
    assert starts == [2], "the worker group should have started twice (one restart)"
    # Restored from a checkpoint, not from scratch: step 1 is logged once (log_every=1), and
    # any step the restart logs again lies after the first checkpoint (step 2).
    assert steps.count(1) == 1, f"the restart began from scratch: {steps}"
    again = [b for a, b in zip(steps, steps[1:], strict=False) if b <= a]
    assert all(b > 2 for b in again), f"the restart did not resume from a checkpoint: {steps}"


@pytest.mark.e2e
def test_corrupt_latest_checkpoint_is_skipped(shards, tmp_path, ray_cluster):
    run = run_training(
        tiny_config("dcgan", shards, tmp_path / "c", **{"train.max_steps": 4}), show_progress=False
    )
    newest = list_checkpoints(run / "checkpoints")[0][1]
    (newest / "weights.pt").write_bytes(b"garbage")
    resumed = run_training(
        tiny_config("dcgan", shards, tmp_path / "c", **{"train.max_steps": 5}), show_progress=False
    )
    out = (resumed / "metrics.jsonl").read_text().splitlines()
    steps_after = [json.loads(x)["step"] for x in out][4:]
    assert steps_after[0] == 3, "should resume from step 2 (step 4 is corrupt), logging step 3"
    # Another worker count cannot restore per-rank state: refused before any worker starts.
    with pytest.raises(ConfigError, match="--num-workers 1"):
        run_training(
            tiny_config(
                "dcgan", shards, tmp_path / "c", **{"train.max_steps": 6, "cluster.num_workers": 2}
            ),
            show_progress=False,
        )


@pytest.mark.e2e
def test_prometheus_metrics_on_rank0(shards, tmp_path, ray_cluster):
    from tests.serve_helpers import free_port

    port = free_port()
    cfg = tiny_config(
        "dcgan",
        shards,
        tmp_path / "p",
        **{"train.max_steps": 150, "cluster.metrics_port": port, "train.checkpoint_every": 1000},
    )
    t = threading.Thread(
        target=run_training, args=(cfg,), kwargs={"show_progress": False}, daemon=True
    )
    t.start()
    samples = {}
    deadline = time.time() + 180
    while time.time() < deadline:
        samples = _scrape(port) or samples
        if samples.get("ganforge_train_step", 0) >= 2:
            break
        time.sleep(0.5)
    t.join(timeout=600)  # let the run finish before the module's ray.shutdown()
    assert samples.get("ganforge_train_step", 0) >= 2, samples
    for name in (
        "ganforge_train_images_seen",
        "ganforge_train_images_per_second",
        "ganforge_train_loss_d",
        "ganforge_train_loss_g",
        "ganforge_train_input_wait_fraction",
        "ganforge_train_restarts",
    ):
        assert name in samples, name
    assert samples["ganforge_train_images_seen"] == samples["ganforge_train_step"] * 8

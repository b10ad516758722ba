"""A node dies: `ganforge train --num-workers 2` on a real multi-node Ray cluster simulated on this
machine (`ray.cluster_utils.Cluster`: a head with no CPU for workers and two worker nodes of one
CPU each, so each node holds exactly one training worker; every node shares the run folder, as
nodes share a volume). The node holding a worker is removed mid-run (its raylet and every process
on it killed, no drain: a machine that dies); then

- capacity returns (a node is added): Ray Train restarts the worker group from the last checkpoint
  and the run ends at the step and images seen of an uninterrupted run, each rank on a live node,
  the shard slices still disjoint;
- capacity does not return: with `cluster.start_timeout_s` the run stops after that wait with an
  `error:` line naming the checkpoint, and `--resume` later finishes it.

Real Ray raylets, real DeepSpeed engines (gloo), real WebDataset shards; those two tests are
slow. Two fast ones check the pieces they rely on without a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ganforge.checkpoint import latest_valid, list_checkpoints, verify
from ganforge.rundir import RunDir
from tests.train_helpers import pack

STEPS, MICRO, WORKERS = 8, 8, 2  # dcgan: one critic step per generator step
SETTINGS = {
    "data.resample": False,  # one pass: shards split by rank, then by loader worker
    "data.shuffle_buffer": 16,
    "model.width": 8,
    "model.z_dim": 16,
    "train.micro_batch": MICRO,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.sample_every": 100,
    "cluster.max_failures": 2,
}


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs: the driver and Ray Train's controller only) + two 1-CPU worker nodes."""
    import ray
    from ray._common.utils import reset_ray_address
    from ray._private.utils import read_ray_address
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    # Cluster() records its address as "the latest local cluster", which a bare ray.init() in any
    # other process on this machine would then join: forget it (the tests pass the address).
    if read_ray_address() == c.address:
        reset_ray_address()
    try:
        for _ in range(WORKERS):
            c.add_node(num_cpus=1)
        ray.init(address=c.address, logging_level="ERROR")  # the in-process test's driver
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 160 images in 20 shards of 8: each rank's one-pass slice holds 10 batches (>= STEPS).
    return pack(tmp_path_factory.mktemp("data"), shard_size=8, per_class=40)


def _worker_nodes(cluster, want: int) -> None:
    """Bring the cluster back to `want` worker nodes (a previous test may have removed one)."""
    while len(cluster.worker_nodes) < want:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()


def _placements(run: Path, rank: int) -> list[dict]:
    path = RunDir(run).placement_log(rank)
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait_for_checkpoint(run: Path, deadline_s: float, running) -> None:
    """Until a checkpoint exists and every rank recorded where it runs (or the run ended)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and running():
        placed = all(_placements(run, r) for r in range(WORKERS))
        if placed and list_checkpoints(run / "checkpoints"):
            return
        time.sleep(0.2)
    assert running(), "the run ended before a node could be removed"
    raise AssertionError(f"no checkpoint within {deadline_s:.0f} s")


def _remove_node_of(cluster, run: Path, rank: int) -> str:
    """Kill the node that holds `rank`'s worker (no drain, no graceful exit); its node id."""
    node_id = _placements(run, rank)[-1]["node"]
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node, allow_graceful=False)
    return node_id


def _check_finished(run: Path) -> None:
    """The final checkpoint and logs are those of an uninterrupted run of STEPS steps."""
    meta = verify(list_checkpoints(run / "checkpoints")[0][1])
    assert meta["step"] == STEPS
    assert meta["images_seen"] == STEPS * MICRO * WORKERS  # steps x n_critic x micro x workers
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == STEPS
    assert steps.count(1) == 1, f"a restart trained from scratch: {steps}"


def _check_shard_split(run: Path, all_shards: list[str]) -> list[list[dict]]:
    """Each start of the group: every shard read by exactly one (rank, loader worker)."""
    per_rank = [_placements(run, r) for r in range(WORKERS)]
    starts = len(per_rank[0])
    assert all(len(p) == starts for p in per_rank), per_rank
    for i in range(starts):
        group = [p[i] for p in per_rank]
        assert len({g["node"] for g in group}) == WORKERS, f"two ranks on one node: {group}"
        assert len({g["step"] for g in group}) == 1, f"ranks resumed at different steps: {group}"
        read = [url for g in group for worker in g["shards"] for url in worker]
        assert sorted(read) == sorted(all_shards), f"start {i}: overlap or gap in {group}"
    return per_rank


def _shard_urls(shards: Path) -> list[str]:
    from ganforge.config import DataConfig
    from ganforge.data.resolve import resolve_data

    return resolve_data(DataConfig(urls=str(shards)))[0]


def _command(shards: Path, run: Path, *extra: str, **settings) -> list[str]:
    cmd = [sys.executable, "-m", "ganforge.cli", "train", "--config", "dcgan", "--no-progress"]
    cmd += ["--data", str(shards), "--run-dir", str(run), "--max-steps", str(STEPS)]
    cmd += ["--num-workers", str(WORKERS), *extra]
    for k, v in (SETTINGS | settings).items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lost_node_resumes_from_checkpoint_when_a_node_returns(cluster, shards, tmp_path):
    """`ganforge train` as a user runs it against the cluster (RAY_ADDRESS); rank 0's node dies
    after the first checkpoint, a fresh node joins, and the run finishes from the checkpoint."""
    _worker_nodes(cluster, WORKERS)
    run = tmp_path / "run"
    env = os.environ | {"RAY_ADDRESS": cluster.address}
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            _command(shards, run, **{"data.num_workers": 2}),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_checkpoint(run, 420, lambda: proc.poll() is None)
            lost = _remove_node_of(cluster, run, rank=0)
            cut_at = list_checkpoints(run / "checkpoints")[0][0]
            time.sleep(5)  # the controller sees the dead worker, then waits for two free CPUs
            cluster.add_node(num_cpus=1)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert cut_at < STEPS, "the run finished before the node was removed"
    assert "[ganforge] resumed from" in text, text[-4000:]
    _check_finished(run)
    starts = [int(p.read_text()) for p in RunDir(run).launches.iterdir()]
    assert starts == [2], f"the worker group should have started twice: {starts}"
    first, second = zip(*_check_shard_split(run, _shard_urls(shards)), strict=True)
    assert lost in {g["node"] for g in first} and lost not in {g["node"] for g in second}
    assert all(len(g["shards"]) == 2 for g in first + second), "two loader workers per rank"
    assert second[0]["step"] >= 2, "the restart did not resume from a checkpoint"


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_capacity_that_never_returns_stops_the_run_and_resume_finishes_it(
    cluster, shards, tmp_path
):
    """`cluster.start_timeout_s`: after the node is lost, the restart waits that long for two
    CPUs, then the command fails with an `error:` line (exit 1, no traceback) that names the
    checkpoint; once a node is back, `--resume` ends the run where an uninterrupted one ends."""
    import threading

    from typer.testing import CliRunner

    from ganforge.cli import app

    _worker_nodes(cluster, WORKERS)
    run = tmp_path / "run"
    args = _command(shards, run, **{"data.num_workers": 0, "cluster.start_timeout_s": 15})[3:]
    result: list = []
    # In-process (this test's driver is on the head node): CliRunner runs `ganforge train`.
    first = threading.Thread(target=lambda: result.append(CliRunner().invoke(app, args)))
    first.start()
    _wait_for_checkpoint(run, 420, first.is_alive)
    _remove_node_of(cluster, run, rank=1)
    removed_at = time.monotonic()
    first.join(timeout=300)
    waited = time.monotonic() - removed_at
    assert not first.is_alive(), "the run kept waiting for capacity"
    failed = result[0]
    # An exit of the command's own (typer.Exit(1)), not an exception that escaped it.
    assert isinstance(failed.exception, SystemExit), failed.exception
    assert failed.exit_code == 1, failed.output[-3000:]
    # Ray's forwarded logs (the controller's failure decisions) surround one error line of ours.
    errors = [x for x in failed.output.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, failed.output[-3000:]
    assert errors[0].startswith("error: the Ray cluster did not have 2 x {'CPU': 1} free")
    kept = verify(latest_valid(run / "checkpoints"))["step"]  # what a resume starts from
    assert f"the latest checkpoint is step {kept} in {run}" in errors[0]
    assert "--resume" in errors[0]
    assert kept < STEPS
    # Detecting the loss, one start try of 15 s, shutting down; generous for a loaded machine.
    assert waited < 180, f"stopping took {waited:.0f} s"

    cluster.add_node(num_cpus=1)
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    _check_finished(run)
    per_rank = _check_shard_split(run, _shard_urls(shards))
    assert [p[-1]["step"] for p in per_rank] == [kept] * WORKERS, "resumed at another step"


def test_start_timeout_reaches_ray_train_and_its_error_names_the_resume_point(
    tmp_path, monkeypatch
):
    """Fast, no cluster: `cluster.start_timeout_s` sets Ray Train's start timeout only while the
    trainer runs and ends start retries; Ray's own timeout error (the real classes) becomes a
    NoCapacityError naming the newest checkpoint that verifies, skipping a partial newer one;
    any other failure passes through unchanged."""
    from ray.train import ControllerError, WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    from ganforge.checkpoint import write_weights_checkpoint
    from ganforge.cluster import capacity
    from ganforge.config import GanforgeConfig
    from ganforge.models import build_discriminator, build_generator

    cfg = GanforgeConfig.model_validate({"model": {"width": 8, "z_dim": 16}})
    run = RunDir(tmp_path / "run")
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    write_weights_checkpoint(run.checkpoint(4).path, cfg, g, g, d, 4, 64)
    run.checkpoint(6).path.mkdir(parents=True)  # a save cut short: no marker, not a resume point
    assert capacity.failure_config(cfg.cluster).controller_failure_limit == -1  # Ray's default
    cfg.cluster.start_timeout_s = 15
    assert capacity.failure_config(cfg.cluster).controller_failure_limit == 0

    monkeypatch.delenv(capacity.START_TIMEOUT_ENV, raising=False)
    timeout = ControllerError(WorkerGroupStartupTimeoutError(num_workers=2))
    wait = capacity.bounded_wait(cfg.cluster, {"CPU": 1}, run)
    with pytest.raises(capacity.NoCapacityError) as caught, wait:
        assert os.environ[capacity.START_TIMEOUT_ENV] == "15.0"
        raise timeout
    assert capacity.START_TIMEOUT_ENV not in os.environ
    message = str(caught.value)
    assert "did not have 1 x {'CPU': 1} free" in message
    assert f"the latest checkpoint is step 4 in {run.path}" in message and "--resume" in message

    other = WorkerGroupError("worker died", {})
    wait = capacity.bounded_wait(cfg.cluster, {"CPU": 1}, run)
    with pytest.raises(WorkerGroupError) as passed, wait:
        raise other
    assert passed.value is other


def test_recorded_shard_slices_are_what_each_loader_worker_reads(tmp_path):
    """The placement log's slices (`StreamingLoader.shards`) are not a second computation that
    could drift: run the loader's own shard stages under a 2-worker DataLoader and compare."""
    import torch
    import webdataset as wds

    from ganforge.config import DataConfig
    from ganforge.data.loader import LoaderOptions, _one_pass

    data = pack(tmp_path, shard_size=4)  # 64 images, 16 shards
    urls = _shard_urls(data)
    cfg = DataConfig(urls=str(data), num_workers=2, resample=False)

    def tag(src):
        w = torch.utils.data.get_worker_info().id
        for shard in src:
            yield w, shard["url"]

    seen: list[str] = []
    for rank in range(WORKERS):
        opts = LoaderOptions(batch_size=4, image_size=32, channels=3, rank=rank, world_size=2)
        plan = _one_pass(urls, cfg, opts)
        loader = torch.utils.data.DataLoader(
            wds.DataPipeline(*plan.source, tag), batch_size=None, num_workers=2
        )
        read: list[list[str]] = [[], []]
        for w, url in loader:
            read[w].append(url)
        assert read == plan.shards
        seen += [u for worker in read for u in worker]
    assert sorted(seen) == sorted(urls)  # no shard twice, none left out

"""The per-worker training function that Ray Train runs on every rank.

train_func (setup) -> train (hooks: samples, logs, checkpoints) -> train_step -> n_critic x
critic_step + generator_step. Data position = step * n_critic batches, so a resumed run restarts
the stream exactly where its checkpoint left it. Cross-rank work lives in GANEngines (DeepSpeed)
and `cluster.distributed` (log-step reductions); this file reads like single-process code.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ganforge.config import GanforgeConfig
from ganforge.rundir import RunDir


@dataclass(frozen=True)
class WorkerPlan:
    """What every rank trains, decided once by the driver (`launch.prepare_run`).

    The validated config travels as the object itself (Ray pickles it to the workers), so the
    config has one form from the CLI on: CLI options and `--set` are dotted overrides on the YAML
    tree, validated once into `GanforgeConfig`, and that object is what each rank reads.
    """

    config: GanforgeConfig
    urls: list[str]
    """Shard URLs, resolved by the driver (every rank takes its own slice)."""
    classes: list[str]
    run: str
    """The run folder: a local path, or the object-store URI (each rank opens its mirror)."""
    launch_id: str
    """Names this launch, to count worker-group restarts across failures."""


@dataclass
class Window:
    """Metrics accumulated between two logs; tensors stay on the device until a log step."""

    steps: int = 0
    seconds: float = 0.0
    wait: float = 0.0
    images: int = 0
    sums: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, value: torch.Tensor | None) -> None:
        if value is not None:
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def summary(self) -> dict[str, float | None]:
        out = {k: None for k in ("loss_d", "loss_g", "gp", "grad_norm")}
        out |= {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        out["input_wait_frac"] = self.wait / max(self.seconds, 1e-9)
        return out


@dataclass
class Progress:
    step: int = 0
    images_seen: int = 0
    saved_step: int = 0
    checkpoint_s: float | None = None


def train_step(gan, batches, n_critic: int, window: Window, agree_on_end: bool) -> bool:
    """n_critic critic steps on real batches, then one generator step. False = data ran out.

    `agree_on_end` (one-pass data on several ranks): the ranks first agree that each holds its
    n_critic batches. The plan gives every rank the same batch count, but skipped corrupt
    samples can leave one rank a batch short; without the vote its peers would wait forever
    in the next all-reduce.
    """
    real = []
    try:
        for _ in range(n_critic):
            real.append(next(batches))
    except StopIteration:
        pass
    have_all = len(real) == n_critic
    if agree_on_end:
        from ganforge.cluster.distributed import all_ranks

        have_all = all_ranks(have_all, gan.device)
    if not have_all:
        return False
    for images, labels in real:
        stats = gan.critic_step(images, labels)
        window.add("loss_d", stats.loss_d)
        window.add("gp", stats.gp)
        window.add("grad_norm", stats.grad_norm)
    window.add("loss_g", gan.generator_step())
    return True


def train(gan, loader, logger, cfg: GanforgeConfig, classes: list[str], prog: Progress) -> None:
    from ganforge.cluster.checkpointing import save_and_report
    from ganforge.cluster.distributed import mean_over_ranks

    n_critic, images_per_step = cfg.loss.n_critic, cfg.loss.n_critic * cfg.train.micro_batch
    images_per_step *= gan.world
    batches, window, lr_g, lr_d = iter(loader), Window(), *gan.lr()
    agree_on_end = loader.num_batches is not None and gan.world > 1
    while prog.step < cfg.train.max_steps:
        t0, wait0 = time.perf_counter(), loader.wait_seconds
        if not train_step(gan, batches, n_critic, window, agree_on_end):
            break
        prog.step += 1
        prog.images_seen += images_per_step
        window.steps += 1
        window.images += images_per_step
        window.seconds += time.perf_counter() - t0
        window.wait += loader.wait_seconds - wait0

        final = prog.step == cfg.train.max_steps
        if logger and (prog.step % cfg.train.sample_every == 0 or final):
            logger.samples(
                gan.ema.module, prog.step, cfg.model.z_dim, gan.g.num_classes, gan.device
            )
        is_log = prog.step % cfg.train.log_every == 0 or final
        is_ckpt = prog.step % cfg.train.checkpoint_every == 0 or final
        if not (is_log or is_ckpt):
            continue
        metrics = mean_over_ranks(window.summary()) | {
            "step": prog.step,
            "images_seen": prog.images_seen,
            "images_per_s": window.images / max(window.seconds, 1e-9),
            "step_time_s": window.seconds / max(window.steps, 1),
            "lr_g": lr_g,
            "lr_d": lr_d,
            "checkpoint_s": prog.checkpoint_s,
        }
        metrics = {k: v for k, v in metrics.items() if v is not None}
        if logger:
            logger.log(metrics)
        # Only checkpoint steps go through ray.train.report: each report is a barrier across the
        # worker group plus a round trip to the controller (~2 s on CPU), and log-only steps are
        # already in metrics.jsonl, TensorBoard and Prometheus.
        if is_ckpt:
            prog.checkpoint_s = save_and_report(gan, prog.step, prog.images_seen, classes, metrics)
            prog.saved_step = prog.step
            if logger:
                logger.gauge(checkpoint_seconds=prog.checkpoint_s)
                logger.sync()
        window = Window()
    if prog.saved_step < prog.step:  # one-pass data ran out before max_steps: keep the work
        final_metrics = {"step": prog.step, "images_seen": prog.images_seen, "data_exhausted": 1}
        save_and_report(gan, prog.step, prog.images_seen, classes, final_metrics)


def _quiet_ray_train_reports() -> None:
    """Ray Train V2 logs every report at INFO on each worker (a logger named after its file);
    ganforge shows its own progress bar, so lower that one logger (best effort: private path)."""
    try:
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):
        pass


def _count_start(run: RunDir, launch_id: str) -> int:
    """How many times this launch's worker group has started (1 + restarts)."""
    path = run.launch_counter(launch_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def _record_placement(run: RunDir, rank: int, launch_id: str, step: int, shards) -> None:
    """Append where this rank (re)started: after a lost node, operators (and the node-failure
    test) see which node took over each rank and that the shard slices still do not overlap."""
    import json

    import ray

    record = {
        "launch": launch_id,
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "step": step,
        "shards": shards,  # per loader worker; None: resampled data (every worker draws from all)
    }
    path = run.placement_log(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train_func(loop_cfg: dict[str, WorkerPlan]) -> None:
    """Ray Train entry point (runs on every rank); `loop_cfg["plan"]` is the driver's plan."""
    import ray.train
    import ray.train.torch

    from ganforge.cluster.checkpointing import find_resume_point, restore
    from ganforge.cluster.engines import GANEngines
    from ganforge.cluster.run_logging import RunLogger
    from ganforge.data.loader import LoaderOptions, build_loader

    _quiet_ray_train_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    plan = loop_cfg["plan"]
    cfg, run = plan.config, RunDir.open(plan.run)
    torch.set_num_threads(cfg.cluster.cpus_per_worker)
    device = ray.train.torch.get_device() if cfg.cluster.gpu else torch.device("cpu")
    pid_file = run.pid_file(rank)  # for ops and kill tests
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))

    gan = GANEngines(cfg, device, rank, world)
    prog = Progress()
    ckpt = find_resume_point(run, rank)
    if ckpt is not None:
        prog.step, prog.images_seen = restore(gan, ckpt)
        prog.saved_step = prog.step
        if run.store:  # a downloaded copy: the store keeps the checkpoint
            shutil.rmtree(ckpt, ignore_errors=True)
    opts = LoaderOptions(
        batch_size=cfg.train.micro_batch,
        image_size=cfg.model.resolution,
        channels=cfg.model.channels,
        rank=rank,
        world_size=world,
        seed=cfg.train.seed,
        start_batch=prog.step * cfg.loss.n_critic,
        pin_memory=device.type == "cuda",
        num_classes=len(plan.classes) or None,  # labels outside them are dropped or raise
    )
    loader = build_loader(plan.urls, cfg.data, opts)
    _record_placement(run, rank, plan.launch_id, prog.step, loader.shards)
    logger = None
    if rank == 0:
        if run.store:  # the store's logs end at its newest checkpoint: continue from them
            run.pull_metrics()
            run.pull(run.launch_counter(plan.launch_id))
        starts = _count_start(run, plan.launch_id)
        logger = RunLogger(run, cfg.cluster.metrics_port, restarts=starts - 1)
        if ckpt is not None:
            where = run.uri if run.store else ckpt
            print(f"[ganforge] resumed from {where} at step {prog.step}", flush=True)
    try:
        train(gan, loader, logger, cfg, plan.classes, prog)
    finally:
        if logger:
            logger.close()

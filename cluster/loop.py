"""The per-worker training function that Ray Train runs on every rank.

train_func -> (restore) -> loop of train steps; one train step = n_critic critic steps on real
batches + one generator step. Data position = step * n_critic batches, so resuming restarts the
stream exactly where the checkpoint left it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ganforge.config import GanforgeConfig


@dataclass
class Window:
    """Metrics accumulated between two logs."""

    steps: int = 0
    seconds: float = 0.0
    wait: float = 0.0
    images: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, key: str) -> float | None:
        return self.sums[key] / self.counts[key] if self.counts.get(key) else None


KEYS = ("loss_d", "loss_g", "gp", "grad_norm")


def _mean_over_ranks(window: Window) -> dict[str, float | None]:
    """Collective: mean of each windowed metric over ranks (NaN marks 'not computed')."""
    vals = [window.mean(k) for k in KEYS] + [window.wait / max(window.seconds, 1e-9)]
    t = torch.tensor([float("nan") if v is None else v for v in vals], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    out = {k: (None if torch.isnan(t[i]) else float(t[i])) for i, k in enumerate(KEYS)}
    out["input_wait_frac"] = float(t[-1])
    return out


def _count_start(run_dir: Path, launch_id: str) -> int:
    """How many times this launch's worker group has started (1 + restarts)."""
    path = run_dir / ".launches" / launch_id
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def train_func(loop_cfg: dict[str, Any]) -> None:
    import deepspeed
    import ray.train
    import ray.train.torch
    from ganforge.cluster.checkpointing import find_resume_point, restore, save_and_report
    from ganforge.cluster.data import build_loader
    from ganforge.cluster.engines import GANEngines
    from ganforge.cluster.run_logging import RunLogger

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = GanforgeConfig.model_validate(loop_cfg["config"])
    run_dir = Path(loop_cfg["run_dir"])
    torch.set_num_threads(cfg.cluster.cpus_per_worker)
    device = ray.train.torch.get_device() if cfg.cluster.gpu else torch.device("cpu")
    (run_dir / "pids").mkdir(parents=True, exist_ok=True)
    (run_dir / "pids" / f"rank-{rank}").write_text(str(os.getpid()))
    # The process group exists already (Ray Train made it); DeepSpeed wraps it.
    deepspeed.init_distributed(
        dist_backend="nccl" if cfg.cluster.gpu else "gloo",
        auto_mpi_discovery=False,
        dist_init_required=False,
    )

    gan = GANEngines(cfg, device, rank, world)
    step, images_seen = 0, 0
    ckpt = find_resume_point(run_dir)
    if ckpt is not None:
        step, images_seen = restore(gan, ckpt)
    n_critic, micro = cfg.loss.n_critic, cfg.train.micro_batch
    loader = build_loader(
        loop_cfg["urls"],
        cfg.data,
        batch_size=micro,
        image_size=cfg.model.resolution,
        channels=cfg.model.channels,
        rank=rank,
        world_size=world,
        seed=cfg.train.seed,
        start_batch=step * n_critic,
        pin_memory=device.type == "cuda",
    )
    logger = None
    if rank == 0:
        starts = _count_start(run_dir, loop_cfg["launch_id"])
        logger = RunLogger(run_dir, cfg.cluster.metrics_port, restarts=starts - 1)
        if ckpt is not None:
            print(f"[ganforge] resumed from {ckpt} at step {step}", flush=True)

    batches = iter(loader)
    window, ckpt_seconds, max_steps = Window(), None, cfg.train.max_steps
    saved_step = step
    lr_g, lr_d = gan.lr()
    try:
        while step < max_steps:
            t0, wait0 = time.perf_counter(), loader.wait_seconds
            try:
                for _ in range(n_critic):
                    images, labels = next(batches)
                    stats = gan.critic_step(images, labels)
                    window.add("loss_d", stats.loss_d)
                    window.add("gp", stats.gp)
                    window.add("grad_norm", stats.grad_norm)
            except StopIteration:  # one-pass data (resample: false) ran out, equally on all ranks
                break
            window.add("loss_g", gan.generator_step())
            step += 1
            images_seen += n_critic * micro * world
            window.steps += 1
            window.seconds += time.perf_counter() - t0
            window.wait += loader.wait_seconds - wait0
            window.images += n_critic * micro * world

            final = step == max_steps
            is_log = step % cfg.train.log_every == 0 or final
            is_ckpt = step % cfg.train.checkpoint_every == 0 or final
            if logger and (step % cfg.train.sample_every == 0 or final):
                logger.samples(gan.ema.module, step, cfg.model.z_dim, gan.g.num_classes, device)
            if not (is_log or is_ckpt):
                continue
            metrics = _mean_over_ranks(window) | {
                "step": step,
                "images_seen": images_seen,
                "images_per_s": window.images / max(window.seconds, 1e-9),
                "step_time_s": window.seconds / max(window.steps, 1),
                "lr_g": lr_g,
                "lr_d": lr_d,
                "checkpoint_s": ckpt_seconds,
            }
            if logger:
                logger.log({k: v for k, v in metrics.items() if v is not None})
            report = {k: v for k, v in metrics.items() if v is not None}
            if is_ckpt:
                ckpt_seconds = save_and_report(gan, step, images_seen, loop_cfg["classes"], report)
                saved_step = step
                if logger:
                    logger.gauge(checkpoint_seconds=ckpt_seconds)
            else:
                ray.train.report(report)
            window = Window()
        if saved_step < step:  # one-pass data ran out: keep what was learned
            save_and_report(
                gan,
                step,
                images_seen,
                loop_cfg["classes"],
                {"step": step, "images_seen": images_seen, "data_exhausted": 1},
            )
    finally:
        if logger:
            logger.close()

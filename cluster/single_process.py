"""Training in one process on one device, without Ray or DeepSpeed (`train.trainer` is not a
config key: the study chooses it, `ganforge study --trainer single`).

For machines that have a GPU but not the cluster stack (the one-call GPU study trains its runs
so, several processes sharing one device), and for quick studies on a laptop. What it shares
with the distributed path (`engines.GANEngines` + `loop.train`): the models, losses and
regularisers on their lazy schedule, the optimisers (`build_optimizer`), the generator EMA, the
noise stream (`NoiseSource`), the config and run folder (config.yaml, metrics.jsonl) and the
checkpoint format (`write_weights_checkpoint`: markers and weights.pt, which evaluation and
serving read), `train.grad_clip`. What it leaves out: several workers, DeepSpeed's fp16 and ZeRO
(fp32, or bf16 autocast on a GPU), resuming (an interrupted run of this trainer restarts from
step 0), and the streaming loader: the split is read into memory once (`load_real`) and
shuffled every epoch, with the loader's random horizontal flips.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ganforge.checkpoint import list_checkpoints, read_marker, write_weights_checkpoint
from ganforge.cluster.deepspeed_config import build_optimizer
from ganforge.cluster.ema import GeneratorEMA
from ganforge.cluster.noise import NoiseSource
from ganforge.config import ConfigError, GanforgeConfig
from ganforge.models import get_variant
from ganforge.models.regularisers import CriticBatch

TRAINER = "single-process"  # recorded in every checkpoint's marker


@dataclass
class RealBatches:
    """Shuffled batches of a split held in memory, on the training device."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor
    batch: int
    hflip: bool
    gen: torch.Generator

    def __post_init__(self) -> None:
        if len(self.images) < self.batch:
            raise ConfigError(
                f"the split holds {len(self.images)} images, fewer than one batch ({self.batch})"
            )
        self._order, self._at = torch.empty(0, dtype=torch.long), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._at + self.batch > len(self._order):  # a new epoch (the remainder is dropped)
            self._order, self._at = torch.randperm(len(self.images), generator=self.gen), 0
        idx = self._order[self._at : self._at + self.batch].to(self.images.device)
        self._at += self.batch
        x = self.images[idx].float().div_(127.5).sub_(1.0)
        if self.hflip:
            flip = (torch.rand(len(idx), generator=self.gen) < 0.5).to(x.device)
            x[flip] = x[flip].flip(3)
        return x, self.labels[idx]


def _restart_if_own(run_dir: Path, checkpoints: Path) -> None:
    """Unfinished checkpoints of this trainer (it cannot resume): remove them and start again;
    any other trainer's: refuse, and lose nothing."""
    found = list_checkpoints(checkpoints)
    if not found:
        return
    if any(read_marker(d).get("trainer") != TRAINER for _, d in found):
        raise ConfigError(
            f"{run_dir} holds checkpoints of the distributed trainer; resume it with it "
            "(`ganforge study` without --trainer single) or choose another --out"
        )
    shutil.rmtree(checkpoints)


def train_single(cfg: GanforgeConfig, device: str = "cpu", progress: bool = False) -> Path:
    """Train `cfg` to `cfg.train.max_steps` in this process; returns the run folder."""
    from tqdm import tqdm

    from ganforge.cluster.launch import prepare_run
    from ganforge.data.memory import load_real

    prepared = prepare_run(cfg)
    cfg, run = prepared.config, prepared.run
    if run.store is not None:
        raise ConfigError("the single-process trainer writes local run folders only")
    _restart_if_own(run.path, run.checkpoints)
    run.metrics_path.unlink(missing_ok=True)
    dev = torch.device(device)
    spec = get_variant(cfg.model.variant)
    torch.manual_seed(cfg.train.seed)
    g = spec.build_generator(cfg.model).to(dev)
    d = spec.build_discriminator(cfg.model).to(dev)
    ema = GeneratorEMA(
        g,
        cfg.model.ema_decay,
        half_life_images=cfg.model.ema_kimg * 1000 if cfg.model.ema_kimg else None,
        rampup=cfg.model.ema_rampup,
        batch=cfg.train.micro_batch,
    )
    ema.module.to(dev)
    opt_g = build_optimizer(g.parameters(), cfg.optim_g, cfg.train, 1)
    opt_d = build_optimizer(d.parameters(), cfg.optim_d, cfg.train, 1)
    regs = spec.build_regularisers(cfg.loss, cfg.model)
    noise = NoiseSource(cfg.train.seed, cfg.model.z_dim, g.num_classes, cfg.train.micro_batch, 0, 1)
    real = load_real(cfg.data.urls, cfg.data.split)
    batches = RealBatches(
        real.images.to(dev),
        real.labels.to(dev),
        cfg.train.micro_batch,
        cfg.data.hflip,
        torch.Generator().manual_seed(cfg.train.seed + 1),
    )
    bf16 = cfg.train.precision == "bf16" and dev.type == "cuda"
    cond = spec.conditional
    clip = cfg.train.grad_clip
    step_fn = _Step(g, d, ema, opt_g, opt_d, regs, spec.loss, noise, dev, cond, bf16, clip)
    n_critic, images_per_step = cfg.loss.n_critic, cfg.loss.n_critic * cfg.train.micro_batch
    every = cfg.train.checkpoint_every
    t_window, sums, count = time.perf_counter(), {"loss_d": 0.0, "loss_g": 0.0}, 0
    bar = tqdm(total=cfg.train.max_steps, desc=run.path.name, disable=not progress)
    with run.metrics_path.open("a") as log, bar:
        for step in range(1, cfg.train.max_steps + 1):
            for _ in range(n_critic):
                sums["loss_d"] += step_fn.critic(*batches.next())
            sums["loss_g"] += step_fn.generator()
            count += 1
            bar.update()
            final = step == cfg.train.max_steps
            if step % cfg.train.log_every and step % every and not final:
                continue
            seconds = time.perf_counter() - t_window
            line = {
                "time": time.time(),
                "step": step,
                "images_seen": step * images_per_step,
                "loss_d": float(sums["loss_d"]) / (count * n_critic),
                "loss_g": float(sums["loss_g"]) / count,
                "images_per_s": count * images_per_step / max(seconds, 1e-9),
                "step_time_s": seconds / count,
                "trainer": TRAINER,
            }
            log.write(json.dumps(line) + "\n")
            log.flush()
            t_window, sums, count = time.perf_counter(), {"loss_d": 0.0, "loss_g": 0.0}, 0
            if step % every == 0 or final:
                write_weights_checkpoint(
                    run.checkpoint(step).path,
                    cfg,
                    g,
                    ema.module,
                    d,
                    step,
                    step * images_per_step,
                    prepared.classes,
                    {"world_size": 1, "trainer": TRAINER, "device": str(dev)},
                )
    return run.path


class _Step:
    """One critic step and one generator step, as `GANEngines` takes them, on plain modules."""

    def __init__(
        self, g, d, ema, opt_g, opt_d, regs, loss, noise, device, conditional, bf16, grad_clip
    ):
        self.g, self.d, self.ema, self.opt_g, self.opt_d = g, d, ema, opt_g, opt_d
        self.regs, self.loss, self.noise, self.device = regs, loss, noise, device
        self.conditional, self.critic_steps, self.grad_clip = conditional, 0, grad_clip
        self.autocast = torch.autocast(device.type, torch.bfloat16, enabled=bf16)

    def critic(self, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        y_real = labels if self.conditional else None
        z = self.noise.draw(self.device)
        y_fake = z.labels if self.conditional else None
        with self.autocast:
            with torch.no_grad():
                fake = self.g(z.z, y_fake)
            loss = self.loss.d_loss(self.d(real, y_real).float(), self.d(fake, y_fake).float())
        batch = CriticBatch(lambda x: self.d(x, y_real).float(), real, fake.float(), z.eps)
        for reg in self.regs:  # lazy regularisation: every k-th step, weighted by k
            if self.critic_steps % reg.every == 0:
                out = reg.penalty(batch, reg.weight * reg.every)
                if out is not None:
                    loss = loss + out.value
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.d)
        self.opt_d.step()
        for reg in self.regs:
            reg.after_step(self.d)
        self.critic_steps += 1
        return loss.detach()

    def _clip(self, module: torch.nn.Module) -> None:
        if self.grad_clip > 0:  # DeepSpeed's `gradient_clipping`: the global norm, per engine
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)

    def generator(self) -> torch.Tensor:
        z = self.noise.draw(self.device)
        y = z.labels if self.conditional else None
        self.d.requires_grad_(False)
        try:
            with self.autocast:
                loss = self.loss.g_loss(self.d(self.g(z.z, y), y).float())
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self._clip(self.g)
            self.opt_g.step()
        finally:
            self.d.requires_grad_(True)
        self.ema.update(self.g)
        return loss.detach()

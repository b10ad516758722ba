"""The per-worker GAN state: two DeepSpeed engines (G and D), the generator EMA, the steps.

Gradient isolation (DeepSpeed issues 399/4923): the generator step computes D's scores through
D's raw *module* with D's parameters frozen, never through `engine_d` — a forward through D's
engine followed by `engine_g.backward` trips D's engine hooks, and unfrozen D parameters would
collect gradients that leak into D's next step.

What is trained comes from the variant's `VariantSpec` (`ganforge.models`): its G/D builders, its
loss object and its regularisers. Nothing here names a variant, a loss kind or a regulariser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ganforge.cluster.deepspeed_config import build_optimizer, engine_config
from ganforge.cluster.ema import GeneratorEMA
from ganforge.cluster.noise import NoiseSource
from ganforge.cluster.safe_state import capture_rng, load_deepspeed_weights_only, restore_rng
from ganforge.cluster.sync_bn import convert_batchnorm
from ganforge.config import GanforgeConfig
from ganforge.models import get_variant
from ganforge.models.regularisers import CriticBatch

log = logging.getLogger("ganforge.train")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class CriticStats:
    """Detached 0-d tensors: converting them to floats (a device sync) waits for log steps."""

    loss_d: torch.Tensor
    gp: torch.Tensor | None
    """Sum of the regularisers' penalties added this step (None: none was due)."""
    grad_norm: torch.Tensor | None
    """Mean input-gradient norm a penalty reported this step (None: none did)."""


def _quiet_deepspeed() -> None:
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)


def skip_shm_comm_build() -> None:
    """Tell DeepSpeed that its CPU shared-memory all-reduce op (`deepspeed_shm_comm`) is not
    available, so that setting up communication on CPU neither builds nor loads it.

    Left alone, the first CPU start on a machine JIT-compiles it (1-2 minutes on 2 cores, under a
    torch file lock that a killed build leaves behind, on which every later start then waits
    forever). Only `inference_all_reduce` (AutoTP inference) uses it: training's collectives go
    through torch.distributed (gloo), with or without it. DeepSpeed's `build_shm_op` consults this
    table of compatible ops before building, and keeps the table in its module for edits like
    this one. Measured: bench/results/first_start-cpu.json."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def init_deepspeed_comm(gpu: bool) -> None:
    """Let DeepSpeed wrap the process group Ray Train created (gloo on CPU, NCCL on GPU)."""
    import deepspeed

    if not gpu:
        skip_shm_comm_build()
    deepspeed.init_distributed(
        dist_backend="nccl" if gpu else "gloo", auto_mpi_discovery=False, dist_init_required=False
    )


class GANEngines:
    """Builds G, D, their engines and the EMA identically on every rank (same seed)."""

    def __init__(self, cfg: GanforgeConfig, device: torch.device, rank: int, world_size: int):
        import deepspeed

        _quiet_deepspeed()
        init_deepspeed_comm(cfg.cluster.gpu)
        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world_size
        self.spec = get_variant(cfg.model.variant)
        self.regularisers = self.spec.build_regularisers(cfg.loss, cfg.model)
        self.dtype = DTYPES[cfg.train.precision]
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        g = self.spec.build_generator(cfg.model)
        d = self.spec.build_discriminator(cfg.model)
        if cfg.train.sync_batchnorm and world_size > 1:
            g, d = convert_batchnorm(g, device), convert_batchnorm(d, device)
        self.ema = GeneratorEMA(
            g,
            cfg.model.ema_decay,
            half_life_images=cfg.model.ema_kimg * 1000 if cfg.model.ema_kimg else None,
            rampup=cfg.model.ema_rampup,
            batch=cfg.train.micro_batch * world_size,  # images per generator step
        )
        self.ema.module.to(device)
        opt_g = build_optimizer(g.parameters(), cfg.optim_g, cfg.train, world_size)
        opt_d = build_optimizer(d.parameters(), cfg.optim_d, cfg.train, world_size)
        ds_cfg = engine_config(cfg.train, world_size)
        self.engine_g, *_ = deepspeed.initialize(
            model=g.to(device), optimizer=opt_g, config=dict(ds_cfg), dist_init_required=False
        )
        self.engine_d, *_ = deepspeed.initialize(
            model=d.to(device), optimizer=opt_d, config=dict(ds_cfg), dist_init_required=False
        )
        for engine in (self.engine_g, self.engine_d):  # resumes read untrusted run folders
            load_deepspeed_weights_only(engine)
        self.noise = NoiseSource(
            cfg.train.seed,
            cfg.model.z_dim,
            self.g.num_classes,
            cfg.train.micro_batch,
            rank,
            world_size,
        )
        self.critic_steps = 0

    @property
    def g(self) -> nn.Module:
        return self.engine_g.module

    @property
    def d(self) -> nn.Module:
        return self.engine_d.module

    def _labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        return labels if self.spec.conditional else None

    def critic_step(self, real: torch.Tensor, labels: torch.Tensor) -> CriticStats:
        """One D/critic update on a real batch and a fresh fake batch (G frozen, no graph)."""
        real = real.to(self.device, self.dtype, non_blocking=True)
        y_real = self._labels(labels.to(self.device, non_blocking=True))
        noise = self.noise.draw(self.device)
        y_fake = self._labels(noise.labels)
        with torch.no_grad():
            fake = self.g(noise.z.to(self.dtype), y_fake)
        real_scores = self.engine_d(real, y_real).float()
        fake_scores = self.engine_d(fake, y_fake).float()
        loss = self.spec.loss.d_loss(real_scores, fake_scores)
        # Through D's module, not its engine: a penalty's inner autograd.grad would otherwise fire
        # the engine's output hooks outside engine.backward, which DeepSpeed rejects.
        batch = CriticBatch(
            lambda x: self.d(x, y_real).float(), real, fake, noise.eps.to(self.dtype)
        )
        gp, grad_norm = self._penalties(batch)
        if gp is not None:
            loss = loss + gp
            gp = gp.detach()
        self.engine_d.backward(loss)
        self.engine_d.step()
        for reg in self.regularisers:
            reg.after_step(self.d)  # e.g. weight clipping, on the weights the step just wrote
        self.critic_steps += 1
        return CriticStats(loss.detach(), gp, grad_norm)

    def _penalties(self, batch: CriticBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The sum of the penalties due on this critic step, and the last reported grad norm."""
        total = grad_norm = None
        for reg in self.regularisers:
            if self.critic_steps % reg.every:
                continue
            # Lazy regularisation: every k-th step, weighted by k (StyleGAN2's R1 schedule).
            out = reg.penalty(batch, reg.weight * reg.every)
            if out is None:
                continue
            total = out.value if total is None else total + out.value
            if out.grad_norm is not None:
                grad_norm = out.grad_norm
        return total, grad_norm

    def generator_step(self) -> torch.Tensor:
        """One G update through D's module with D's parameters frozen; then the EMA update."""
        noise = self.noise.draw(self.device)
        y_fake = self._labels(noise.labels)
        d_params = list(self.d.parameters())
        for p in d_params:
            p.requires_grad_(False)
        try:
            fake = self.engine_g(noise.z.to(self.dtype), y_fake)
            loss = self.spec.loss.g_loss(self.d(fake, y_fake).float())
            self.engine_g.backward(loss)
            self.engine_g.step()
        finally:
            for p in d_params:
                p.requires_grad_(True)
        self.ema.update(self.g)
        return loss.detach()

    def lr(self) -> tuple[float, float]:
        return (
            self.engine_g.optimizer.param_groups[0]["lr"],
            self.engine_d.optimizer.param_groups[0]["lr"],
        )

    # -- checkpoint state ------------------------------------------------------------------
    def save_engines(self, ds_dir: str) -> None:
        """Collective: every rank writes its part (ZeRO partitions) of both engines."""
        self.engine_g.save_checkpoint(ds_dir, tag="generator", save_latest=False)
        self.engine_d.save_checkpoint(ds_dir, tag="discriminator", save_latest=False)

    def load_engines(self, ds_dir: str) -> None:
        for engine, tag in ((self.engine_g, "generator"), (self.engine_d, "discriminator")):
            path, _ = engine.load_checkpoint(
                ds_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load tag {tag!r} from {ds_dir}")

    def rank_state(self) -> dict:
        """This rank's position: tensors and plain numbers only (loads with weights_only)."""
        return {
            "noise": self.noise.state_dict(),
            "critic_steps": self.critic_steps,
            "ema_updates": self.ema.updates,  # the EMA weights themselves live in weights.pt
            "rng": capture_rng(),
        }

    def load_rank_state(self, state: dict) -> None:
        self.noise.load_state_dict(state["noise"])
        self.critic_steps = int(state["critic_steps"])
        self.ema.updates = int(state["ema_updates"])
        restore_rng(state["rng"])

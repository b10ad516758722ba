"""Exponential moving average of the generator, kept in fp32 for sampling and serving.

Hand-written (12 lines) rather than `torch.optim.swa_utils.AveragedModel`: under bf16/fp16
DeepSpeed engines the live weights are half precision, and AveragedModel lerps in the live
dtype; an EMA with decay 0.999 needs fp32 to register updates at all.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class GeneratorEMA:
    """`decay` per update; or, with `half_life_images`, StyleGAN2's EMA measured in images:
    decay = 0.5 ** (batch / half_life) for `batch` images per update, the half-life capped at
    `rampup` x the images seen before this update (StyleGAN2-ADA's ema_kimg / ema_rampup)."""

    def __init__(
        self,
        generator: nn.Module,
        decay: float,
        half_life_images: float | None = None,
        rampup: float | None = None,
        batch: int = 1,
    ):
        self.module = copy.deepcopy(generator).float().eval().requires_grad_(False)
        self.decay, self.half_life, self.rampup, self.batch = decay, half_life_images, rampup, batch
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update applies (a function of `updates`: exact on resume)."""
        if self.half_life is None:
            return self.decay
        half_life = self.half_life
        if self.rampup is not None:
            half_life = min(half_life, self.updates * self.batch * self.rampup)
        return 0.5 ** (self.batch / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, live: nn.Module) -> None:
        weight = 1.0 if self.updates == 0 else 1.0 - self.current_decay()  # first update copies
        for e, p in zip(self.module.parameters(), live.parameters(), strict=True):
            e.lerp_(p.detach().float(), weight)
        for e, b in zip(self.module.buffers(), live.buffers(), strict=True):
            e.copy_(b)  # BatchNorm statistics, StyleGAN2's mean w: follow the live generator
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

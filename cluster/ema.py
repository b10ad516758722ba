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
    def __init__(self, generator: nn.Module, decay: float):
        self.module = copy.deepcopy(generator).float().eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, live: nn.Module) -> None:
        weight = 1.0 if self.updates == 0 else 1.0 - self.decay  # first update copies
        for e, p in zip(self.module.parameters(), live.parameters(), strict=True):
            e.lerp_(p.detach().float(), weight)
        for e, b in zip(self.module.buffers(), live.buffers(), strict=True):
            e.copy_(b)  # BatchNorm running statistics follow the live generator
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

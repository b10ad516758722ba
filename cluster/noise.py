"""Latent noise, fake-sample labels and penalty mixing weights, drawn for the *global* batch.

Every rank draws the whole global batch from the same seeded generator and keeps its own slice.
That costs a few kB of random numbers per step and buys two properties: an N-rank run sees the
same noise as a 1-rank run with N times the micro-batch, and a resumed run continues the exact
stream (the generator state is checkpointed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NoiseBatch:
    z: torch.Tensor
    labels: torch.Tensor | None
    eps: torch.Tensor


class NoiseSource:
    def __init__(
        self, seed: int, z_dim: int, num_classes: int, micro_batch: int, rank: int, world_size: int
    ):
        self.gen = torch.Generator().manual_seed(seed + 7919)
        self.z_dim, self.num_classes = z_dim, num_classes
        self.micro, self.rank, self.world = micro_batch, rank, world_size

    def _slice(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.rank * self.micro : (self.rank + 1) * self.micro]

    def draw(self, device: torch.device) -> NoiseBatch:
        n = self.micro * self.world
        z = self._slice(torch.randn(n, self.z_dim, generator=self.gen))
        eps = self._slice(torch.rand(n, generator=self.gen))
        labels = None
        if self.num_classes > 0:
            labels = self._slice(torch.randint(0, self.num_classes, (n,), generator=self.gen))
            labels = labels.to(device)
        return NoiseBatch(z.to(device), labels, eps.to(device))

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


def fixed_sample_noise(z_dim: int, num_classes: int, per_class: int = 10, seed: int = 1234):
    """The fixed (z, labels) of the sample grids: one row per class (up to 10 rows)."""
    g = torch.Generator().manual_seed(seed)
    if num_classes > 0:
        rows = min(num_classes, 10)
        labels = torch.arange(rows).repeat_interleave(per_class)
    else:
        rows, labels = 8, None
    z = torch.randn(rows * per_class, z_dim, generator=g)
    return z, labels, per_class

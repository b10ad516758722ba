"""Small layers whose compute goes through `ganforge.kernels` (so the backend is a switch)."""

from __future__ import annotations

import torch
from torch import nn

from ganforge import kernels


class KernelConvTranspose2d(nn.ConvTranspose2d):
    """`nn.ConvTranspose2d` computed by `ganforge.kernels.conv_transpose2d`.

    Same parameters and state-dict keys as the torch layer; `activation` is fused into the kernel's
    epilogue when the Triton backend runs. `backend` is "auto" | "torch" | "triton".
    """

    def __init__(self, *args, activation: str | None = None, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.activation = activation
        self.backend = backend

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        return kernels.conv_transpose2d(
            x,
            self.weight,
            self.bias,
            stride=self.stride[0],
            padding=self.padding[0],
            output_padding=self.output_padding[0],
            activation=self.activation,
            backend=self.backend,
        )


def make_norm(kind: str, channels: int) -> nn.Module:
    """batch = BatchNorm2d (per-rank statistics); layer = LayerNorm over (C, H, W) via
    GroupNorm(1, C), which keeps per-sample independence (needed by the gradient penalty)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: expected batch, layer or none")


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

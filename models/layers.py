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


class FP32BatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` computed in fp32 with fp32 running statistics, whatever the dtype of the
    input and of the affine parameters (for fp32 the same call as the torch layer).

    Why: DeepSpeed (0.19) casts a module's parameters to bf16/fp16 and leaves its buffers in fp32,
    and torch's batch_norm refuses bf16 weights next to fp32 statistics ("expected scalar type
    BFloat16 but found Float"); fp32 statistics also keep momentum updates from rounding away.
    Same parameters and state-dict keys as `nn.BatchNorm2d`; the buffers must stay fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        momentum = self.momentum if self.momentum is not None else 0.0
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as torch does
                momentum = 1.0 / float(self.num_batches_tracked)
        use_stats = not self.training or self.track_running_stats
        out = nn.functional.batch_norm(
            x.float(),
            self.running_mean if use_stats else None,
            self.running_var if use_stats else None,
            None if self.weight is None else self.weight.float(),
            None if self.bias is None else self.bias.float(),
            self.training or (self.running_mean is None and self.running_var is None),
            momentum,
            self.eps,
        )
        return out.to(x.dtype)


class FP32GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` computed in fp32 whatever the input dtype (the same for fp32 inputs).

    Why: a penalty's create_graph backward runs GroupNorm's double-differentiable backward in the
    input dtype, whose 1/std^3 terms overflow fp16 once the input's std falls below ~0.05
    (DCGAN-initialised critics start there): the penalty is NaN before any loss scaling. Same
    parameters and state-dict keys as `nn.GroupNorm` (fairseq's Fp32GroupNorm, for the same
    reason)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        out = nn.functional.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        return out.to(x.dtype)


def make_norm(kind: str, channels: int) -> nn.Module:
    """batch = BatchNorm2d (per-rank statistics); layer = LayerNorm over (C, H, W) via
    GroupNorm(1, C), which keeps per-sample independence (needed by the gradient penalty). Both
    compute in fp32 under bf16/fp16 training (`FP32BatchNorm2d`, `FP32GroupNorm`)."""
    if kind == "batch":
        return FP32BatchNorm2d(channels)
    if kind == "layer":
        return FP32GroupNorm(1, channels)
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

"""Plain PyTorch references for every ganforge kernel.

Tests and benchmarks import these to check and time the Triton versions; on CPU (and whenever
`kernels: torch`) the models run these directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "relu", "tanh", "leaky_relu")


def apply_activation(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation == "relu":
        return F.relu(y)
    if activation == "tanh":
        return torch.tanh(y)
    if activation == "leaky_relu":
        return F.leaky_relu(y, 0.2)
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def conv_transpose2d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    activation: str | None = None,
) -> torch.Tensor:
    """Transposed convolution + optional activation.

    x: [B, C_in, H, W]; weight: [C_in, C_out, K, K] (PyTorch layout); bias: [C_out] or None.
    Returns [B, C_out, (H-1)*stride - 2*padding + K + output_padding, same for W].
    """
    y = F.conv_transpose2d(
        x, weight, bias, stride=stride, padding=padding, output_padding=output_padding
    )
    return apply_activation(y, activation)


def interpolate_ref(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_hat = eps * real + (1 - eps) * fake with one eps per sample; eps: [B]."""
    e = eps.view(-1, *([1] * (real.dim() - 1))).to(real.dtype)
    return e * real + (1 - e) * fake


def penalty_from_grad_ref(grad: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """lambda * mean_b (||g_b||_2 - 1)^2, and the per-sample norms (for logging).

    grad: [B, ...] gradient of the critic output w.r.t. x_hat. Norms accumulate in fp32.
    """
    norms = grad.flatten(1).float().norm(2, dim=1)
    return lam * ((norms - 1.0) ** 2).mean(), norms

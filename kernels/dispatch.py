"""Backend selection: the one place that decides between Triton and the PyTorch reference."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ganforge.kernels import reference as ref
from ganforge.kernels.utils import check_triton_device

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" to a concrete backend for tensors on `device`.

    "triton" on a non-CUDA device is refused with a RuntimeError unless TRITON_INTERPRET=1 (the
    Triton interpreter, used by the CPU tests): use "auto" or "torch" there.
    """
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("kernels: triton requested but triton is not installed")
        check_triton_device(device)
    return backend


def conv_transpose2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    activation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Transposed convolution + optional fused activation (see `reference.conv_transpose2d_ref`)."""
    if resolve_backend(backend, x.device) == "triton":
        from ganforge.kernels.conv_transpose import conv_transpose2d_triton

        return conv_transpose2d_triton(x, weight, bias, stride, padding, output_padding, activation)
    return ref.conv_transpose2d_ref(x, weight, bias, stride, padding, output_padding, activation)


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    lam: float,
    eps: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """WGAN-GP penalty lambda * mean((||grad_x critic(x_hat)|| - 1)^2).

    critic: maps x_hat [B, C, H, W] to scores [B] (labels already bound for conditional critics).
    real, fake: [B, C, H, W]; fake should be detached. eps: [B] uniform in [0, 1] (drawn if None).
    Returns (penalty scalar with a graph for the critic's parameters, mean gradient norm detached).
    """
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device)
    # One flow for both backends; only the two fused pieces (interpolation, penalty from the
    # gradient) are swapped. The critic and its create_graph backward stay in PyTorch.
    interpolate, penalty_from_grad = ref.interpolate_ref, ref.penalty_from_grad_ref
    if resolve_backend(backend, real.device) == "triton":
        from ganforge.kernels.penalty import interpolate_triton, penalty_from_grad_triton

        interpolate, penalty_from_grad = interpolate_triton, penalty_from_grad_triton
    x_hat = interpolate(real, fake.detach(), eps).requires_grad_(True)
    scores = critic(x_hat)
    # Only x_hat's gradient is requested, so autograd prunes the weight-gradient branches of this
    # inner backward; create_graph=True keeps the graph from the gradient back to the critic's
    # parameters, which the outer backward of the penalty walks.
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    penalty, norms = penalty_from_grad(grad, lam)
    return penalty, norms.mean().detach()

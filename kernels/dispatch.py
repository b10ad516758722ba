"""Backend selection: the one place that decides between Triton and the PyTorch reference."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ganforge.kernels import autotune
from ganforge.kernels import reference as ref
from ganforge.kernels.modulated_conv import modulated_conv2d_torch
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

    "auto" gives "triton" where Triton may run (CUDA with triton installed), and the ops that
    measure (`_select`) then choose per case; elsewhere "torch". "triton" on a non-CUDA device is
    refused with a RuntimeError unless TRITON_INTERPRET=1 (the Triton interpreter, used by the
    CPU tests): use "auto" or "torch" there.
    """
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if triton_available() and autotune.measures_on(device) else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("kernels: triton requested but triton is not installed")
        check_triton_device(device)
    return backend


def _select(op: str, backend: str, inputs: dict, run_torch, run_triton, params=None) -> str:
    """The backend for one call: "torch"/"triton" as forced; "auto" where Triton may run is
    measured per case on the call's inputs (`autotune.choose`: checked, timed, cached)."""
    device = next(t.device for t in inputs.values() if t is not None)
    use = resolve_backend(backend, device)
    if backend == "auto" and use == "triton":
        return autotune.choose(op, inputs, run_torch, run_triton, params)
    return use


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
    conf = {
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "activation": activation,
    }

    def run_torch(x, weight, bias):
        return ref.conv_transpose2d_ref(x, weight, bias, **conf)

    def run_triton(x, weight, bias):
        from ganforge.kernels.conv_transpose import conv_transpose2d_triton

        return conv_transpose2d_triton(x, weight, bias, **conf)

    inputs = {"x": x, "weight": weight, "bias": bias}
    use = _select("conv_transpose2d", backend, inputs, run_torch, run_triton, conf)
    return (run_triton if use == "triton" else run_torch)(x, weight, bias)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    up: int = 1,
    padding: int | None = None,
    eps: float = 1e-8,
    backend: str = "auto",
) -> torch.Tensor:
    """StyleGAN2 modulated (and demodulated) convolution, up=1 or a stride-2 transposed form.

    x [B, C_in, H, W], weight [C_out, C_in, K, K] (equalised-lr gain already applied), styles
    [B, C_in] -> [B, C_out, H*up, W*up] with the default padding K//2 (odd K). No bias, noise,
    activation or blur: those stay in the model layer. Contract: `modulated_conv.py`. The
    Triton backward is first-order only: a create_graph=True backward (StyleGAN2's path-length
    regulariser) needs `backend="torch"`.
    """
    conf = {"demodulate": demodulate, "up": up, "padding": padding, "eps": eps}

    def run_torch(x, weight, styles):
        return modulated_conv2d_torch(x, weight, styles, **conf)

    def run_triton(x, weight, styles):
        from ganforge.kernels.modulated_conv_triton import modulated_conv2d_triton

        return modulated_conv2d_triton(x, weight, styles, **conf)

    inputs = {"x": x, "weight": weight, "styles": styles}
    use = _select("modulated_conv2d", backend, inputs, run_torch, run_triton, conf)
    return (run_triton if use == "triton" else run_torch)(x, weight, styles)


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
    # gradient) are swapped, each chosen on its own under "auto". The critic and its
    # create_graph backward stay in PyTorch.
    pieces = {"torch": ref.interpolate_ref, "triton": _interpolate_triton}
    inputs = {"real": real, "fake": fake.detach(), "eps": eps}
    use = _select("gp_interpolate", backend, inputs, *pieces.values())
    x_hat = pieces[use](real, fake.detach(), eps).requires_grad_(True)
    scores = critic(x_hat)
    # Only x_hat's gradient is requested, so autograd prunes the weight-gradient branches of this
    # inner backward; create_graph=True keeps the graph from the gradient back to the critic's
    # parameters, which the outer backward of the penalty walks.
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    pieces = {
        "torch": lambda g: ref.penalty_from_grad_ref(g, lam),
        "triton": lambda g: _penalty_from_grad_triton(g, lam),
    }
    use = _select("gp_penalty", backend, {"grad": grad}, *pieces.values())
    penalty, norms = pieces[use](grad)
    return penalty, norms.mean().detach()


# Triton pieces imported on first use: importing triton's kernels costs time and needs triton.
def _interpolate_triton(real, fake, eps):
    from ganforge.kernels.penalty import interpolate_triton

    return interpolate_triton(real, fake, eps)


def _penalty_from_grad_triton(grad, lam):
    from ganforge.kernels.penalty import penalty_from_grad_triton

    return penalty_from_grad_triton(grad, lam)

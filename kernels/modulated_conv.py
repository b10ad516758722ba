"""StyleGAN2's modulated convolution: contract, argument checks and the PyTorch reference.

    modulated_conv2d(x [B, C_in, H, W], weight [C_out, C_in, K, K], styles [B, C_in],
                     demodulate=True, up=1, padding=K//2, eps=1e-8) -> y [B, C_out, H*up, W*up]

Semantics (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN", eq. 1-3):
    w'[b, o, i, kh, kw]  = weight[o, i, kh, kw] * styles[b, i]                    (modulation)
    w''[b, o, i, kh, kw] = w'[b, o, i, kh, kw] * d[b, o],
        d[b, o] = rsqrt(sum_{i, kh, kw} w'[b, o, i, kh, kw]^2 + eps)           (demodulation)
    up=1: y[b] = conv2d(x[b], w''[b], stride 1, padding P)        -> H + 2P - K + 1 (H for P=K//2)
    up=2: y[b] = conv_transpose2d(x[b], w''[b] as [C_in, C_out, K, K], stride 2, padding P,
                 output_padding 2 + 2P - K)                       -> exactly 2H (needs 2P - K + 2
                 in {0, 1}: every odd K with the default P = K//2, or P = K//2 - 1 for even K)

Decisions the callers rely on:
- No blur. StyleGAN2 low-pass filters after the stride-2 transposed convolution (a [1, 3, 3, 1]
  FIR); that filter is a fixed depthwise op with no per-sample parameters, so it stays in the
  model layer, where it can also be used by the layers that upsample without a convolution.
- The equalised-learning-rate gain (1/sqrt(C_in*K*K)) is applied by the caller to `weight`.
- No bias and no activation: the model adds noise, bias and the activation after the op.
- The transposed form uses `weight` unflipped (weight[o, i, kh, kw] is the transposed conv's
  w[i, o, kh, kw]); flipping is only a re-parametrisation of a learned weight.

Three implementations of the same maths:
- `modulated_conv2d_ref`, the definition: it materialises the per-sample weight
  [B, C_out, C_in, K, K] and runs one grouped convolution (groups=B), as the official code does
  when `fused_modconv` is on. The tests hold the others to it.
- `modulated_conv2d_torch`, what `backend="torch"` runs: x * styles, one convolution with the
  shared weight, then * d (the official training path, `fused_modconv=False`). Same result up to
  rounding, but one dense conv instead of B small ones: a whole StyleGAN2 training step at width
  64 takes about 2.5x less CPU time on one thread (`bench/results/model_cost-fused-modconv-cpu.json`
  against `model_cost-cpu.json`).
- The Triton kernels (`modulated_conv_triton.py`) never build the per-sample weight either: the
  styles scale the input channels and d the output tile inside the implicit GEMM.
The last two use the identity
    d[b, o] = rsqrt(sum_i styles[b, i]^2 * sum_{kh, kw} weight[o, i, kh, kw]^2 + eps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resolve_padding(k: int, up: int, padding: int | None) -> tuple[int, int]:
    """(padding, output_padding) for kernel size k; output_padding is 0 unless up=2."""
    p = k // 2 if padding is None else int(padding)
    if p < 0:
        raise ValueError(f"modulated_conv2d: padding must be >= 0, got {p}")
    if up == 1:
        return p, 0
    output_padding = 2 + 2 * p - k
    if output_padding not in (0, 1):
        raise ValueError(
            f"modulated_conv2d: up=2 gives an output of exactly 2*H only when 2*padding - K + 2 "
            f"is 0 or 1; got K={k}, padding={p} (use padding={(k - 1) // 2})"
        )
    return p, output_padding


# The reference also takes fp64 (gradcheck); the Triton kernels take the first three.
REFERENCE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_args(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    up: int,
    padding: int | None,
    dtypes: tuple[torch.dtype, ...] = REFERENCE_DTYPES,
) -> tuple[int, int]:
    """Validate the shapes, dtypes and geometry; returns (padding, output_padding)."""
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(
            f"modulated_conv2d: expected x [B, C_in, H, W] and a square weight "
            f"[C_out, C_in, K, K]; got x {tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"modulated_conv2d: weight has {weight.shape[1]} input channels, x has {x.shape[1]}"
        )
    if styles.shape != (x.shape[0], x.shape[1]):
        raise ValueError(
            f"modulated_conv2d: styles must be [B={x.shape[0]}, C_in={x.shape[1]}], got "
            f"{tuple(styles.shape)}"
        )
    if up not in (1, 2):
        raise ValueError(f"modulated_conv2d: up must be 1 or 2, got {up}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"modulated_conv2d: x must be one of {names}; got {x.dtype}")
    if not x.dtype == weight.dtype == styles.dtype:
        raise TypeError(
            f"modulated_conv2d: x, weight and styles must share a dtype; got {x.dtype}, "
            f"{weight.dtype}, {styles.dtype}"
        )
    p, output_padding = resolve_padding(weight.shape[2], up, padding)
    if up == 1 and min(x.shape[2:]) + 2 * p < weight.shape[2]:
        raise ValueError(
            f"modulated_conv2d: input {tuple(x.shape[2:])} with padding {p} is smaller than the "
            f"{weight.shape[2]}x{weight.shape[2]} kernel"
        )
    return p, output_padding


def modulated_conv2d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    padding: int | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Reference: the per-sample weight and one grouped (transposed) convolution, in x's dtype.

    x [B, C_in, H, W], weight [C_out, C_in, K, K], styles [B, C_in] -> [B, C_out, H_out, W_out]
    (see the module docstring for the geometry).
    """
    p, output_padding = check_args(x, weight, styles, up, padding)
    batch, c_in, h, w = x.shape
    c_out, k = weight.shape[0], weight.shape[2]
    wb = weight.unsqueeze(0) * styles[:, None, :, None, None]  # [B, C_out, C_in, K, K]
    if demodulate:
        wb = wb * torch.rsqrt(wb.square().sum(dim=(2, 3, 4), keepdim=True) + eps)
    xg = x.reshape(1, batch * c_in, h, w)
    if up == 1:
        y = F.conv2d(xg, wb.reshape(batch * c_out, c_in, k, k), padding=p, groups=batch)
    else:
        # conv_transpose2d's grouped weight is [groups * C_in, C_out, K, K].
        wt = wb.transpose(1, 2).reshape(batch * c_in, c_out, k, k)
        y = F.conv_transpose2d(
            xg, wt, stride=2, padding=p, output_padding=output_padding, groups=batch
        )
    return y.reshape(batch, c_out, *y.shape[2:])


def demodulation(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """d [B, C_out] = rsqrt(styles^2 @ (sum_{kh,kw} weight^2)^T + eps), in fp32 (fp64 inputs:
    fp64, so the torch path can be checked against the reference at fp64 precision).

    Equal to the demodulation of the per-sample weight without building it: O(B*C_out*C_in).
    The Triton path uses it as is (torch ops on per-sample quantities, no kernel needed).
    """
    dtype = torch.promote_types(weight.dtype, torch.float32)
    wsq = weight.to(dtype).square().sum(dim=(2, 3))  # [C_out, C_in]
    return torch.rsqrt(styles.to(dtype).square() @ wsq.t() + eps)


def modulated_conv2d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    padding: int | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """The PyTorch backend: modulate the activations, not the weight (same arguments and result
    as `modulated_conv2d_ref`, up to rounding).

    conv(x, weight * s) = conv(x * s, weight) because the style scales input channels, and the
    demodulation scales output channels, so it can follow the convolution. Autograd's own
    derivatives, first and second order (the path-length regulariser's double backward).
    """
    p, output_padding = check_args(x, weight, styles, up, padding)
    xs = x * styles[:, :, None, None]
    if up == 1:
        y = F.conv2d(xs, weight, padding=p)
    else:
        # conv_transpose2d's weight is [C_in, C_out, K, K]: the contract's unflipped weight^T.
        y = F.conv_transpose2d(
            xs, weight.transpose(0, 1), stride=2, padding=p, output_padding=output_padding
        )
    if demodulate:
        y = y * demodulation(weight, styles, eps).to(y.dtype)[:, :, None, None]
    return y

"""Transposed 2-D convolution in Triton: forward with a fused bias/activation epilogue, backward.

Layout: NCHW activations and PyTorch's ConvTranspose2d weight layout [C_in, C_out, K, K], so the
layer is a drop-in for `nn.ConvTranspose2d` and shares its state-dict. NCHW was kept (rather than
NHWC, which suits implicit GEMM better on tensor cores) because every other layer of the
generator (BatchNorm, the critic's Conv2d) is NCHW: a layout change per layer would cost a
transpose each way.

Semantics are those of `reference.conv_transpose2d_ref`:
    y[b, co, oh, ow] = act(bias[co] + sum_{ci, kh, kw} x[b, ci, ih, iw] * w[ci, co, kh, kw])
    where oh = ih * S - P + kh and ow = iw * S - P + kw,
    H_out = (H - 1) * S - 2P + K + output_padding.

Forward: the phase (sub-pixel) decomposition. Output rows with (oh + P) % S == rh receive only
the taps kh = rh + S*t, from input rows ih = (oh + P - kh) / S; so each of the S*S phases is a
dense implicit GEMM over the un-dilated input, every output element is written exactly once (no
atomics, no multiplications by the zeros a dilated input would contain). With S = 1 the single
phase is the ordinary gather-style implicit GEMM, so one kernel covers every stride, padding,
output padding and kernel size. The 4x4-from-1x1 first layer is a plain GEMM (`gemm.py`).
The backward kernels (activation derivative, grad-input, grad-weight) are in
`conv_transpose_backward.py`; this module holds the forward and the autograd Function.

All kernels accumulate in fp32 (tl.dot with an fp32 accumulator) for fp32/fp16/bf16 inputs and
write results in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ganforge.kernels.conv_transpose_backward import activation_backward, grad_input, grad_weight
from ganforge.kernels.gemm import ACTIVATION_CODES, activation_epilogue, gemm, is_gemm_layer
from ganforge.kernels.launch import KernelLaunch
from ganforge.kernels.utils import (
    DOT_PRECISION,
    check_triton_device,
    contiguous,
    dot_block,
    dot_stages,
    dot_warps,
    first_order_only,
    gemm_caps,
)


@triton.jit
def phase_origin(phase, S: tl.constexpr, P: tl.constexpr):
    """(rh, rw, oh0, ow0, qh0, qw0) of output phase `phase` in [0, S*S): its tap residues (taps
    kh = rh + S*t), its first output row/col, and the input row/col its tap 0 reads there.
    Shared with the modulated convolution's up=2 form."""
    rh = phase // S
    rw = phase % S
    oh0 = (rh + S - P % S) % S
    ow0 = (rw + S - P % S) % S
    qh0 = (oh0 + P - rh) // S
    qw0 = (ow0 + P - rw) // S
    return rh, rw, oh0, ow0, qh0, qw0


@triton.jit
def _conv_transpose_phase_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    B,
    C_IN,
    H,
    W,
    C_OUT,
    H_OUT,
    W_OUT,
    HP,
    WP,
    S: tl.constexpr,
    P: tl.constexpr,
    K: tl.constexpr,
    TAPS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One output phase (program axis 2) x a tile of its positions x a tile of C_out.

    GEMM view: rows m = (b, jh, jw) with oh = oh0 + S*jh; columns co; reduction over
    (tap th, tap tw, ci). HP, WP = cdiv(H_OUT, S): the largest phase extent (others mask).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    rh, rw, oh0, ow0, qh0, qw0 = phase_origin(phase, S, P)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    b = offs_m // (HP * WP)
    jh = (offs_m // WP) % HP
    jw = offs_m % WP
    oh = oh0 + S * jh
    ow = ow0 + S * jw
    m_ok = (b < B) & (oh < H_OUT) & (ow < W_OUT)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_OUT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for th in range(TAPS):
        kh = rh + S * th
        ih = qh0 + jh - th
        for tw in range(TAPS):
            kw = rw + S * tw
            iw = qw0 + jw - tw
            # Phases with fewer than TAPS taps (K % S != 0) skip the missing ones.
            if (kh < K) & (kw < K):
                x_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x_row = b * (C_IN * H * W) + ih * W + iw
                w_col = offs_n * (K * K) + kh * K + kw
                for c0 in range(0, C_IN, BLOCK_K):
                    offs_k = c0 + tl.arange(0, BLOCK_K)
                    k_ok = offs_k < C_IN
                    xt = tl.load(
                        x_ptr + x_row[:, None] + offs_k[None, :] * (H * W),
                        mask=x_ok[:, None] & k_ok[None, :],
                        other=0.0,
                    )
                    wt = tl.load(
                        w_ptr + offs_k[:, None] * (C_OUT * K * K) + w_col[None, :],
                        mask=k_ok[:, None] & n_ok[None, :],
                        other=0.0,
                    )
                    acc = tl.dot(xt, wt, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = activation_epilogue(acc, ACTIVATION)
    y_off = (b * (C_OUT * H_OUT * W_OUT) + oh * W_OUT + ow)[:, None] + offs_n[None, :] * (
        H_OUT * W_OUT
    )
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    output_padding: int,
    activation: int,
) -> torch.Tensor:
    """Launch the forward kernel: x [B, C_in, H, W], weight [C_in, C_out, K, K] -> y (x.dtype)."""
    batch, c_in, h, w = x.shape
    c_out, k = weight.shape[1], weight.shape[2]
    h_out = (h - 1) * stride - 2 * padding + k + output_padding
    w_out = (w - 1) * stride - 2 * padding + k + output_padding
    y = x.new_empty(batch, c_out, h_out, w_out)
    if y.numel() == 0:
        return y
    if is_gemm_layer(x.shape, stride, padding, output_padding):
        flat_w = weight.view(c_in, c_out * k * k)
        return gemm(x.view(batch, c_in), flat_w, y.view(batch, -1), bias, k * k, activation).view(
            y.shape
        )
    hp, wp = triton.cdiv(h_out, stride), triton.cdiv(w_out, stride)
    cap_m, cap_n, cap_k = gemm_caps(x.dtype)
    block_m = dot_block(batch * hp * wp, cap_m)
    block_n, block_k = dot_block(c_out, cap_n), dot_block(c_in, cap_k)
    KernelLaunch(
        _conv_transpose_phase_kernel,
        (triton.cdiv(batch * hp * wp, block_m), triton.cdiv(c_out, block_n), stride * stride),
        (
            x,
            weight,
            y if bias is None else bias,  # never read without HAS_BIAS
            y,
            batch,
            c_in,
            h,
            w,
            c_out,
            h_out,
            w_out,
            hp,
            wp,
        ),
        dict(
            S=stride,
            P=padding,
            K=k,
            TAPS=triton.cdiv(k, stride),
            HAS_BIAS=bias is not None,
            ACTIVATION=activation,
            DOT_PRECISION=DOT_PRECISION,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
        ),
        num_warps=dot_warps(block_m, block_n),
        num_stages=dot_stages(x.dtype),
    ).run()
    return y


class ConvTranspose2dFunction(torch.autograd.Function):
    """Autograd wiring: forward kernel; backward = activation derivative, grad-input, grad-weight
    and grad-bias kernels. Once differentiable: any create_graph=True backward through it raises
    (`first_order_only`). The generator never needs one: the critic's penalty differentiates the
    critic only, the fake image comes detached."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, activation):
        x, weight, bias = contiguous(x, weight, bias)
        y = _forward(x, weight, bias, stride, padding, output_padding, activation)
        # The activation derivative is computed from y itself: no pre-activation tensor kept.
        ctx.save_for_backward(x, weight, y if activation else None)
        ctx.conf = (stride, padding, activation)
        return y

    @staticmethod
    @first_order_only
    def backward(ctx, grad_y):
        x, weight, y = ctx.saved_tensors
        stride, padding, activation = ctx.conf
        grad_y = grad_y.contiguous()
        dy = activation_backward(grad_y, y, activation) if activation else grad_y
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_input(dy, weight, x.shape, stride, padding) if need_x else None
        grad_w = grad_weight(x, dy, weight, stride, padding) if need_w else None
        # Bias: dL/db[co] = sum_{b, oh, ow} dy[b, co, oh, ow], summed in fp32.
        grad_b = dy.sum((0, 2, 3), dtype=torch.float32).to(dy.dtype) if need_b else None
        return grad_x, grad_w, grad_b, None, None, None, None


def _check_args(x, weight, bias, stride, padding, output_padding) -> None:
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(
            f"expected x [B, C_in, H, W] and a square weight [C_in, C_out, K, K]; got x "
            f"{tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[0]} input channels, x has {x.shape[1]}")
    if bias is not None and bias.shape != (weight.shape[1],):
        raise ValueError(f"bias must be [C_out={weight.shape[1]}], got {tuple(bias.shape)}")
    if stride < 1 or padding < 0 or not 0 <= output_padding < stride:
        raise ValueError(
            f"need stride >= 1, padding >= 0 and 0 <= output_padding < stride; got "
            f"stride={stride}, padding={padding}, output_padding={output_padding}"
        )
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"x must be fp32, fp16 or bf16, got {x.dtype}")
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"x, weight and bias must share a dtype; got {x.dtype}, {weight.dtype}")
    k = weight.shape[2]
    h_out = (max(x.shape[2:]) - 1) * stride + k + output_padding
    # The kernels index with int32 offsets.
    if max(x.numel(), weight.shape[1] * x.shape[0] * h_out * h_out) >= 2**31:
        raise ValueError("tensor too large for the int32 indexing of the Triton kernels")


def conv_transpose2d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    activation: str | None = None,
) -> torch.Tensor:
    """Triton transposed convolution + fused bias/activation, same contract as
    `reference.conv_transpose2d_ref`.

    x: [B, C_in, H, W]; weight: [C_in, C_out, K, K]; bias: [C_out] or None; one dtype among
    fp32/fp16/bf16, on CUDA (or CPU under TRITON_INTERPRET=1). Accumulates in fp32. Returns
    [B, C_out, (H-1)*stride - 2*padding + K + output_padding, same for W] in x's dtype.
    activation: None | "relu" | "tanh" | "leaky_relu" (slope 0.2).
    """
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATION_CODES}")
    check_triton_device(x.device)
    stride, padding, output_padding = int(stride), int(padding), int(output_padding)
    _check_args(x, weight, bias, stride, padding, output_padding)
    return ConvTranspose2dFunction.apply(
        x, weight, bias, stride, padding, output_padding, ACTIVATION_CODES[activation]
    )

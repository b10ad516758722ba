"""StyleGAN2's modulated convolution in Triton: forward kernel, launcher, autograd Function.

Contract and reference: `modulated_conv.py`. No per-sample weight [B, C_out, C_in, K, K] is ever
built: the forward is one implicit GEMM per sample whose weight tile is scaled by that sample's
styles as it is loaded, and whose output tile is scaled by the demodulation coefficients
    d[b, o] = rsqrt(sum_i styles[b, i]^2 * sum_{kh, kw} weight[o, i, kh, kw]^2 + eps)
(an O(B*C_out*C_in) product computed with torch in fp32: the same sum as over the per-sample
weight, without materialising it).

Both forms run as one transposed convolution (stride S, padding P', taps flipped or not) through
the phase decomposition of `conv_transpose.py` (`phase_origin`):
    up=2: the transposed conv itself: S=2, P'=P, weight taps unflipped.
    up=1: conv2d with padding P equals a stride-1 transposed conv with padding K-1-P and the
          kernel flipped, so it is the single-phase case: S=1, P'=K-1-P, taps flipped.
Programs are tiled per sample (grid axis 2 = sample x phase), so the styles and the
demodulation coefficients of a tile are vectors, loaded once per channel block.

fp32 accumulation (tl.dot) for fp32/fp16/bf16 inputs; the style-scaled weight tile is rounded to
the input dtype before the dot (as the per-sample weight of the reference is); y in x's dtype.
The backward kernels are in `modulated_conv_backward.py`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ganforge.kernels.conv_transpose import phase_origin
from ganforge.kernels.launch import KernelLaunch
from ganforge.kernels.modulated_conv import check_args, demodulation
from ganforge.kernels.modulated_conv_backward import modulated_conv_backward
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
def _modulated_conv_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    d_ptr,
    y_ptr,
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
    FLIP: tl.constexpr,
    DEMODULATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y[b, o, oh, ow] = d[b, o] * sum_{i, taps} x[b, i, ih, iw] * styles[b, i] * w[o, i, tap].

    One (sample, phase) per program axis 2; rows m = (jh, jw) with oh = oh0 + S*jh; columns o;
    reduction over (tap th, tap tw, i). HP, WP = cdiv(H_OUT, S): the largest phase extent.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2) // (S * S)
    phase = tl.program_id(2) % (S * S)
    rh, rw, oh0, ow0, qh0, qw0 = phase_origin(phase, S, P)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    jh = offs_m // WP
    jw = offs_m % WP
    oh = oh0 + S * jh
    ow = ow0 + S * jw
    m_ok = (offs_m < HP * WP) & (oh < H_OUT) & (ow < W_OUT)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_OUT
    x_base = x_ptr + b * (C_IN * H * W)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for th in range(TAPS):
        kh = rh + S * th
        ih = qh0 + jh - th
        for tw in range(TAPS):
            kw = rw + S * tw
            iw = qw0 + jw - tw
            # Phases with fewer than TAPS taps (K % S != 0) skip the missing ones.
            if (kh < K) & (kw < K):
                if FLIP:
                    w_tap = (K - 1 - kh) * K + (K - 1 - kw)
                else:
                    w_tap = kh * K + kw
                x_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x_row = ih * W + iw
                w_col = offs_n * (C_IN * K * K) + w_tap
                for c0 in range(0, C_IN, BLOCK_K):
                    offs_k = c0 + tl.arange(0, BLOCK_K)
                    k_ok = offs_k < C_IN
                    xt = tl.load(
                        x_base + x_row[:, None] + offs_k[None, :] * (H * W),
                        mask=x_ok[:, None] & k_ok[None, :],
                        other=0.0,
                    )
                    wt = tl.load(
                        w_ptr + offs_k[:, None] * (K * K) + w_col[None, :],
                        mask=k_ok[:, None] & n_ok[None, :],
                        other=0.0,
                    )
                    st = tl.load(s_ptr + b * C_IN + offs_k, mask=k_ok, other=0.0)
                    # Modulation: this sample's weight tile, built in registers only.
                    wt = (wt.to(tl.float32) * st.to(tl.float32)[:, None]).to(xt.dtype)
                    acc = tl.dot(xt, wt, acc, input_precision=DOT_PRECISION)

    if DEMODULATE:
        acc *= tl.load(d_ptr + b * C_OUT + offs_n, mask=n_ok, other=0.0)[None, :]
    y_off = (oh * W_OUT + ow)[:, None] + offs_n[None, :] * (H_OUT * W_OUT)
    tl.store(
        y_ptr + b * (C_OUT * H_OUT * W_OUT) + y_off,
        acc.to(y_ptr.dtype.element_ty),
        mask=m_ok[:, None] & n_ok[None, :],
    )


def transposed_form(k: int, up: int, padding: int) -> tuple[int, int, bool]:
    """(stride S, padding P', flip) of the transposed convolution that computes the op."""
    return (1, k - 1 - padding, True) if up == 1 else (2, padding, False)


def _forward(x, weight, styles, d, up, padding, output_padding) -> torch.Tensor:
    batch, c_in, h, w = x.shape
    c_out, k = weight.shape[0], weight.shape[2]
    stride, pad_t, flip = transposed_form(k, up, padding)
    h_out = (h - 1) * stride - 2 * pad_t + k + output_padding
    w_out = (w - 1) * stride - 2 * pad_t + k + output_padding
    y = x.new_empty(batch, c_out, h_out, w_out)
    if y.numel() == 0:
        return y
    hp, wp = triton.cdiv(h_out, stride), triton.cdiv(w_out, stride)
    cap_m, cap_n, cap_k = gemm_caps()
    block_m = dot_block(hp * wp, cap_m)
    block_n, block_k = dot_block(c_out, cap_n), dot_block(c_in, cap_k)
    KernelLaunch(
        _modulated_conv_kernel,
        (triton.cdiv(hp * wp, block_m), triton.cdiv(c_out, block_n), batch * stride * stride),
        (
            x,
            weight,
            styles,
            y if d is None else d,  # never read without DEMODULATE
            y,
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
            P=pad_t,
            K=k,
            TAPS=triton.cdiv(k, stride),
            FLIP=flip,
            DEMODULATE=d is not None,
            DOT_PRECISION=DOT_PRECISION,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
        ),
        num_warps=dot_warps(block_m, block_n),
        num_stages=dot_stages(x.dtype),
    ).run()
    return y


class ModulatedConv2dFunction(torch.autograd.Function):
    """Autograd wiring: forward kernel; backward in `modulated_conv_backward`. Once
    differentiable (`first_order_only`): a create_graph=True backward through it raises, e.g.
    StyleGAN2's path-length regulariser, which needs `kernels: torch`."""

    @staticmethod
    def forward(ctx, x, weight, styles, demodulate, up, padding, output_padding, eps):
        x, weight, styles = contiguous(x, weight, styles)
        d = demodulation(weight, styles, eps) if demodulate else None
        y = _forward(x, weight, styles, d, up, padding, output_padding)
        # y is kept for the demodulation gradient (it needs sum_p dL/dy * y per (b, o)).
        ctx.save_for_backward(x, weight, styles, d, y if demodulate else None)
        ctx.conf = transposed_form(weight.shape[2], up, padding)
        return y

    @staticmethod
    @first_order_only
    def backward(ctx, grad_y):
        x, weight, styles, d, y = ctx.saved_tensors
        grads = modulated_conv_backward(
            grad_y.contiguous(), x, weight, styles, d, y, ctx.conf, ctx.needs_input_grad[:3]
        )
        return (*grads, None, None, None, None, None)


def modulated_conv2d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    padding: int | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Triton modulated convolution, same contract as `modulated_conv.modulated_conv2d_ref`.

    x [B, C_in, H, W], weight [C_out, C_in, K, K], styles [B, C_in]: one dtype among
    fp32/fp16/bf16, on CUDA (or CPU under TRITON_INTERPRET=1). Accumulates in fp32; returns
    [B, C_out, H_out, W_out] in x's dtype.
    """
    check_triton_device(x.device)
    up = int(up)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    padding, output_padding = check_args(x, weight, styles, up, padding, dtypes)
    batch, c_in, h, w = x.shape
    c_out, k = weight.shape[0], weight.shape[2]
    # The kernels index with int32 offsets (per-sample bases included).
    if max(x.numel(), batch * c_out * (max(h, w) * up + k) ** 2) >= 2**31:
        raise ValueError("modulated_conv2d: tensor too large for the kernels' int32 indexing")
    return ModulatedConv2dFunction.apply(
        x, weight, styles, bool(demodulate), up, padding, output_padding, float(eps)
    )

"""Backward of the Triton modulated convolution: grad-input (+ the styles' conv term) and
grad-weight kernels, and the demodulation terms in torch.

Notation (the forward of `modulated_conv_triton.py`, written as a transposed conv with stride S,
padding P' and taps possibly flipped; `tap` is a transposed-conv tap, w[o, i, tap] the weight):
    xs[b, i, p] = styles[b, i] * x[b, i, p]                      (modulated input)
    z[b, o, q]  = sum_{i, tap} xs[b, i, p(q, tap)] * w[o, i, tap]  (shared-weight convolution)
    q_[b, o]    = sum_i styles[b, i]^2 * wsq[o, i],  wsq[o, i] = sum_tap w[o, i, tap]^2
    d[b, o]     = (q_[b, o] + eps)^(-1/2);   y = d * z   (d = 1 without demodulation)
With g = dL/dy:
    dL/dz = g * d                                      (fused: the kernels scale as they load)
    dL/dd[b, o]  = sum_q g * z = sum_q g * y / d
    c[b, o] := dL/dq_ = dL/dd * (-1/2) d^3 = -1/2 * d^2 * sum_q g[b, o, q] * y[b, o, q]
    dL/dxs = conv-grad-input(g * d, w)                 (kernel 1, accumulated in fp32)
    dL/dx  = styles * dL/dxs                           (kernel 1 epilogue)
    dL/dstyles[b, i] = sum_p x * dL/dxs                (kernel 1 epilogue, per-tile partials)
                       + 2 * styles[b, i] * sum_o c[b, o] * wsq[o, i]          (torch)
    dL/dw[o, i, tap] = sum_{b, q} (g * d)[b, o, q] * xs[b, i, p(q, tap)]          (kernel 2)
                       + 2 * w[o, i, tap] * sum_b c[b, o] * styles[b, i]^2     (torch)
The torch terms are products of per-sample quantities, O(B*C_out*C_in) (never B*C_out*C_in*K*K);
sum_q g*y is one fp32 reduction over y's size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ganforge.kernels.launch import KernelLaunch
from ganforge.kernels.utils import DOT_PRECISION, dot_block, dot_stages, dot_warps, gemm_caps


# dL/dxs[b, i, ih, iw] = sum_{o, tap} (g*d)[b, o, ih*S - P + kh, iw*S - P + kw] * w[o, i, tap]:
# a stride-S conv of g (out-of-range output positions contribute 0). Implicit GEMM per sample:
# rows (ih, iw), columns i, reduction over (kh, kw, o); d scales the weight tile as it is loaded
# (it varies along the reduction), styles scale the output tile.
@triton.jit
def _modconv_grad_input_kernel(
    dy_ptr,
    w_ptr,
    x_ptr,
    s_ptr,
    d_ptr,
    dx_ptr,
    ds_ptr,
    C_IN,
    H,
    W,
    C_OUT,
    H_OUT,
    W_OUT,
    S: tl.constexpr,
    P: tl.constexpr,
    K: tl.constexpr,
    FLIP: tl.constexpr,
    DEMODULATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ih = offs_m // W
    iw = offs_m % W
    m_ok = offs_m < H * W
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_IN
    dy_base = dy_ptr + b * (C_OUT * H_OUT * W_OUT)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in range(K):
        oh = ih * S - P + kh
        for kw in range(K):
            ow = iw * S - P + kw
            if FLIP:
                w_tap = (K - 1 - kh) * K + (K - 1 - kw)
            else:
                w_tap = kh * K + kw
            dy_ok = m_ok & (oh >= 0) & (oh < H_OUT) & (ow >= 0) & (ow < W_OUT)
            dy_row = oh * W_OUT + ow
            w_col = offs_n * (K * K) + w_tap
            for c0 in range(0, C_OUT, BLOCK_K):
                offs_k = c0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < C_OUT
                dyt = tl.load(
                    dy_base + dy_row[:, None] + offs_k[None, :] * (H_OUT * W_OUT),
                    mask=dy_ok[:, None] & k_ok[None, :],
                    other=0.0,
                )
                wt = tl.load(
                    w_ptr + offs_k[:, None] * (C_IN * K * K) + w_col[None, :],
                    mask=k_ok[:, None] & n_ok[None, :],
                    other=0.0,
                )
                if DEMODULATE:
                    dt = tl.load(d_ptr + b * C_OUT + offs_k, mask=k_ok, other=0.0)
                    wt = (wt.to(tl.float32) * dt[:, None]).to(dyt.dtype)
                acc = tl.dot(dyt, wt, acc, input_precision=DOT_PRECISION)

    ok = m_ok[:, None] & n_ok[None, :]
    x_off = b * (C_IN * H * W) + offs_m[:, None] + offs_n[None, :] * (H * W)
    st = tl.load(s_ptr + b * C_IN + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(dx_ptr + x_off, (acc * st[None, :]).to(dx_ptr.dtype.element_ty), mask=ok)
    # Style gradient, conv term: sum over this tile's positions (rows off the image hold 0).
    xt = tl.load(x_ptr + x_off, mask=ok, other=0.0).to(tl.float32)
    n_tiles = tl.num_programs(0)
    tl.store(ds_ptr + (b * n_tiles + pid_m) * C_IN + offs_n, tl.sum(xt * acc, axis=0), mask=n_ok)


# dL/dw[o, i, tap] = sum_b styles[b, i] d[b, o] sum_{ih, iw} x[b, i, ih, iw] g[b, o, oh, ow] with
# oh = ih*S - P + kh. Styles and d are constant within a sample, so each sample's GEMM
# x_b^T [C_in, H*W] @ g_b [H*W, C_out] is accumulated in fp32 and then scaled by the outer
# product styles[b] d[b]: two vector loads per sample instead of scaling every loaded tile. One
# program per (i tile, o tile, tap) reduces over the whole batch: no atomics, deterministic.
@triton.jit
def _modconv_grad_weight_kernel(
    x_ptr,
    dy_ptr,
    s_ptr,
    d_ptr,
    dw_ptr,
    B,
    C_IN,
    H,
    W,
    C_OUT,
    H_OUT,
    W_OUT,
    S: tl.constexpr,
    P: tl.constexpr,
    K: tl.constexpr,
    FLIP: tl.constexpr,
    DEMODULATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    tap = tl.program_id(2)
    kh = tap // K
    kw = tap % K
    offs_i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    i_ok = offs_i < C_IN
    offs_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = offs_o < C_OUT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for b in range(B):
        acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for r0 in range(0, H * W, BLOCK_K):
            offs_r = r0 + tl.arange(0, BLOCK_K)
            r_ok = offs_r < H * W
            oh = (offs_r // W) * S - P + kh
            ow = (offs_r % W) * S - P + kw
            dy_ok = r_ok & (oh >= 0) & (oh < H_OUT) & (ow >= 0) & (ow < W_OUT)
            xt = tl.load(
                x_ptr + b * (C_IN * H * W) + offs_i[:, None] * (H * W) + offs_r[None, :],
                mask=i_ok[:, None] & r_ok[None, :],
                other=0.0,
            )
            dyt = tl.load(
                dy_ptr
                + b * (C_OUT * H_OUT * W_OUT)
                + (oh * W_OUT + ow)[:, None]
                + offs_o[None, :] * (H_OUT * W_OUT),
                mask=dy_ok[:, None] & o_ok[None, :],
                other=0.0,
            )
            acc_b = tl.dot(xt, dyt, acc_b, input_precision=DOT_PRECISION)
        st = tl.load(s_ptr + b * C_IN + offs_i, mask=i_ok, other=0.0).to(tl.float32)
        acc_b = acc_b * st[:, None]
        if DEMODULATE:
            acc_b = acc_b * tl.load(d_ptr + b * C_OUT + offs_o, mask=o_ok, other=0.0)[None, :]
        acc += acc_b

    if FLIP:
        w_tap = (K - 1 - kh) * K + (K - 1 - kw)
    else:
        w_tap = tap
    dw_off = offs_o[None, :] * (C_IN * K * K) + offs_i[:, None] * (K * K) + w_tap
    tl.store(dw_ptr + dw_off, acc, mask=i_ok[:, None] & o_ok[None, :])


def _grad_input(dy, weight, x, styles, d, conf) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dx in x's dtype, the conv term of dL/dstyles [B, C_in] in fp32)."""
    stride, pad_t, flip = conf
    batch, c_in, h, w = x.shape
    c_out, k, h_out, w_out = weight.shape[0], weight.shape[2], dy.shape[2], dy.shape[3]
    cap_m, cap_n, cap_k = gemm_caps()
    block_m, block_n = dot_block(h * w, cap_m), dot_block(c_in, cap_n)
    grid = (triton.cdiv(h * w, block_m), triton.cdiv(c_in, block_n), batch)
    dx = torch.empty_like(x)
    ds_tiles = x.new_empty(batch, grid[0], c_in, dtype=torch.float32)
    KernelLaunch(
        _modconv_grad_input_kernel,
        grid,
        (
            dy,
            weight,
            x,
            styles,
            dx if d is None else d,  # never read without DEMODULATE
            dx,
            ds_tiles,
            c_in,
            h,
            w,
            c_out,
            h_out,
            w_out,
        ),
        dict(
            S=stride,
            P=pad_t,
            K=k,
            FLIP=flip,
            DEMODULATE=d is not None,
            DOT_PRECISION=DOT_PRECISION,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=dot_block(c_out, cap_k),
        ),
        num_warps=dot_warps(block_m, block_n),
        num_stages=dot_stages(x.dtype),
    ).run()
    return dx, ds_tiles.sum(dim=1)


def _grad_weight(x, dy, weight, styles, d, conf) -> torch.Tensor:
    """dL/dw's conv term [C_out, C_in, K, K] in fp32."""
    stride, pad_t, flip = conf
    batch, c_in, h, w = x.shape
    c_out, k, h_out, w_out = weight.shape[0], weight.shape[2], dy.shape[2], dy.shape[3]
    dw = weight.new_empty(weight.shape, dtype=torch.float32)
    cap_m, cap_n, _ = gemm_caps()
    block_m, block_n = dot_block(c_in, cap_n), dot_block(c_out, cap_n)
    # The reduction (positions of one sample) is usually longer than the channel tiles.
    block_k = dot_block(h * w, cap_m)
    KernelLaunch(
        _modconv_grad_weight_kernel,
        (triton.cdiv(c_in, block_m), triton.cdiv(c_out, block_n), k * k),
        (
            x,
            dy,
            styles,
            dw if d is None else d,  # never read without DEMODULATE
            dw,
            batch,
            c_in,
            h,
            w,
            c_out,
            h_out,
            w_out,
        ),
        dict(
            S=stride,
            P=pad_t,
            K=k,
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
    return dw


def modulated_conv_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    d: torch.Tensor | None,
    y: torch.Tensor | None,
    conf: tuple[int, int, bool],
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dL/dx, dL/dweight, dL/dstyles), each None unless requested in `needs` (same order).

    grad_y, y: [B, C_out, H_out, W_out] contiguous; d: [B, C_out] fp32 or None (no
    demodulation); conf: (S, P', flip) from `transposed_form`. Gradients in the inputs' dtype.
    """
    need_x, need_w, need_s = needs
    grad_x = grad_w = grad_s = None
    if x.numel() == 0 or grad_y.numel() == 0:
        inputs = (x, weight, styles)
        return tuple(torch.zeros_like(t) if n else None for t, n in zip(inputs, needs, strict=True))
    if need_x or need_s:
        grad_x, grad_s = _grad_input(grad_y, weight, x, styles, d, conf)
    if need_w:
        grad_w = _grad_weight(x, grad_y, weight, styles, d, conf)
    if d is not None and (need_w or need_s):
        gy = torch.einsum("bohw,bohw->bo", grad_y.float(), y.float())
        c = -0.5 * d.square() * gy  # dL/dq_ [B, C_out]
        if need_s:
            wsq = weight.float().square().sum(dim=(2, 3))  # [C_out, C_in]
            grad_s = grad_s + 2.0 * styles.float() * (c @ wsq)
        if need_w:
            per_weight = c.t() @ styles.float().square()  # [C_out, C_in]
            grad_w = grad_w + 2.0 * weight.float() * per_weight[..., None, None]
    return (
        grad_x if need_x else None,
        None if grad_w is None else grad_w.to(weight.dtype),
        grad_s.to(styles.dtype) if need_s else None,
    )

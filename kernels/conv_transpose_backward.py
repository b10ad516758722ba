"""Backward kernels of the Triton transposed convolution: activation derivative, grad-input,
grad-weight. Same layout and conventions as `conv_transpose` (NCHW, weight [C_in, C_out, K, K],
fp32 accumulation, results in the input dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ganforge.kernels.gemm import gemm, is_gemm_layer
from ganforge.kernels.launch import KernelLaunch
from ganforge.kernels.utils import (
    DOT_PRECISION,
    dot_block,
    dot_stages,
    dot_warps,
    elementwise_block,
    gemm_caps,
    is_interpreter,
)


# Activation derivative from the saved output y = act(z), so z need not be kept:
#   relu:       dL/dz = dL/dy * [y > 0]
#   tanh:       dL/dz = dL/dy * (1 - y^2)
#   leaky_relu: dL/dz = dL/dy * (1 if y > 0 else 0.2)   (y > 0 iff z > 0 since the slope is > 0)
@triton.jit
def _activation_backward_kernel(
    grad_ptr, y_ptr, out_ptr, N, ACTIVATION: tl.constexpr, BLOCK: tl.constexpr
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    g = tl.load(grad_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if ACTIVATION == 1:
        g = tl.where(y > 0, g, 0.0)
    elif ACTIVATION == 2:
        g = g * (1.0 - y * y)
    elif ACTIVATION == 3:
        g = tl.where(y > 0, g, 0.2 * g)
    tl.store(out_ptr + offs, g.to(out_ptr.dtype.element_ty), mask=ok)


# Gradient w.r.t. the input. With y[b, co, oh, ow] = sum x[b, ci, ih, iw] w[ci, co, kh, kw] at
# oh = ih*S - P + kh (same for w), each x element reaches the outputs of its K*K taps, so
#   dL/dx[b, ci, ih, iw] = sum_{co, kh, kw} dy[b, co, ih*S-P+kh, iw*S-P+kw] w[ci, co, kh, kw]
# (out-of-range output positions contribute 0): an ordinary stride-S, padding-P conv2d of dy whose
# conv weight [C_in(out), C_out(in), K, K] is the same tensor. Implicit GEMM: rows (b, ih, iw),
# columns ci, reduction over (kh, kw, co); every dx element written once.
@triton.jit
def _conv_transpose_grad_input_kernel(
    dy_ptr,
    w_ptr,
    dx_ptr,
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
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    b = offs_m // (H * W)
    ih = (offs_m // W) % H
    iw = offs_m % W
    m_ok = b < B
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_IN

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in range(K):
        oh = ih * S - P + kh
        for kw in range(K):
            ow = iw * S - P + kw
            dy_ok = m_ok & (oh >= 0) & (oh < H_OUT) & (ow >= 0) & (ow < W_OUT)
            dy_row = b * (C_OUT * H_OUT * W_OUT) + oh * W_OUT + ow
            w_col = offs_n * (C_OUT * K * K) + kh * K + kw
            for c0 in range(0, C_OUT, BLOCK_K):
                offs_k = c0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < C_OUT
                dyt = tl.load(
                    dy_ptr + dy_row[:, None] + offs_k[None, :] * (H_OUT * W_OUT),
                    mask=dy_ok[:, None] & k_ok[None, :],
                    other=0.0,
                )
                wt = tl.load(
                    w_ptr + offs_k[:, None] * (K * K) + w_col[None, :],
                    mask=k_ok[:, None] & n_ok[None, :],
                    other=0.0,
                )
                acc = tl.dot(dyt, wt, acc, input_precision=DOT_PRECISION)

    dx_off = (b * (C_IN * H * W) + ih * W + iw)[:, None] + offs_n[None, :] * (H * W)
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# Gradient w.r.t. the weight: w[ci, co, kh, kw] multiplies x[b, ci, ih, iw] into every output
# y[b, co, ih*S - P + kh, iw*S - P + kw], so
#   dL/dw[ci, co, kh, kw] = sum_{b, ih, iw} x[b, ci, ih, iw] dy[b, co, ih*S - P + kh, iw*S - P + kw]
# One program per (ci tile, co tile, tap): a GEMM x^T [C_in, B*H*W] @ dy_tap [B*H*W, C_out] whose
# whole reduction over batch and space runs inside the program in fp32, so no atomics are needed
# and the result is deterministic.
@triton.jit
def _conv_transpose_grad_weight_kernel(
    x_ptr,
    dy_ptr,
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
    offs_ci = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ci_ok = offs_ci < C_IN
    offs_co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = offs_co < C_OUT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, B * H * W, BLOCK_K):
        offs_r = r0 + tl.arange(0, BLOCK_K)
        b = offs_r // (H * W)
        ih = (offs_r // W) % H
        iw = offs_r % W
        oh = ih * S - P + kh
        ow = iw * S - P + kw
        r_ok = b < B
        dy_ok = r_ok & (oh >= 0) & (oh < H_OUT) & (ow >= 0) & (ow < W_OUT)
        xt = tl.load(
            x_ptr + offs_ci[:, None] * (H * W) + (b * (C_IN * H * W) + ih * W + iw)[None, :],
            mask=ci_ok[:, None] & r_ok[None, :],
            other=0.0,
        )
        dyt = tl.load(
            dy_ptr
            + (b * (C_OUT * H_OUT * W_OUT) + oh * W_OUT + ow)[:, None]
            + offs_co[None, :] * (H_OUT * W_OUT),
            mask=dy_ok[:, None] & co_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(xt, dyt, acc, input_precision=DOT_PRECISION)

    dw_off = offs_ci[:, None] * (C_OUT * K * K) + offs_co[None, :] * (K * K) + tap
    tl.store(dw_ptr + dw_off, acc.to(dw_ptr.dtype.element_ty), mask=ci_ok[:, None] & co_ok[None, :])


def activation_backward(grad: torch.Tensor, y: torch.Tensor, activation: int) -> torch.Tensor:
    """dL/dz from dL/dy and the saved output y = act(z) (same shape and dtype as y)."""
    out = torch.empty_like(y)
    n = y.numel()
    block = elementwise_block(n)
    KernelLaunch(
        _activation_backward_kernel,
        (triton.cdiv(n, block),),
        (grad, y, out, n),
        dict(ACTIVATION=activation, BLOCK=block),
    ).run()
    return out


def grad_input(
    dy: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size, stride: int, padding: int
) -> torch.Tensor:
    """dL/dx [B, C_in, H, W] from dy [B, C_out, H_out, W_out] (a strided conv2d of dy)."""
    batch, c_in, h, w = x_shape
    c_out, k, h_out, w_out = weight.shape[1], weight.shape[2], dy.shape[2], dy.shape[3]
    dx = dy.new_empty(x_shape)
    if dx.numel() == 0:
        return dx
    if is_gemm_layer(x_shape, stride, padding, 0) and (h_out, w_out) == (k, k):
        # dx [B, C_in] = dy [B, C_out*K*K] @ w[C_in, C_out*K*K]^T
        flat_w = weight.view(c_in, c_out * k * k)
        gemm(dy.view(batch, -1), flat_w.t(), dx.view(batch, c_in))
        return dx
    cap_m, cap_n, cap_k = gemm_caps(dy.dtype)
    block_m, block_n = dot_block(batch * h * w, cap_m), dot_block(c_in, cap_n)
    KernelLaunch(
        _conv_transpose_grad_input_kernel,
        (triton.cdiv(batch * h * w, block_m), triton.cdiv(c_in, block_n)),
        (dy, weight, dx, batch, c_in, h, w, c_out, h_out, w_out),
        dict(
            S=stride,
            P=padding,
            K=k,
            DOT_PRECISION=DOT_PRECISION,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=dot_block(c_out, cap_k),
        ),
        num_warps=dot_warps(block_m, block_n),
        num_stages=dot_stages(dy.dtype),
    ).run()
    return dx


def grad_weight(
    x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, stride: int, padding: int
) -> torch.Tensor:
    """dL/dw [C_in, C_out, K, K] (weight's dtype) = sum over batch and space, fp32 accumulation."""
    batch, c_in, h, w = x.shape
    c_out, k, h_out, w_out = weight.shape[1], weight.shape[2], dy.shape[2], dy.shape[3]
    dw = torch.empty_like(weight)
    if batch * h * w == 0:
        return dw.zero_()
    if is_gemm_layer(x.shape, stride, padding, 0) and (h_out, w_out) == (k, k):
        # dw [C_in, C_out*K*K] = x[B, C_in]^T @ dy [B, C_out*K*K]
        gemm(x.view(batch, c_in).t(), dy.view(batch, -1), dw.view(c_in, -1))
        return dw
    cap_m, cap_n, cap_k = gemm_caps(x.dtype)
    block_m, block_n = dot_block(c_in, cap_n), dot_block(c_out, cap_n)
    # The reduction runs over B*H*W, usually far longer than the channel tiles. The interpreter
    # gives it the large block (fewer Python-level iterations); on the GPU it takes the K cap
    # like the other kernels: a 64-wide reduction block spilled in every dtype.
    block_k = dot_block(batch * h * w, cap_m if is_interpreter() else cap_k)
    KernelLaunch(
        _conv_transpose_grad_weight_kernel,
        (triton.cdiv(c_in, block_m), triton.cdiv(c_out, block_n), k * k),
        (x, dy, dw, batch, c_in, h, w, c_out, h_out, w_out),
        dict(
            S=stride,
            P=padding,
            K=k,
            DOT_PRECISION=DOT_PRECISION,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
        ),
        num_warps=dot_warps(block_m, block_n),
        num_stages=dot_stages(x.dtype),
    ).run()
    return dw

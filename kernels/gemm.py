"""A strided GEMM kernel with a fused bias/activation epilogue, shared by the transposed-conv
forward (the 1x1 -> KxK first layer, which is exactly a GEMM) and its backward.

fp32 accumulation (tl.dot with an fp32 accumulator) for fp32/fp16/bf16 operands; results are
written in the output tensor's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ganforge.kernels.launch import KernelLaunch
from ganforge.kernels.utils import DOT_PRECISION, dot_block, dot_stages, dot_warps, gemm_caps

# Epilogue activation codes (constexpr ints in the kernels); leaky_relu has slope 0.2.
ACTIVATION_CODES = {None: 0, "relu": 1, "tanh": 2, "leaky_relu": 3}


@triton.jit
def activation_epilogue(y, ACTIVATION: tl.constexpr):
    """Epilogue activation on an fp32 tile (codes as in ACTIVATION_CODES)."""
    if ACTIVATION == 1:
        y = tl.maximum(y, 0.0)
    elif ACTIVATION == 2:
        # tanh from exp(-2|y|) <= 1: no overflow for large |y|, exact sign.
        t = tl.exp(-2.0 * tl.abs(y))
        r = (1.0 - t) / (1.0 + t)
        y = tl.where(y >= 0, r, -r)
    elif ACTIVATION == 3:
        y = tl.where(y > 0, y, 0.2 * y)
    return y


@triton.jit
def _gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    BIAS_DIV,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """C[M, N] = act(A[M, K] @ B[K, N] + bias[n // BIAS_DIV]), any strides, fp32 accumulation.

    The 1x1 -> KxK layer: A = x [B, C_in], B = w [C_in, C_out*K*K], BIAS_DIV = K*K; its backward
    uses the same kernel on transposed (strided) views.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        at = tl.load(
            a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
            mask=m_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        bt = tl.load(
            b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
            mask=k_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(at, bt, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n // BIAS_DIV, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = activation_epilogue(acc, ACTIVATION)
    c_off = offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptr + c_off, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor,
    bias: torch.Tensor | None = None,
    bias_div: int = 1,
    activation: int = 0,
) -> torch.Tensor:
    """out[M, N] = act(a[M, K] @ b[K, N] + bias[n // bias_div]); a, b, out may be strided views."""
    (m, k), n = a.shape, b.shape[1]
    cap_m, cap_n, cap_k = gemm_caps(a.dtype)
    block_m, block_n, block_k = dot_block(m, cap_m), dot_block(n, cap_n), dot_block(k, cap_k)
    KernelLaunch(
        _gemm_kernel,
        (triton.cdiv(m, block_m), triton.cdiv(n, block_n)),
        (
            a,
            b,
            out,
            out if bias is None else bias,  # never read without HAS_BIAS
            m,
            n,
            k,
            *a.stride(),
            *b.stride(),
            *out.stride(),
            bias_div,
        ),
        dict(
            HAS_BIAS=bias is not None,
            ACTIVATION=activation,
            DOT_PRECISION=DOT_PRECISION,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
        ),
        num_warps=dot_warps(block_m, block_n),
        num_stages=dot_stages(a.dtype),
    ).run()
    return out


def is_gemm_layer(x_shape: torch.Size, stride: int, padding: int, output_padding: int) -> bool:
    """The generator's first layer (1x1 input, stride 1, no padding): y = x @ w[C_in, C_out*K*K]."""
    return x_shape[2] == x_shape[3] == 1 and stride == 1 and padding == 0 and output_padding == 0

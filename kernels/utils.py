"""Launch helpers shared by the Triton kernels: device checks, block sizes, contiguity.

Importing this module does not import triton (dispatch uses it to refuse bad requests early, and
must keep working where triton is absent).
"""

from __future__ import annotations

import functools
import os

import torch
from torch.autograd.function import once_differentiable

from ganforge.kernels.launch import recording

# tl.dot needs every block dimension >= 16 on NVIDIA GPUs.
MIN_DOT_BLOCK = 16
# tl.dot input precision: exact fp32 products (no TF32), so fp32 results match the PyTorch
# reference to fp32 rounding; fp16/bf16 operands ignore it.
DOT_PRECISION = "ieee"


def is_interpreter() -> bool:
    """True when triton runs kernels on CPU tensors with numpy (TRITON_INTERPRET=1).

    Triton reads the variable when a kernel is decorated, so it must be set before the kernel
    modules are imported (tests/conftest.py does so).
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_triton_device(device: torch.device) -> None:
    """Raise a RuntimeError unless Triton can run on `device` (CUDA, or CPU if interpreted).

    Any device passes while launches are recorded (`launch.record_launches`): nothing runs then.
    """
    if device.type == "cuda" or (device.type == "cpu" and is_interpreter()) or recording():
        return
    raise RuntimeError(
        f"kernels: triton needs CUDA tensors, got tensors on {device}. On CPU use "
        "`model.kernels: auto` or `torch` (the PyTorch reference), or set TRITON_INTERPRET=1 "
        "before importing triton to run the kernels under the (slow) Triton interpreter."
    )


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def dot_block(n: int, cap: int) -> int:
    """Block size for one tl.dot dimension of extent n: a power of two in [16, cap].

    The interpreter runs each program in Python, so larger caps there mean fewer programs and
    far less overhead; on the GPU the caps keep register use within one SM's budget.
    """
    return max(MIN_DOT_BLOCK, min(cap, next_power_of_2(n)))


def gemm_caps(dtype: torch.dtype | None = None) -> tuple[int, int, int]:
    """(BLOCK_M cap, BLOCK_N cap, BLOCK_K cap) for the implicit-GEMM kernels whose tl.dot
    operands have `dtype` (None: the fp16/bf16 caps).

    On the GPU fp32 gets half the BLOCK_K: its exact (ieee) products run on the CUDA cores with
    the operand fragments in registers, which grow with BLOCK_K; at 32 the 64x64 tiles reach the
    255-register ceiling and spill on sm_80 and sm_90 (bench/results/kernels-compile-sm*.json).
    fp16/bf16 products go through the tensor cores and compile without spills at 32.
    """
    if is_interpreter():
        return 256, 64, 64
    return 64, 64, 16 if dtype == torch.float32 else 32


def dot_warps(block_m: int, block_n: int) -> int:
    """num_warps of a tl.dot kernel with a BLOCK_M x BLOCK_N fp32 accumulator: 4 for every tile
    up to the 64x64 caps. Compiled for sm_80/sm_90, 8 warps often made ptxas hold each thread to
    128 registers and spill where 4 warps fit in 255 without spilling."""
    return 4


def dot_stages(dtype: torch.dtype) -> int:
    """num_stages (software-pipelined loads) of a tl.dot kernel whose operands have `dtype`.

    fp32 runs unpipelined: its CUDA-core products hold the operands in registers anyway, and the
    prefetched stages' addresses and masks pushed the 64x64 tiles into spills; fp16/bf16 keep
    Triton's default of 3 (tensor cores, and no spills with it).
    """
    return 1 if dtype == torch.float32 else 3


def elementwise_block(n: int) -> int:
    """Block size of one program of an elementwise or row-reduction kernel."""
    cap = 65536 if is_interpreter() else 4096
    return max(128, min(cap, next_power_of_2(n)))


def contiguous(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The kernels index NCHW tensors from their shapes, so they need dense row-major storage."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def first_order_only(backward):
    """Decorate an autograd.Function backward that is not itself differentiable.

    `once_differentiable` alone fails loudly only when the incoming gradient requires grad; when
    it does not (e.g. a `.sum()` upstream) the returned gradient silently loses its dependence on
    the saved tensors, so a create_graph=True backward would yield a wrong second derivative.
    Refusing every create_graph=True call through the op closes that hole.
    """
    inner = once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():  # grad mode is on inside backward iff create_graph=True
            raise RuntimeError(
                f"{type(ctx).__name__}: double backward is not supported (the backward is "
                "once_differentiable); create_graph=True through this op would give wrong "
                "higher-order gradients. Use `kernels: torch` where one is needed."
            )
        return inner(ctx, *grads)

    return wrapper

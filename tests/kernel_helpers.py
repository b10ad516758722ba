"""Shared settings of the kernel tests: the device, the per-dtype tolerances, no TF32."""

from __future__ import annotations

import pytest
import torch

from ganforge.kernels.tolerance import TOLERANCE
from ganforge.kernels.utils import is_interpreter

# The kernel tests run on the GPU when there is one, else on CPU under the Triton interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# TOLERANCE (dtype -> (atol, rtol), a reason per row) is the package's table, so `kernels: auto`
# accepts a Triton kernel on exactly the terms these tests do.
# Keyword form of the fp32 row, for assert_close in fp32-only tests.
FP32_TOL = dict(zip(("atol", "rtol"), TOLERANCE[torch.float32], strict=True))
# The interpreter computes bf16 tl.dot wrongly (numpy has no bf16): kernels built on tl.dot skip
# bf16 there; elementwise/reduction kernels handle bf16 fine and keep the row.
_BF16_DOT_SKIP = pytest.mark.skipif(
    is_interpreter(), reason="Triton interpreter computes bf16 tl.dot wrongly"
)


def tolerances(uses_dot: bool) -> list:
    """pytest params (dtype, atol, rtol) for `parametrize("dtype,atol,rtol", ...)`."""
    return [
        pytest.param(
            dtype,
            *tol,
            id=str(dtype).removeprefix("torch."),
            marks=[_BF16_DOT_SKIP] if uses_dot and dtype == torch.bfloat16 else [],
        )
        for dtype, tol in TOLERANCE.items()
    ]


@pytest.fixture(autouse=True)
def exact_fp32_reference():
    """cuDNN/cuBLAS default to TF32 on Ampere+ (10-bit mantissa): turn it off so the fp32
    reference is exact fp32 like the kernels (no effect on CPU)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

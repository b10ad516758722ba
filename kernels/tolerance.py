"""The one tolerance table of the Triton kernels: how far a kernel may be from the fp32 reference.

The kernel tests and `kernels: auto` (which refuses a Triton kernel that disagrees on the device
in hand) both read it, so what the tests accept is exactly what the product accepts.
"""

from __future__ import annotations

import torch

# dtype -> (atol, rtol), a reason per row. The reference always runs in fp32 on the same
# (rounded) inputs, so a row measures only the kernel's own rounding.
TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    # ieee fp32 products (no TF32) with fp32 accumulation: only the summation order differs.
    torch.float32: (1e-5, 1e-4),
    # fp32 accumulation, but outputs and stored intermediate gradients round to fp16 (unit
    # roundoff 4.9e-4) on values of magnitude up to ~10.
    torch.float16: (1e-2, 1e-2),
    # As fp16 with bf16's 8-bit mantissa (unit roundoff 3.9e-3).
    torch.bfloat16: (2e-2, 2e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for results in `dtype`; a dtype without a row raises a ValueError."""
    try:
        return TOLERANCE[dtype]
    except KeyError:
        raise ValueError(
            f"no kernel tolerance for {dtype}; the kernels support {sorted(map(str, TOLERANCE))}"
        ) from None

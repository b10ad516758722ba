"""Kernel correctness on the device: each Triton kernel against its PyTorch reference run in fp32
on the same (rounded) inputs, forward and every gradient, within `ganforge.kernels.tolerance`.

The cases are those of tests/test_kernels_*.py (which need pytest, absent on a bare GPU machine)
plus the shipped generator and critic shapes the interpreter is too slow for, in every dtype of
the tolerance table, bf16 `tl.dot` kernels included (the interpreter computes those wrongly, so
the CPU tests skip them: here they are checked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# (B, C_in, H, W, C_out, K, stride, padding, output_padding, activation, bias): the test table.
CONV_CASES = {
    "k4s2p1-gen-block": (2, 5, 3, 3, 7, 4, 2, 1, 0, "relu", False),
    "k4s2p1-gen-last-b1": (1, 3, 4, 4, 3, 4, 2, 1, 0, "tanh", True),
    "k4s2p1-many-m-tiles": (2, 3, 12, 12, 5, 4, 2, 1, 0, None, True),
    "k4s2p1-c-over-block": (1, 70, 2, 2, 67, 4, 2, 1, 0, "leaky_relu", True),
    "gemm-4x4-from-1x1": (3, 5, 1, 1, 7, 4, 1, 0, 0, "relu", False),
    "gemm-k-loop": (2, 70, 1, 1, 3, 4, 1, 0, 0, None, True),
    "s1-p0-odd": (2, 3, 5, 5, 5, 3, 1, 0, 0, "leaky_relu", True),
    "s1-p2": (1, 4, 3, 3, 3, 3, 1, 2, 0, None, True),
    "s3-op1": (2, 3, 3, 3, 5, 4, 3, 0, 1, "tanh", True),
    "s3-p2-op1-odd": (1, 5, 5, 5, 3, 3, 3, 2, 1, None, False),
    "s3-k2-empty-phases-rect": (1, 2, 3, 4, 3, 2, 3, 0, 2, "relu", True),
    "s2-k5-p2-op1": (1, 3, 5, 5, 4, 5, 2, 2, 1, None, True),
    # Shipped shapes (DCGAN generator, width 64, batch 64): too slow for the interpreter.
    "dcgan-64-1x1-to-4x4": (64, 128, 1, 1, 512, 4, 1, 0, 0, "relu", False),
    "dcgan-64-8x8-to-16x16": (64, 256, 8, 8, 128, 4, 2, 1, 0, "relu", False),
    "dcgan-64-32x32-to-rgb": (64, 64, 32, 32, 3, 4, 2, 1, 0, "tanh", False),
}
# (B, C_in, C_out, H, W, K, up, padding, demodulate): the modulated-conv test table.
MODCONV_CASES = {
    "k3-up1-demod-rect": (2, 5, 7, 5, 6, 3, 1, None, True),
    "k3-up1-plain": (2, 5, 7, 5, 6, 3, 1, None, False),
    "k3-up1-p0-valid": (2, 3, 4, 5, 5, 3, 1, 0, True),
    "k1-up1-torgb": (2, 5, 3, 3, 5, 1, 1, None, False),
    "k1-up1-demod-b1": (1, 3, 5, 4, 3, 1, 1, None, True),
    "k3-up2-demod-rect": (2, 3, 4, 3, 5, 3, 2, None, True),
    "k3-up2-plain": (2, 3, 4, 3, 5, 3, 2, None, False),
    "k1-up2": (2, 3, 5, 3, 3, 1, 2, None, True),
    "k4-up2-p1": (1, 4, 3, 3, 3, 4, 2, 1, True),
    "k1-up1-c-over-block": (1, 70, 67, 3, 3, 1, 1, None, True),
    "k3-up1-two-tiles": (1, 3, 4, 17, 17, 3, 1, None, True),
    "k3-up2-two-tiles": (1, 3, 4, 17, 16, 3, 2, None, True),
    "stylegan2-64-16x16": (64, 128, 128, 16, 16, 3, 1, None, True),
    "stylegan2-64-16-to-32-up": (64, 128, 64, 16, 16, 3, 2, None, True),
}
# [B, C, H, W] of the penalty pieces: the test shapes, one over a block, the shipped critic input.
GP_SHAPES = {
    "3x2x5x5": (3, 2, 5, 5),
    "1x1x7x3": (1, 1, 7, 3),
    "5x3x4x4": (5, 3, 4, 4),
    "2x3x160x160": (2, 3, 160, 160),
    "512x3x64x64": (512, 3, 64, 64),
}
# The interpreter runs a handful of tiny cases in --cpu-smoke.
SMOKE = {"conv": ["k4s2p1-gen-block"], "modconv": ["k3-up2-demod-rect"]}
SMOKE_GP = ["3x2x5x5"]
DOT_OPS = ("conv_transpose2d", "modulated_conv2d")  # kernels built on tl.dot


@dataclass
class Case:
    op: str
    name: str
    make: Callable[[torch.dtype, str], list[torch.Tensor | None]]
    """(dtype, device) -> inputs; a None input is absent."""
    triton: Callable[..., object]
    reference: Callable[..., object]
    grad_of: tuple[int, ...] = ()
    """Indices of the inputs whose gradient is checked."""
    upstream: list = field(default_factory=list)


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _conv_case(name, c) -> Case:
    from ganforge.kernels import reference as ref
    from ganforge.kernels.conv_transpose import conv_transpose2d_triton

    b, c_in, h, w, c_out, k, s, p, op, act, has_bias = c

    def make(dtype, device):
        gen = torch.Generator().manual_seed(0)
        ts = [
            _randn(gen, b, c_in, h, w),
            _randn(gen, c_in, c_out, k, k, scale=(c_in * k * k) ** -0.5),
        ]
        ts.append(_randn(gen, c_out) if has_bias else None)
        return [None if t is None else t.to(device, dtype) for t in ts]

    conf = (s, p, op, act)
    return Case(
        "conv_transpose2d",
        name,
        make,
        lambda x, wt, bias: conv_transpose2d_triton(x, wt, bias, *conf),
        lambda x, wt, bias: ref.conv_transpose2d_ref(x, wt, bias, *conf),
        (0, 1, 2),
    )


def _modconv_case(name, c) -> Case:
    from ganforge.kernels.modulated_conv import modulated_conv2d_ref
    from ganforge.kernels.modulated_conv_triton import modulated_conv2d_triton

    b, c_in, c_out, h, w, k, up, padding, demod = c

    def make(dtype, device):
        gen = torch.Generator().manual_seed(0)
        ts = [
            _randn(gen, b, c_in, h, w),
            _randn(gen, c_out, c_in, k, k, scale=(c_in * k * k) ** -0.5),
        ]
        ts.append(1.0 + _randn(gen, b, c_in, scale=0.5))  # StyleGAN2's affine bias starts at 1
        return [t.to(device, dtype) for t in ts]

    conf = (demod, up, padding)
    return Case(
        "modulated_conv2d",
        name,
        make,
        lambda x, wt, st: modulated_conv2d_triton(x, wt, st, *conf),
        lambda x, wt, st: modulated_conv2d_ref(x, wt, st, *conf),
        (0, 1, 2),
    )


def _gp_cases(name, shape) -> list[Case]:
    from ganforge.kernels import reference as ref
    from ganforge.kernels.penalty import interpolate_triton, penalty_from_grad_triton

    def make_interp(dtype, device):
        gen = torch.Generator().manual_seed(0)
        real, fake = _randn(gen, *shape).to(device, dtype), _randn(gen, *shape).to(device, dtype)
        return [real, fake, torch.rand(shape[0], generator=gen).to(device)]

    def make_grad(dtype, device):
        return [_randn(torch.Generator().manual_seed(0), *shape, scale=0.3).to(device, dtype)]

    return [
        Case("gp_interpolate", name, make_interp, interpolate_triton, ref.interpolate_ref),
        Case(
            "gp_penalty",
            name,
            make_grad,
            lambda g: penalty_from_grad_triton(g, 10.0),
            lambda g: ref.penalty_from_grad_ref(g, 10.0),
            (0,),
        ),
    ]


def cases(smoke: bool) -> list[Case]:
    conv = SMOKE["conv"] if smoke else list(CONV_CASES)
    modconv = SMOKE["modconv"] if smoke else list(MODCONV_CASES)
    out = [_conv_case(n, CONV_CASES[n]) for n in conv]
    out += [_modconv_case(n, MODCONV_CASES[n]) for n in modconv]
    for n in SMOKE_GP if smoke else list(GP_SHAPES):
        out += _gp_cases(n, GP_SHAPES[n])
    return out


def _run(fn, inputs, grad_of, upcast: bool):
    """Outputs, then the gradients of inputs[grad_of] for a fixed upstream on the first output."""
    leaves = []
    for i, t in enumerate(inputs):
        if t is not None:
            t = (t.detach().float() if upcast and t.is_floating_point() else t.detach()).clone()
            t.requires_grad_(i in grad_of)
        leaves.append(t)
    with torch.enable_grad():
        outs = fn(*leaves)
        outs = list(outs) if isinstance(outs, tuple | list) else [outs]
        wrt = [leaves[i] for i in grad_of if leaves[i] is not None]
        if not wrt:
            return outs
        gen = torch.Generator().manual_seed(1)
        dtype = next(t.dtype for t in inputs if t is not None)
        up = torch.randn(outs[0].shape, generator=gen).to(dtype).to(outs[0].device, outs[0].dtype)
        grads = torch.autograd.grad(outs[0], wrt, up)
    return outs + list(grads)


def check(case: Case, dtype: torch.dtype, device: str) -> dict:
    """One case in one dtype: {"ok", "max_abs_err", "worst" (name of the worst result), ...}."""
    from ganforge.kernels.tolerance import tolerance

    row = {"op": case.op, "case": case.name, "dtype": str(dtype).removeprefix("torch.")}
    inputs = case.make(dtype, device)
    want = _run(case.reference, inputs, case.grad_of, upcast=True)
    try:
        got = _run(case.triton, inputs, case.grad_of, upcast=False)
    except Exception as e:  # a kernel that fails is a finding, not a crash of the check
        return row | {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
    grads = [f"grad{i}" for i in case.grad_of if inputs[i] is not None]
    names = [f"out{i}" for i in range(len(got) - len(grads))] + grads
    ok, worst, worst_name = True, 0.0, None
    for name, a, b in zip(names, got, want, strict=True):
        # A result's tolerance follows its own dtype: the penalty and norms are fp32 whatever the
        # input dtype, as in the tests.
        atol, rtol = tolerance(a.dtype)
        a, b = a.detach().float(), b.detach().float()
        err = (a - b).abs().max().item() if a.numel() else 0.0
        if a.shape != b.shape or not torch.isclose(a, b, atol=atol, rtol=rtol).all():
            ok = False
        if err > worst or worst_name is None:
            worst, worst_name = err, name
    return row | {"ok": ok, "max_abs_err": worst, "worst": worst_name}


def run(device: str, dtypes: list[torch.dtype], smoke: bool, interpreter: bool, left) -> list[dict]:
    """Every case in every dtype; `left()` is the section's remaining seconds (budget guard)."""
    rows = []
    for case in cases(smoke):
        print(f"gpu-check: correctness {case.op} {case.name}", flush=True)
        for dtype in dtypes:
            row = {"op": case.op, "case": case.name, "dtype": str(dtype).removeprefix("torch.")}
            if interpreter and dtype == torch.bfloat16 and case.op in DOT_OPS:
                rows.append(
                    row | {"skipped": "the Triton interpreter computes bf16 tl.dot wrongly"}
                )
            elif left() <= 0:
                rows.append(row | {"skipped": "time budget spent"})
            else:
                rows.append(check(case, dtype, device))
    return rows

"""`kernels: auto`: Triton or PyTorch per case, chosen by measurement on the device in hand.

Like `torch.backends.cudnn.benchmark`, the first call of a case (op, input shapes and dtypes, the
arguments that change the computation, device, forward-only or forward+backward) runs both
backends on that call's own inputs, once:

1. Triton's results are checked against the PyTorch reference run in fp32 on the same (rounded)
   inputs with TF32 off, within `tolerance.TOLERANCE`, the kernel tests' table. Results are the
   op's outputs and, when the call needs a backward, the gradients of the inputs that require one
   for a fixed random upstream gradient on the first output. A disagreement, or a Triton error,
   keeps PyTorch for the case with a warning that names it.
2. Both backends are timed over a few repetitions (forward, or forward+backward as the call
   needs) with CUDA events; the faster one serves the case for the rest of the process.

Each choice is logged once and listed by `auto_choices()` (training writes them into
metrics.jsonl and its checkpoint markers). CPU tensors stay on PyTorch without measuring: Triton
runs there only under its (slow) interpreter, which tests use to force the measured path with
`measuring(on_cpu=True)` or GANFORGE_KERNELS_AUTOTUNE_CPU=1 (inherited by Ray workers).
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from ganforge.kernels.tolerance import TOLERANCE
from ganforge.kernels.utils import is_interpreter

log = logging.getLogger("ganforge.kernels")

Run = Callable[..., Any]
"""run(*inputs) -> a tensor or a tuple of tensors (None where an input is absent)."""
Timer = Callable[[str, Callable[[], object]], float]
"""timer(backend, fn) -> milliseconds per call of fn (backend is "torch" or "triton")."""

CPU_ENV = "GANFORGE_KERNELS_AUTOTUNE_CPU"
CUDA_WARMUP, CUDA_REPS = 2, 5
# The interpreter takes seconds per call: the check already ran both once, so no warm-up.
CPU_REPS = 2

_choices: dict[tuple, dict[str, Any]] = {}
_lock = threading.Lock()
_override: dict[str, Any] = {"on_cpu": None, "timer": None}


def measures_on(device: torch.device) -> bool:
    """Whether `auto` measures for tensors on `device`; where it does not, it runs PyTorch."""
    if device.type == "cuda":
        return True
    on_cpu = _override["on_cpu"]
    if on_cpu is None:
        on_cpu = os.environ.get(CPU_ENV, "0") == "1"
    return device.type == "cpu" and on_cpu and is_interpreter()


def choose(
    op: str,
    inputs: Mapping[str, torch.Tensor | None],
    run_torch: Run,
    run_triton: Run,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Return "torch" or "triton" for this call of `op`, measured on its first call per case.

    inputs: the op's tensors by name, in the order both runs take them; params: the other
    arguments that change the computation (part of the case; constants like a loss weight are
    better left to the runs' closures).
    """
    values = list(inputs.values())
    device = next(t.device for t in values if t is not None)
    if not measures_on(device):
        return "torch"
    backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in values)
    key = (
        op,
        tuple(None if t is None else (tuple(t.shape), t.dtype) for t in values),
        tuple(sorted((params or {}).items())),
        str(device),
        tuple(t is not None and t.requires_grad for t in values) if backward else None,
    )
    found = _choices.get(key)
    if found is None:
        with _lock:
            found = _choices.get(key)
            if found is None:
                found = _measure(op, inputs, run_torch, run_triton, dict(params or {}), backward)
                _choices[key] = found
    return found["chosen"]


def auto_choices() -> list[dict[str, Any]]:
    """Every case `auto` has decided in this process, in the order decided: dicts with op, shape,
    dtype, device, measured ("forward" | "forward+backward"), chosen ("torch" | "triton"),
    reason, torch_ms, triton_ms, max_abs_err (None where not measured)."""
    with _lock:
        return [dict(c) for c in _choices.values()]


def reset() -> None:
    """Forget every choice (tests; a new device setting)."""
    with _lock:
        _choices.clear()


@contextmanager
def measuring(on_cpu: bool = True, timer: Timer | None = None) -> Iterator[None]:
    """Test hook: measure CPU tensors too (Triton under TRITON_INTERPRET=1) and/or time with
    `timer` instead of CUDA events / the wall clock."""
    saved = dict(_override)
    _override.update(on_cpu=on_cpu, timer=timer)
    try:
        yield
    finally:
        _override.update(saved)


def _measure(op, inputs, run_torch, run_triton, params, backward) -> dict[str, Any]:
    values = list(inputs.values())
    device = next(t.device for t in values if t is not None)
    dtype = next((t.dtype for t in values if t is not None and t.is_floating_point()), None)
    case = {
        "op": op,
        "shape": _describe(inputs, params),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "measured": "forward+backward" if backward else "forward",
    }
    entry = case | {"chosen": "torch", "torch_ms": None, "triton_ms": None, "max_abs_err": None}
    if dtype not in TOLERANCE:
        return _done(entry, f"no tolerance for {entry['dtype']}: not measured", warn=False)
    atol, rtol = TOLERANCE[dtype]
    with _on(device):
        # The reference first: an error of the call itself (bad shapes) surfaces as PyTorch's.
        with _exact_fp32():
            want = _call(run_torch, values, backward, dtype, upcast=True)()
        timer = _override["timer"] or (_cuda_timer if device.type == "cuda" else _wall_timer)
        try:
            got = _call(run_triton, values, backward, dtype)()
            ok, err, where = _agree(got, want, atol, rtol, _result_names(inputs, got, backward))
            entry["max_abs_err"] = err if err < float("inf") else None  # JSON has no inf
            if not ok:
                why = f"disagrees with the reference at {where} (atol {atol:g}, rtol {rtol:g})"
                return _done(entry, f"triton {why}: max abs error {err:.3g}", warn=True)
            entry["triton_ms"] = timer("triton", _call(run_triton, values, backward, dtype))
        except Exception as e:  # a kernel that cannot run a case must not stop training
            return _done(entry, f"triton failed: {type(e).__name__}: {e}"[:300], warn=True)
        entry["torch_ms"] = timer("torch", _call(run_torch, values, backward, dtype))
    faster = entry["triton_ms"] < entry["torch_ms"]
    entry["chosen"] = "triton" if faster else "torch"
    return _done(entry, "triton faster" if faster else "torch as fast or faster", warn=False)


def _done(entry: dict[str, Any], reason: str, warn: bool) -> dict[str, Any]:
    entry["reason"] = reason
    case = f"{entry['op']} [{entry['shape']}] {entry['dtype']} on {entry['device']}"
    if warn:
        log.warning("kernels: auto uses PyTorch for %s: %s", case, reason)
    else:
        log.info(
            "kernels: auto chose %s for %s (%s; torch %s ms, triton %s ms)",
            entry["chosen"],
            case,
            reason,
            entry["torch_ms"],
            entry["triton_ms"],
        )
    return entry


def _describe(inputs: Mapping[str, torch.Tensor | None], params: Mapping[str, Any]) -> str:
    shapes = [
        f"{k}={'x'.join(map(str, t.shape)) or 'scalar'}" if t is not None else f"{k}=None"
        for k, t in inputs.items()
    ]
    return " ".join(shapes + [f"{k}={v}" for k, v in params.items()])


def _call(run: Run, values: list, backward: bool, dtype: torch.dtype, upcast: bool = False):
    """A closure running `run` on detached copies of the inputs (plus the backward when the call
    needs one); returns the outputs followed by the gradients of the inputs that require one."""
    wants = [backward and t is not None and t.requires_grad for t in values]
    leaves = []
    for t, want in zip(values, wants, strict=True):
        if t is not None:
            t = t.detach()
            t = (t.float() if upcast and t.is_floating_point() else t).requires_grad_(want)
        leaves.append(t)
    upstream: list[torch.Tensor] = []

    def fn() -> list[torch.Tensor | None]:
        with torch.enable_grad() if backward else torch.no_grad():
            outs = run(*leaves)
            outs = list(outs) if isinstance(outs, tuple | list) else [outs]
            if not backward:
                return outs
            if not upstream:  # fixed values, rounded to the call's dtype: equal for every run
                gen = torch.Generator().manual_seed(0)
                up = torch.randn(outs[0].shape, generator=gen).to(dtype)
                upstream.append(up.to(outs[0].device, outs[0].dtype))
            wrt = [t for t, want in zip(leaves, wants, strict=True) if want]
            grads = torch.autograd.grad(outs[0], wrt, upstream[0], allow_unused=True)
        return outs + list(grads)

    return fn


def _result_names(inputs, got: list, backward: bool) -> list[str]:
    grads = [
        f"grad of {k}" for k, t in inputs.items() if backward and t is not None and t.requires_grad
    ]
    return [f"output {i}" for i in range(len(got) - len(grads))] + grads


def _agree(got: list, want: list, atol: float, rtol: float, names: list[str]):
    """(all close, max abs error over the results, name of the first result that is not)."""
    if len(got) != len(want):
        return False, float("inf"), f"the number of results ({len(got)} vs {len(want)})"
    worst = 0.0
    for name, a, b in zip(names, got, want, strict=True):
        if a is None or b is None:
            if a is None and b is None:
                continue
            return False, float("inf"), f"{name} (missing on one side)"
        if a.shape != b.shape:
            return False, float("inf"), f"{name} (shape {tuple(a.shape)} vs {tuple(b.shape)})"
        a, b = a.detach().float(), b.detach().float()
        same = (a == b) | (a.isnan() & b.isnan())
        diff = torch.where(same, 0.0, (a - b).abs()).nan_to_num(nan=float("inf"))
        err = diff.max().item() if diff.numel() else 0.0
        worst = max(worst, err)
        if not torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True).all():
            return False, worst, name
    return True, worst, None


@contextmanager
def _exact_fp32() -> Iterator[None]:
    """cuDNN convolutions default to TF32 on Ampere+; the reference must be exact fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextmanager
def _on(device: torch.device) -> Iterator[None]:
    """CUDA events time the current stream of the current device: make it the tensors' one."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device):
        yield


def _cuda_timer(backend: str, fn: Callable[[], object]) -> float:
    """Median milliseconds of CUDA_REPS calls after CUDA_WARMUP (cuDNN picks its algorithm and
    Triton compiles in the warm-up)."""
    for _ in range(CUDA_WARMUP):
        fn()
    times = []
    for _ in range(CUDA_REPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _wall_timer(backend: str, fn: Callable[[], object]) -> float:
    """Median wall-clock milliseconds of CPU_REPS calls (the interpreter path of the tests)."""
    times = []
    for _ in range(CPU_REPS):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)

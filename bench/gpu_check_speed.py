"""Kernel speed on the device: transposed convolution forward+backward and the gradient penalty,
Triton vs eager PyTorch (cuDNN) vs `torch.compile`, at the shipped shapes.

Rows:
- `conv_transpose2d`: every transposed conv of the DCGAN generator (`bench.kernels`' layer list)
  at each resolution and batch, forward+backward, backends cudnn | triton | compile.
- `gp_pieces`: the penalty's fusable part on a critic-input-sized tensor (interpolation forward,
  then penalty-from-gradient forward+backward), backends eager | triton | compile.
- `critic_step_gp`: a whole WGAN-GP critic forward+backward with the penalty (its double
  backward included), gradient-penalty backend torch | triton. `torch.compile` cannot run the
  penalty's double backward, so this row has no compile column.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_ms(fn: Callable[[], object], device: str, warmup: int, reps: int) -> float:
    """Median milliseconds per call: CUDA events on the GPU (asynchronous work), the wall clock
    elsewhere. The warm-up absorbs Triton/inductor compilation and cuDNN's algorithm search."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def compiled(fn, backend: str):
    """A fresh `torch.compile` of `fn`: dynamo's cache is per code object, so one compiled
    function called at many shapes would hit its recompile limit and silently run eager."""
    torch._dynamo.reset()
    return torch.compile(fn, backend=backend, dynamic=False)


def _conv_fn(layer: dict, batch: int, dtype, device: str, backend: str, compile_backend: str):
    from ganforge.kernels import reference as ref
    from ganforge.kernels.conv_transpose import conv_transpose2d_triton

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, layer["c_in"], layer["hw"], layer["hw"], generator=gen)
    w = torch.randn(layer["c_in"], layer["c_out"], layer["k"], layer["k"], generator=gen) * 0.02
    x, w = (t.to(device, dtype).requires_grad_(True) for t in (x, w))
    conf = (None, layer["s"], layer["p"], 0, layer["act"])
    op = {"cudnn": ref.conv_transpose2d_ref, "triton": conv_transpose2d_triton}.get(backend)
    if backend == "compile":
        op = compiled(ref.conv_transpose2d_ref, compile_backend)
    grad_y = torch.randn_like(op(x, w, *conf).detach())

    def step():
        x.grad = w.grad = None
        op(x, w, *conf).backward(grad_y)

    return step


def conv_rows(layers, batches, dtype, device, compile_backend, warmup, reps, left) -> list:
    """layers: {resolution: the generator's transposed convs (`bench.kernels.generator_layers`)}."""
    from bench.kernels import _conv_rates

    rows = []
    for res, res_layers in layers.items():
        for i, layer in enumerate(res_layers):
            print(f"gpu-check: speed conv_transpose2d {res} layer {i}", flush=True)
            for batch in batches:
                row = {"op": "conv_transpose2d", "resolution": res, "layer": i, **layer}
                row |= {"batch": batch, "dtype": str(dtype).removeprefix("torch.")}
                ms = {}
                for backend in ("cudnn", "triton", "compile"):
                    if left() <= 0:
                        row[f"{backend}_ms"] = None
                        row["skipped"] = "time budget spent"
                        continue
                    got = _timed(row, backend, warmup, reps, device, _conv_fn, layer, batch,
                                 dtype, device, backend, compile_backend)  # fmt: skip
                    if got is not None:
                        ms[backend] = got
                        row[f"{backend}_ms"] = round(got, 4)
                if "triton" in ms:
                    hw = (layer["hw"] - 1) * layer["s"] - 2 * layer["p"] + layer["k"]
                    y = torch.empty(batch, layer["c_out"], hw, hw, dtype=dtype, device="meta")
                    rates = _conv_rates(layer, batch, y, ms["triton"], full=True)
                    row["triton_tflop_s"] = rates["tflop_s"]
                row |= _speedups(ms, "cudnn")
                rows.append(row)
    return rows


def _timed(row: dict, backend: str, warmup: int, reps: int, device: str, make, *args):
    """ms of the step `make(*args)` builds, or None with `<backend>_error` in `row`: a kernel or
    compiler failing at one shape is a finding, not the end of the check."""
    try:
        return time_ms(make(*args), device, warmup, reps)
    except Exception as e:
        row[f"{backend}_error"] = f"{type(e).__name__}: {e}"[:400]
        return None


def _speedups(ms: dict, base: str) -> dict:
    """triton's speed-up over each other backend (> 1: Triton faster)."""
    if "triton" not in ms:
        return {}
    return {f"triton_vs_{k}": round(v / ms["triton"], 3) for k, v in ms.items() if k != "triton"}


def _gp_pieces_fn(shape, dtype, device, backend: str, compile_backend: str):
    from ganforge.kernels import reference as ref
    from ganforge.kernels.penalty import interpolate_triton, penalty_from_grad_triton

    def eager(real, fake, eps, grad):
        return ref.interpolate_ref(real, fake, eps), ref.penalty_from_grad_ref(grad, 10.0)[0]

    def triton(real, fake, eps, grad):
        return interpolate_triton(real, fake, eps), penalty_from_grad_triton(grad, 10.0)[0]

    fn = {"eager": eager, "triton": triton}.get(backend) or compiled(eager, compile_backend)
    gen = torch.Generator().manual_seed(0)
    real, fake, grad = (torch.randn(*shape, generator=gen).to(device, dtype) for _ in range(3))
    eps = torch.rand(shape[0], generator=gen).to(device)
    grad.requires_grad_(True)

    def step():
        grad.grad = None
        fn(real, fake, eps, grad)[1].backward()

    return step


def _critic_gp_fn(res: int, batch: int, dtype, device, backend: str, width: int | None):
    from ganforge.config import ModelConfig
    from ganforge.kernels import gradient_penalty
    from ganforge.models import build_discriminator, get_variant

    spec = get_variant("wgan-gp")
    model = ModelConfig(variant="wgan-gp", resolution=res, **({"width": width} if width else {}))
    d = build_discriminator(model).to(device)
    for p in d.parameters():  # DeepSpeed's bf16 casts parameters and keeps buffers in fp32
        p.data = p.data.to(dtype)
    gen = torch.Generator().manual_seed(0)
    real, fake = (torch.randn(batch, 3, res, res, generator=gen).to(device, dtype) for _ in "rf")
    eps = torch.rand(batch, generator=gen).to(device)

    def step():
        d.zero_grad(set_to_none=True)
        loss = spec.loss.d_loss(d(real, None).float(), d(fake, None).float())
        gp = gradient_penalty(lambda x: d(x, None).float(), real, fake, 10.0, eps, backend)[0]
        (loss + gp).backward()

    return step


def gp_rows(
    resolutions, batches, width, dtype, device, compile_backend, warmup, reps, left
) -> list:
    """width: the critic's model.width (None: the shipped 64)."""
    rows = []
    for res in resolutions:
        for batch in batches:
            print(f"gpu-check: speed gradient penalty {res}x{batch}", flush=True)
            shape = (batch, 3, res, res)
            dname = str(dtype).removeprefix("torch.")
            pieces = {"op": "gp_pieces", "resolution": res, "batch": batch, "dtype": dname}
            step = {"op": "critic_step_gp", "resolution": res, "batch": batch, "dtype": dname}
            ms_pieces, ms_step = {}, {}
            for backend in ("eager", "triton", "compile"):
                if left() <= 0:
                    pieces["skipped"] = "time budget spent"
                    break
                got = _timed(pieces, backend, warmup, reps, device, _gp_pieces_fn, shape, dtype,
                             device, backend, compile_backend)  # fmt: skip
                if got is not None:
                    ms_pieces[backend] = got
            for backend in ("torch", "triton"):
                if left() <= 0:
                    step["skipped"] = "time budget spent"
                    break
                got = _timed(step, backend, warmup, reps, device, _critic_gp_fn, res, batch,
                             dtype, device, backend, width)  # fmt: skip
                if got is not None:
                    ms_step[backend] = got
            for row, ms, base in ((pieces, ms_pieces, "eager"), (step, ms_step, "torch")):
                row |= {f"{k}_ms": round(v, 4) for k, v in ms.items()} | _speedups(ms, base)
                rows.append(row)
    return rows

"""Training-step throughput per variant, its FLOP count, and model FLOPs utilisation (MFU).

One iteration is what training does per generator step: the recipe's n_critic critic steps
(losses, the variant's regularisers on their lazy schedule, optimiser step) then one generator
step, on synthetic data already on the device (this measures the models, not the input path).
Precision as DeepSpeed's bf16 mode computes: parameters and activations in the given dtype,
buffers (BatchNorm statistics) in fp32; the optimisers run on the low-precision parameters
(DeepSpeed's fp32 master copy and its cast are not included).

Modes: `eager` (PyTorch reference kernels), `compile` (`torch.compile` of G and D; the
penalties' double backward runs through D's eager module, which compiled graphs do not support),
`triton` (ganforge's Triton kernels) and `auto` (`kernels: auto`, measured per case).

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` over the eager iterations (the other
modes compute the same mathematics); MFU = FLOPs per second / the device's dense peak.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from bench.gpu_check_speed import compiled

MODES = {"eager": "torch", "compile": "torch", "triton": "triton", "auto": "auto"}
"""Mode -> `model.kernels`."""

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, by a substring of the CUDA device name;
# the first match wins, so the more specific names come first. Sources: NVIDIA's H200, H100 and
# A100 datasheets (the sparsity figures there are twice these).
PEAK_BF16: list[tuple[str, float]] = [
    ("H200 NVL", 835.5e12),
    ("H200", 989.4e12),  # H200 SXM
    ("H100 NVL", 835.5e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0e12),
]


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a known device, None for others (MFU is then reported as null)."""
    for key, peak in PEAK_BF16:
        if key in device_name:
            return peak
    return None


def mfu(flops_per_iter: float, ms_per_iter: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over the peak (a fraction), None without a known peak."""
    if peak is None or ms_per_iter <= 0:
        return None
    return flops_per_iter / (ms_per_iter / 1e3) / peak


@dataclass(frozen=True)
class StepSetup:
    variant: str
    resolution: int
    batch: int
    mode: str = "eager"
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    width: int | None = None
    """model.width override (None: the shipped config's); tests use a tiny one."""
    compile_backend: str = "inductor"


def _config(s: StepSetup):
    from ganforge.config import ConfigError, load_config, resolve_config_path
    from ganforge.models import get_variant

    spec = get_variant(s.variant)
    overrides = {
        "model.resolution": s.resolution,
        "model.kernels": MODES[s.mode],
        "model.num_classes": 10 if spec.conditional else None,
        "model.width": s.width,
        "train.micro_batch": s.batch,
    }
    try:
        return load_config(resolve_config_path(s.variant), overrides), spec
    except ConfigError:  # a variant without a shipped config: its published recipe
        return load_config(None, spec.recipe() | overrides), spec


def _cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    for p in module.parameters():  # as DeepSpeed's bf16/fp16: buffers stay fp32
        p.data = p.data.to(dtype)
    return module


def _optimizer(params, optim):
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=optim.lr, betas=optim.betas)
    return torch.optim.RMSprop(params, lr=optim.lr)


def build_step(s: StepSetup):
    """A closure running one iteration (n_critic critic steps + one generator step)."""
    from ganforge.models import build_discriminator, build_generator
    from ganforge.models.regularisers import CriticBatch

    if s.mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {s.mode!r}")
    cfg, spec = _config(s)
    torch.manual_seed(0)
    g = _cast_parameters(build_generator(cfg.model).to(s.device), s.dtype)
    d = _cast_parameters(build_discriminator(cfg.model).to(s.device), s.dtype)
    opt_g, opt_d = _optimizer(g.parameters(), cfg.optim_g), _optimizer(d.parameters(), cfg.optim_d)
    regularisers = spec.build_regularisers(cfg.loss, cfg.model)
    d_eager, g_run, d_run = d, g, d
    if s.mode == "compile":
        g_run, d_run = compiled(g, s.compile_backend), torch.compile(d, backend=s.compile_backend)
    b, m = s.batch, cfg.model
    real = torch.rand(b, m.channels, m.resolution, m.resolution, device=s.device) * 2 - 1
    real = real.to(s.dtype)
    ncls = m.num_classes if spec.conditional else 0
    state = {"critic_steps": 0}

    def labels():
        return torch.randint(0, ncls, (b,), device=s.device) if ncls else None

    def noise():
        return torch.randn(b, m.z_dim, device=s.device, dtype=s.dtype)

    def iteration() -> None:
        for _ in range(cfg.loss.n_critic):
            y, yf = labels(), labels()
            with torch.no_grad():
                fake = g_run(noise(), yf)
            loss = spec.loss.d_loss(d_run(real, y).float(), d_run(fake, yf).float())
            eps = torch.rand(b, device=s.device)
            batch = CriticBatch(lambda x, y=y: d_eager(x, y).float(), real, fake, eps)
            for reg in regularisers:  # the engines' lazy schedule: every k-th step, weight x k
                if state["critic_steps"] % reg.every == 0 and (
                    out := reg.penalty(batch, reg.weight * reg.every)
                ):
                    loss = loss + out.value
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
            for reg in regularisers:
                reg.after_step(d_eager)
            state["critic_steps"] += 1
        yf = labels()
        d.requires_grad_(False)
        lg = spec.loss.g_loss(d_run(g_run(noise(), yf), yf).float())
        opt_g.zero_grad(set_to_none=True)
        lg.backward()
        opt_g.step()
        d.requires_grad_(True)

    iteration.n_critic = cfg.loss.n_critic  # type: ignore[attr-defined]
    return iteration


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # CUDA runs asynchronously: time the work, not the launches


class _NoModules:
    """Stands in for FlopCounterMode's ModuleTracker: its backward hooks make an
    autograd.grad(create_graph=True) inside the context (the penalties) fail with "A leaf node
    was passed to _will_engine_execute_node" (torch 2.13). Everything counts under "Global"."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_flops(s: StepSetup, warmup: int, iters: int) -> float:
    """FLOPs per iteration, counted over the same window of iterations `measure` times (lazy
    regularisers then fall on the same steps), with the PyTorch reference kernels."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModules()
    step = build_step(dataclasses.replace(s, mode="eager"))
    for _ in range(warmup):
        step()
    with counter:
        for _ in range(iters):
            step()
    return counter.get_total_flops() / iters


def measure(s: StepSetup, warmup: int, iters: int) -> dict:
    """ms per iteration over `iters` after `warmup` iterations (compilation happens in the first:
    its wall time is reported as first_iter_s), and images through the critic per second."""
    step = build_step(s)
    t0 = time.perf_counter()
    step()
    _sync(s.device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    _sync(s.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(s.device)
    ms = (time.perf_counter() - t0) * 1e3 / iters
    img_s = step.n_critic * s.batch / (ms / 1e3)
    return {"ms_per_iter": round(ms, 3), "img_s": round(img_s, 1), "first_iter_s": round(first, 2)}

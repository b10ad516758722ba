"""What each variant costs as shipped: parameters, forward FLOPs per image, CPU step time.

Models come from the shipped configs (`configs/<variant>.yaml`, 32x32x3, conditional variants
with 10 classes). FLOPs: `torch.utils.flop_counter` on one forward pass (matmuls and
convolutions, 2 per multiply-add; elementwise ops, normalisation and the modulation of weights
not counted), per image. Step time: one training step as the engines run it (n_critic critic
steps with the variant's loss and regularisers on their lazy schedule, then one generator
step), plain PyTorch with torch's Adam/RMSprop on synthetic tensors: the models' own cost,
without the data pipeline, Ray or DeepSpeed (`train_throughput.py` measures those). The mean over
`--steps` steps after `--warmup`; with the default 16 steps a lazy R1 (every 16 critic steps)
falls once into each window. Two clocks: wall time, and this process's CPU time (all threads),
which a busy shared machine inflates much less (with `--threads 1` it approximates the wall
time the step would take alone on one core). Prints JSON, with the load average.

    python bench/model_cost.py --out bench/results/model_cost-cpu.json
    python bench/model_cost.py --variants stylegan2 cstylegan2 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import environment
from ganforge.config import GanforgeConfig, load_config, resolve_config_path

NUM_CLASSES = 10


def _config(variant: str) -> GanforgeConfig:
    cfg = load_config(resolve_config_path(variant), {"model.kernels": "torch"})
    if cfg.model.num_classes == 0:
        cfg.model.num_classes = NUM_CLASSES  # what a CIFAR-10 manifest gives conditional ones
    return cfg


def _flops_per_image(fn, batch: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter:  # with autograd on: its module tracker fails on views made under no_grad
        fn()
    return counter.get_total_flops() / batch


def _optimizer(params, opt):
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, betas=opt.betas)
    return torch.optim.RMSprop(params, lr=opt.lr)


def measure(variant: str, batch: int, steps: int, warmup: int) -> dict:
    from ganforge.models import build_discriminator, build_generator, get_variant
    from ganforge.models.regularisers import CriticBatch

    cfg, spec = _config(variant), get_variant(variant)
    torch.manual_seed(0)
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    regs = spec.build_regularisers(cfg.loss, cfg.model)
    opt_g, opt_d = _optimizer(g.parameters(), cfg.optim_g), _optimizer(d.parameters(), cfg.optim_d)
    m = cfg.model

    def noise():
        z = torch.randn(batch, m.z_dim)
        y = torch.randint(0, m.num_classes, (batch,)) if spec.conditional else None
        return z, y

    z, y = noise()
    real = torch.rand(batch, m.channels, m.resolution, m.resolution) * 2 - 1
    g_flops = _flops_per_image(lambda: g(z, y), batch)
    d_flops = _flops_per_image(lambda: d(real, y), batch)

    critic_steps = 0

    def train_step() -> None:
        nonlocal critic_steps
        for _ in range(cfg.loss.n_critic):
            z, y = noise()
            with torch.no_grad():
                fake = g(z, y)
            loss = spec.loss.d_loss(d(real, y).float(), d(fake, y).float())
            batch_ = CriticBatch(lambda x, y=y: d(x, y).float(), real, fake, torch.rand(batch))
            for reg in regs:  # the engines' lazy schedule: every k-th step, weighted by k
                if critic_steps % reg.every == 0 and (
                    out := reg.penalty(batch_, reg.weight * reg.every)
                ):
                    loss = loss + out.value
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
            for reg in regs:
                reg.after_step(d)
            critic_steps += 1
        z, y = noise()
        for p in d.parameters():
            p.requires_grad_(False)
        loss = spec.loss.g_loss(d(g(z, y), y).float())
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        for p in d.parameters():
            p.requires_grad_(True)

    for _ in range(warmup):
        train_step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        train_step()
    step_s = (time.perf_counter() - t0) / steps
    step_cpu_s = (time.process_time() - c0) / steps
    return {
        "variant": variant,
        "resolution": m.resolution,
        "width": m.width,
        "z_dim": m.z_dim,
        "n_critic": cfg.loss.n_critic,
        "g_params": sum(p.numel() for p in g.parameters()),
        "d_params": sum(p.numel() for p in d.parameters()),
        "g_gflop_per_image": round(g_flops / 1e9, 4),
        "d_gflop_per_image": round(d_flops / 1e9, 4),
        "step_ms": round(step_s * 1e3, 1),
        "step_cpu_ms": round(step_cpu_s * 1e3, 1),
        "critic_img_per_s": round(cfg.loss.n_critic * batch / step_s, 1),
        "critic_img_per_cpu_s": round(cfg.loss.n_critic * batch / step_cpu_s, 1),
    }


def main() -> None:
    from ganforge.models import list_variants

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=None, help="default: every registered one")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16, help="timed generator steps per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    results = []
    for variant in args.variants or list_variants():
        row = measure(variant, args.batch, args.steps, args.warmup)
        print(json.dumps(row), flush=True)
        results.append(row)
    out = {
        "benchmark": "model_cost",
        **environment(),
        "batch": args.batch,
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Training throughput: `ganforge train` (Ray + DeepSpeed, 1 worker) vs a plain PyTorch loop.

Both run the same models, batch, data loader and number of threads; the difference is the
overhead of Ray Train + DeepSpeed engines. Throughput = real images through the critic per
second (n_critic batches per generator step). Prints JSON.

ganforge is timed on two paths (`--paths`): `in-process` calls `run_training()` in this process
(`ganforge_img_s`), `cli` runs the `ganforge train` command as a subprocess with the same
settings as `--set` options, as users run it (`ganforge_cli_img_s`; bench/train_cli.py).
`--threads auto` leaves `cluster.cpus_per_worker` unset (ganforge's default) and gives the plain
loop every CPU of this machine.

The plain loop also runs in kernel modes (`--modes`): `eager` (PyTorch reference kernels),
`compile` (`torch.compile` of G and D; the penalty's double backward runs through D's eager
module, since compiled graphs do not support it) and `triton` (ganforge's Triton kernels; CUDA
only, skipped with the reason elsewhere).

    python bench/train_throughput.py --data DIR --steps 60 --variants dcgan wgan-gp
    python bench/train_throughput.py --data DIR --device cuda --modes eager compile triton
    python -m bench.train_throughput --variants dcgan --paths in-process cli --threads auto
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import environment
from ganforge.config import GanforgeConfig, load_config, resolve_config_path
from ganforge.rundir import RunDir


def _overrides(data: str | None, steps: int, batch: int, threads: int | None) -> dict[str, object]:
    """The benchmark's settings on top of the variant's config (threads None = not set)."""
    return {
        "data.urls": data,
        "train.max_steps": steps,
        "train.micro_batch": batch,
        "train.log_every": max(1, steps // 6),
        "train.sample_every": 10**6,
        "train.checkpoint_every": 10**6,
        "cluster.cpus_per_worker": threads,
        "data.num_workers": 1,
    }


def _config(
    variant: str, data: str | None, steps: int, batch: int, threads: int | None, run_dir: str
) -> GanforgeConfig:
    overrides = _overrides(data, steps, batch, threads) | {"run_dir": run_dir}
    return load_config(resolve_config_path(variant), overrides)


MODES = ("eager", "compile", "triton")
PATHS = ("in-process", "cli")


def _threads(value: str) -> int | None:
    """--threads: a positive count, or `auto` (None: ganforge's default)."""
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    return int(value)


def plain_pytorch(
    cfg: GanforgeConfig, urls: list[str], warmup: int, mode: str = "eager", device: str = "cpu"
) -> float:
    """The reference: the variant's own models, loss and regularisers (its `VariantSpec`), torch
    optimizers, no Ray, no DeepSpeed."""
    from ganforge.data.loader import LoaderOptions, build_loader
    from ganforge.models import build_discriminator, build_generator, get_variant
    from ganforge.models.regularisers import CriticBatch

    torch.set_num_threads(cfg.cluster.cpus_per_worker)
    torch.manual_seed(0)
    spec = get_variant(cfg.model.variant)
    backend = "triton" if mode == "triton" else "torch"
    cfg.model.kernels = backend
    g, d = build_generator(cfg.model).to(device), build_discriminator(cfg.model).to(device)
    # `d_eager` serves the penalty: its create_graph backward cannot run through a compiled graph.
    d_eager = d
    if mode == "compile":
        g, d = torch.compile(g), torch.compile(d)
    opt = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}
    kw_g = {"betas": cfg.optim_g.betas} if cfg.optim_g.name == "adam" else {}
    kw_d = {"betas": cfg.optim_d.betas} if cfg.optim_d.name == "adam" else {}
    opt_g = opt[cfg.optim_g.name](g.parameters(), lr=cfg.optim_g.lr, **kw_g)
    opt_d = opt[cfg.optim_d.name](d.parameters(), lr=cfg.optim_d.lr, **kw_d)
    shape = LoaderOptions(cfg.train.micro_batch, cfg.model.resolution, cfg.model.channels)
    loader = build_loader(urls, cfg.data, shape)  # rank 0 of 1, seed 0, no pinning
    batches, b = iter(loader), cfg.train.micro_batch
    ncls = g.num_classes
    regularisers = spec.build_regularisers(cfg.loss, cfg.model)
    critic_steps = 0

    def labels():
        return torch.randint(0, ncls, (b,), device=device) if spec.conditional else None

    def noise():
        return torch.randn(b, cfg.model.z_dim, device=device)

    t0, n_images = None, 0
    for step in range(cfg.train.max_steps):
        if step == warmup:
            _sync(device)
            t0, n_images = time.perf_counter(), 0
        for _ in range(cfg.loss.n_critic):
            real, y = next(batches)
            real, y = real.to(device, non_blocking=True), y.to(device, non_blocking=True)
            y = y if spec.conditional else None
            yf = labels()
            with torch.no_grad():
                fake = g(noise(), yf)
            loss = spec.loss.d_loss(d(real, y), d(fake, yf))
            batch = CriticBatch(
                lambda x, y=y: d_eager(x, y).float(), real, fake, torch.rand(b, device=device)
            )
            for reg in regularisers:  # the engines' lazy schedule: every k-th step, weight x k
                if critic_steps % reg.every == 0 and (
                    out := reg.penalty(batch, reg.weight * reg.every)
                ):
                    loss = loss + out.value
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
            for reg in regularisers:
                reg.after_step(d)
            critic_steps += 1
            n_images += b
        yf = labels()
        for p in d.parameters():
            p.requires_grad_(False)
        lg = spec.loss.g_loss(d(g(noise(), yf), yf))
        opt_g.zero_grad(set_to_none=True)
        lg.backward()
        opt_g.step()
        for p in d.parameters():
            p.requires_grad_(True)
    _sync(device)
    return n_images / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # CUDA runs asynchronously: time the work, not the launches


def plain_mode(
    cfg: GanforgeConfig, urls, warmup: int, mode: str, device: str, threads: int
) -> float | None:
    """One plain-loop measurement on `threads` torch threads; None (and a note on stderr) where
    the mode cannot run."""
    if mode == "triton" and not device.startswith("cuda"):
        print(f"{cfg.model.variant}: triton mode needs --device cuda; skipped", file=sys.stderr)
        return None
    cfg = cfg.model_copy(deep=True)
    cfg.cluster.cpus_per_worker = threads
    return plain_pytorch(cfg, urls, warmup, mode, device)


def ganforge_train(cfg: GanforgeConfig) -> tuple[float, dict[str, object]]:
    """Through `run_training` (Ray Train + DeepSpeed); images/s from metrics.jsonl, warm-up
    window excluded, and what the worker probe saw (bench/worker_probe.py)."""
    from bench.worker_probe import WorkerProbe
    from ganforge.cluster.launch import run_training

    with WorkerProbe(cfg.run_dir, os.getpid()) as probe:
        run = run_training(cfg, resume=False, show_progress=False)
    recs = [json.loads(x) for x in RunDir(run).metrics_path.read_text().splitlines()]
    rates = [r["images_per_s"] for r in recs[1:]]  # first window holds compile/warm-up
    return statistics.median(rates), probe.report()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="shards (default: the embedded demo subset)")
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["dcgan", "cdcgan", "wgan", "wgan-gp", "cwgan-gp", "stylegan2", "cstylegan2"],
    )
    ap.add_argument("--steps", type=int, default=60, help="generator steps per measurement")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--threads",
        type=_threads,
        default=2,
        help="torch threads (= CPUs per worker), or auto: ganforge's default, all CPUs here",
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda (ganforge train then uses --gpu)")
    ap.add_argument(
        "--modes", nargs="+", default=["eager"], choices=MODES, help="plain-loop kernel modes"
    )
    ap.add_argument(
        "--paths",
        nargs="+",
        default=list(PATHS),
        choices=PATHS,
        help="how ganforge is run: run_training() in this process, and/or the `ganforge train` "
        "command (a subprocess, the users' path)",
    )
    ap.add_argument(
        "--note", default=None, help="recorded in the JSON (e.g. the machine was shared)"
    )
    ap.add_argument("--out", default=None, help="also write the JSON here")
    return ap


def in_process(
    cfg: GanforgeConfig, threads: int | None, gpus: int
) -> tuple[float, dict[str, object]]:
    """`run_training()` in this process, on a Ray cluster of its own started here and stopped
    after (so that it does not idle beside the other measurements)."""
    import ray

    from bench.train_cli import RAY_START_TIMEOUT, START_TRIES

    for start in range(1, START_TRIES + 1):
        try:
            ray.init(
                address="local",  # never join a `ray start` cluster elsewhere on the machine
                num_cpus=threads,  # None: all of them, as `ganforge train` gets by default
                num_gpus=gpus,
                logging_level="ERROR",
                log_to_driver=False,
            )
            break
        except Exception as e:  # Ray raises a bare Exception for this one
            ray.shutdown()
            if RAY_START_TIMEOUT not in str(e) or start == START_TRIES:
                raise
    try:
        return ganforge_train(cfg)
    finally:
        ray.shutdown()


def measure(variant: str, args: argparse.Namespace, tmp: str) -> dict[str, object]:
    """One variant: the plain loop in each kernel mode, then ganforge on each path."""
    from bench.train_cli import run_cli
    from ganforge.data.resolve import resolve_data

    gpus = 1 if args.device.startswith("cuda") else 0
    cfg = _config(variant, args.data, args.steps, args.batch, args.threads, tmp + "/run")
    cfg.cluster.gpu = bool(gpus)
    urls, manifest = resolve_data(cfg.data)
    if manifest and cfg.model.num_classes == 0:
        cfg.model.num_classes = len(manifest["classes"])
    plain_threads = args.threads or len(os.sched_getaffinity(0))
    plain = {
        mode: plain_mode(cfg, urls, args.steps // 6, mode, args.device, plain_threads)
        for mode in args.modes
    }
    row: dict[str, object] = {"variant": variant}
    probes = {}
    if "in-process" in args.paths:
        rate, probes["in-process"] = in_process(cfg, args.threads, gpus)
        row["ganforge_img_s"] = round(rate, 1)
    if "cli" in args.paths:
        sets = _overrides(args.data, args.steps, args.batch, args.threads)
        sets["cluster.gpu"] = True if gpus else None
        cli = run_cli(variant, sets, tmp + "/cli-run", Path(tmp) / "cli.log")
        row |= {
            "ganforge_cli_img_s": round(cli.img_s, 1),
            "cli_wall_s": round(cli.wall_s, 1),
            "cli_cpus_per_worker": cli.cpus_per_worker,
            "cli_torch_threads": cli.torch_threads,
            "cli_starts": cli.starts,
        }
        probes["cli"] = cli.probe
    for mode, rate in plain.items():
        row[f"plain_{mode}_img_s"] = rate if rate is None else round(rate, 1)
    if plain.get("eager"):
        for key, name in (("ganforge_img_s", "overhead"), ("ganforge_cli_img_s", "cli_overhead")):
            if key in row:
                row[name] = round(1 - row[key] / plain["eager"], 4)
    return row | {"probe": probes}


def main() -> None:
    args = parser().parse_args()
    load_start = os.getloadavg()
    results = []
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            row = measure(variant, args, tmp)
        print(json.dumps(row), flush=True)
        results.append(row)
    out = {
        "benchmark": "train_throughput",
        **environment(),
        "batch": args.batch,
        "threads": "auto" if args.threads is None else args.threads,
        "plain_threads": args.threads or len(os.sched_getaffinity(0)),
        "paths": args.paths,
        "modes": args.modes,
        "steps": args.steps,
        "data": args.data or "embedded CIFAR-10 demo subset (raw-pixel shards)",
        # 1-minute load averages: a machine shared with other work times lower, and unevenly
        "load_average": {"start": round(load_start[0], 1), "end": round(os.getloadavg()[0], 1)},
        "note": args.note,
        "results": results,
        "goal": "Ray + DeepSpeed overhead <= 10% on CPU (1 worker, batch 64, 32x32)",
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Serving load test: ganforge's app (batching on / off) vs a bare Ray Serve floor. Prints JSON.

Every system runs the same DCGAN-size generator (random weights, `--width`, 32x32) in one
replica on a local Ray cluster, behind Serve's HTTP proxy on loopback. An async aiohttp client
sends one-image requests from N concurrent clients; each point is bounded by `--requests` and
`--seconds`. The floor is the least a Serve deployment can do per request: draw z, run the
generator (with the same `@serve.batch` settings), return one number; no validation, no
encoding, no metrics.

    python -m bench.serve_load --out bench/results/serve_load-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import environment

FLOOR_APP = "floor"


def make_checkpoint(root: Path, width: int, z_dim: int) -> Path:
    from ganforge.checkpoint import write_weights_checkpoint
    from ganforge.config import GanforgeConfig
    from ganforge.models import build_discriminator, build_generator

    cfg = GanforgeConfig.model_validate(
        {"model": {"variant": "dcgan", "width": width, "z_dim": z_dim}}
    )
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    return write_weights_checkpoint(root / "checkpoints" / "step-1", cfg, g, g, d, 1, 1)


def floor_app(path: str, max_batch_size: int, num_cpus: float, max_ongoing: int):
    """A bare deployment: random z -> generator -> one float. Same batching as the app."""
    from ray import serve

    @serve.deployment(max_ongoing_requests=max_ongoing, ray_actor_options={"num_cpus": num_cpus})
    class Floor:
        def __init__(self):
            from ganforge.checkpoint import load_model

            torch.set_num_threads(max(1, int(num_cpus)))
            self.g = load_model(path).generator
            self.batch.set_max_batch_size(max_batch_size)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
        async def batch(self, zs: list[torch.Tensor]) -> list[float]:
            with torch.inference_mode():
                out = self.g(torch.cat(zs))
            return out.mean(dim=(1, 2, 3)).tolist()

        async def __call__(self, request) -> float:
            return await self.batch(torch.randn(1, self.g.z_dim))

    return Floor.bind()


async def load_point(url: str, body: dict | None, clients: int, requests: int, seconds: float):
    """`clients` concurrent loops; stops after `requests` requests or `seconds`."""
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(i: int) -> None:
            payload = None if body is None else {**body, "seed": i}
            t0 = time.perf_counter()
            async with session.post(url, json=payload) as r:
                await r.read()
                if r.status != 200:
                    errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                    return
            latencies.append(time.perf_counter() - t0)

        async def client() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                await one(sent)

        await asyncio.gather(*(one(10**6 + i) for i in range(min(clients, 8))))  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return round(1e3 * lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else float("nan")

    return {
        "clients": clients,
        "requests": len(lat),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "images_per_s": round(len(lat) / elapsed, 2),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": round(1e3 * statistics.fmean(lat), 2) if lat else float("nan"),
    }


def run_points(systems: dict[str, tuple[str, dict | None]], args) -> dict[str, list[dict]]:
    """Interleaved: at each concurrency every system runs once, so drifting background load on
    a shared machine hits all of them alike."""
    results: dict[str, list[dict]] = {name: [] for name in systems}
    for c in args.clients:
        for name, (url, body) in systems.items():
            results[name].append(asyncio.run(load_point(url, body, c, args.requests, args.seconds)))
    return results


def goals(results: dict[str, list[dict]]) -> dict[str, Any]:
    floor = {p["clients"]: p for p in results["floor"]}
    on = {p["clients"]: p for p in results["ganforge_batch32"]}
    off = {p["clients"]: p for p in results["ganforge_batch1"]}
    ratio = {c: round(on[c]["images_per_s"] / floor[c]["images_per_s"], 3) for c in on}
    p99 = {c: round(on[c]["p99_ms"] / floor[c]["p99_ms"], 3) for c in on}
    speedup = round(on[32]["images_per_s"] / off[32]["images_per_s"], 3) if 32 in on else None
    return {
        "throughput_vs_floor": ratio,
        "throughput_vs_floor_met (>=0.8)": all(r >= 0.8 for r in ratio.values()),
        "batching_speedup_at_32": speedup,
        "batching_speedup_met (>=2)": speedup is not None and speedup >= 2,
        "p99_vs_floor": p99,
        "p99_met (<2x)": all(r < 2 for r in p99.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--requests", type=int, default=400, help="most requests per point")
    ap.add_argument("--seconds", type=float, default=10.0, help="most seconds per point")
    ap.add_argument("--width", type=int, default=64, help="generator width (64 = DCGAN size)")
    ap.add_argument("--z-dim", type=int, default=128)
    ap.add_argument(
        "--max-ongoing", type=int, default=128, help="max_ongoing_requests (app default: 128)"
    )
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    ap.add_argument("--ray-cpus", type=int, default=None, help="ray.init(num_cpus=...)")
    ap.add_argument("--gpu", action="store_true", help="replicas on one GPU each")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()

    import ray
    from ray import serve

    from ganforge.serve.app import build_app

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    ckpt = make_checkpoint(tmp, args.width, args.z_dim)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Logical CPUs: all three single-replica apps stay deployed; only the one under load works.
    ray.init(
        num_cpus=args.ray_cpus or 3 * max(1, int(args.num_cpus)),
        include_dashboard=False,
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    body = {"model": "bench", "count": 1, "format": "png"}
    try:
        serve.run(
            floor_app(str(ckpt), 32, args.num_cpus, args.max_ongoing),
            name=FLOOR_APP,
            route_prefix="/floor",
            blocking=False,
        )
        systems: dict[str, tuple[str, dict | None]] = {"floor": (f"{base}/floor", None)}
        for mbs in (32, 1):
            name = f"ganforge_batch{mbs}"
            app = build_app(
                {
                    "models": {"bench": str(ckpt)},
                    "max_batch_size": mbs,
                    "max_ongoing_requests": args.max_ongoing,  # the same for every system
                    "max_queued_requests": -1,  # measure queueing, do not shed load
                    "num_cpus": args.num_cpus,
                    "gpu": args.gpu,
                }
            )
            serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
            systems[name] = (f"{base}/{name}/v1/generate", body)
        results = run_points(systems, args)
    finally:
        serve.shutdown()
        ray.shutdown()
    report = {
        **environment(),
        "setup": {
            "generator": f"dcgan width {args.width}, z_dim {args.z_dim}, 32x32x3, random weights",
            "request": "one image per request; ganforge: format=png JSON; floor: one float",
            "replica_cpus": args.num_cpus,
            "bounds": {"requests": args.requests, "seconds": args.seconds},
            "max_ongoing_requests": args.max_ongoing,
            "batch_wait_timeout_s": 0.01,
            "torch_threads_per_replica": max(1, int(args.num_cpus)),
        },
        "results": results,
        "goals": goals(results),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

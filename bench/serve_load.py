"""Serving load test: a running `ganforge serve` (batching on / off) vs a bare Ray Serve floor.

Prints JSON. Three servers run as subprocesses on loopback, each with its own local Ray cluster:
`ganforge serve --max-batch-size 32`, `ganforge serve --max-batch-size 1`, and the floor, a bare
Serve deployment that draws z, runs the same generator with the same `@serve.batch` settings and
returns one number (no validation, no encoding, no metrics; a POST's body is received, never
parsed). The generator is a DCGAN-size checkpoint trained for one step by `ganforge train` (or
`--model PATH`). This process is only an async aiohttp client, so that the client does not eat
the cores the servers run on.

One server runs at a time, alone on the machine as in a deployment: an idle Ray cluster beside
it (GCS, raylet, agents, Serve controller and proxy) would take CPU from the one measured. Per
server: start, a warm-up, then at each concurrency level a warm-up of `clients` requests and a
timed run of `--seconds` (at most `--max-requests` requests) whose figures count only requests
sent after the warm-up; then stop. `--passes` repeats this in alternating server order (floor
first, then floor last, ...) so drifting background load on a shared machine hits all alike;
each point pools the requests of every pass.

On Linux every point also records the CPU time of the server's whole cluster (every process of
its session, from /proc) per answered request, and the report compares it with the floor's: what
ganforge's own work costs on top of bare Serve. Last, with the servers gone, the generator alone
is timed in this process (`generator_ms_per_image` at batch 1 and 32): the share of a request
that batching can make cheaper.

Each level is measured with each request style of `--methods`, sent alike to every server:
`get` is `GET /v1/generate?model=bench&count=1&format=png&seed=N`, `post` the same fields as a
JSON body. They differ on Ray Serve: a replica pulls a POST's body from the proxy with one more
actor call before it can start. Any POST handler pays that round trip, so the floor receives the
body too (and never parses it). `--floor-ignores-body` gives the floor of the earlier recorded
runs (those whose `setup` lacks `floor_receives_post_body`), which never asked for the body, so
that Serve's body round trip counted as ganforge's overhead.

    python -m bench.serve_load --out bench/results/serve_load-cpu.json
    python -m bench.serve_load --seconds 2 --clients 1 8 --passes 1   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganforge.serve.schemas import AppArgs, default_ongoing_requests

BODY = {"model": "bench", "count": 1, "format": "png"}  # one 32x32 image, base64 PNG in JSON
METHODS = ("get", "post")
BATCHING = {"ganforge_batch32": 32, "ganforge_batch1": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ganforge_cmd(*args: str) -> list[str]:
    """The `ganforge` console script of this interpreter's environment (as a user runs it)."""
    script = Path(sys.executable).with_name("ganforge")
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-c", "from ganforge.cli import main; main()", *args]


def train_checkpoint(root: Path, width: int, z_dim: int, log) -> Path:
    """One `ganforge train` step of DCGAN (width, z_dim) on the embedded demo data."""
    run = root / "run"
    sets = {
        "model.width": width,
        "model.z_dim": z_dim,
        "train.log_every": 1,
        "train.sample_every": 1,
        "train.checkpoint_every": 1,
    }
    cmd = ganforge_cmd(
        "train", "--config", "dcgan", "--max-steps", "1", "--run-dir", str(run), "--no-progress"
    )
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return run


class Server:
    """A server subprocess in its own process group; `stop` sends Ctrl-C, then kills."""

    def __init__(self, name: str, cmd: list[str], port: int, health: str, log_dir: Path):
        self.name, self.url, self.health = name, f"http://127.0.0.1:{port}", health
        self.log_path = log_dir / f"{name}.log"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float) -> None:
        import aiohttp

        deadline = time.perf_counter() + timeout
        async with aiohttp.ClientSession() as s:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    async with s.get(self.url + self.health) as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.name} did not become ready ({self.log_path}):\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C: serve.shutdown(), ray.shutdown()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: only what it started
                self.proc.wait()


@dataclass
class ServerSpec:
    cmd: list[str]  # "{port}" stands for the port the server is started on
    health: str  # GET path that answers 200 once it serves
    path: str  # POST path of the load


def server_specs(ckpt: str, args) -> dict[str, ServerSpec]:
    common = ["--num-cpus", str(args.num_cpus), "--batch-wait-s", str(args.batch_wait_s)]
    common += ["--max-ongoing-requests", str(args.max_ongoing_requests)]
    common += ["--gpu"] if args.gpu else []
    floor = [sys.executable, "-m", "bench.serve_load", "--serve-floor", "{port}"]
    floor += ["--floor-ignores-body"] if args.floor_ignores_body else []
    specs = {"floor": ServerSpec(floor + ["--model", ckpt, *common], "/", "/")}
    for name, mbs in BATCHING.items():
        cmd = ganforge_cmd("serve", "--model", f"bench={ckpt}", "--port", "{port}")
        cmd += ["--max-batch-size", str(mbs), *common]
        specs[name] = ServerSpec(cmd, "/healthz", "/v1/generate")
    return specs


def start(spec: ServerSpec, log_name: str, log_dir: Path) -> Server:
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in spec.cmd]
    return Server(log_name, cmd, port, spec.health, log_dir)


# --- the floor server (run as a subprocess by the benchmark) ------------------------------


def torch_device(gpu: bool) -> str:
    """Where the floor and the generator timing run: `--gpu` means CUDA when there is one, as in
    `ganforge serve`."""
    import torch

    return "cuda" if gpu and torch.cuda.is_available() else "cpu"


async def receive_post_body(request, ignore: bool = False) -> None:
    """What the floor does with a request before generating: receive a POST's body, as any POST
    handler must (on Ray Serve, one actor call from the replica to the proxy), and never parse
    it. A GET has no body to wait for. `ignore`: skip it (the floor of the earlier runs)."""
    if request.method == "POST" and not ignore:
        await request.body()


def serve_floor(port: int, ckpt: str, args) -> None:
    """A bare Serve deployment: random z -> generator -> one float, `@serve.batch` like the
    app (max 32 images, the same batch wait and max_ongoing_requests). Blocks until Ctrl-C."""
    import ray
    import torch
    from ray import serve

    @serve.deployment(
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": 1 if args.gpu else 0},
    )
    class Floor:
        def __init__(self):
            from ganforge.models import load_model

            self.device = torch_device(args.gpu)
            torch.set_num_threads(max(1, int(args.num_cpus)))
            self.g = load_model(ckpt, device=self.device).generator

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=args.batch_wait_s)
        async def batch(self, zs: list[torch.Tensor]) -> list[float]:
            with torch.inference_mode():
                out = self.g(torch.cat(zs).to(self.device))
            return out.mean(dim=(1, 2, 3)).tolist()

        async def __call__(self, request) -> float:
            await receive_post_body(request, ignore=args.floor_ignores_body)
            return await self.batch(torch.randn(1, self.g.z_dim))

    # Ray starts exactly as in `ganforge serve` (its defaults: dashboard, replica logs and
    # Serve access lines streamed to this driver), so both pay the same cluster overhead.
    ray.init()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Floor.bind(), name="floor", route_prefix="/", blocking=False)
        print(f"floor serving at http://127.0.0.1:{port}/", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


# --- the client ---------------------------------------------------------------------------


def percentile(sorted_s: list[float], p: float) -> float | None:
    """Nearest-rank percentile in milliseconds."""
    if not sorted_s:
        return None
    return round(1e3 * sorted_s[min(len(sorted_s) - 1, int(p * len(sorted_s)))], 2)


def session_cpu_seconds(sid: int) -> float | None:
    """CPU seconds (user + system) used so far by the live processes of session `sid`: a server
    and the whole Ray cluster it started, which inherit its session. None off Linux."""
    total, found = 0, False
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[3]) == sid:  # fields after "(comm)": state ppid pgrp session ...
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
            found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


async def load_point(
    url: str, clients: int, args, method: str, cpu: Callable[[], float | None] | None = None
) -> dict[str, Any]:
    """`clients` concurrent loops, each sending its next request when the last one returns,
    for `args.seconds` or `args.max_requests` requests; the warm-up is not counted. Every
    server gets the same request (`method`: the fields as a query string or a JSON body; the
    floor does not parse them), so the HTTP path costs the same. Returns the raw latencies (s),
    errors, elapsed seconds and, given `cpu` (the server's CPU seconds so far), the server's CPU
    seconds over the timed part (`summarize` pools passes)."""
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    seq = 0

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(record: bool) -> None:
            nonlocal seq
            seq += 1
            payload = {**BODY, "seed": seq}
            if method == "get":
                request = session.get(url, params={k: str(v) for k, v in payload.items()})
            else:
                request = session.post(url, json=payload)
            t0 = time.perf_counter()
            try:
                async with request as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError as e:
                status = type(e).__name__
            if not record:
                return
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

        # Warm-up: one request per client opens its connection and fills the pipeline.
        await asyncio.gather(*(one(False) for _ in range(clients)))
        deadline = time.perf_counter() + args.seconds

        async def client() -> None:
            nonlocal sent
            while sent < args.max_requests and time.perf_counter() < deadline:
                sent += 1
                await one(True)

        cpu0 = cpu() if cpu else None
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
        cpu1 = cpu() if cpu else None
    return {
        "clients": clients,
        "method": method,
        "latencies": latencies,
        "errors": errors,
        "seconds": elapsed,
        "cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
    }


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's passes pooled: images/s over all timed seconds, percentiles over all
    requests; each pass's own images/s is kept to show the spread."""
    lat = sorted(x for p in points for x in p["latencies"])
    seconds = sum(p["seconds"] for p in points)
    errors: dict[str, int] = {}
    for p in points:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    cpu = [p["cpu_s"] for p in points]
    answered = len(lat) + sum(errors.values())
    return {
        "clients": points[0]["clients"],
        "method": points[0]["method"],
        "requests": len(lat),
        "errors": errors,
        "seconds": round(seconds, 2),
        "images_per_s": round(len(lat) / seconds, 2),
        "images_per_s_per_pass": [round(len(p["latencies"]) / p["seconds"], 2) for p in points],
        "p50_ms": percentile(lat, 0.50),
        "p95_ms": percentile(lat, 0.95),
        "p99_ms": percentile(lat, 0.99),
        # The server's whole cluster (proxy, replica, driver, GCS, raylet, dashboard...) over
        # the timed seconds, per answered request.
        "cpu_ms_per_request": round(1e3 * sum(cpu) / answered, 2)
        if answered and None not in cpu
        else None,
        "settled_s": [p["settled_s"] for p in points],
    }


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + fields[4], sum(fields)  # idle + iowait


async def settle(timeout: float, idle: float = 0.8, window: float = 0.5) -> float:
    """Wait until the CPUs are at least `idle` idle over `window` seconds (at most `timeout`);
    returns the seconds waited. After a load point a server's cluster keeps working for a while
    (the driver prints the streamed access-log lines, metrics are exported); without this, that
    tail runs during the next server's point and is charged to it."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        a = _cpu_times()
        await asyncio.sleep(window)
        b = _cpu_times()
        if a is None or b is None:  # not Linux: a fixed pause instead
            await asyncio.sleep(max(0.0, min(timeout, 2.0) - window))
            break
        if (b[0] - a[0]) / max(1, b[1] - a[1]) >= idle:
            break
    return round(time.perf_counter() - t0, 2)


async def run_server(url: str, args, sid: int) -> list[dict[str, Any]]:
    """Every level on one running server (session `sid`), each with every method: its points,
    level by level in `args.clients` order, methods in `args.methods` order within a level."""
    # After start-up: first requests, caches, allocator.
    for method in args.methods:
        await load_point(url, 8, argparse.Namespace(seconds=1.0, max_requests=64), method)
    points = []
    for c in args.clients:
        for method in args.methods:
            waited = await settle(args.settle_timeout)
            point = await load_point(url, c, args, method, lambda: session_cpu_seconds(sid))
            points.append({**point, "settled_s": waited})
    return points


def run_passes(
    specs: dict[str, ServerSpec], args, log_dir: Path
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """`args.passes` passes, one server alive at a time, order reversed every other pass.
    Returns {method: {server: [pooled point per level]}}."""
    raw: dict[str, list[list[dict]]] = {name: [] for name in specs}
    for i in range(args.passes):
        order = list(specs) if i % 2 == 0 else list(reversed(specs))
        for name in order:
            server = start(specs[name], f"{name}-pass{i + 1}", log_dir)
            try:
                asyncio.run(server.wait_ready(args.startup_timeout))
                print(f"pass {i + 1}/{args.passes}: {name}", file=sys.stderr, flush=True)
                url = server.url + specs[name].path
                # Started with start_new_session: its pid is the session of its whole cluster.
                raw[name].append(asyncio.run(run_server(url, args, server.proc.pid)))
            finally:
                server.stop()
    n = len(args.methods)
    return {
        method: {
            name: [summarize([p[j * n + i] for p in passes]) for j in range(len(args.clients))]
            for name, passes in raw.items()
        }
        for i, method in enumerate(args.methods)
    }


def generator_ms_per_image(
    ckpt: str, batch_sizes: tuple[int, ...], threads: int, gpu: bool = False, seconds: float = 1.5
) -> dict[str, float]:
    """The generator alone, in this process, with a replica's torch threads: ms per image at each
    batch size, from the fastest block of `torch.utils.benchmark`'s `blocked_autorange` (the
    fastest, because a shared machine only ever adds time). Next to `cpu_ms_per_request`, it
    says how much of a request batching can save: only the generator's share gets cheaper per
    image."""
    import torch
    from torch.utils.benchmark import Timer

    from ganforge.models import load_model

    device = torch_device(gpu)
    g = load_model(ckpt, device=device).generator.eval()
    out = {}
    with torch.inference_mode():
        for n in batch_sizes:
            z = torch.randn(n, g.z_dim, device=device)
            labels = torch.randint(g.num_classes, (n,), device=device) if g.num_classes else None
            timer = Timer(
                "g(z, labels)",
                globals={"g": g, "z": z, "labels": labels},
                num_threads=max(1, threads),
            )
            best_s = min(timer.blocked_autorange(min_run_time=seconds).times)
            out[str(n)] = round(best_s * 1e3 / n, 3)
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to 3 places; None when either is missing (or zero)."""
    return round(a / b, 3) if a and b else None


def goals(results: dict[str, list[dict]]) -> dict[str, Any]:
    floor = {p["clients"]: p for p in results["floor"]}
    on = {p["clients"]: p for p in results["ganforge_batch32"]}
    off = {p["clients"]: p for p in results["ganforge_batch1"]}

    tput = {c: ratio(on[c]["images_per_s"], floor[c]["images_per_s"]) for c in on}
    p99 = {c: ratio(on[c]["p99_ms"], floor[c]["p99_ms"]) for c in on}
    speedup = ratio(on[32]["images_per_s"], off[32]["images_per_s"]) if 32 in on else None
    return {
        "throughput_vs_floor": {
            "goal": "ganforge (batch 32) images/s >= 0.8 x floor at every concurrency",
            "ratio": tput,
            "pass": all(r is not None and r >= 0.8 for r in tput.values()),
        },
        "batching_speedup_at_32": {
            "goal": "batch 32 images/s >= 2 x batch 1 images/s at 32 clients",
            "ratio": speedup,
            "pass": None if speedup is None else speedup >= 2,
        },
        "p99_vs_floor": {
            "goal": "ganforge (batch 32) p99 < 2 x floor p99 at every concurrency",
            "ratio": p99,
            "pass": all(r is not None and r < 2 for r in p99.values()),
        },
    }


def cpu_vs_floor(results: dict[str, list[dict]]) -> dict[str, dict[int, float | None]]:
    """Each ganforge server's CPU per request over the floor's, per level: what ganforge's own
    work (validation, encoding, metrics, the FastAPI app) costs on top of bare Serve."""
    floor = {p["clients"]: p["cpu_ms_per_request"] for p in results["floor"]}
    return {
        name: {p["clients"]: ratio(p["cpu_ms_per_request"], floor.get(p["clients"])) for p in pts}
        for name, pts in results.items()
        if name != "floor"
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per point")
    ap.add_argument("--max-requests", type=int, default=20_000, help="most requests per point")
    ap.add_argument("--model", default=None, help="checkpoint or run dir (default: train one)")
    ap.add_argument("--width", type=int, default=64, help="generator width (64 = DCGAN size)")
    ap.add_argument("--z-dim", type=int, default=128)
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    ap.add_argument("--gpu", action="store_true", help="replicas on one GPU each")
    ap.add_argument(
        "--batch-wait-s",
        type=float,
        default=AppArgs.model_fields["batch_wait_timeout_s"].default,
        help="batch wait of every server alike (default: ganforge serve's)",
    )
    ap.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=default_ongoing_requests(BATCHING["ganforge_batch32"]),
        help="requests one replica holds, every server alike (default: ganforge serve's at "
        "batch 32)",
    )
    ap.add_argument(
        "--floor-ignores-body",
        action="store_true",
        help="the floor never receives a POST's body (the earlier recorded runs' method): "
        "Serve's body round trip then counts as ganforge's overhead",
    )
    ap.add_argument("--passes", type=int, default=2, help="passes over the servers (pooled)")
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="request styles measured at every level: query string (get), JSON body (post)",
    )
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument(
        "--settle-timeout",
        type=float,
        default=20.0,
        help="before each point, wait up to this long for the CPUs to be 80%% idle",
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--serve-floor", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.methods = list(dict.fromkeys(args.methods))  # a method named twice is measured once
    if args.serve_floor is not None:
        serve_floor(args.serve_floor, args.model, args)
        return

    from bench.common import environment

    # Caught (not ignored) SIGINT, so the servers start with the default disposition and stop
    # cleanly on the Ctrl-C that `Server.stop` sends, even when this runs in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    ckpt = args.model
    if ckpt is None:
        with (tmp / "train.log").open("wb") as log:
            ckpt = str(train_checkpoint(tmp, args.width, args.z_dim, log))
    try:
        results = run_passes(server_specs(ckpt, args), args, tmp)
        # After the servers are gone, so it too runs alone on the machine.
        sizes = (1, BATCHING["ganforge_batch32"])
        generator = generator_ms_per_image(ckpt, sizes, int(args.num_cpus), args.gpu)
    finally:
        if args.model is None:
            shutil.rmtree(tmp / "run", ignore_errors=True)  # keep only the logs
    with contextlib.redirect_stdout(sys.stderr):  # importing deepspeed prints a warning
        env = environment()
    report = {
        **env,
        "setup": {
            "model": ckpt
            if args.model
            else f"dcgan width {args.width}, z_dim {args.z_dim}, "
            "32x32x3, one `ganforge train` step on the embedded demo data",
            "servers": "one subprocess (own local Ray cluster) per system, one alive at a "
            "time, Serve HTTP on 127.0.0.1; ganforge: `ganforge serve --max-batch-size 32|1`, "
            "format=png JSON; "
            "floor: bare deployment returning one float (gets the same request; "
            + (
                "never receives a POST's body"
                if args.floor_ignores_body
                else "receives a POST's body, never parses it"
            )
            + "); "
            "every server starts Ray with `ray.init()` defaults, as `ganforge serve` does",
            "request": "one image per request; get: the fields as a query string, post: as a "
            "JSON body; every server gets the same requests",
            "replica_cpus": args.num_cpus,
            "bounds_per_point": {"seconds": args.seconds, "max_requests": args.max_requests},
            "passes": f"{args.passes}, server order reversed every other pass; a point pools "
            "the timed requests of all passes (`images_per_s_per_pass` shows each)",
            "warm_up": "8 clients x 1 s per server after start-up, then `clients` requests "
            "before each point; not counted",
            "settle": "before each point, wait (at most --settle-timeout s, `settled_s` per "
            "point) until the CPUs are 80% idle, so one cluster's tail is not charged to the next",
            "max_ongoing_requests": args.max_ongoing_requests,
            # Serve modes set for every server alike (e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1).
            "ray_serve_env": {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")},
            "batch_wait_timeout_s": args.batch_wait_s,
            "floor_receives_post_body": not args.floor_ignores_body,
            "generator_alone": "the generator timed in the benchmark process after the "
            "servers stopped, with a replica's torch threads; fastest block of "
            "torch.utils.benchmark's blocked_autorange",
        },
        "results": results,
        "generator_ms_per_image": generator,
        "goals": {method: goals(r) for method, r in results.items()},
        "cpu_per_request_vs_floor": {method: cpu_vs_floor(r) for method, r in results.items()},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

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
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.serve_load_client import METHODS, run_server
from bench.serve_load_floor import generator_ms_per_image
from bench.serve_load_report import cpu_vs_floor, goals, summarize
from bench.serve_load_servers import BATCHING, ServerSpec, server_specs, start, train_checkpoint
from ganforge.serve.schemas import AppArgs, default_ongoing_requests


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
    args = ap.parse_args()
    args.methods = list(dict.fromkeys(args.methods))  # a method named twice is measured once

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

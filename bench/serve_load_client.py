"""The load of the serving load test (bench.serve_load): an async aiohttp client that keeps
`clients` requests in flight against one server, and the CPU time that server's whole cluster
spends meanwhile (Linux: /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

BODY = {"model": "bench", "count": 1, "format": "png"}  # one 32x32 image, base64 PNG in JSON
METHODS = ("get", "post")


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

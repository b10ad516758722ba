"""The serving benchmark's bookkeeping: CPU time of a server's session, pooled per request; the
servers' settings; what the floor receives; the generator timed alone. (The load itself needs
three live servers for minutes: it runs as `python -m bench.serve_load`.)"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from starlette.requests import Request

from bench.serve_load_client import session_cpu_seconds
from bench.serve_load_floor import generator_ms_per_image, receive_post_body
from bench.serve_load_report import cpu_vs_floor, summarize
from bench.serve_load_servers import server_specs

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import CLASSES, make_checkpoint  # noqa: E402

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


@linux_only
def test_session_cpu_counts_every_process_of_the_session():
    # A busy parent and a busy child in a session of their own, as a server and its cluster are.
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
    code = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {burn!r} + 'time.sleep(30)'])\n"
        f"exec({burn!r})\n"
        "sys.stdout.write('busy\\n'); sys.stdout.flush(); time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "busy\n"
        deadline = time.time() + 20
        used = session_cpu_seconds(proc.pid)
        while used is not None and used < 0.8 and time.time() < deadline:
            time.sleep(0.1)  # the child may still be burning its share
            used = session_cpu_seconds(proc.pid)
        assert used is not None and used >= 0.8, f"parent + child burnt 0.8 s, counted {used}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10  # the orphaned child lingers until init reaps it
    while session_cpu_seconds(proc.pid) is not None and time.time() < deadline:
        time.sleep(0.1)
    assert session_cpu_seconds(proc.pid) is None  # no process left in it


def _point(clients, n_ok, seconds, cpu_s, errors=None):
    return {
        "clients": clients,
        "method": "get",
        "latencies": [0.01] * n_ok,
        "errors": errors or {},
        "seconds": seconds,
        "cpu_s": cpu_s,
        "settled_s": 0.0,
    }


def test_cpu_per_request_pools_passes_and_counts_errors():
    got = summarize([_point(8, 90, 1.0, 0.5, {"503": 10}), _point(8, 100, 1.0, 0.7)])
    assert got["cpu_ms_per_request"] == pytest.approx(1e3 * 1.2 / 200)
    assert got["images_per_s"] == pytest.approx(95.0)
    # One pass without a measure (not Linux): no figure rather than a wrong one.
    assert (
        summarize([_point(8, 10, 1.0, None), _point(8, 10, 1.0, 0.1)])["cpu_ms_per_request"] is None
    )


def test_cpu_vs_floor_per_server_and_level():
    floor = [summarize([_point(1, 10, 1.0, 0.2)]), summarize([_point(32, 100, 1.0, 0.5)])]
    app = [summarize([_point(1, 10, 1.0, 0.3)]), summarize([_point(32, 100, 1.0, None)])]
    got = cpu_vs_floor({"floor": floor, "ganforge_batch32": app})
    assert got == {"ganforge_batch32": {1: 1.5, 32: None}}


def _bench_args(**overrides) -> argparse.Namespace:
    """The options `server_specs` reads, at the benchmark's defaults unless overridden."""
    defaults = dict(
        num_cpus=1.0,
        batch_wait_s=0.0,
        max_ongoing_requests=256,
        gpu=False,
        floor_ignores_body=False,
    )
    return argparse.Namespace(**{**defaults, **overrides})


def test_every_server_gets_the_same_batching_settings():
    """The floor batches like the app: a batch wait and a replica's request limit given to one
    are given to all three."""
    specs = server_specs("ckpt", _bench_args(batch_wait_s=0.005, max_ongoing_requests=200))
    assert set(specs) == {"floor", "ganforge_batch32", "ganforge_batch1"}
    for name, spec in specs.items():
        for flag, value in (("--batch-wait-s", "0.005"), ("--max-ongoing-requests", "200")):
            assert spec.cmd[spec.cmd.index(flag) + 1] == value, (name, flag)


def test_floor_flag_reaches_only_the_floor():
    """`--floor-ignores-body` (the earlier runs' floor) is handed to the floor server alone."""
    specs = server_specs("ckpt", _bench_args(floor_ignores_body=True))
    assert [n for n, spec in specs.items() if "--floor-ignores-body" in spec.cmd] == ["floor"]
    specs = server_specs("ckpt", _bench_args())
    assert not any("--floor-ignores-body" in spec.cmd for spec in specs.values())


def _received(method: str, ignore: bool) -> list[dict]:
    """The ASGI messages the floor's handling asks for, given a two-chunk body."""
    chunks = [
        {"type": "http.request", "body": b'{"model": ', "more_body": True},
        {"type": "http.request", "body": b'"bench"}', "more_body": False},
    ]
    asked: list[dict] = []

    async def receive():
        asked.append(chunks[len(asked)])
        return asked[-1]

    scope = {"type": "http", "method": method, "path": "/", "headers": [], "query_string": b""}
    asyncio.run(receive_post_body(Request(scope, receive), ignore=ignore))
    return asked


def test_floor_receives_a_post_body_whole_and_nothing_for_a_get():
    """The floor waits for a POST's body like any POST handler (on Serve: the replica's actor
    call to the proxy), all of it; a GET asks for nothing; `ignore` restores the old floor."""
    assert [m["more_body"] for m in _received("POST", ignore=False)] == [True, False]
    assert _received("GET", ignore=False) == []
    assert _received("POST", ignore=True) == []


@pytest.mark.parametrize("variant,classes", [("dcgan", None), ("cdcgan", CLASSES)])
def test_generator_timing_per_image_for_each_batch_size(tmp_path, variant, classes):
    """The generator alone, unconditional or conditional (random labels), per image at each
    batch size; the process's torch threads are left as they were."""
    make_checkpoint(tmp_path, variant, classes=classes)
    threads = torch.get_num_threads()
    got = generator_ms_per_image(str(tmp_path), (1, 4), threads=1, seconds=0.1)
    assert set(got) == {"1", "4"}
    assert all(0 < ms < 1000 for ms in got.values())
    assert torch.get_num_threads() == threads

"""The servers of the serving load test (bench.serve_load): how each is started, as a
subprocess in a session of its own on a free loopback port, and stopped; and the checkpoint they
serve when none is given (one `ganforge train` step).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The ganforge servers measured: name -> --max-batch-size (batching on / off).
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
    floor = [sys.executable, "-m", "bench.serve_load_floor", "--port", "{port}"]
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

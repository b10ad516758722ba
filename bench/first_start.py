"""First start against second start of CPU training: what DeepSpeed's shm_comm build costs.

On CPU, DeepSpeed JIT-compiles its shared-memory all-reduce op (`deepspeed_shm_comm`) into the
torch extensions folder the first time a process sets up its communication; later starts load
the cached build. Every measurement here runs in a fresh process whose TORCH_EXTENSIONS_DIR is a
new empty folder (a new machine), then again with the same folder (the second start):

  comm_init  seconds of one process's DeepSpeed communication set-up on a gloo group of one:
             `deepspeed.init_distributed` as DeepSpeed does it, against ganforge's
             `init_deepspeed_comm` (what every training worker calls)
  train      wall seconds of `ganforge train --config demo --max-steps 1` (Ray start, data,
             engines, one step, checkpoint, shutdown)

    python -m bench.first_start --out bench/results/first_start-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import environment

# One process: a gloo group of one (what Ray Train gives a worker), then DeepSpeed's comm set-up.
COMM_INIT = """
import os, socket, sys, time
import torch.distributed as dist
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
t0 = time.perf_counter()
if sys.argv[1] == "deepspeed":
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False,
                               dist_init_required=False)
else:
    from ganforge.cluster.engines import init_deepspeed_comm
    init_deepspeed_comm(gpu=False)
print(time.perf_counter() - t0)
"""


def _built(ext_dir: Path) -> bool:
    return any(ext_dir.rglob("deepspeed_shm_comm*.so"))


def comm_init(mode: str, ext_dir: Path, timeout: float) -> dict:
    env = os.environ | {"TORCH_EXTENSIONS_DIR": str(ext_dir)}
    res = subprocess.run(
        [sys.executable, "-c", COMM_INIT, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return {"seconds": round(float(res.stdout.split()[-1]), 2), "op_built": _built(ext_dir)}


def train_start(ext_dir: Path, work: Path, timeout: float) -> dict:
    env = os.environ | {"TORCH_EXTENSIONS_DIR": str(ext_dir), "GANFORGE_CACHE": str(work)}
    run = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    cmd = [sys.executable, "-m", "ganforge.cli", "train", "--config", "demo", "--max-steps", "1"]
    cmd += ["--no-progress"]
    cmd += ["--run-dir", str(run)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, check=True)
    return {"seconds": round(time.perf_counter() - t0, 1), "op_built": _built(ext_dir)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="Write the JSON here too.")
    p.add_argument("--timeout", type=float, default=900, help="Per start, seconds.")
    p.add_argument("--skip-train", action="store_true", help="Only the comm_init part.")
    a = p.parse_args()
    result: dict = {"benchmark": "first_start", **environment(), "comm_init": {}, "train": {}}
    result["load_average_1_5_15min_before"] = os.getloadavg()  # a shared machine's other work
    with tempfile.TemporaryDirectory(prefix="ganforge-first-start-") as tmp:
        tmp = Path(tmp)
        for mode in ("deepspeed", "ganforge"):
            ext = tmp / f"ext-{mode}"
            first, second = (comm_init(mode, ext, a.timeout) for _ in range(2))
            result["comm_init"][mode] = {"first": first, "second": second}
        if not a.skip_train:
            ext, work = tmp / "ext-train", tmp / "work"
            work.mkdir()
            prepare = "from ganforge.data.demos import demo_shards; demo_shards('shapes')"
            env = os.environ | {"GANFORGE_CACHE": str(work)}  # the demo data: not timed
            subprocess.run([sys.executable, "-c", prepare], env=env, check=True)
            first, second = (train_start(ext, work, a.timeout) for _ in range(2))
            result["train"] = {"first": first, "second": second}
    result["load_average_1_5_15min_after"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

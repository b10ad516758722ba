"""Data-parallel scaling on CPU: images/s of `ganforge train` with 1 and 2 workers (1 thread
each, same micro-batch), and the scaling efficiency = rate(2) / (2 x rate(1)). Prints JSON.

    python -m bench.scaling --data DIR --variant dcgan --steps 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.common import environment
from ganforge.config import load_config, resolve_config_path
from ganforge.rundir import RunDir


def measure(variant: str, data: str | None, workers: int, steps: int, batch: int) -> float:
    from ganforge.cluster.launch import run_training

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            resolve_config_path(variant),
            {
                "data.urls": data,
                "train.max_steps": steps,
                "train.micro_batch": batch,
                "train.log_every": max(1, steps // 6),
                "train.sample_every": 10**6,
                "train.checkpoint_every": 10**6,
                "cluster.num_workers": workers,
                "cluster.cpus_per_worker": 1,
                "data.num_workers": 0,
                "run_dir": tmp + "/run",
            },
        )
        run = run_training(cfg, resume=False, show_progress=False)
        recs = [json.loads(x) for x in RunDir(run).metrics_path.read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in recs[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="shards (default: the embedded demo subset)")
    ap.add_argument("--variant", default="dcgan")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64, help="micro-batch per worker")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False)
    one = measure(args.variant, args.data, 1, args.steps, args.batch)
    two = measure(args.variant, args.data, 2, args.steps, args.batch)
    out = {
        "benchmark": "scaling",
        **environment(),
        "variant": args.variant,
        "micro_batch": args.batch,
        "threads_per_worker": 1,
        "steps": args.steps,
        "images_per_s": {"1": round(one, 1), "2": round(two, 1)},
        "efficiency_2": round(two / (2 * one), 4),
        "goal": ">= 0.85 scaling efficiency at 2 workers on a 2-core machine",
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Summarise a finished `ganforge train` run as JSON, for the docs to cite: what was trained
(config), for how long (steps, images, wall time from the first to the last metrics record),
how fast (median images/s over the logged windows, the first one left out as warm-up) and where
the losses ended; with the machine, versions and the training command. A resumed run is
recorded launch by launch (`launches`). Prints JSON.

    python -m bench.run_record RUN_DIR --command "ganforge train ..." --out docs/x/run.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
from pathlib import Path

import yaml

from bench.common import environment
from ganforge.rundir import RunDir


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def segments(records: list[dict]) -> list[list[dict]]:
    """The launches of a run: a record whose step is not above the one before starts a new one
    (a resume from an earlier checkpoint logs the steps after it again)."""
    out: list[list[dict]] = []
    for rec in records:
        if not out or rec["step"] <= out[-1][-1]["step"]:
            out.append([])
        out[-1].append(rec)
    return out


def _wall_s(segment: list[dict], log_every: int) -> float:
    # metrics.jsonl times each record when it is written: back from the first to its window's start.
    first = segment[0]
    window = min(first["step"], log_every)
    return segment[-1]["time"] - first["time"] + first["step_time_s"] * window


def summarise(run: Path) -> dict:
    rundir = RunDir(run)
    records = [json.loads(x) for x in rundir.metrics_path.read_text().splitlines()]
    if not records:
        raise SystemExit(f"{rundir.metrics_path} holds no records")
    cfg = yaml.safe_load(rundir.config_path.read_text())
    log_every = cfg["train"]["log_every"]
    launches = segments(records)
    # Steps a later launch logged again were lost with their launch: the final history keeps
    # each step's last record; the wall time counts every launch (the lost work included).
    final = {r["step"]: r for r in records}
    kept = [final[k] for k in sorted(final)]
    rates = [r["images_per_s"] for seg in launches for r in seg[1:]] or [kept[0]["images_per_s"]]
    last = kept[-1]
    return {
        "variant": cfg["model"]["variant"],
        "model": cfg["model"],
        "optim_g": cfg["optim_g"],
        "loss": cfg["loss"],
        "micro_batch": cfg["train"]["micro_batch"],
        "num_workers": cfg["cluster"]["num_workers"],
        "cpus_per_worker": cfg["cluster"]["cpus_per_worker"],
        "steps": last["step"],
        "images_seen": last["images_seen"],
        "train_wall_s": round(sum(_wall_s(seg, log_every) for seg in launches), 1),
        "launches": [
            {
                "first_logged_step": seg[0]["step"],
                "last_logged_step": seg[-1]["step"],
                "wall_s": round(_wall_s(seg, log_every), 1),
                "started": _iso(seg[0]["time"]),
            }
            for seg in launches
        ],
        "last_record": _iso(last["time"]),
        # The first record of each launch is left out as warm-up.
        "images_per_s_median": round(statistics.median(rates), 1),
        "images_per_s_range": [round(min(rates), 1), round(max(rates), 1)],
        "final": {k: last[k] for k in ("loss_d", "loss_g", "gp", "grad_norm") if k in last},
        "samples": [p.name for p in rundir.sample_grids()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--command", required=True, help="the training command, as run")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    env = environment()
    out = {
        "record": "training run",
        **{k: v for k, v in env.items() if k != "command"},
        "command": args.command,
        "recorded_by": env["command"],
        "loadavg_1min_at_record": round(os.getloadavg()[0], 2),
        **summarise(args.run),
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

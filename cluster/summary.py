"""The one-screen summary `ganforge train` and `ganforge demo` end with: where the run stands,
its last figures and what to do next. Read from the run dir, so a relaunch of a finished run shows
the same summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ganforge.checkpoint import list_checkpoints
from ganforge.rundir import RunDir


def last_record(metrics: Path) -> dict[str, Any]:
    """The last complete record of metrics.jsonl ({} when there is none)."""
    if not metrics.is_file():
        return {}
    for line in reversed(metrics.read_text().splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict):
            return record
    return {}


def summary_rows(
    run_dir: Path, seconds: float, location: str | None = None
) -> list[tuple[str, str]]:
    """(label, value) rows of a run: progress, last figures, outputs, next commands."""
    run = RunDir(run_dir)
    rec = last_record(run.metrics_path)
    ckpts = list_checkpoints(run.checkpoints)
    grids = run.sample_grids()
    rows: list[tuple[str, str]] = [("run dir", location or str(run_dir))]
    if location and location != str(run_dir):
        rows.append(("local mirror", str(run_dir)))
    if "step" in rec:
        rows.append(("step", f"{rec['step']:,} ({rec.get('images_seen', 0):,} real images seen)"))
    losses = [f"{k} {rec[k]:.4f}" for k in ("loss_d", "loss_g", "gp") if k in rec]
    if losses:
        rows.append(("last losses", ", ".join(losses)))
    if "images_per_s" in rec:
        wait = rec.get("input_wait_frac")
        waited = f", {wait:.0%} of the time waiting for input" if wait is not None else ""
        rows.append(("throughput", f"{rec['images_per_s']:,.0f} images/s{waited}"))
    if ckpts and (threads := _threads_row(run, ckpts[0][1])) is not None:
        rows.append(threads)
    rows.append(("wall time", f"{seconds / 60:.1f} min"))
    rows.append(("checkpoint", str(ckpts[0][1]) if ckpts else "(none yet)"))
    rows.append(("samples", str(grids[-1]) if grids else "(none yet)"))
    rows.append(("TensorBoard", f"tensorboard --logdir {run.tensorboard}  (scalars, sample grids)"))
    rows.append(("serve it", f"ganforge serve --model {run_dir.name}={location or run_dir}"))
    return rows


def _threads_row(run: RunDir, newest: Path) -> tuple[str, str] | None:
    """Workers x torch threads, from the newest marker and what config.yaml asked for."""
    import yaml

    from ganforge.checkpoint import CheckpointError, read_marker
    from ganforge.cluster.worker_cpus import worker_threads_row

    try:
        marker = read_marker(newest)
        asked = yaml.safe_load(run.config_path.read_text()).get("cluster", {})
    except (CheckpointError, OSError, AttributeError, yaml.YAMLError):
        return None
    return worker_threads_row(marker, asked.get("cpus_per_worker"))


def print_summary(title: str, rows: list[tuple[str, str]]) -> None:
    """`rows` as one rich panel on stdout."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    Console().print(Panel(table, title=title, title_align="left", expand=False))

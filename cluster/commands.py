"""`ganforge train`, `ganforge demo` and `ganforge submit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer

from ganforge.config import ConfigError, GanforgeConfig
from ganforge.shutdown import Stop, shutdown_ray, stop_on_signals


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _train_until_stopped(command: str, cfg: GanforgeConfig, **kwargs: Any) -> Path:
    """`run_training(cfg, **kwargs)` where SIGTERM and Ctrl-C cancel the run; a cluster it started
    is shut down, every process of it, whichever way it ends."""
    from ganforge.cluster.launch import run_training

    with stop_on_signals():
        try:
            return run_training(cfg, **kwargs)
        except Stop as e:
            stop = e
        finally:
            shutdown_ray()
    _stopped(command, stop, cfg.run_dir or str(cfg.resolved_run_dir()))


def _stopped(command: str, stop: Stop, run_dir: str) -> NoReturn:
    """Training cancelled by SIGINT/SIGTERM: say where the run stands and exit 128 + the signal
    (130, 143), as a shell reports a command a signal ended."""
    from ganforge.checkpoint import list_checkpoints
    from ganforge.rundir import RunDir
    from ganforge.storage import is_uri

    done = [] if is_uri(run_dir) else list_checkpoints(RunDir(run_dir).checkpoints)
    if done:
        where = f"latest checkpoint: step {done[0][0]}; rerun with --resume to continue"
    elif is_uri(run_dir):
        where = "rerun with --resume to continue from its latest checkpoint"
    else:
        where = "no checkpoint yet"
    typer.echo(f"ganforge {command}: stopped by {stop.name}; {where} ({run_dir})", err=True)
    raise typer.Exit(stop.exit_code)


def train(
    config: str = typer.Option(
        ...,
        "--config",
        "-c",
        help="YAML config path, or a shipped name: dcgan, cdcgan, wgan, wgan-gp, cwgan-gp, "
        "stylegan2, cstylegan2, demo.",
    ),
    data: str = typer.Option(
        None,
        "--data",
        help="Shard URLs: a dir with dataset.json, a brace pattern, http(s)://, file://, pipe:. "
        "Default: data.urls of the config (null = the embedded demo subset).",
    ),
    run_dir: str = typer.Option(
        None,
        "--run-dir",
        help="Run directory (default runs/<name>), or an object-store URI (s3://bucket/runs/x, "
        "gs://...): checkpoints go there through Ray Train, logs and samples after each "
        "checkpoint.",
    ),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="Generator steps to train."),
    num_workers: int = typer.Option(
        None, "--num-workers", "-n", min=1, help="Data-parallel Ray Train workers (default 1)."
    ),
    gpu: bool = typer.Option(None, "--gpu/--cpu", help="One GPU per worker (NCCL) or CPU (gloo)."),
    cpus_per_worker: int = typer.Option(
        None,
        "--cpus-per-worker",
        min=1,
        help="CPUs (and torch threads) per worker. Default: all CPUs of the local Ray node "
        "divided among the workers (cluster.cpus_per_worker: auto); 1 on a cluster joined "
        "through RAY_ADDRESS.",
    ),
    precision: str = typer.Option(
        None, "--precision", help="fp32 | bf16 | fp16 (fp16 needs --gpu)."
    ),
    resume: bool = typer.Option(
        None,
        "--resume/--no-resume",
        help="Continue from the run dir's latest checkpoint. Default: resume when one exists.",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override any config key: --set train.micro_batch=32 (repeatable)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a GAN: DeepSpeed engines on Ray Train workers (local Ray unless RAY_ADDRESS is set).

    Writes RUN_DIR/config.yaml, checkpoints/, samples/, metrics.jsonl and TensorBoard events. The
    same command works as a `ray job submit` entrypoint.
    """
    import time

    from ganforge.cluster.capacity import NoCapacityError
    from ganforge.config import cli_overrides, load_config, resolve_config_path

    t0 = time.monotonic()
    try:
        flags = {
            "data.urls": data,
            "run_dir": run_dir,
            "train.max_steps": max_steps,
            "cluster.num_workers": num_workers,
            "cluster.gpu": gpu,
            "cluster.cpus_per_worker": cpus_per_worker,
            "train.precision": precision,
        }
        cfg = load_config(resolve_config_path(config), cli_overrides(set_, flags))
        out = _train_until_stopped("train", cfg, resume=resume, show_progress=progress)
    except ConfigError as e:
        _fail(str(e))
    except NoCapacityError as e:  # the cluster lost capacity for longer than the config allows
        _fail(str(e), code=1)
    from ganforge.cluster.summary import print_summary, summary_rows

    rows = summary_rows(Path(out), time.monotonic() - t0, cfg.run_dir)
    print_summary(f"ganforge train: {cfg.name}", rows)


# `ganforge demo --data NAME` -> the shipped config it trains.
DEMO_CONFIGS = {"shapes": "demo", "cifar10-subset": "demo-cifar10"}


def demo(
    data: str = typer.Option(
        "shapes",
        "--data",
        help="shapes: six classes of coloured shapes drawn by ganforge, recognisable after the "
        "demo's few minutes; cifar10-subset: the embedded CIFAR-10 subset (natural images, "
        "colour blobs at this budget).",
    ),
    out: Path = typer.Option(
        None, "--out", help="Run directory (default runs/demo, runs/demo-cifar10)."
    ),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="Override the demo's steps."),
    serve: bool = typer.Option(
        False, "--serve", help="Then serve the model over HTTP and print its URL (Ctrl-C stops)."
    ),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="HTTP port for --serve."),
) -> None:
    """Train a conditional DCGAN on demo data (CPU, a few minutes), then say how to look at it.

    Draws (or unpacks) the demo data into WebDataset shards, trains through Ray + DeepSpeed, and
    prints the sample grid (one row per class), the time it took and the commands that serve the
    model and open it; with --serve it starts serving right away.
    """
    import time

    from ganforge.checkpoint import list_checkpoints
    from ganforge.config import load_config, resolve_config_path
    from ganforge.rundir import RunDir

    t0 = time.time()
    if data not in DEMO_CONFIGS:
        raise typer.BadParameter(f"must be one of {', '.join(DEMO_CONFIGS)}", param_hint="--data")
    try:
        path = resolve_config_path(DEMO_CONFIGS[data])
        cfg = load_config(path, {"run_dir": out and str(out), "train.max_steps": max_steps})
        run = cfg.resolved_run_dir()
        done = list_checkpoints(RunDir(run).checkpoints)
        finished = bool(done) and done[0][0] >= cfg.train.max_steps
        if not finished:
            run = _train_until_stopped("demo", cfg, resume=None)
    except ConfigError as e:
        _fail(str(e))
    if finished:  # a second `make demo` shows the finished run instead of failing on it
        typer.echo(
            f"{run} already holds the finished demo (step {done[0][0]}); delete it or pass "
            "--out DIR to train again."
        )
    _demo_summary(Path(run), None if finished else time.time() - t0, port)
    if serve:
        _exec_serve(Path(run), port)


def _demo_summary(run: Path, seconds: float | None, port: int) -> None:
    """Where the grid, checkpoint and metrics are; the two commands that serve and open it."""
    from ganforge.checkpoint import resolve_checkpoint
    from ganforge.rundir import RunDir

    grids = RunDir(run).sample_grids()
    took = (
        f"Demo finished in {seconds / 60:.1f} min." if seconds is not None else "The finished demo:"
    )
    typer.echo(
        f"\n{took}\n"
        f"  samples:    {grids[-1] if grids else '(none)'}  (one row per class)\n"
        f"  checkpoint: {resolve_checkpoint(run)}\n"
        f"  metrics:    {RunDir(run).metrics_path}  (TensorBoard: tensorboard --logdir {run})\n"
        f"  serve it:   ganforge serve --model demo={run} --port {port}\n"
        f"  open:       http://127.0.0.1:{port}/  (pick a class, generate; API docs at /docs)\n"
        "  (`ganforge demo --serve` does both in one step)"
    )


def _exec_serve(run: Path, port: int) -> NoReturn:
    """Become `ganforge serve` for the demo's model: serving starts on a cluster of its own (the
    training one is shut down by now) and keeps serve's own Ctrl-C/SIGTERM handling. (Serving
    is not imported here: training and serving are independent parts, see .importlinter.)"""
    import os
    import sys

    args = ["-m", "ganforge.cli", "serve", "--model", f"demo={run}", "--port", str(port)]
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *args])


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("demo")(demo)
    from ganforge.cluster.submit import submit

    app.command(
        "submit",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(submit)

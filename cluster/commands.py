"""`ganforge train`, `ganforge demo` and `ganforge submit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer

from ganforge.config import ConfigError, GanforgeConfig
from ganforge.shutdown import Stop, shutdown_ray, stop_on_signals


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


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
        help="YAML config path, or a shipped name: dcgan, cdcgan, wgan, wgan-gp, cwgan-gp, demo.",
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
        None, "--cpus-per-worker", min=1, help="CPUs (and torch threads) per worker."
    ),
    precision: str = typer.Option(
        None, "--precision", help="fp32 | bf16 | fp16 (bf16/fp16 need --gpu)."
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
    from ganforge.config import load_config, parse_override, resolve_config_path

    try:
        overrides = dict(parse_override(s) for s in set_)
        overrides |= {
            "data.urls": data,
            "run_dir": run_dir,
            "train.max_steps": max_steps,
            "cluster.num_workers": num_workers,
            "cluster.gpu": gpu,
            "cluster.cpus_per_worker": cpus_per_worker,
            "train.precision": precision,
        }
        cfg = load_config(resolve_config_path(config), overrides)
        out = _train_until_stopped("train", cfg, resume=resume, show_progress=progress)
    except ConfigError as e:
        _fail(str(e))
    mirror = f" (local mirror {out})" if str(out) != cfg.run_dir else ""
    typer.echo(f"run dir: {cfg.run_dir}{mirror}")


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory of the demo."),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="Override the demo's steps."),
) -> None:
    """Train a conditional DCGAN on the embedded CIFAR-10 subset (CPU, a few minutes).

    Packs the embedded archive into WebDataset shards, trains through Ray + DeepSpeed, and prints
    where the sample grid and checkpoint are and how to serve the model.
    """
    import time

    from ganforge.checkpoint import list_checkpoints, resolve_checkpoint
    from ganforge.config import load_config, resolve_config_path
    from ganforge.rundir import RunDir

    t0 = time.time()
    try:
        cfg = load_config(
            resolve_config_path("demo"), {"run_dir": str(out), "train.max_steps": max_steps}
        )
        done = list_checkpoints(RunDir(out).checkpoints)
        if done and done[0][0] >= cfg.train.max_steps:
            # A second `make demo` shows the finished run instead of failing on it.
            typer.echo(
                f"{out} already holds the finished demo (step {done[0][0]}); delete it "
                "or pass --out DIR to train again."
            )
            run = out
        else:
            run = _train_until_stopped("demo", cfg, resume=None)
    except ConfigError as e:
        _fail(str(e))
    ckpt = resolve_checkpoint(run)
    grids = RunDir(run).sample_grids()
    metrics = RunDir(run).metrics_path
    minutes = (time.time() - t0) / 60
    typer.echo(
        f"\nDemo finished in {minutes:.1f} min.\n"
        f"  samples:    {grids[-1] if grids else '(none)'}  (one row per class)\n"
        f"  checkpoint: {ckpt}\n"
        f"  metrics:    {metrics}  (TensorBoard: tensorboard --logdir {run})\n"
        f"  serve it:   ganforge serve --model demo={run}\n"
        f"  then:       curl -s localhost:8000/v1/generate -H 'content-type: application/json' "
        f'-d \'{{"model": "demo", "class": "cat", "count": 8, "format": "grid"}}\' '
        f"-o cats.png"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("demo")(demo)
    from ganforge.cluster.submit import submit

    app.command(
        "submit",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(submit)

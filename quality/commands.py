"""`ganforge eval`, `ganforge study` and `ganforge quality train-classifier`.

Heavy imports (torch, ray, the metrics) happen inside the command functions so `--help` is fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

quality_app = typer.Typer(
    no_args_is_help=True, help="Image-quality tools: train the domain classifier."
)


@quality_app.command("train-classifier")
def train_classifier_cmd(
    data: Path = typer.Option(..., "--data", help="Shard directory with dataset.json."),
    out: Path = typer.Option(
        ..., "--out", help="Output state dict (.pt); a .json sidecar is written beside it."
    ),
    epochs: int = typer.Option(8, "--epochs", min=1, help="Training epochs."),
    batch_size: int = typer.Option(256, "--batch-size", min=8, help="Batch size."),
    lr: float = typer.Option(0.2, "--lr", min=0.0, help="Peak SGD learning rate (OneCycle)."),
    train_split: str = typer.Option("train", "--train-split", help="Split to train on."),
    test_split: str = typer.Option("test", "--test-split", help="Split for the test accuracy."),
    limit: int | None = typer.Option(
        None, "--limit", min=10, help="Use at most this many images per split (quick runs)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for weights, order and augmentation."),
) -> None:
    """Train the CIFAR-style classifier used as the default feature extractor and judge."""
    from ganforge.data import DataError
    from ganforge.quality.classifier_training import ClassifierTraining, train_classifier

    recipe = ClassifierTraining(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        train_split=train_split,
        test_split=test_split,
        limit=limit,
        seed=seed,
    )
    try:
        side = train_classifier(data, out, recipe)
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="--data") from None
    acc = side["test_accuracy"]
    shown = f"{acc:.2%}" if acc is not None else "n/a (no test split)"
    typer.echo(f"wrote {out} (+ .json); test accuracy {shown} after {epochs} epochs")


def eval_cmd(
    run_dirs: list[str] = typer.Argument(
        ...,
        help="Run directories (or checkpoint dirs) to compare, one report row each; paths or "
        "object-store URIs (s3://...).",
    ),
    data: Path = typer.Option(
        ..., "--data", help="Real images: shard directory with dataset.json."
    ),
    out: Path = typer.Option(..., "--out", help="Report directory (created)."),
    class_name: str | None = typer.Option(
        None, "--class", help="Class shown in grid-<class>.png (default: the first class)."
    ),
    num_samples: int = typer.Option(
        10_000, "--num-samples", min=10, help="Generated images per checkpoint."
    ),
    checkpoint: str = typer.Option(
        "latest", "--checkpoint", help="Which checkpoints: latest, all, or a step number."
    ),
    split: str = typer.Option("train", "--split", help="Real reference split."),
    real_limit: int | None = typer.Option(
        None, "--real-limit", min=10, help="Use a random subset of this many real images."
    ),
    inception_weights: Path | None = typer.Option(
        None,
        "--inception-weights",
        help="Inception-v3 weights (torch-fidelity format) as the feature extractor.",
    ),
    classifier: Path | None = typer.Option(
        None, "--classifier", help="Classifier weights (default: the shipped CIFAR-10 one)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for noise, subsets and grids."),
) -> None:
    """Compare runs: FID, KID, precision/recall, classifier score, image statistics, grids."""
    from ganforge.data import DataError
    from ganforge.quality.compare import evaluate_runs
    from ganforge.quality.evaluate import EvalError, EvalSettings
    from ganforge.quality.features import ExtractorError

    s = EvalSettings(
        num_samples=num_samples,
        real_split=split,
        real_limit=real_limit,
        seed=seed,
        checkpoint=checkpoint,
        class_name=class_name,
        inception_weights=str(inception_weights) if inception_weights else None,
        classifier=str(classifier) if classifier else None,
    )
    t0 = time.monotonic()
    try:
        body = evaluate_runs(run_dirs, data, out, s)
    except (EvalError, DataError, ExtractorError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    _print_summary(body, out, time.monotonic() - t0)


def _print_summary(body: dict, report: Path, seconds: float, command: str = "eval") -> None:
    """One screen: the latest figures of each run, then where the report's files are."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    table = Table(title="latest checkpoint of each run")
    for col in ("run", "step", "FID", "KID x1e3", "precision", "recall", "sharpness", "noise"):
        table.add_column(col, justify="right")
    for run in body["runs"]:
        m = run["latest"]
        table.add_row(
            run["name"],
            str(m["step"]),
            f"{m['fid']:.2f}",
            f"{m['kid_mean'] * 1e3:.2f}",
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
            f"{m['stats']['sharpness']:.1f}",
            f"{m['stats']['noise_sigma']:.2f}",
        )
    console = Console()
    console.print(table)
    files = Table.grid(padding=(0, 2))
    files.add_column(style="bold", no_wrap=True)
    files.add_column(overflow="fold")
    files.add_row("report", f"{report / 'report.md'} (and report.html)")
    files.add_row("grids", f"{report}/grid-*.png (rows = runs)")
    files.add_row("figures", f"{report / 'metrics.json'}; each run's quality/metrics.json")
    files.add_row("", "(GET /v1/models of `ganforge serve` shows them)")
    files.add_row("features", str(body["extractor"]))
    files.add_row("wall time", f"{seconds / 60:.1f} min")
    console.print(Panel(files, title=f"ganforge {command}", title_align="left", expand=False))


def study_cmd(
    data: Path = typer.Option(..., "--data", help="Shard directory with dataset.json."),
    steps: int = typer.Option(
        ...,
        "--steps",
        min=1,
        help="Budget: generator steps of a 1-critic-step variant (see --budget).",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Study directory: runs/<variant>[-seed<k>]/ and report/."
    ),
    variants: list[str] = typer.Option(
        # quality.study.DEFAULT_VARIANTS, spelled out: importing the study here would load torch
        # for `--help`.
        ["dcgan", "cdcgan", "wgan", "wgan-gp", "cwgan-gp", "stylegan2", "cstylegan2"],
        "--variants",
        help="Variants to train and compare (repeat the option).",
    ),
    num_workers: int = typer.Option(1, "--num-workers", min=1, help="Ray Train workers per run."),
    budget: str = typer.Option(
        "images",
        "--budget",
        help="images: same real images through the critic (steps / n_critic generator steps); "
        "g-steps: same generator steps for every variant.",
    ),
    micro_batch: int | None = typer.Option(
        None, "--micro-batch", min=1, help="Images per worker per step (default: the config's)."
    ),
    num_samples: int = typer.Option(
        10_000, "--num-samples", min=10, help="Generated images per checkpoint in the report."
    ),
    class_name: str | None = typer.Option(None, "--class", help="Class of the class grid."),
    classifier: Path | None = typer.Option(
        None, "--classifier", help="Classifier weights (default: the shipped CIFAR-10 one)."
    ),
    inception_weights: Path | None = typer.Option(
        None,
        "--inception-weights",
        help="Inception-v3 weights (torch-fidelity format): FID and KID on Inception features "
        "too, beside the classifier's (needs torch-fidelity).",
    ),
    real_split: str = typer.Option(
        "test",
        "--real-split",
        help="Real reference split. The default `test` is held out of the shipped classifier's "
        "training, so real and generated features are both out of sample.",
    ),
    detect: bool = typer.Option(
        True,
        "--detect/--no-detect",
        help="Detectability columns: a detector per variant (the cross-generator matrix) and "
        "one on all variants, plus the spectra (minutes of CPU; cached).",
    ),
    detect_limit: int = typer.Option(
        4000, "--detect-limit", min=100, help="Real training images of each detector."
    ),
    seed: int = typer.Option(0, "--seed", help="Evaluation seed and the first training seed."),
    seeds: int = typer.Option(
        3,
        "--seeds",
        min=1,
        help="Training seeds per variant (SEED, SEED+1, ...): figures are means with 95% "
        "intervals over them, and variants are ranked only where the intervals separate.",
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Config override for every variant, e.g. --set model.width=32 (repeatable).",
    ),
    trainer: str = typer.Option(
        "ray",
        "--trainer",
        help="ray: Ray Train + DeepSpeed, as `ganforge train`. single: each run in one process "
        "on --device without them (no resuming mid-run; for one GPU box or a laptop).",
    ),
    device: str = typer.Option(
        "cpu",
        "--device",
        help="cpu or cuda[:N]: where the single-process trainer trains and where the "
        "evaluation runs the generators and feature networks.",
    ),
    jobs: int = typer.Option(
        1,
        "--jobs",
        min=1,
        help="Runs trained (single-process trainer) and evaluated at a time, each in its own "
        "process (they share --device).",
    ),
    show_status: bool = typer.Option(
        False,
        "--status",
        help="Only say how far the study got (steps of each run, the variants with every seed "
        "finished) and write OUT/status.json; trains and evaluates nothing.",
    ),
    part: str | None = typer.Option(
        None,
        "--part",
        help="K/N: train only runs K, K+N, K+2N, ... of the plan and stop (no report), to split "
        "a study over N processes or machines sharing --out; then run without --part.",
    ),
) -> None:
    """Train every variant with the same budget and several seeds (reusing finished runs), then
    compare them: report.md says, for each figure, which variants differ and which tie."""
    t0 = time.monotonic()
    if budget not in ("images", "g-steps"):
        raise typer.BadParameter("must be images or g-steps", param_hint="--budget")
    if trainer not in ("ray", "single"):
        raise typer.BadParameter("must be ray or single", param_hint="--trainer")
    _check_device(device)
    if trainer == "ray":
        _require_training()
    from ganforge.config import ConfigError, parse_override
    from ganforge.data import DataError
    from ganforge.quality.detect_sources import DetectError
    from ganforge.quality.evaluate import EvalError
    from ganforge.quality.features import ExtractorError, InceptionExtractor
    from ganforge.quality.study import (
        StudyOptions,
        run_study,
        status,
        study_settings,
        train_part,
    )
    from ganforge.quality.study_detect import DetectOptions

    s = study_settings(
        seed,
        num_samples=num_samples,
        real_split=real_split,
        class_name=class_name,
        classifier=str(classifier) if classifier else None,
        also_inception=str(inception_weights) if inception_weights else None,
        device=None if device == "cpu" else device,
    )
    detect_opts = DetectOptions(limit=detect_limit, seed=seed) if detect else None
    try:
        if inception_weights is not None:  # fail now, not after hours of training
            InceptionExtractor(inception_weights)
        opts = StudyOptions(
            steps=steps,
            variants=tuple(variants),
            budget=budget,
            num_workers=num_workers,
            micro_batch=micro_batch,
            seed=seed,
            seeds=tuple(range(seed, seed + seeds)),
            overrides=dict(parse_override(x) for x in set_),
            trainer=trainer,
            device=device,
            jobs=jobs,
        )
        if show_status:
            _print_status(status(out, str(data), opts), out)
            return
        if part is not None:
            k, n = _parse_part(part)
            done = train_part(data, out, opts, k, n)
            typer.echo(
                f"part {k}/{n}: {len(done)} run(s) trained or reused; run the command without "
                "--part (once every part is done) for the report"
            )
            return
        body = run_study(data, out, opts, eval_settings=s, progress=True, detect=detect_opts)
    except (ConfigError, EvalError, DataError, ExtractorError, DetectError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    _print_summary(body, out / "report", time.monotonic() - t0, "study")


def _print_status(body: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"study {out}")
    for col in ("variant", "seed", "run", "steps", "state"):
        table.add_column(col, justify="right" if col in ("seed", "steps") else "left")
    for r in body["runs"]:
        state = "finished" if r["finished"] else ("not started" if not r["steps"] else "partial")
        table.add_row(
            r["variant"], str(r["seed"]), r["run"], f"{r['steps']}/{r['max_steps']}", state
        )
    console = Console()
    console.print(table)
    console.print(
        f"every seed finished: {', '.join(body['complete_variants']) or 'none'}; "
        f"to do: {', '.join(body['incomplete_variants']) or 'nothing'} ({out / 'status.json'})"
    )


def _parse_part(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise typer.BadParameter(f"{text!r}: expected K/N with 0 <= K < N", param_hint="--part")
    return int(k), int(n)


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise typer.BadParameter(f"{device!r}: expected cpu or cuda[:N]", param_hint="--device")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA is not available on this machine", param_hint="--device")


def _require_training() -> None:
    """Exit 2 with the reason where training (Ray + DeepSpeed) cannot be imported."""
    try:
        from ganforge.cluster.launch import run_training  # noqa: F401
    except ImportError as e:
        typer.echo(f"error: training is not available ({e})", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Mount this area's commands on the root app."""
    app.command("eval")(eval_cmd)
    app.command("study")(study_cmd)
    app.add_typer(quality_app, name="quality")

"""`ganforge detect train|eval|matrix|spectrum`: the deepfake detector's commands.

Heavy imports happen inside the command functions so `--help` is fast. Bad input (missing
shards, a run without checkpoints, a detector file that is not one, mismatched image sizes)
ends with one `error:` line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

detect_app = typer.Typer(
    no_args_is_help=True,
    help="Deepfake detection: train a real-vs-fake classifier against trained generators, "
    "evaluate it per generator, the cross-generator matrix, the spectral fingerprint.",
)

REAL = typer.Option(..., "--real", help="Real images: shard directory with dataset.json.")
FAKE = typer.Option(
    ...,
    "--fake",
    help="A generator: run directory, checkpoint directory or object-store URI (its latest "
    "checkpoint's EMA weights). Repeat for several.",
)
SEED = typer.Option(0, "--seed", help="Seed for subsets, fake noise, weights and bootstrap.")
EPOCHS = typer.Option(4, "--epochs", min=1, help="Training epochs (fresh fakes every epoch).")
BATCH = typer.Option(128, "--batch-size", min=2, help="Batch size (half real, half fake).")
LR = typer.Option(2e-3, "--lr", min=0.0, help="Peak AdamW learning rate (OneCycle).")
LIMIT = typer.Option(None, "--limit", min=10, help="At most this many real training images.")
VAL = typer.Option(0.1, "--val-fraction", min=0.01, max=0.9, help="Share of reals held out.")
WIDTHS = typer.Option("8,16,32", "--widths", help="Detector stage widths, comma-separated.")
JPEG = typer.Option(
    0.5,
    "--jpeg-prob",
    min=0.0,
    max=1.0,
    help="Share of training images (real and fake alike) re-encoded as JPEG at a random quality "
    "70-95. At 1.0, every input is also re-encoded at inference (quality 82).",
)
MATCH = typer.Option(
    True,
    "--match-encoding/--as-generated",
    help="Store the fakes as the real shards store their images (JPEG at their quality, read "
    "from the first image) before the detector sees them, so the file encoding is no cue; or "
    "use them as generated.",
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _errors() -> tuple[type[Exception], ...]:
    from ganforge.data import DataError
    from ganforge.models.detector import DetectorError
    from ganforge.quality.detect_sources import DetectError

    return DataError, DetectorError, DetectError


def _recipe(epochs, batch_size, lr, limit, val_fraction, widths, jpeg_prob, match, seed, split):
    from ganforge.quality.detect_augment import Augment
    from ganforge.quality.detect_train import DetectorTraining

    try:
        w = tuple(int(x) for x in widths.split(","))
    except ValueError:
        w = ()
    if not 1 <= len(w) <= 6 or not all(1 <= x <= 512 for x in w):
        _fail(f"--widths must be 1 to 6 comma-separated integers in 1..512, not {widths!r}")
    return DetectorTraining(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        widths=w,
        split=split,
        val_fraction=val_fraction,
        limit=limit,
        augment=Augment(jpeg_prob=jpeg_prob),
        match_encoding=match,
        seed=seed,
    )


@detect_app.command("train")
def train_cmd(
    real: Path = REAL,
    fake: list[str] = FAKE,
    out: Path = typer.Option(
        ..., "--out", help="Detector state dict (.pt); its record (.json) is written beside it."
    ),
    split: str = typer.Option("train", "--split", help="Real split to train and hold out from."),
    epochs: int = EPOCHS,
    batch_size: int = BATCH,
    lr: float = LR,
    limit: int | None = LIMIT,
    val_fraction: float = VAL,
    widths: str = WIDTHS,
    jpeg_prob: float = JPEG,
    match: bool = MATCH,
    seed: int = SEED,
) -> None:
    """Train a real-vs-fake detector; its .json record holds validation figures and temperature."""
    recipe = _recipe(
        epochs, batch_size, lr, limit, val_fraction, widths, jpeg_prob, match, seed, split
    )
    from ganforge.quality.detect_train import train_detector

    try:
        _, record = train_detector(real, fake, out, recipe)
    except _errors() as e:
        _fail(str(e))
    v = record["validation"]["all"]
    lo, hi = v["auc_ci"]
    bound = record["validation"]["calibration"]["at_bound"]
    typer.echo(
        f"wrote {out} (+ .json); validation AUC {v['auc']:.3f} [{lo:.3f}, {hi:.3f}], "
        f"temperature {record['temperature']:.3g}"
        + (" (at its search bound: the validation set is separated perfectly)" if bound else "")
        + f", {record['train_seconds']:.0f} s"
    )


@detect_app.command("eval")
def eval_cmd(
    detector: Path = typer.Argument(..., help="Detector .pt (with its .json record beside it)."),
    real: Path = REAL,
    fake: list[str] = FAKE,
    out: Path = typer.Option(..., "--out", help="Report directory: results.json, report.md."),
    split: str = typer.Option("test", "--split", help="Real split (not the training split)."),
    limit: int | None = typer.Option(None, "--limit", min=10, help="At most this many reals."),
    num_fake: int | None = typer.Option(
        None, "--num-fake", min=10, max=200_000, help="Fakes per generator (default: # reals)."
    ),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", min=0, max=100_000, help="Bootstrap resamples for the intervals."
    ),
    match: bool = MATCH,
    seed: int = SEED,
) -> None:
    """ROC AUC, accuracy, EER and TPR at 1% FPR per generator, with 95% bootstrap intervals."""
    from ganforge.quality.detect_eval import LABELS, evaluate_detector, write_eval_report

    try:
        body = evaluate_detector(
            detector, real, fake, split, limit, num_fake, bootstrap, seed, match
        )
    except _errors() as e:
        _fail(str(e))
    write_eval_report(body, out)
    rows = [[n] + [f"{g[k]:.3f}" for k in LABELS] for n, g in body["generators"].items()]
    _table("detector per generator", ["generator", *LABELS.values()], rows)
    typer.echo(f"report: {out / 'report.md'}")


@detect_app.command("matrix")
def matrix_cmd(
    real: Path = REAL,
    fake: list[str] = FAKE,
    out: Path = typer.Option(..., "--out", help="Output directory: matrix.json, matrix.md."),
    eval_split: str = typer.Option("test", "--eval-split", help="Real split to test on."),
    eval_limit: int | None = typer.Option(
        None, "--eval-limit", min=10, help="At most this many real test images."
    ),
    bootstrap: int = typer.Option(
        200, "--bootstrap", min=0, max=100_000, help="Bootstrap resamples per cell."
    ),
    save_detectors: bool = typer.Option(
        False, "--save-detectors", help="Keep each row's detector as OUT/detectors/<name>.pt."
    ),
    epochs: int = EPOCHS,
    batch_size: int = BATCH,
    lr: float = LR,
    limit: int | None = LIMIT,
    val_fraction: float = VAL,
    widths: str = WIDTHS,
    jpeg_prob: float = JPEG,
    match: bool = MATCH,
    seed: int = SEED,
) -> None:
    """One detector per generator, each tested on every generator (cells: ROC AUC)."""
    recipe = _recipe(
        epochs, batch_size, lr, limit, val_fraction, widths, jpeg_prob, match, seed, "train"
    )
    from ganforge.quality.detect_matrix import cross_generator_matrix, write_matrix

    try:
        body = cross_generator_matrix(
            real,
            fake,
            recipe,
            eval_split=eval_split,
            eval_limit=eval_limit,
            bootstrap=bootstrap,
            seed=seed,
            save_dir=out / "detectors" if save_detectors else None,
        )
    except _errors() as e:
        _fail(str(e))
    write_matrix(body, out)
    rows = [[r] + [f"{v:.3f}" for v in body["auc"][i]] for i, r in enumerate(body["rows"])]
    _table("ROC AUC: rows trained on, columns tested on", ["trained on", *body["columns"]], rows)
    typer.echo(f"matrix: {out / 'matrix.md'}")


@detect_app.command("spectrum")
def spectrum_cmd(
    real: Path = REAL,
    fake: list[str] = FAKE,
    out: Path = typer.Option(..., "--out", help="Output directory: spectrum.json, spectrum.png."),
    split: str = typer.Option("test", "--split", help="Real split."),
    num_images: int = typer.Option(
        2000, "--num-images", min=10, max=200_000, help="Real images, and fakes per generator."
    ),
    match: bool = MATCH,
    seed: int = SEED,
) -> None:
    """Power spectra of real and fake images, upsampling peaks, distance to the real spectrum."""
    from ganforge.quality.detect_spectrum import spectra, write_spectra

    try:
        body = spectra(real, fake, split, num_images, seed, match)
    except _errors() as e:
        _fail(str(e))
    write_spectra(body, out)
    rows = [
        [n, f"{g['distance']:.3f}", f"{g['high_freq_distance']:.3f}"]
        for n, g in body["generators"].items()
    ]
    _table("distance to the real spectrum", ["generator", "all rings", "high freq"], rows)
    typer.echo(f"plot: {out / 'spectrum.png'}")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Mount `ganforge detect ...` on the root app."""
    app.add_typer(detect_app, name="detect")

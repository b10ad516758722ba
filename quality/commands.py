"""`ganforge eval`, `ganforge study` and `ganforge quality train-classifier`.

Heavy imports (torch, ray, the metrics) happen inside the command functions so `--help` is fast.
"""

from __future__ import annotations

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
    from ganforge.quality.classifier_training import train_classifier
    from ganforge.quality.real_images import DataError

    try:
        side = train_classifier(
            data, out, epochs=epochs, batch_size=batch_size, lr=lr, train_split=train_split,
            test_split=test_split, limit=limit, seed=seed,
        )
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="--data") from None
    acc = side["test_accuracy"]
    shown = f"{acc:.2%}" if acc is not None else "n/a (no test split)"
    typer.echo(f"wrote {out} (+ .json); test accuracy {shown} after {epochs} epochs")


def register(app: typer.Typer) -> None:
    """Mount this area's commands on the root app."""
    app.add_typer(quality_app, name="quality")

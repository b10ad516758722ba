"""Train the deepfake detector (`ganforge detect train`): `train_detector(real, fakes, out)`.

Real images come from one split of a shard directory; a seeded `val_fraction` of them is held
out. Every epoch draws fresh fakes from each generator (as many fakes in total as real training
images, shared out evenly), so the detector never sees the same fake twice and cannot memorise
them; they are stored as the real shards store their images (`detect_encoding`; off with
`match_encoding=False`). Both classes go through the same augmentations (`detect_augment`).
After the last epoch,
held-out reals and fresh fakes (seeds never used in training) give the validation figures, and a
temperature fitted on them calibrates the probabilities. Both go into the detector's JSON record,
which is what serving reads.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from ganforge.models.detector import FORMAT, Detector, save_detector
from ganforge.quality import detect_metrics as DM
from ganforge.quality.detect_augment import Augment, augment
from ganforge.quality.detect_sources import (
    VALIDATION_SEED,
    DetectError,
    FakeInput,
    FakeSource,
    RealInput,
    as_sources,
    draw,
    real_images,
)

VALIDATION_BOOTSTRAP = 200  # replicates for the record's intervals (the eval command does more)


@dataclass(frozen=True)
class DetectorTraining:
    """The recipe of one detector training run; recorded in full."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3  # peak AdamW learning rate of the OneCycle schedule
    weight_decay: float = 5e-4
    widths: tuple[int, ...] = (8, 16, 32)  # Detector stage widths
    split: str = "train"  # real images to train (and hold out) from
    val_fraction: float = 0.1
    limit: int | None = None  # at most this many real images (seeded subset)
    augment: Augment = field(default_factory=Augment)
    match_encoding: bool = True  # store fakes as the reals are stored (detect_encoding)
    seed: int = 0  # weights, order, augmentation, hold-out and fake noise


def fakes_for(
    sources: list[FakeSource], n: int, seed: int, like: torch.Tensor, encoding: dict | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n fakes shared out evenly over `sources`, stored as `encoding` -> (uint8 images, source
    index per image)."""
    counts = [n // len(sources) + (i < n % len(sources)) for i in range(len(sources))]
    parts = [draw(s, c, seed, like, encoding) for s, c in zip(sources, counts, strict=True) if c]
    which = torch.cat([torch.full((c,), i) for i, c in enumerate(counts) if c])
    return torch.cat(parts), which


def train_detector(
    real: RealInput,
    fakes: FakeInput,
    out: str | Path | None = None,
    recipe: DetectorTraining = DetectorTraining(),
    progress: bool = True,
) -> tuple[Detector, dict[str, Any]]:
    """Train on `real` (shard dir, uint8 [N, C, H, W] or `Reals`) against `fakes` (run or
    checkpoint paths, FakeSources or {name: (n, seed) -> uint8 images}). Saves `out` and
    `out.json` when given. -> (detector in eval mode, temperature and canonical JPEG set; record).
    """
    from tqdm import tqdm

    if not 0 < recipe.val_fraction < 1:
        raise DetectError(f"val_fraction must be between 0 and 1, not {recipe.val_fraction}")
    started = time.time()
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    sources = as_sources(fakes)
    reals = real_images(real, recipe.split, recipe.limit, recipe.seed, progress)
    images, encoding = reals.images, reals.encoding if recipe.match_encoding else None
    order = torch.randperm(len(images), generator=gen)
    n_val = int(len(images) * recipe.val_fraction)
    if n_val < 2 or len(images) - n_val < 2:
        raise DetectError(f"{len(images)} real images are too few to train and hold out from")
    train_real, val_real = images[order[n_val:]], images[order[:n_val]]
    model = Detector(images.shape[1], recipe.widths).to(memory_format=torch.channels_last)
    steps = max(2 * len(train_real) // recipe.batch_size, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps, pct_start=0.25
    )
    history = []
    for epoch in range(recipe.epochs):
        seed = recipe.seed * 1000 + epoch
        fake, _ = fakes_for(sources, len(train_real), seed, train_real, encoding)
        desc = f"epoch {epoch + 1}/{recipe.epochs}"
        bar = tqdm(range(steps), desc=desc, disable=not progress)
        loss = _train_epoch(model, opt, sched, train_real, fake, gen, recipe, bar)
        history.append(
            {"epoch": epoch + 1, "loss": loss, "seconds": round(time.time() - started, 1)}
        )
    model.jpeg_quality = recipe.augment.canonical_quality
    validation, model.temperature = _validate(model, sources, val_real, recipe.seed, encoding)
    record = _record(
        model, reals.origin, images.shape[-1], sources, recipe, len(train_real), validation,
        history, started,
    )  # fmt: skip
    record["fake_encoding"] = encoding
    if out is not None:
        save_detector(model, record, out)
    return model.eval(), {"format": FORMAT, "arch": model.arch(), **record}


def _train_epoch(model, opt, sched, real, fake, gen, recipe, bar) -> float:
    """One pass over real + fake in a fresh random order; `bar` iterates the step indices (a
    progress bar). -> the mean BCE loss."""
    model.train()
    x = torch.cat([real, fake])
    y = torch.cat([torch.zeros(len(real)), torch.ones(len(fake))])
    order = torch.randperm(len(x), generator=gen)
    b, total = recipe.batch_size, 0.0
    for step in bar:
        idx = order[step * b : (step + 1) * b]
        xb = augment(x[idx], gen, recipe.augment).contiguous(memory_format=torch.channels_last)
        loss = F.binary_cross_entropy_with_logits(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
    return total / len(bar)


def _validate(model: Detector, sources, val_real, seed: int, encoding: dict | None):
    """Held-out reals + fresh fakes (as many as the reals, shared out) -> (figures, temperature).
    The figures are computed with the fitted temperature, as `predict` will give them."""
    fake, which = fakes_for(sources, len(val_real), VALIDATION_SEED + seed, val_real, encoding)
    logits = torch.cat([model.logits(val_real), model.logits(fake)])
    labels = torch.cat([torch.zeros(len(val_real)), torch.ones(len(fake))])
    t = DM.fit_temperature(logits, labels)
    probs = torch.sigmoid(logits / t)
    per_generator = {}
    for i, src in enumerate(sources):
        keep = torch.cat([torch.ones(len(val_real), dtype=torch.bool), which == i])
        per_generator[src.name] = DM.point_metrics(probs[keep], labels[keep])
    body = {
        "all": DM.with_intervals(probs, labels, VALIDATION_BOOTSTRAP, seed),
        "per_generator": per_generator,
        "calibration": DM.calibration(logits, labels, t),
    }
    return body, t


def _record(model, real, image_size, sources, recipe, n_train, validation, history, started):
    """The detector's JSON record (its `arch` and `format` are added by `save_detector`)."""
    recipe_body = asdict(recipe)
    recipe_body["optimizer"] = "AdamW, OneCycle (25% warm-up), BCE with logits"
    return {
        "image_size": image_size,
        "temperature": model.temperature,
        "preprocess": {"jpeg_quality": model.jpeg_quality},
        "fakes": [s.name for s in sources],
        "fake_origins": [s.origin for s in sources],
        "real": {
            "data": real,
            "train_images": n_train,
            "validation_images": validation["all"]["num_real"],
        },
        "validation": validation,
        "recipe": recipe_body,
        "history": history,
        "train_seconds": round(time.time() - started, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }

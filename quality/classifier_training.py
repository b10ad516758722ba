"""Train the domain classifier on packed shards (`ganforge quality train-classifier`).

Recipe for a small CPU budget: random crop (4 px reflect padding) + horizontal flip, SGD with
Nesterov momentum under a OneCycle schedule, label smoothing, channels-last tensors (faster
convolutions on CPU), flip test-time augmentation for the reported test accuracy.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from ganforge.data.memory import load_real
from ganforge.quality.classifier import CifarClassifier


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after reflect padding + random horizontal flip, on a uint8 batch [B,C,H,W];
    every image gets its own crop offset and flip."""
    b, c, h, w = x.shape
    padded = F.pad(x.float(), (pad,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # [B,1,H,1]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # [B,1,1,W]
    out = padded[
        torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols
    ]
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out.round().to(torch.uint8)


@torch.no_grad()
def evaluate_accuracy(model: CifarClassifier, x: torch.Tensor, y: torch.Tensor, bs: int = 500):
    """Top-1 accuracy with flip test-time augmentation; also per-class accuracy."""
    model.eval()
    preds = []
    for i in range(0, len(x), bs):
        xb = x[i : i + bs].contiguous(memory_format=torch.channels_last)
        logits = model(xb).softmax(-1) + model(xb.flip(-1)).softmax(-1)
        preds.append(logits.argmax(-1))
    pred = torch.cat(preds)
    per_class = [
        (pred[y == c] == c).float().mean().item() if (y == c).any() else float("nan")
        for c in range(model.num_classes)
    ]
    return (pred == y).float().mean().item(), per_class


@dataclass(frozen=True)
class ClassifierTraining:
    """The recipe and the splits of one classifier training run."""

    epochs: int = 8
    batch_size: int = 256
    lr: float = 0.2  # peak SGD learning rate of the OneCycle schedule
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    widths: tuple[int, ...] = (32, 64, 128, 256)  # CifarClassifier stage widths
    train_split: str = "train"
    test_split: str = "test"  # accuracy reported on it; training accuracy only where absent
    limit: int | None = None  # at most this many images per split (quick runs)
    seed: int = 0  # weights, order and augmentation


def train_classifier(
    data: str | Path,
    out: str | Path,
    recipe: ClassifierTraining = ClassifierTraining(),
    progress: bool = True,
) -> dict:
    """Train on `recipe.train_split`, report accuracy on `recipe.test_split`, save `out` (state
    dict) and `out.json` (sidecar: arch, classes, accuracies, recipe, command). Returns the
    sidecar."""
    from tqdm import tqdm

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    train, test = _load_splits(data, recipe, progress)
    model = CifarClassifier(len(train.classes), train.channels, recipe.widths)
    model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(train.images) // recipe.batch_size or 1
    opt, sched = _optimiser(model, recipe, recipe.epochs * steps_per_epoch)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started, history = time.time(), []
    for epoch in range(recipe.epochs):
        desc = f"epoch {epoch + 1}/{recipe.epochs}"
        bar = tqdm(range(steps_per_epoch), desc=desc, disable=not progress)
        loss = _train_epoch(model, opt, sched, train, gen, recipe, bar)
        entry = {"epoch": epoch + 1, "loss": loss, "seconds": round(time.time() - started, 1)}
        if test is not None and (epoch + 1 == recipe.epochs or progress):
            entry["test_accuracy"] = evaluate_accuracy(model, test.images, test.labels)[0]
        history.append(entry)
        if progress:
            print(json.dumps(entry), flush=True)
    sidecar = _sidecar(model, data, train, test, recipe, history, started)
    _save(model, out, sidecar)
    return sidecar


def _load_splits(data: str | Path, recipe: ClassifierTraining, progress: bool):
    """-> (train split, test split or None where the data has none)."""

    def split(name: str):
        return load_real(data, name, limit=recipe.limit, seed=recipe.seed, progress=progress)

    train = split(recipe.train_split)
    if (train.labels < 0).any():
        raise ValueError(f"{data}: split {recipe.train_split!r} has samples without a .cls label")
    try:
        test = split(recipe.test_split)
    except ValueError:
        test = None  # no test split: report training accuracy only
    return train, test


def _optimiser(model: CifarClassifier, recipe: ClassifierTraining, total_steps: int):
    """-> (SGD with Nesterov momentum, its OneCycle schedule: 25% linear warm-up)."""
    opt = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=recipe.weight_decay,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=recipe.lr,
        total_steps=total_steps,
        pct_start=0.25,
        anneal_strategy="linear",
        div_factor=10,
        final_div_factor=100,
    )
    return opt, sched


def _train_epoch(model, opt, sched, train, gen, recipe: ClassifierTraining, bar) -> float:
    """One pass over `train` in a fresh random order; `bar` iterates the step indices (a
    progress bar). -> the mean training loss."""
    model.train()
    order = torch.randperm(len(train.images), generator=gen)
    b, smoothing, total = recipe.batch_size, recipe.label_smoothing, 0.0
    for step in bar:
        idx = order[step * b : (step + 1) * b]
        xb = augment(train.images[idx], gen).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(xb), train.labels[idx], label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
    return total / len(bar)


def _sidecar(model, data, train, test, recipe: ClassifierTraining, history, started) -> dict:
    """The .json beside the weights; measures the final test accuracy (flip TTA)."""
    test_acc, per_class = (
        evaluate_accuracy(model, test.images, test.labels) if test is not None else (None, None)
    )
    return {
        "arch": model.arch(),
        "classes": train.classes,
        "feature_dim": model.feature_dim,
        "test_accuracy": test_acc,
        "test_accuracy_per_class": dict(zip(train.classes, per_class, strict=True))
        if per_class
        else None,
        "test_split": recipe.test_split if test is not None else None,
        "train_images": len(train.images),
        "epochs": recipe.epochs,
        "recipe": {
            "batch_size": recipe.batch_size,
            "lr": recipe.lr,
            "weight_decay": recipe.weight_decay,
            "label_smoothing": recipe.label_smoothing,
            "schedule": "OneCycle(linear, 25% warm-up)",
            "augment": "per-image crop(pad 4, reflect)+hflip",
            "tta": "hflip",
            "seed": recipe.seed,
        },
        "history": history,
        "train_seconds": round(time.time() - started, 1),
        "data": str(data),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }


def _save(model: CifarClassifier, out: Path, sidecar: dict) -> None:
    """State dict (contiguous tensors, loadable without channels-last) + the .json sidecar."""
    model = model.to(memory_format=torch.contiguous_format)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out)
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))

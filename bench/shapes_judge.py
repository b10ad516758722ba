"""A judge of the demo's shapes: a small classifier trained on the real shapes, then used to
label generated ones (per-class accuracy of a conditional generator).

The shipped CIFAR-10 classifier cannot judge shapes, and a classifier trained on the clean real
images alone does not transfer to GAN samples (measured: on recognisable generated circles it
spread its probability almost evenly over the six classes). So the real images are degraded the
way early GAN samples are while it trains: blurred, noisy, faded and colour-shifted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ganforge.quality.classifier import CifarClassifier

WIDTHS = (8, 16, 32)  # a CifarClassifier a quarter as wide as the shipped one


@dataclass(frozen=True)
class JudgeRecipe:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    limit: int = 3000  # real training images read (500 per class)
    seed: int = 0


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each image [B, C, H, W] with its own sigma [B] (0 = unchanged)."""
    r = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-(r[None, :] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))  # [B, 5]
    k = k / k.sum(1, keepdim=True)
    b, c, h, w = x.shape
    flat = x.reshape(1, b * c, h, w)
    kx = k.repeat_interleave(c, 0)[:, None, None, :]  # [B*C, 1, 1, 5], one kernel per image
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), kx, groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="replicate"), kx.transpose(2, 3), groups=b * c)
    return flat.reshape(b, c, h, w)


def _zoom(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Scale each image [B, C, H, W] about its centre by its own factor [B] (< 1 shrinks); the
    border pixels (the background) fill what comes into view."""
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float in [-1, 1], flipped, rescaled, blurred, faded, shifted and
    noisy at random strengths per image."""
    b = len(x)

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, *shape, generator=gen)

    x = x.float() / 127.5 - 1
    flip = torch.rand(b, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    x = _zoom(x, u(0.7, 1.1))
    x = _blur(x, u(0.0, 1.5))
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + u(0.5, 1.0, 1, 1, 1) * (x - mean) + u(-0.15, 0.15, x.shape[1], 1, 1)
    x = x + u(0.0, 0.2, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


@torch.no_grad()
def accuracy_per_class(model: CifarClassifier, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    pred = torch.cat([model(x[i : i + 500]).argmax(-1) for i in range(0, len(x), 500)])
    return [(pred[y == c] == c).float().mean().item() for c in range(model.num_classes)]


def train_judge(shards: str | Path, out: Path, recipe: JudgeRecipe = JudgeRecipe()) -> dict:
    """Train on the shards' train split, save `out` (state dict) and `out.json` (sidecar, read
    by `load_classifier`); -> the sidecar, with clean and degraded test accuracy per class."""
    import json

    from ganforge.data.memory import load_real

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    train = load_real(shards, "train", limit=recipe.limit, seed=recipe.seed)
    test = load_real(shards, "test", limit=recipe.limit // 2, seed=recipe.seed)
    model = CifarClassifier(len(train.classes), train.channels, WIDTHS)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    started = time.perf_counter()
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(train.images), generator=gen)
        for i in range(0, len(order) - recipe.batch_size + 1, recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            loss = F.cross_entropy(model(degrade(train.images[idx], gen)), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    clean = accuracy_per_class(model, test.images, test.labels)
    degraded = accuracy_per_class(model, degrade(test.images, gen), test.labels)
    sidecar = {
        "arch": model.arch(),
        "classes": train.classes,
        "test_accuracy_per_class": dict(zip(train.classes, clean, strict=True)),
        "degraded_test_accuracy_per_class": dict(zip(train.classes, degraded, strict=True)),
        "train_images": len(train.images),
        "recipe": recipe.__dict__,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    return sidecar


def judge_generator(run: str | Path, judge: Path, per_class: int, seed: int = 1) -> dict:
    """Per-class accuracy of `run`'s EMA generator as the judge sees it: {class: share of the
    `per_class` images generated for the class that the judge assigns to it}."""
    from ganforge.models import load_model
    from ganforge.quality.classifier import load_classifier
    from ganforge.quality.evaluate import generate
    from ganforge.quality.metrics import per_class_accuracy

    model = load_model(run)
    labels = torch.arange(len(model.classes)).repeat_interleave(per_class)
    images, labels = generate(model.generator, len(labels), seed, labels=labels)
    with torch.no_grad():
        probs = load_classifier(judge)(images).softmax(-1)
    return per_class_accuracy(probs, labels, model.classes)

"""Which images go into the report's grids: one row per run, plus the real images on top."""

from __future__ import annotations

import torch

from ganforge.quality.evaluate import EvalSettings, RealReference, generate
from ganforge.quality.features import ClassifierExtractor

# Unconditional models cannot be asked for a class: draw this many candidates per grid cell and
# keep those the classifier finds most like the class (said in the row label).
CANDIDATES_PER_CELL = 20


def _real_of_class(ref: RealReference, c: int, k: int, seed: int) -> torch.Tensor:
    idx = (ref.data.labels == c).nonzero().flatten()
    g = torch.Generator().manual_seed(seed)
    return ref.data.images[idx[torch.randperm(len(idx), generator=g)[:k]]]


def class_rows(
    runs: list[dict],
    ref: RealReference,
    judge: ClassifierExtractor | None,
    name: str,
    s: EvalSettings,
) -> list[tuple[str, torch.Tensor]]:
    """Row per run of `grid_columns` samples of class `name` (real images first)."""
    c, k = ref.data.classes.index(name), s.grid_columns
    rows = [("real", _real_of_class(ref, c, k, s.seed))]
    for run in runs:
        g = run["_model"].generator
        if getattr(g, "num_classes", 0):
            imgs, _ = generate(g, k, s.seed + 1, torch.full((k,), c, dtype=torch.int64))
            rows.append((run["name"], imgs))
        elif judge is not None:
            cand, _ = generate(g, k * CANDIDATES_PER_CELL, s.seed + 1)
            best = judge.probs(cand)[:, c].topk(k).indices
            rows.append((f"{run['name']}*", cand[best]))
        else:
            rows.append((f"{run['name']}?", generate(g, k, s.seed + 1)[0]))
    return rows


def random_rows(runs: list[dict], ref: RealReference, s: EvalSettings):
    """Row per run of random samples (conditional models: random classes)."""
    k = s.grid_columns
    gen = torch.Generator().manual_seed(s.seed + 2)
    rows = [("real", ref.data.images[torch.randperm(len(ref.data.images), generator=gen)[:k]])]
    for run in runs:
        g = run["_model"].generator
        labels = (
            torch.randint(0, g.num_classes, (k,), generator=gen)
            if getattr(g, "num_classes", 0)
            else None
        )
        rows.append((run["name"], generate(g, k, s.seed + 2, labels)[0]))
    return rows

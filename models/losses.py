"""GAN losses on discriminator outputs [B] (float32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """bce: -log D(x) - log(1 - D(G(z))) on logits; wasserstein: E[D(fake)] - E[D(real)]."""
    if kind == "bce":
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
    if kind == "wasserstein":
        return fake_scores.mean() - real_scores.mean()
    raise ValueError(f"unknown loss kind {kind!r}")


def g_loss(kind: str, fake_scores: torch.Tensor) -> torch.Tensor:
    """bce: non-saturating -log D(G(z)); wasserstein: -E[D(G(z))]."""
    if kind == "bce":
        return F.softplus(-fake_scores).mean()
    if kind == "wasserstein":
        return -fake_scores.mean()
    raise ValueError(f"unknown loss kind {kind!r}")

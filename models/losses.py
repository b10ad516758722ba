"""GAN losses on discriminator outputs [B] (float32): one `GANLoss` object per objective.

A variant names its loss object in its `VariantSpec`; the engines call `spec.loss.d_loss` and
`spec.loss.g_loss` and never look at a loss kind. `d_loss(kind, ...)` / `g_loss(kind, ...)` look
the built-in losses up by name, for references and benchmarks that train without the engines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GANLoss:
    """A GAN objective. Both callables take float32 scores [B] and return a 0-d float32 loss.

    `name` is what `loss.kind` in a config must say for a variant built on this loss.
    """

    name: str
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """(real_scores, fake_scores) -> the loss D/the critic minimises."""
    g_loss: Callable[[torch.Tensor], torch.Tensor]
    """fake_scores -> the loss G minimises."""
    score_kind: str = "critic"
    """What D's score means, as serving reports it: "logit" (of P(real)) or "critic" (an
    unbounded realness score, comparable only within one model)."""


def bce_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))) on logits (softplus keeps it stable for large logits)."""
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def bce_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Non-saturating -log D(G(z)) on logits (Goodfellow et al. 2014, section 3)."""
    return F.softplus(-fake_scores).mean()


def wasserstein_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[D(G(z))] - E[D(x)]: minus the critic's estimate of the Wasserstein-1 distance."""
    return fake_scores.mean() - real_scores.mean()


def wasserstein_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]."""
    return -fake_scores.mean()


BCE = GANLoss("bce", bce_d_loss, bce_g_loss, score_kind="logit")
WASSERSTEIN = GANLoss("wasserstein", wasserstein_d_loss, wasserstein_g_loss)

LOSSES: dict[str, GANLoss] = {loss.name: loss for loss in (BCE, WASSERSTEIN)}
"""The built-in losses by name (a variant may bring its own `GANLoss` without adding it here)."""


def get_loss(kind: str) -> GANLoss:
    try:
        return LOSSES[kind]
    except KeyError:
        raise ValueError(f"unknown loss kind {kind!r}; built-in: {', '.join(LOSSES)}") from None


def d_loss(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The built-in loss `kind`'s D loss (see `GANLoss.d_loss`)."""
    return get_loss(kind).d_loss(real_scores, fake_scores)


def g_loss(kind: str, fake_scores: torch.Tensor) -> torch.Tensor:
    """The built-in loss `kind`'s G loss (see `GANLoss.g_loss`)."""
    return get_loss(kind).g_loss(fake_scores)

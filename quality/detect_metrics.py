"""Figures of a real-vs-fake detector: ROC AUC, accuracy, equal error rate, TPR at 1% FPR, and
their bootstrap confidence intervals; plus the temperature scaling that calibrates it.

Scores are P(fake) per image; label 1 = fake, 0 = real. ROC and AUC are torchmetrics'. The
confidence intervals resample reals and fakes separately (stratified, seeded), so every
replicate holds both classes, and take the 2.5th and 97.5th percentiles.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch.nn import functional as F
from torchmetrics.functional.classification import binary_auroc, binary_roc

TARGET_FPR = 0.01
# Temperature search range. A detector that separates its validation set perfectly has no
# finite NLL minimum (NLL keeps falling as T -> 0); the fit then stops at the bound and says so.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.2, 5.0
METRICS = ("auc", "accuracy", "eer", "tpr_at_1pct_fpr")


def point_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """auc; accuracy at P(fake) > 0.5, balanced (mean of the real and fake hit rates);
    eer (where false-positive and false-negative rates meet); tpr_at_1pct_fpr."""
    p, y = scores.double(), labels.long()
    fpr, tpr, _ = binary_roc(p, y, validate_args=False)
    fnr = 1 - tpr
    i = int(torch.argmin((fnr - fpr).abs()))
    hit_fake = (p[y == 1] > 0.5).double().mean()
    hit_real = (p[y == 0] <= 0.5).double().mean()
    return {
        "auc": float(binary_auroc(p, y, validate_args=False)),
        "accuracy": float((hit_fake + hit_real) / 2),
        "eer": float((fpr[i] + fnr[i]) / 2),
        "tpr_at_1pct_fpr": float(tpr[fpr <= TARGET_FPR].max()),
    }


def with_intervals(
    scores: torch.Tensor, labels: torch.Tensor, bootstrap: int = 1000, seed: int = 0
) -> dict[str, float | list[float] | int]:
    """`point_metrics` plus `<name>_ci` = [2.5%, 97.5%] over `bootstrap` stratified resamples,
    and the counts `num_real`, `num_fake`."""
    y = labels.long()
    real, fake = (y == 0).nonzero().flatten(), (y == 1).nonzero().flatten()
    if not len(real) or not len(fake):
        raise ValueError("detection metrics need both real and fake images")
    out: dict[str, float | list[float] | int] = dict(point_metrics(scores, y))
    if bootstrap > 0:
        g = torch.Generator().manual_seed(seed)
        reps = {k: [] for k in METRICS}
        for _ in range(bootstrap):
            idx = torch.cat(
                [
                    real[torch.randint(len(real), (len(real),), generator=g)],
                    fake[torch.randint(len(fake), (len(fake),), generator=g)],
                ]
            )
            for k, v in point_metrics(scores[idx], y[idx]).items():
                reps[k].append(v)
        for k, vals in reps.items():
            out[f"{k}_ci"] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]
    out["num_real"], out["num_fake"] = len(real), len(fake)
    return out


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the binary NLL of
    sigmoid(logits / T) (Guo et al., 2017). One positive scalar: it changes no decision at 0.5
    and no ranking (accuracy, AUC, EER, TPR), only how confident the probabilities are."""
    z, y = logits.double(), labels.double()

    def nll(log_t: float) -> float:
        return float(F.binary_cross_entropy_with_logits(z / math.exp(log_t), y))

    bounds = (math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE))
    best = minimize_scalar(nll, bounds=bounds, method="bounded", options={"xatol": 1e-4})
    return float(math.exp(best.x))


def calibration(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    """NLL and expected calibration error (15 equal-width bins) at T = 1 and at `temperature`;
    `at_bound`: the fit stopped at a bound of the search (see MIN_TEMPERATURE)."""
    y = labels.double()

    def figures(t: float) -> dict[str, float]:
        z = logits.double() / t
        p = torch.sigmoid(z)
        conf = torch.where(p > 0.5, p, 1 - p)
        correct = ((p > 0.5).double() == y).double()
        bins = torch.clamp(((conf - 0.5) * 2 * 15).long(), 0, 14)
        ece = sum(
            float((bins == b).double().mean() * (conf[bins == b] - correct[bins == b]).mean().abs())
            for b in range(15)
            if (bins == b).any()
        )
        return {"nll": float(F.binary_cross_entropy_with_logits(z, y)), "ece": ece}

    edge = min(abs(math.log(temperature / b)) for b in (MIN_TEMPERATURE, MAX_TEMPERATURE))
    return {
        "uncalibrated": figures(1.0),
        "calibrated": figures(temperature),
        "at_bound": edge < 1e-3,
    }

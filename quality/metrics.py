"""Distribution metrics between real and generated images, on precomputed features.

Features are extracted once per image set (`ganforge.quality.features.extract`) and then fed to
every metric: extraction is the expensive part on CPU, and the real set is shared by all runs and
checkpoints. FID and KID are torchmetrics' implementations; they receive the features through
`FeatureInput`, an identity "extractor" module, which is the documented way to give torchmetrics
a custom feature network (`feature=<nn.Module>`).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


class FeatureInput(nn.Module):
    """Identity: the 'images' handed to torchmetrics are already features [N, D]."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to real and fake features [N, D] (N >= 2)."""
    metric = FrechetInceptionDistance(feature=FeatureInput(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return max(float(metric.compute()), 0.0)  # tiny negatives are round-off of sqrtm


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    subset_size: int = 1000,
    subsets: int = 50,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (unbiased MMD^2, cubic kernel): mean and std over subsets.

    `subset_size` is capped at the smaller set size, so small evaluations still work.
    """
    subset_size = int(min(subset_size, len(real), len(fake)))
    with warnings.catch_warnings():  # "saves all features in a buffer": they are in memory anyway
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=FeatureInput(real.shape[1]), subsets=subsets, subset_size=subset_size
        )
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng():  # torchmetrics draws subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_nn_radius(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance of every row of x to its k-th nearest neighbour in x (itself excluded)."""
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)
        # k+1 smallest: the first is the point itself (distance 0).
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _covered(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int = 2048):
    """Fraction of query rows inside at least one ball (ref_i, radii_i)."""
    inside = []
    for i in range(0, len(query), chunk):
        d = torch.cdist(query[i : i + chunk], ref)
        inside.append((d <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside).float().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

    Written here because torchmetrics has no implementation. Precision: share of fakes inside the
    real manifold (union of balls around each real feature reaching its k-th real neighbour);
    recall: share of reals inside the fake manifold. Features [N, D]; O(N^2) distances in chunks.
    """
    real, fake = real.float(), fake.float()  # float32 distances: half the memory of float64
    k = min(k, len(real) - 1, len(fake) - 1)
    if k < 1:
        raise ValueError("precision/recall needs at least 2 real and 2 fake samples")
    precision = _covered(fake, real, _kth_nn_radius(real, k))
    recall = _covered(real, fake, _kth_nn_radius(fake, k))
    return precision, recall


def classifier_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception-Score analogue with the domain classifier: exp(E_x KL(p(y|x) || p(y))).

    Mean and std over `splits` disjoint splits, as the Inception Score is reported. Ranges from 1
    (every image the same prediction, or every prediction uniform) to num_classes.
    """
    probs = probs.double().clamp_min(1e-12)
    splits = max(1, min(splits, len(probs)))
    scores = []
    for part in probs.chunk(splits):
        marginal = part.mean(0, keepdim=True)
        kl = (part * (part.log() - marginal.log())).sum(1).mean()
        scores.append(math.exp(kl.item()))
    t = torch.tensor(scores)
    return t.mean().item(), (t.std(unbiased=False).item() if len(scores) > 1 else 0.0)


def per_class_accuracy(
    probs: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> dict[str, float]:
    """Share of images of each intended class that the classifier assigns to that class."""
    pred = probs.argmax(1)
    return {
        name: (pred[labels == c] == c).double().mean().item()
        for c, name in enumerate(classes)
        if (labels == c).any()
    }


def fid_bootstrap_se(
    real: torch.Tensor, fake: torch.Tensor, replicates: int = 50, seed: int = 0
) -> float:
    """Standard error of the FID from sampling the generated images: the std of the FID over
    `replicates` resamples (with replacement) of `fake`, the real statistics held fixed.

    Written out rather than calling `fid` per replicate: torchmetrics would refit the real
    Gaussian and take a general eigendecomposition every time; here the real side is fitted
    once (`real_gaussian`) and each replicate needs one symmetric one (`frechet_to`)."""
    real_stats = real_gaussian(real)
    gen = torch.Generator().manual_seed(seed)
    values = [
        frechet_to(real_stats, fake[torch.randint(len(fake), (len(fake),), generator=gen)])
        for _ in range(replicates)
    ]
    return float(torch.tensor(values).std()) if len(values) > 1 else 0.0


def real_gaussian(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, covariance, symmetric square root of the covariance) of features [N, D], float64."""
    r = real.double()
    cov = torch.cov(r.T)
    vals, vecs = torch.linalg.eigh(cov)
    return r.mean(0), cov, (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_to(real_stats: tuple[torch.Tensor, ...], fake: torch.Tensor) -> float:
    """FID of `fake` features against `real_gaussian`'s statistics, float64. The same value as
    torchmetrics' |mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 sum sqrt(eigvals(S_r S_f)): with
    R = sqrt(S_r), S_r S_f and R S_f R share their eigenvalues, and the latter is symmetric
    (`eigvalsh`: several times faster than a general eigendecomposition at 2048 dimensions)."""
    mu_r, cov_r, root_r = real_stats
    f = fake.double()
    mu_f, cov_f = f.mean(0), torch.cov(f.T)
    root = torch.linalg.eigvalsh(root_r @ cov_f @ root_r).clamp(min=0).sqrt().sum()
    return float((mu_r - mu_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * root)


def intra_class_kid(
    real: torch.Tensor,
    real_labels: torch.Tensor,
    fake: torch.Tensor,
    fake_labels: torch.Tensor,
    classes: list[str],
    subset_size: int = 1000,
    subsets: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """KID between real and generated features of each class (unbiased at any sample size,
    unlike per-class FID); classes with >= 2 of each."""
    out = {}
    for c, name in enumerate(classes):
        r, f = real[real_labels == c], fake[fake_labels == c]
        if len(r) >= 2 and len(f) >= 2:
            out[name] = kid(r, f, subset_size, subsets, seed)[0]
    return out


def intra_class_fid(
    real: torch.Tensor,
    real_labels: torch.Tensor,
    fake: torch.Tensor,
    fake_labels: torch.Tensor,
    classes: list[str],
) -> dict[str, float]:
    """FID between real and generated features of each class (classes with >= 2 of each)."""
    out = {}
    for c, name in enumerate(classes):
        r, f = real[real_labels == c], fake[fake_labels == c]
        if len(r) >= 2 and len(f) >= 2:
            out[name] = fid(r, f)
    return out

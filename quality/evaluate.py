"""`ganforge eval`: every metric for each run (and checkpoint) against one real reference set.

The real set's features, class probabilities and statistics are computed once and shared by all
runs and checkpoints; each checkpoint's EMA generator produces `num_samples` images (balanced over
classes for conditional models) from a fixed seed, so runs are compared on equal terms.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ganforge.checkpoint import CheckpointError, list_checkpoints, read_marker
from ganforge.data.memory import RealImages, load_real
from ganforge.images import to_uint8
from ganforge.models import load_model
from ganforge.quality import metrics as M
from ganforge.quality.detect_encoding import encode_like, real_encoding
from ganforge.quality.features import ClassifierExtractor, build_classifier_extractor, extract
from ganforge.quality.image_stats import image_stats
from ganforge.rundir import CheckpointDir, RunDir
from ganforge.storage import StorageError, is_uri

MIN_FID_PER_DIM = 10  # per-class FID needs this many images per feature dimension


class EvalError(ValueError):
    """Bad input to an evaluation (missing run, unknown class or checkpoint); says which."""


@dataclass
class EvalSettings:
    """Everything that decides the numbers; recorded in the report."""

    num_samples: int = 10_000
    real_split: str = "train"
    real_limit: int | None = None
    seed: int = 0
    checkpoint: str = "latest"
    class_name: str | None = None
    inception_weights: str | None = None
    classifier: str | None = None
    # Inception-v3 weights for a second FID/KID beside the main extractor's (`inception_fid`,
    # `inception_kid_mean`, ...): the study keeps the classifier's figures and adds these.
    also_inception: str | None = None
    kid_subset_size: int = 1000
    kid_subsets: int = 50
    # Bootstrap replicates for the FID's sampling error of each run's latest checkpoint
    # (`fid_se`; 0 = off): what `ganforge study` adds to the seed interval.
    fid_bootstrap: int = 0
    pr_k: int = 3
    grid_columns: int = 10
    batch_size: int = 500
    # Where the generators and feature networks run (None: the CPU); the metrics stay on the CPU.
    device: str | None = None


@dataclass
class RealReference:
    data: RealImages
    features: torch.Tensor
    probs: torch.Tensor | None
    stats: dict[str, float]
    pr_features: torch.Tensor = field(repr=False, default=None)
    encoding: dict[str, Any] | None = None  # how the real images are stored, when lossy
    second: SecondFeatures | None = None  # `also_inception`: the real set's Inception features


@dataclass
class SecondFeatures:
    """A second feature network (Inception beside the classifier) and the real set's features."""

    extractor: Any
    features: torch.Tensor

    @property
    def name(self) -> str:
        return self.extractor.name


def mirror(run_dir: str | Path, which: str) -> Path:
    """A local path for `run_dir`. An object-store run is mirrored with its checkpoint markers
    and the weights of only the checkpoints `which` selects (`latest`: one download)."""
    if not is_uri(run_dir):
        return Path(run_dir)

    def wanted(ckpts: Path) -> list[Path]:
        return [d for _, d in _pick(list_checkpoints(ckpts), which, run_dir, ckpts)]

    try:
        return RunDir.open(str(run_dir)).localize(weights=wanted)
    except StorageError as e:
        raise EvalError(str(e)) from None


def select_checkpoints(run_dir: str | Path, which: str) -> list[tuple[int, Path]]:
    """`latest`, `all` (oldest first) or a step number -> [(step, checkpoint dir)]. `run_dir` may
    be an object-store URI (mirrored first, see `mirror`)."""
    p = mirror(run_dir, which)
    if not p.exists():
        raise EvalError(f"{run_dir}: no such run directory")
    try:  # a checkpoint dir itself
        return [(int(read_marker(p)["step"]), p)]
    except CheckpointError:
        pass
    ckpts = RunDir(p).checkpoints
    found = list_checkpoints(ckpts) or list_checkpoints(p)
    return _pick(found, which, run_dir, ckpts)


def _pick(
    found: list[tuple[int, Path]], which: str, run_dir: str | Path, where: Path
) -> list[tuple[int, Path]]:
    """`which` of `found` (newest first, as `list_checkpoints` gives them)."""
    if not found:
        raise EvalError(f"{run_dir}: no checkpoints (expected {where}/<name>/)")
    if which == "latest":
        return found[:1]
    if which == "all":
        return sorted(found)
    if not which.isdigit():
        raise EvalError(f"--checkpoint must be latest, all or a step number, not {which!r}")
    hits = [c for c in found if c[0] == int(which)]
    if not hits:
        steps = ", ".join(str(s) for s, _ in sorted(found))
        raise EvalError(f"{run_dir}: no checkpoint at step {which} (has: {steps})")
    return hits


@torch.no_grad()
def generate(
    generator: torch.nn.Module,
    n: int,
    seed: int,
    labels: torch.Tensor | None = None,
    batch_size: int = 500,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n images as uint8 [n, C, H, W]; conditional generators get `labels` or balanced classes."""
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same images on every device
    device = next(generator.parameters()).device
    num_classes = getattr(generator, "num_classes", 0)
    if num_classes and labels is None:
        labels = torch.arange(n) % num_classes
    if not num_classes:
        labels = None
    out = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        z = torch.randn(b, generator.z_dim, generator=gen).to(device)
        y = labels[i : i + b].to(device) if labels is not None else None
        out.append(torch.from_numpy(to_uint8(generator(z, y))).permute(0, 3, 1, 2))
    return torch.cat(out).contiguous(), labels


def build_reference(
    data: str | Path,
    s: EvalSettings,
    extractor,
    judge: ClassifierExtractor | None,
    progress: bool,
    second_extractor=None,
) -> RealReference:
    real = load_real(data, s.real_split, limit=s.real_limit, seed=s.seed, progress=progress)
    label = "real features" if progress else None
    feats = extract(extractor, real.images, s.batch_size, label, s.device)
    probs = probs_of(judge, real.images, feats, extractor, s) if judge is not None else None
    # Precision/recall compares equal-sized sets (as Kynkaanniemi et al.); O(N^2) distances.
    n_pr = min(len(feats), s.num_samples)
    idx = torch.randperm(len(feats), generator=torch.Generator().manual_seed(s.seed))[:n_pr]
    encoding = real_encoding(data, s.real_split)
    second = None
    if second_extractor is not None:
        label = "real features (second network)" if progress else None
        second = SecondFeatures(
            second_extractor,
            extract(second_extractor, real.images, s.batch_size, label, s.device),
        )
    return RealReference(real, feats, probs, image_stats(real.images), feats[idx], encoding, second)


def score_images(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    ref: RealReference,
    extractor,
    judge: ClassifierExtractor | None,
    s: EvalSettings,
    bootstrap: int = 0,
) -> dict[str, Any]:
    """All metrics of one set of generated images against the reference; `bootstrap` > 0 adds
    the FID's sampling error (`fid_se`)."""
    feats = extract(extractor, images, s.batch_size, device=s.device)
    out: dict[str, Any] = {"num_generated": len(images)}
    out |= distances(ref.features, feats, s, bootstrap)
    if ref.second is not None:
        second = extract(ref.second.extractor, images, s.batch_size, device=s.device)
        out |= {
            f"inception_{k}": v
            for k, v in distances(ref.second.features, second, s, bootstrap).items()
        }
    out["precision"], out["recall"] = M.precision_recall(ref.pr_features, feats, s.pr_k)
    if judge is not None:
        probs = probs_of(judge, images, feats, extractor, s)
        out["classifier_score"], out["classifier_score_std"] = M.classifier_score(probs)
        if labels is not None:
            acc = M.per_class_accuracy(probs, labels, ref.data.classes)
            out["per_class_accuracy"] = acc
            out["mean_class_accuracy"] = sum(acc.values()) / len(acc)
    if labels is not None:
        _per_class(out, feats, labels, ref, s)
    out["stats"] = image_stats(images)
    if ref.encoding is not None:  # the fakes stored as the reals are: a like-for-like anchor
        out["stats_as_stored"] = image_stats(encode_like(images, ref.encoding))
    return out


def distances(
    real: torch.Tensor, fake: torch.Tensor, s: EvalSettings, bootstrap: int = 0
) -> dict[str, float]:
    """FID and KID of two feature sets, with the KID's sampling error and (`bootstrap` > 0) the
    FID's (`fid_se`)."""
    out = {"fid": M.fid(real, fake)}
    out["kid_mean"], out["kid_std"] = M.kid(real, fake, s.kid_subset_size, s.kid_subsets, s.seed)
    # The KID's sampling error: its subsets overlap, so count only the disjoint ones.
    n_kid = min(s.kid_subset_size, len(fake), len(real))
    out["kid_se"] = out["kid_std"] / math.sqrt(max(1, min(len(fake), len(real)) // n_kid))
    if bootstrap:
        out["fid_se"] = M.fid_bootstrap_se(real, fake, bootstrap, s.seed)
    return out


def _per_class(out: dict, feats: torch.Tensor, labels: torch.Tensor, ref, s: EvalSettings) -> None:
    """Per-class KID always; per-class FID only with at least MIN_FID_PER_DIM x feature-dim
    images of a class on both sides (below that its bias, which falls as 1/N, dominates)."""
    args = (ref.features, ref.data.labels, feats, labels, ref.data.classes)
    kid = M.intra_class_kid(*args, min(s.kid_subset_size, 1000), 20, s.seed)
    out["intra_kid"] = kid
    out["mean_intra_kid"] = sum(kid.values()) / len(kid) if kid else None
    need = MIN_FID_PER_DIM * feats.shape[1]
    counts = [
        min(int((ref.data.labels == c).sum()), int((labels == c).sum()))
        for c in range(len(ref.data.classes))
    ]
    if min(counts) >= need:
        intra = M.intra_class_fid(*args)
        out["intra_fid"] = intra
        out["mean_intra_fid"] = sum(intra.values()) / len(intra) if intra else None
    else:
        out["intra_fid"] = out["mean_intra_fid"] = None
        out["intra_fid_skipped"] = (
            f"per-class FID needs >= {need} images of each class on both sides "
            f"({MIN_FID_PER_DIM} x {feats.shape[1]} feature dims); the smallest class has "
            f"{min(counts)}: see intra_kid"
        )


def judge_for(
    data_classes: list[str], s: EvalSettings, extractor=None
) -> ClassifierExtractor | None:
    """The domain classifier judges class-wise metrics only if it knows these exact classes.
    When the features come from that same classifier (`extractor`), it is the judge: its class
    probabilities then come from the features already extracted (`probs_of`), one pass less."""
    if isinstance(extractor, ClassifierExtractor) and not s.inception_weights:
        judge = extractor
    else:
        try:
            judge = build_classifier_extractor(s.classifier)
        except (ValueError, FileNotFoundError):
            return None
    return judge if judge.classes in ([], data_classes) else None


def probs_of(judge: ClassifierExtractor, images: torch.Tensor, feats, extractor, s) -> torch.Tensor:
    """Class probabilities of `images` [N, K] (float64, as `extract` gives): from their features
    `feats` when the judge is the feature network itself, else from a pass of the judge."""
    if judge is extractor:
        return judge.probs_from_features(feats)
    return extract(judge.probs, images, s.batch_size, device=s.device)


def evaluate_run(
    run_dir: Path,
    ckpts: list[tuple[int, Path]],
    ref: RealReference,
    extractor,
    judge,
    s: EvalSettings,
    bar: Any = None,
) -> dict[str, Any]:
    """Metrics for the checkpoints `ckpts` ((step, path), from `select_checkpoints`) of one run;
    also keeps the latest one's samples. `bar`: a tqdm bar over the whole evaluation's
    checkpoints, advanced once per checkpoint."""
    rows, latest = [], None
    latest_step = max(step for step, _ in ckpts)
    for step, ckpt in ckpts:
        if bar is not None:
            bar.set_postfix_str(f"{Path(run_dir).name} step {step}")
        try:
            model = load_model(ckpt, s.device or "cpu")
        except CheckpointError as e:
            raise EvalError(str(e)) from None
        n_cls = getattr(model.generator, "num_classes", 0)
        if n_cls and n_cls != len(ref.data.classes):
            raise EvalError(
                f"{run_dir}: the generator has {n_cls} classes, the data {len(ref.data.classes)}"
            )
        images, labels = generate(model.generator, s.num_samples, s.seed, batch_size=s.batch_size)
        row = {
            "step": step,
            "images_seen": int(model.meta.get("images_seen", 0)),
            "checkpoint": str(ckpt),
        }
        boot = s.fid_bootstrap if step == latest_step else 0  # the latest checkpoint only
        row |= score_images(images, labels, ref, extractor, judge, s, boot)
        rows.append(row)
        latest = model
        if bar is not None:
            bar.update()
    cfg = latest.config
    return {
        "run_dir": str(run_dir),
        "name": Path(run_dir).name
        if not CheckpointDir(run_dir).is_marked()
        else Path(run_dir).parent.parent.name,
        "variant": cfg.model.variant,
        "conditional": latest.conditional,
        "n_critic": cfg.loss.n_critic,
        "micro_batch": cfg.train.micro_batch,
        "checkpoints": sorted(rows, key=lambda r: r["step"]),
        "latest": max(rows, key=lambda r: r["step"]),
        "_model": latest,
    }


def write_run_metrics(run: dict[str, Any], extractor_name: str, s: EvalSettings) -> Path | None:
    """RUN_DIR/quality/metrics.json: the latest figures, read by the serving app."""
    folder = RunDir(run["run_dir"])
    if not folder.checkpoints.is_dir():
        return None  # a bare checkpoint dir was given: nowhere sensible to write
    out = folder.quality_metrics
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {"extractor": extractor_name, "settings": asdict(s), **run["latest"]}
    body.pop("checkpoint", None)
    out.write_text(json.dumps(body, indent=1))
    return out

"""Evaluate a deepfake detector per generator (`ganforge detect eval`): `evaluate_detector`.

Real images of one split (by default `test`, which training never touched: it holds out part of
`train`) are scored once; each generator then gets as many fresh fakes (seeds that training and
its validation never used) and its own ROC AUC, accuracy, equal error rate and TPR at 1% FPR,
each with a stratified bootstrap 95% interval (`detect_metrics`). `write_eval_report` writes
`results.json` and `report.md`.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ganforge.models.detector import Detector, load_detector
from ganforge.quality import detect_metrics as DM
from ganforge.quality.detect_sources import (
    EVALUATION_SEED,
    DetectError,
    FakeInput,
    RealInput,
    as_sources,
    draw,
    real_images,
)

LABELS = {
    "auc": "ROC AUC",
    "accuracy": "accuracy",
    "eer": "EER",
    "tpr_at_1pct_fpr": "TPR @ 1% FPR",
}


def evaluate_detector(
    detector: str | Path | Detector | tuple[Detector, dict],
    real: RealInput,
    fakes: FakeInput,
    split: str = "test",
    limit: int | None = None,
    num_fake: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    match_encoding: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Score `real` (shard dir's `split`, uint8 [N, C, H, W] or `Reals`) and `num_fake` (default:
    as many as the reals) fakes of each source with `detector` (a path, a module, or (module,
    record)).
    With `match_encoding`, fakes are stored as the real shards store their images, as in
    training (`detect_encoding`).
    -> {"generators": {name: figures with `_ci` intervals}, "real": ..., "detector": ...}."""
    from tqdm import tqdm

    started = time.time()
    model, record, where = _detector(detector)
    sources = as_sources(fakes)
    loaded = real_images(real, split, limit, seed, progress)
    reals, encoding = loaded.images, loaded.encoding if match_encoding else None
    size = record.get("image_size")
    if reals.shape[1] != model.channels or (size and reals.shape[-1] != size):
        raise DetectError(
            f"the detector was trained on {model.channels}x{size}x{size} images, the data has "
            f"{reals.shape[1]}x{reals.shape[2]}x{reals.shape[3]}"
        )
    n = num_fake or len(reals)
    real_scores = model.predict(reals)
    generators = {}
    for src in tqdm(sources, desc="detect eval", disable=not progress):
        fake_scores = model.predict(draw(src, n, EVALUATION_SEED + seed, reals, encoding))
        scores = torch.cat([real_scores, fake_scores])
        labels = torch.cat([torch.zeros(len(reals)), torch.ones(n)])
        figures = DM.with_intervals(scores, labels, bootstrap, seed)
        figures["seen_in_training"] = src.name in record.get("fakes", [])  # by name
        generators[src.name] = {**figures, "origin": src.origin}
    return {
        "detector": {
            "path": where,
            "trained_on": record.get("fakes"),
            "temperature": model.temperature,
            "jpeg_quality": model.jpeg_quality,
            "validation_auc": (record.get("validation") or {}).get("all", {}).get("auc"),
        },
        "real": {
            "data": loaded.origin,
            "num_images": len(reals),
        },
        "fake_encoding": encoding,
        "generators": generators,
        "bootstrap": bootstrap,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _detector(detector) -> tuple[Detector, dict, str]:
    """A path, a module, or (module, record) as `train_detector` returns it -> (module, record,
    where it came from)."""
    if isinstance(detector, tuple):
        return detector[0], detector[1], "in-memory detector"
    if isinstance(detector, Detector):
        return detector, {}, "in-memory detector"
    module, record = load_detector(detector)
    return module, record, str(detector)


def _cell(fig: dict, key: str) -> str:
    lo, hi = fig.get(f"{key}_ci", (None, None))
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    return f"{fig[key]:.3f}{ci}"


def _stored(body: dict[str, Any]) -> str:
    enc = body.get("fake_encoding")
    return f", stored as the reals are (JPEG quality {enc['quality']})" if enc else ""


def eval_markdown(body: dict[str, Any], title: str = "Deepfake detector evaluation") -> str:
    """The report as Markdown: one row per generator, each figure with its 95% interval."""
    d = body["detector"]
    trained = ", ".join(d["trained_on"] or []) or "unknown"
    lines = [
        f"# {title}",
        "",
        f"Detector `{d['path']}`, trained on fakes of: {trained}. Real images: "
        f"{body['real']['num_images']} of `{body['real']['data']}`; as many fresh fakes per "
        f"generator (noise seeds training never used){_stored(body)}. Brackets: 95% bootstrap "
        f"interval ({body['bootstrap']} stratified resamples, "
        f"seed {body['seed']}). Accuracy is balanced (mean of the real and fake hit rates) at "
        f"P(fake) > 0.5 after temperature scaling (T = {d['temperature']:.3g}). Run "
        f"{body['date']}, {body['seconds']:.0f} s.",
        "",
        "| generator | seen in training | " + " | ".join(LABELS.values()) + " |",
        "|---|---|" + "---|" * len(LABELS),
    ]
    for name, fig in body["generators"].items():
        seen = "yes" if fig.get("seen_in_training") else "no"
        cells = " | ".join(_cell(fig, k) for k in LABELS)
        lines.append(f"| {name} | {seen} | {cells} |")
    lines += [
        "",
        "How to read it: AUC 0.5 is chance, 1.0 a perfect ranking of fakes above reals; EER is "
        "the error rate where the false-alarm and miss rates are equal; TPR @ 1% FPR is the share "
        "of fakes caught when at most 1% of real images may be flagged.",
        "",
    ]
    return "\n".join(lines)


def write_eval_report(body: dict[str, Any], out: str | Path) -> Path:
    """`out/results.json` and `out/report.md` -> out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(body, indent=1))
    (out / "report.md").write_text(eval_markdown(body))
    return out

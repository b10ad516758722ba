"""The study's summary over seeds: per-variant estimates, rankings with ties, the curves, and a
verdict on each claim of the original study (`summarize(body)`, a pure function of the
evaluation's metrics.json body and the detectability figures).

Each figure is taken at each run's latest checkpoint and summarised per variant over its seeds
(`study_stats.estimate`: the wider of the seed and the sample interval; FID and KID carry each
run's own sampling error). Image statistics are compared "as stored" when the real images are
lossy (JPEG): the fakes go through the same JPEG encoding first, so that blur and chroma noise are
measured like for like (`stats_as_stored`); otherwise as generated.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ganforge.quality.study_stats import (
    CONTRADICTED,
    SUPPORTED,
    UNDECIDED,
    Estimate,
    best,
    combine,
    compare_groups,
    estimate,
    fmt,
    num,
    order,
    separated,
)

# (key, label, lower is better; None: closer to the real images is better, no ranking)
FIGURES: list[tuple[str, str, bool | None]] = [
    ("fid", "FID", True),
    ("kid_mean", "KID", True),
    ("inception_fid", "FID (Inception)", True),  # only when the study was given Inception weights
    ("inception_kid_mean", "KID (Inception)", True),
    ("precision", "precision", False),
    ("recall", "recall", False),
    ("mean_class_accuracy", "class accuracy", False),
    ("mean_intra_kid", "intra-class KID", True),
    ("sharpness", "sharpness", None),
    ("noise_sigma", "noise", None),
    ("chroma_noise", "chroma noise", None),
    ("high_freq_share", "HF share", None),
]
SAMPLE_SE = {
    "fid": "fid_se",
    "kid_mean": "kid_se",
    "inception_fid": "inception_fid_se",
    "inception_kid_mean": "inception_kid_se",
}
SCALE = {"kid_mean": 1e3, "mean_intra_kid": 1e3, "inception_kid_mean": 1e3}  # KIDs x1000
# The distribution figures the quality claims (1 and 3) are judged on, with their labels.
QUALITY = [
    ("fid", "FID"),
    ("kid_mean", "KID x1e3"),
    ("inception_fid", "Inception FID"),
    ("inception_kid_mean", "Inception KID x1e3"),
]
STATS = ("sharpness", "noise_sigma", "chroma_noise", "high_freq_share")
CONDITIONAL_PAIRS = [("cdcgan", "dcgan"), ("cwgan-gp", "wgan-gp"), ("cstylegan2", "stylegan2")]
WGAN_FAMILY, DCGAN_FAMILY = ("wgan", "wgan-gp", "cwgan-gp"), ("dcgan", "cdcgan")


def _value(row: dict[str, Any], key: str, as_stored: bool) -> float | None:
    if key in STATS:
        stats = row.get("stats_as_stored") if as_stored else None
        return (stats or row.get("stats") or {}).get(key)
    return row.get(key)


def by_variant(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """variant -> its runs (one per seed), in the order given."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        out[run["variant"]].append(run)
    return dict(out)


def variant_estimates(
    runs: list[dict[str, Any]], as_stored: bool
) -> dict[str, dict[str, Estimate]]:
    """figure -> variant -> Estimate over that variant's seeds (latest checkpoints)."""
    out: dict[str, dict[str, Estimate]] = {}
    for variant, vruns in by_variant(runs).items():
        for key, _, _ in FIGURES:
            rows = [r["latest"] for r in vruns]
            values = [_value(row, key, as_stored) for row in rows]
            if any(v is None for v in values):
                continue
            se_key = SAMPLE_SE.get(key)
            se = [row.get(se_key) for row in rows] if se_key else None
            se = se if se and all(x is not None for x in se) else None
            out.setdefault(key, {})[variant] = estimate(values, se)
    return out


def curves(runs: list[dict[str, Any]], keys=("fid", "kid_mean")) -> dict[str, Any]:
    """figure -> variant -> [{images_seen, step, mean, lo, hi}] over the checkpoints all its
    seeds share, and `still_improving`: variant -> whether the last checkpoint's interval lies
    entirely below the one before (lower is better for these figures)."""
    out: dict[str, Any] = {k: {} for k in keys}
    improving: dict[str, dict[str, bool | None]] = {k: {} for k in keys}
    for variant, vruns in by_variant(runs).items():
        steps = sorted(set.intersection(*({c["step"] for c in r["checkpoints"]} for r in vruns)))
        for key in keys:
            points = []
            for step in steps:
                rows = [next(c for c in r["checkpoints"] if c["step"] == step) for r in vruns]
                e = estimate([row[key] for row in rows])
                seen = rows[0].get("images_seen") or step
                points.append({"step": step, "images_seen": seen, **e.as_dict()})
            out[key][variant] = points
            if len(points) >= 2:
                last, before = points[-1], points[-2]
                improving[key][variant] = last["hi"] < before["lo"]
            else:
                improving[key][variant] = None
    out["still_improving"] = improving
    return out


def _claim(number: int, text: str, verdict: str, evidence: list[str], note: str = "") -> dict:
    return {"claim": number, "text": text, "verdict": verdict, "evidence": evidence, "note": note}


def claims(est: dict[str, dict[str, Estimate]], real_stats: dict[str, float]) -> list[dict]:
    """The original study's four claims, each supported, contradicted or undecided."""
    out = []
    # (1) conditioning improves quality: every conditional/unconditional pair, FID and KID.
    verdicts, lines = [], []
    for cond, uncond in CONDITIONAL_PAIRS:
        pair, pair_lines = [], []
        for key, label in QUALITY:
            if key not in est:
                continue
            v, ev = compare_groups(est.get(key, {}), [cond], [uncond], True, SCALE.get(key, 1.0))
            if ev != ["no pair of these variants was measured"]:
                pair.append(v)
                pair_lines += [f"{label}: {e}" for e in ev]
        if pair:
            verdicts.append(combine(pair))
            lines += [f"{cond} vs {uncond}: {verdicts[-1]}", *pair_lines]
    out.append(
        _claim(
            1,
            "conditioning improves quality (lower FID and KID than the same GAN unconditional)",
            combine(verdicts),
            lines or ["no conditional/unconditional pair was measured"],
        )
    )
    # (2) WGAN variants: sharper images with less RGB (chroma) noise than the DCGAN family.
    sharp, sharp_lines = compare_groups(
        est.get("sharpness", {}), WGAN_FAMILY, DCGAN_FAMILY, lower_is_better=False
    )
    chroma, chroma_lines = compare_groups(
        est.get("chroma_noise", {}), WGAN_FAMILY, DCGAN_FAMILY, lower_is_better=True
    )
    anchor = ", ".join(f"{k} {num(real_stats[k])}" for k in ("sharpness", "chroma_noise"))
    out.append(
        _claim(
            2,
            "WGAN variants give sharper images (higher sharpness) with less RGB noise (lower "
            "chroma noise) than DCGAN and cDCGAN",
            combine([sharp, chroma]),
            [f"sharpness: {e}" for e in sharp_lines] + [f"chroma noise: {e}" for e in chroma_lines],
            f"real images: {anchor}. Sharper is not closer to real: compare with the real row.",
        )
    )
    # (3) conditional WGAN gives the best images: cWGAN-GP alone best on FID and on KID.
    per, lines = [], []
    for key, _ in QUALITY:
        e, scale = est.get(key, {}), SCALE.get(key, 1.0)
        if "cwgan-gp" not in e:
            continue
        top = best(e, lower_is_better=True)
        if top == ["cwgan-gp"]:
            per.append(SUPPORTED)
        elif "cwgan-gp" in top:
            per.append(UNDECIDED)
        else:
            per.append(CONTRADICTED)
        tie = " (tied)" if len(top) > 1 else ""
        lines.append(f"{key}: best {', '.join(top)}{tie}; order {order(e, True)}")
        lines.append(
            f"{key}: cwgan-gp {fmt(e['cwgan-gp'], scale)}, {top[0]} {fmt(e[top[0]], scale)}"
        )
    out.append(
        _claim(
            3,
            "conditional WGAN (cWGAN-GP) gives the best images (lowest FID and KID of all)",
            combine(per) if per else UNDECIDED,
            lines or ["cwgan-gp was not measured"],
        )
    )
    # (4) realism of shadows and detail: nothing here measures shadows.
    hf = est.get("high_freq_share", {})
    real_hf = real_stats.get("high_freq_share")
    lines = []
    if hf and real_hf is not None:
        gap = {v: abs(e.mean - real_hf) for v, e in hf.items()}
        lines = [
            f"HF share (real {num(real_hf)}): "
            + ", ".join(f"{v} {fmt(hf[v])}" for v in sorted(gap, key=gap.get))
        ]
    out.append(
        _claim(
            4,
            "realism of shadows and fine detail",
            UNDECIDED,
            lines,
            "Not measured: no figure here sees shadows, and fine detail only through the "
            "high-frequency share and sharpness (listed, closest to real first); a judgement "
            "of realism needs people looking at the grids.",
        )
    )
    return out


def detect_estimates(detect: dict[str, Any] | None) -> dict[str, dict[str, Estimate]]:
    """'own' / 'all' -> variant -> AUC Estimate (bootstrap interval of one detector)."""
    out: dict[str, dict[str, Estimate]] = {}
    for which in ("own", "all"):
        for variant, fig in ((detect or {}).get(which) or {}).items():
            lo, hi = fig.get("auc_ci") or (fig["auc"], fig["auc"])
            out.setdefault(which, {})[variant] = Estimate(fig["auc"], lo, hi, 1, "sampling")
    return out


def _ranking(label: str, est: dict[str, Estimate], lower: bool) -> dict[str, Any]:
    """`order` says neighbours only; `separated` lists every pair whose intervals separate
    (better first), so that `a ~ b ~ c` with a < c is not read as a three-way tie."""
    beats = separated(est, lower)
    return {
        "label": label,
        "order": order(est, lower),
        "best": best(est, lower),
        "separated": [f"{a} {'<' if lower else '>'} {b}" for a in est for b in beats[a]],
    }


def summarize(body: dict[str, Any], detect: dict[str, Any] | None = None) -> dict[str, Any]:
    """The study's `summary` section (JSON-ready)."""
    runs = body["runs"]
    as_stored = body["real"].get("encoding") is not None
    est = variant_estimates(runs, as_stored)
    rankings = {}
    for key, label, lower in FIGURES:
        if lower is None or key not in est:
            continue
        rankings[key] = _ranking(label, est[key], lower)
    det = detect_estimates(detect)
    for which, label in (("own", "own-detector AUC"), ("all", "all-variants detector AUC")):
        if which in det:  # lower AUC = harder to detect = the better deepfake
            rankings[f"detect_{which}"] = _ranking(
                f"{label} (lower: harder to detect)", det[which], True
            )
    return {
        "seeds": {v: len(r) for v, r in by_variant(runs).items()},
        "stats_compared": "as stored (fakes JPEG-encoded like the reals)"
        if as_stored
        else "as generated",
        "estimates": {k: {v: e.as_dict() for v, e in d.items()} for k, d in est.items()},
        "detectability": {k: {v: e.as_dict() for v, e in d.items()} for k, d in det.items()},
        "rankings": rankings,
        "curves": curves(runs),
        "claims": claims(est, body["real"]["stats"]),
    }

"""The study's part of report.md (`study_markdown(body)`) and its curves plot (`plot_curves`):
variants over seeds with 95% intervals, rankings with ties, detectability, whether each variant
was still improving, and the verdict on each claim of the original study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ganforge.quality.study_stats import Estimate, fmt, num
from ganforge.quality.study_summary import FIGURES, SCALE


def _cell(e: dict[str, Any] | None, scale: float = 1.0) -> str:
    """An Estimate's dict (as the summary stores it) as `fmt` prints it; `-` when missing."""
    return "-" if e is None else fmt(Estimate(**e), scale)


def _summary_table(body: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    est, det = summary["estimates"], summary.get("detectability", {})
    figures = [(k, label) for k, label, _ in FIGURES if k in est]
    cols = [label + (" x1e3" if k in SCALE else "") for k, label in figures]
    detect_cols = [("own", "own-detector AUC"), ("all", "all-variants detector AUC")]
    detect_cols = [(w, label) for w, label in detect_cols if w in det]
    head = ["variant", "seeds", *cols, *(label for _, label in detect_cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, n in summary["seeds"].items():
        row = [variant, str(n)]
        row += [_cell(est[k].get(variant), SCALE.get(k, 1.0)) for k, _ in figures]
        row += [_cell(det[w].get(variant)) for w, _ in detect_cols]
        lines.append("| " + " | ".join(row) + " |")
    real = body["real"]["stats"]
    cells = ["-" if real.get(k) is None else num(real[k]) for k, _ in figures]
    row = [f"**real** ({body['real']['split']})", "-", *cells, *["-"] * len(detect_cols)]
    return [*lines, "| " + " | ".join(row) + " |"]


def _detection(body: dict[str, Any]) -> list[str]:
    """The cross-generator matrix and the spectra of the study's detectability run."""
    det = (body.get("study") or {}).get("detection")
    if not det:
        return []
    m, files = det["matrix"], det["files"]
    off = "-" if m["off_diagonal_mean_auc"] is None else f"{m['off_diagonal_mean_auc']:.3f}"
    lines = [
        "",
        "## Detectability: the cross-generator matrix and the spectra",
        "",
        "A detector per variant, trained on that variant's fakes only (rows), tested on every "
        "variant's fresh fakes (columns) against held-out real test images; cell: ROC AUC "
        "(0.5 = chance, lower = harder to detect). The diagonal is the own-detector AUC above; "
        f"off the diagonal, mean {off}: whether a "
        f"detector catches generators it never saw. Intervals: [{files['matrix']}]"
        f"(detection/{files['matrix']}); the all-variants detector: "
        f"[{files['all_variants']}](detection/{files['all_variants']}).",
        "",
        "| trained on \\ tested on | " + " | ".join(m["columns"]) + " |",
        "|---|" + "---|" * len(m["columns"]),
    ]
    for name, row in zip(m["rows"], m["auc"], strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in row) + " |")
    dist = ", ".join(f"{v} {d:.2f}" for v, d in det["spectral_distance"].items())
    lines += [
        "",
        f"Spectral distance to the real images (mean absolute log10 power over the rings): {dist}.",
        "",
        f"![Power spectra of real and generated images](detection/{files['spectrum']})",
    ]
    return lines


def study_markdown(body: dict[str, Any], plot: str | None = None) -> list[str]:
    """The report's study sections (empty without a summary)."""
    summary = (body.get("study") or {}).get("summary")
    if not summary:
        return []
    lines = [
        "## The variants over seeds (latest checkpoint of each run)",
        "",
        "Mean over seeds and a 95% interval: the wider of Student's t over seeds and the "
        "runs' own sampling error (FID: bootstrap over the generated images; KID: over its "
        f"disjoint subsets). Image statistics: {summary['stats_compared']}.",
        "",
        *_summary_table(body, summary),
        "",
        "## Rankings (best first; `<` or `>`: the intervals separate; `~`: they overlap, a tie)",
        "",
    ]
    for r in summary["rankings"].values():
        tie = " (tied for best)" if len(r["best"]) > 1 else ""
        pairs = ", ".join(r.get("separated") or []) or "none"
        lines.append(
            f"- **{r['label']}**: {r['order']}; best: {', '.join(r['best'])}{tie}; "
            f"pairs that separate: {pairs}"
        )
    lines += _detection(body)
    lines += ["", "## Still improving at the end of the budget?", ""]
    improving = summary["curves"]["still_improving"]
    for key, label in (("fid", "FID"), ("kid_mean", "KID")):
        yes = [v for v, flag in improving.get(key, {}).items() if flag]
        no = [v for v, flag in improving.get(key, {}).items() if flag is False]
        lines.append(
            f"- **{label}**, last checkpoint's interval below the one before: "
            f"{', '.join(yes) or 'none'}; not (or not clearly): {', '.join(no) or 'none'}"
        )
    if plot:
        lines += ["", f"![FID and KID over training, mean and 95% interval over seeds]({plot})"]
    lines += ["", "## Verdicts on the original study's claims", ""]
    for c in summary["claims"]:
        lines.append(f"{c['claim']}. **{c['text']}**: **{c['verdict']}**")
        lines += [f"   - {e}" for e in c["evidence"]]
        if c["note"]:
            lines.append(f"   - {c['note']}")
    return [*lines, ""]


def plot_curves(summary: dict[str, Any], path: Path) -> Path | None:
    """FID and KID against real images seen, one line per variant, its 95% band over seeds."""
    curves = summary["curves"]
    if not any(len(points) > 1 for points in curves.get("fid", {}).values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (key, title) in zip(axes, (("fid", "FID"), ("kid_mean", "KID x1e3")), strict=True):
        scale = SCALE.get(key, 1.0)
        for variant, points in curves[key].items():
            xs = [p["images_seen"] for p in points]
            ax.plot(xs, [p["mean"] * scale for p in points], marker="o", label=variant)
            ax.fill_between(
                xs, [p["lo"] * scale for p in points], [p["hi"] * scale for p in points], alpha=0.2
            )
        ax.set_title(f"{title} (mean over seeds, 95% interval)")
        ax.set_xlabel("real images seen by the critic")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

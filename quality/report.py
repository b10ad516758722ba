"""The comparison report: metrics.json, report.md / report.html, image grids, plots over steps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ganforge.quality.grids import class_rows, random_rows
from ganforge.quality.study_report import plot_curves, study_markdown

LABEL_WIDTH = 96
NO_JUDGE = "none (the classifier does not know these classes)"

HOW_TO_READ = """\
## How to read this report
- **FID** (lower is better): distance between Gaussians fitted to real and generated features.
  **KID** (lower is better, x1000 here) is the unbiased kernel version; it is reliable with few
  samples. Both are computed on the features of the extractor named above: with the CIFAR-style
  classifier they are **not comparable with published (Inception) FIDs**, only with each other.
- **Precision** (realism: share of fakes inside the real feature manifold) and **recall**
  (diversity: share of real images covered by the fakes), k=3 nearest neighbours.
- **Classifier score** (higher is better): the Inception Score computed with the domain
  classifier; it rewards confident and varied class predictions (max = number of classes).
- **Class accuracy** (conditional models): how often the classifier recognises the class the
  generator was asked for. **Intra-KID**: KID per class, averaged (per-class FID is in
  metrics.json only when every class has at least 10 images per feature dimension).
- **Sharpness** = variance of the Laplacian (higher is sharper; blur lowers it). **Noise** =
  wavelet (Donoho MAD) sigma of luminance; **chroma noise** the same on Cb/Cr (RGB colour
  speckle). **HF share** = share of spectral energy above 0.25 cycles/pixel (upsampling
  artefacts such as checkerboards raise it). Compare each with the **real** row: closer is better,
  not higher.
"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def labelled_grid(rows: list[tuple[str, torch.Tensor]], path: Path) -> Path:
    """One row per (label, uint8 [K, C, H, W]) with the label on the left; saved as PNG."""
    pad = 2
    k = max(len(imgs) for _, imgs in rows)
    _, c, h, w = rows[0][1].shape
    scale = max(1, 48 // h)  # 32x32 images are too small to judge by eye: enlarge them
    hs, ws = h * scale, w * scale
    canvas = Image.new(
        "RGB", (LABEL_WIDTH + k * (ws + pad) + pad, len(rows) * (hs + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for r, (label, imgs) in enumerate(rows):
        y = pad + r * (hs + pad)
        draw.text((4, y + hs // 2 - 6), label[:15], fill="black")
        for i, img in enumerate(imgs):
            arr = img.permute(1, 2, 0).numpy()
            tile = Image.fromarray(arr[..., 0] if c == 1 else arr).convert("RGB")
            x = LABEL_WIDTH + pad + i * (ws + pad)
            canvas.paste(tile.resize((ws, hs), Image.NEAREST), (x, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


PLOTTED = [
    ("fid", "FID"),
    ("kid_mean", "KID"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("classifier_score", "classifier score"),
    ("stats.sharpness", "sharpness"),
    ("stats.noise_sigma", "noise sigma"),
    ("stats.chroma_noise", "chroma noise"),
    ("stats.high_freq_share", "HF share"),
]


def _get(row: dict, dotted: str):
    for key in dotted.split("."):
        row = row.get(key) if isinstance(row, dict) else None
    return row


def plot_over_steps(body: dict[str, Any], path: Path) -> Path | None:
    """Metrics against real images seen by the critic, one line per run (several checkpoints)."""
    runs = body["runs"]
    if not any(len(r["checkpoints"]) > 1 for r in runs):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(13, 10))
    for ax, (key, title) in zip(axes.flat, PLOTTED, strict=True):
        for run in runs:
            xs = [c["images_seen"] or c["step"] for c in run["checkpoints"]]
            ys = [_get(c, key) for c in run["checkpoints"]]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, marker="o", label=run["name"])
        real = _get(body["real"], key) if key.startswith("stats.") else None
        if real is not None:
            ax.axhline(real, color="grey", linestyle="--", label="real")
        ax.set_title(title)
        ax.set_xlabel("real images seen by the critic")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _kid(v: float | None) -> str:
    return "-" if v is None else _fmt(v * 1e3, 2)


def _table(body: dict[str, Any]) -> list[str]:
    head = (
        "| run | variant | step | images seen | FID | KID x1e3 | precision | recall | "
        "classifier score | class acc | intra-KID x1e3 | sharpness | noise | chroma noise | "
        "HF share |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run in body["runs"]:
        m = run["latest"]
        st = m["stats"]
        lines.append(
            f"| {run['name']} | {run['variant']} | {m['step']} | {m['images_seen']} | "
            f"{_fmt(m['fid'], 2)} | {_fmt(m['kid_mean'] * 1e3, 2)} | {_fmt(m['precision'])} | "
            f"{_fmt(m['recall'])} | {_fmt(m.get('classifier_score'), 2)} | "
            f"{_fmt(m.get('mean_class_accuracy'))} | {_kid(m.get('mean_intra_kid'))} | "
            f"{_fmt(st['sharpness'], 1)} | {_fmt(st['noise_sigma'], 2)} | "
            f"{_fmt(st['chroma_noise'], 2)} | {_fmt(st['high_freq_share'], 4)} |"
        )
    real = body["real"]
    st = real["stats"]
    lines.append(
        f"| **real** ({real['split']}) | - | - | - | - | - | - | - | "
        f"{_fmt(real.get('classifier_score'), 2)} | - | - | {_fmt(st['sharpness'], 1)} | "
        f"{_fmt(st['noise_sigma'], 2)} | {_fmt(st['chroma_noise'], 2)} | "
        f"{_fmt(st['high_freq_share'], 4)} |"
    )
    return lines


def _per_class(body: dict[str, Any]) -> list[str]:
    runs = [r for r in body["runs"] if r["latest"].get("per_class_accuracy")]
    if not runs:
        return []
    classes = body["classes"]
    lines = [
        "## Per-class accuracy of the classifier on generated images",
        "",
        "| run | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
    ]
    for run in runs:
        acc = run["latest"]["per_class_accuracy"]
        lines.append(
            f"| {run['name']} | " + " | ".join(_fmt(acc.get(c), 2) for c in classes) + " |"
        )
    return lines + [""]


def _study(body: dict[str, Any]) -> list[str]:
    st = body.get("study")
    if not st:
        return []
    per = ", ".join(
        f"{v}: {d['max_steps']} G steps x n_critic {d['n_critic']}"
        for v, d in st["variants"].items()
    )
    what = (
        "the same real images through the critic"
        if st["budget"] == "images"
        else "the same generator steps"
    )
    seeds = st.get("seeds") or []
    lines = [
        f"- **Study budget:** {what} (--steps {st['steps']}, {st['num_workers']} worker(s)); {per}",
        f"- **Seeds:** {len(seeds)} training run(s) per variant "
        f"(seeds {', '.join(map(str, seeds))})",
    ]
    if st.get("reference_note"):
        lines.append(f"- **Held-out reference:** {st['reference_note']}")
    return lines


def markdown(body: dict[str, Any], files: dict[str, str]) -> str:
    s = body["settings"]
    lines = [
        "# ganforge quality report",
        "",
        f"- **Feature extractor:** {body['extractor']}",
        *(
            [f"- **Second feature extractor** (the Inception FID/KID): {body['second_extractor']}"]
            if body.get("second_extractor")
            else []
        ),
        f"- **Class judge:** {body['judge'] or NO_JUDGE}",
        f"- **Real reference:** split `{body['real']['split']}` of `{body['data']}`, "
        f"{body['real']['num_images']} images (precision/recall on a random "
        f"{body['real']['precision_recall_images']} of them)",
        f"- **Generated:** {s['num_samples']} images per checkpoint (seed {s['seed']}; "
        "conditional models: classes balanced), EMA generator",
        f"- **Checkpoints:** {s['checkpoint']}; KID: {s['kid_subsets']} subsets of "
        f"{min(s['kid_subset_size'], s['num_samples'], body['real']['num_images'])}; "
        f"precision/recall k={s['pr_k']}",
        *_study(body),
        "",
        *study_markdown(body, files.get("curves")),
        "## Results (latest evaluated checkpoint of each run)",
        "",
        *_table(body),
        "",
        *_per_class(body),
    ]
    for name, caption in (
        ("grid_class", f"Samples of class `{s.get('class_name')}`"),
        ("grid_random", "Random samples"),
        ("plot", "Metrics over training"),
    ):
        if name in files:
            lines += [f"## {caption}", "", f"![{caption}]({files[name]})", ""]
            if name == "grid_class":
                lines += [
                    "Top row: real images. Rows marked `*` are unconditional models: the "
                    "classifier picked the most class-like of 20 samples per cell "
                    "(`?`: no classifier for these classes, random samples).",
                    "",
                ]
    lines.append(HOW_TO_READ)
    return "\n".join(lines)


def html(md_text: str) -> str:
    from markdown_it import MarkdownIt  # ships with rich (a dependency)

    body = MarkdownIt("commonmark").enable("table").render(md_text)
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}img{max-width:100%;image-rendering:pixelated}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>ganforge quality report"
        f"</title><style>{style}</style></head><body>{body}</body></html>"
    )


def write_report(out: Path, body: dict[str, Any], runs: list[dict], ref, judge, s) -> dict:
    """Write every report file into `out`; returns {kind: file name}."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    cls = s.class_name or body["classes"][0]
    s.class_name = body["settings"]["class_name"] = cls
    labelled_grid(class_rows(runs, ref, judge, cls, s), out / f"grid-{cls}.png")
    files["grid_class"] = f"grid-{cls}.png"
    labelled_grid(random_rows(runs, ref, s), out / "grid-random.png")
    files["grid_random"] = "grid-random.png"
    if plot_over_steps(body, out / "metrics-over-steps.png"):
        files["plot"] = "metrics-over-steps.png"
    summary = (body.get("study") or {}).get("summary")
    if summary and plot_curves(summary, out / "curves.png"):
        files["curves"] = "curves.png"
    body["files"] = files
    (out / "metrics.json").write_text(json.dumps(body, indent=1, default=_json_default))
    md_text = markdown(body, files)
    (out / "report.md").write_text(md_text)
    (out / "report.html").write_text(html(md_text))
    return files


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

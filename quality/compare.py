"""`ganforge eval` end to end: evaluate every run against one real reference, write the report.

Above both `evaluate` (the numbers) and `report` (the files), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ganforge.data.memory import read_manifest
from ganforge.quality import metrics as M
from ganforge.quality.evaluate import (
    EvalError,
    EvalSettings,
    build_reference,
    evaluate_run,
    judge_for,
    mirror,
    select_checkpoints,
    write_run_metrics,
)
from ganforge.quality.features import build_extractor
from ganforge.quality.report import write_report
from ganforge.rundir import RunDir
from ganforge.storage import is_uri


def evaluate_runs(
    run_dirs: list[str | Path],
    data: str | Path,
    out: str | Path,
    s: EvalSettings,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate runs against `data` and write the report into `out`; returns metrics.json's body.

    `extra` is merged into metrics.json (the study records its budget there)."""
    # Object-store runs are mirrored once, here; everything below reads the mirror.
    local = [mirror(r, s.checkpoint) for r in run_dirs]
    # Chosen before minutes of feature extraction, so a typo fails at once.
    chosen = [select_checkpoints(r, s.checkpoint) for r in local]
    uris = {str(m): str(r) for r, m in zip(run_dirs, local, strict=True) if is_uri(r)}
    classes = list(read_manifest(data)["classes"])
    if s.class_name is not None and s.class_name not in classes:
        raise EvalError(f"unknown class {s.class_name!r}; the dataset has: {', '.join(classes)}")
    extractor = build_extractor(s.inception_weights, s.classifier)
    judge = judge_for(classes, s)
    ref = build_reference(data, s, extractor, judge, progress)
    # One bar over every checkpoint of every run: its ETA covers the whole evaluation.
    total = sum(len(ckpts) for ckpts in chosen)
    with tqdm(total=total, desc="eval", unit="checkpoint", disable=not progress) as bar:
        runs = [
            evaluate_run(m, ckpts, ref, extractor, judge, s, bar)
            for m, ckpts in zip(local, chosen, strict=True)
        ]
    seen: dict[str, int] = {}
    for run in runs:  # two runs named alike (a/run, b/run) must stay apart in tables and grids
        seen[run["name"]] = seen.get(run["name"], 0) + 1
        if seen[run["name"]] > 1:
            run["name"] = f"{run['name']}-{seen[run['name']]}"
    for run in runs:
        written = write_run_metrics(run, extractor.name, s)
        if written and run["run_dir"] in uris:  # an object-store run: the server reads it there
            remote = RunDir.open(uris[run["run_dir"]])
            remote.push(remote.quality_metrics)
            run["run_dir"] = uris[run["run_dir"]]
    body = {
        "extractor": extractor.name,
        "judge": judge.name if judge is not None else None,
        "settings": asdict(s),
        "data": str(data),
        "classes": classes,
        "real": {
            "split": s.real_split,
            "num_images": len(ref.data.images),
            "stats": ref.stats,
            "classifier_score": M.classifier_score(ref.probs)[0] if ref.probs is not None else None,
            "precision_recall_images": len(ref.pr_features),
        },
        "runs": [{k: v for k, v in run.items() if not k.startswith("_")} for run in runs],
        **(extra or {}),
    }
    write_report(Path(out), body, runs, ref, judge, s)
    return body

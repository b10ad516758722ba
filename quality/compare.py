"""`ganforge eval` end to end: evaluate every run against one real reference, write the report.

Above both `evaluate` (the numbers) and `report` (the files), so neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ganforge.checkpoint import CheckpointError
from ganforge.data.memory import read_manifest
from ganforge.models import load_model
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
from ganforge.quality.features import InceptionExtractor, build_extractor
from ganforge.quality.report import write_report
from ganforge.rundir import CheckpointDir, RunDir
from ganforge.storage import is_uri, sha256_file


def evaluate_runs(
    run_dirs: list[str | Path],
    data: str | Path,
    out: str | Path,
    s: EvalSettings,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    reuse: bool = False,
    finish: Callable[[dict[str, Any]], None] | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Evaluate runs against `data` and write the report into `out`; returns metrics.json's body.

    `extra` is merged into metrics.json (the study records its budget there). With `reuse`, a
    run whose checkpoints were evaluated before with the same settings, features and reference
    is read from its cache (`RunDir.eval_cache`) instead (the study resumes so). `finish(body)`
    runs before the report is written (the study adds its summary). With `reuse` and `jobs` > 1,
    the runs not in a cache are first evaluated in `jobs` processes at once (`_in_processes`),
    each writing its cache, which the report then reads."""
    # Object-store runs are mirrored once, here; everything below reads the mirror.
    local = [mirror(r, s.checkpoint) for r in run_dirs]
    # Chosen before minutes of feature extraction, so a typo fails at once.
    chosen = [select_checkpoints(r, s.checkpoint) for r in local]
    uris = {str(m): str(r) for r, m in zip(run_dirs, local, strict=True) if is_uri(r)}
    classes = list(read_manifest(data)["classes"])
    if s.class_name is not None and s.class_name not in classes:
        raise EvalError(f"unknown class {s.class_name!r}; the dataset has: {', '.join(classes)}")
    extractor = build_extractor(s.inception_weights, s.classifier)
    second = InceptionExtractor(s.also_inception) if s.also_inception else None
    judge = judge_for(classes, s, extractor)
    ref = build_reference(data, s, extractor, judge, progress, second)
    # One bar over every checkpoint of every run: its ETA covers the whole evaluation.
    ident = reference_identity(ref, s) if reuse else None
    keys = [cache_key(ckpts, s, extractor.name, ident) if reuse else None for ckpts in chosen]
    cached = [_cached(m, k) for m, k in zip(local, keys, strict=True)]
    todo = [
        (m, c, k) for m, c, k, hit in zip(local, chosen, keys, cached, strict=True) if k and not hit
    ]
    if jobs > 1 and len(todo) > 1:
        _in_processes(todo, s, ref, jobs, progress)
        cached = [_cached(m, k) for m, k in zip(local, keys, strict=True)]
    total = sum(len(c) for c, hit in zip(chosen, cached, strict=True) if hit is None)
    with tqdm(total=total, desc="eval", unit="checkpoint", disable=not progress) as bar:
        runs = []
        for m, ckpts, key, hit in zip(local, chosen, keys, cached, strict=True):
            if hit is not None:
                runs.append(hit)
                continue
            run = evaluate_run(m, ckpts, ref, extractor, judge, s, bar)
            if key is not None:
                _store(m, key, run)
            runs.append(run)
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
        "second_extractor": ref.second.name if ref.second is not None else None,
        "judge": judge.name if judge is not None else None,
        "settings": asdict(s),
        "data": str(data),
        "classes": classes,
        "real": {
            "split": s.real_split,
            "num_images": len(ref.data.images),
            "stats": ref.stats,
            "encoding": ref.encoding,  # lossy storage the fakes' `stats_as_stored` went through
            "classifier_score": M.classifier_score(ref.probs)[0] if ref.probs is not None else None,
            "precision_recall_images": len(ref.pr_features),
        },
        "runs": [{k: v for k, v in run.items() if not k.startswith("_")} for run in runs],
        **(extra or {}),
    }
    if finish is not None:
        finish(body)
    write_report(Path(out), body, runs, ref, judge, s)
    return body


LATER_SETTINGS = ("also_inception", "device")


def reference_identity(ref, s: EvalSettings) -> dict[str, Any]:
    """The real reference by what makes it: its images and labels (bytes), how they are stored,
    and the feature networks' weight files. Not by its features, whose last bits change with
    the machine, the thread count and the kernels: a key from them missed every cache of a
    study folder moved to another machine, and the study is meant to resume there."""
    from ganforge.quality.features import DEFAULT_CLASSIFIER

    def digest(t) -> str:
        return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()

    weights = s.inception_weights or s.classifier or DEFAULT_CLASSIFIER
    ident = {
        "images": [len(ref.data.images), digest(ref.data.images), digest(ref.data.labels)],
        "encoding": ref.encoding,
        "weights": sha256_file(Path(weights)),
    }
    if ref.second is not None:
        ident["second"] = [ref.second.name, sha256_file(Path(s.also_inception))]
    return ident


def cache_key(ckpts: list[tuple[int, Path]], s: EvalSettings, extractor: str, ident) -> str:
    """What decides a run's numbers: the settings (but the grid's class and width), the feature
    network(s), the real reference (`reference_identity`), and each checkpoint's marker (its
    files' hashes). Settings added after caches were written (`LATER_SETTINGS`) count only when
    set, so those caches still match."""
    settings = {
        k: v
        for k, v in asdict(s).items()
        if k not in ("class_name", "grid_columns") and not (k in LATER_SETTINGS and v is None)
    }
    body = {
        "settings": settings,
        "extractor": extractor,
        "real": ident,
        "checkpoints": [[step, sha256_file(CheckpointDir(p).marker)] for step, p in ckpts],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _cached(run_dir: Path, key: str | None) -> dict[str, Any] | None:
    """The cached evaluation of `run_dir` under `key`, with its latest model loaded (the grids
    draw from it); None when there is none or it does not read."""
    if key is None:
        return None
    path = RunDir(run_dir).eval_cache(key)
    try:
        run = json.loads(path.read_text())
        run["_model"] = load_model(run["latest"]["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return None
    return run


def _in_processes(todo: list, s: EvalSettings, ref, jobs: int, progress: bool) -> None:
    """Evaluate the runs of `todo` ((run dir, checkpoints, cache key)) in `jobs` spawned
    processes, each writing the run's cache. The real reference goes to each process once, as
    computed here: every run is then scored against the very same features (and the real
    set is not read and featurised once per process)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    portable = replace(
        ref, second=None if ref.second is None else replace(ref.second, extractor=None)
    )
    threads = max(1, (os.cpu_count() or 1) // jobs)
    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with ProcessPoolExecutor(
        min(jobs, len(todo)),
        mp_context=spawn,
        initializer=_worker_init,
        initargs=(portable, threads),
    ) as pool:
        futures = [pool.submit(_worker_evaluate, m, ckpts, key, s) for m, ckpts, key in todo]
        done = as_completed(futures)
        for run in tqdm(done, total=len(futures), desc="eval", unit="run", disable=not progress):
            run.result()


_WORKER: dict[str, Any] = {}


def _worker_init(ref, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER["ref"] = ref


def _worker_evaluate(run_dir: Path, ckpts, key: str, s: EvalSettings) -> str:
    ref = _WORKER["ref"]
    if "extractor" not in _WORKER:  # the networks once per process, not once per run
        _WORKER["extractor"] = build_extractor(s.inception_weights, s.classifier)
        _WORKER["judge"] = judge_for(ref.data.classes, s, _WORKER["extractor"])
        if ref.second is not None:
            ref.second.extractor = InceptionExtractor(s.also_inception)
    extractor, judge = _WORKER["extractor"], _WORKER["judge"]
    _store(run_dir, key, evaluate_run(run_dir, ckpts, ref, extractor, judge, s))
    return str(run_dir)


def _store(run_dir: Path, key: str, run: dict[str, Any]) -> None:
    path = RunDir(run_dir).eval_cache(key)
    if RunDir(run_dir).checkpoints.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {k: v for k, v in run.items() if not k.startswith("_")}
        path.write_text(json.dumps(body, indent=1))

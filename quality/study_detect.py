"""The study's detectability columns (`detectability(...)`): how well each variant's fakes are
caught, by a detector trained on that variant alone (the cross-generator matrix's diagonal) and
by one trained on all variants together, with the matrix and the spectra as files.

One generator per variant (its first seed's run, latest checkpoint): training a detector per
seed would multiply the cost by the seeds for a column whose interval is already the bootstrap
one. Results are cached in OUT/detectability.json under a key of the inputs (the generators'
checkpoint markers and the options), so a resumed study does not train the detectors again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ganforge.checkpoint import list_checkpoints
from ganforge.rundir import CheckpointDir, RunDir
from ganforge.storage import sha256_file

CACHE = "detectability.json"


@dataclass(frozen=True)
class DetectOptions:
    """The detectors' budget in the study (see `ganforge detect` for each knob)."""

    limit: int = 4000  # real training images (a tenth held out for validation)
    eval_limit: int = 2000  # real test images; as many fresh fakes per variant
    epochs: int = 3
    spectrum_images: int = 2000
    bootstrap: int = 200
    seed: int = 0


def _key(runs: dict[str, Path], opts: DetectOptions) -> str:
    markers = {}
    for variant, run in runs.items():
        found = list_checkpoints(RunDir(run).checkpoints)
        markers[variant] = sha256_file(CheckpointDir(found[0][1]).marker) if found else None
    body = json.dumps({"markers": markers, "options": asdict(opts)}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def detectability(
    data: str | Path,
    runs: dict[str, Path],
    out: str | Path,
    opts: DetectOptions = DetectOptions(),
    progress: bool = True,
) -> dict[str, Any]:
    """-> {"own": {variant: {auc, auc_ci}}, "all": {...}, "spectral_distance": {...}, ...};
    writes OUT/matrix.*, OUT/all-variants/{results.json, report.md}, OUT/spectrum.*."""
    from ganforge.quality.detect_eval import evaluate_detector, write_eval_report
    from ganforge.quality.detect_matrix import cross_generator_matrix, write_matrix
    from ganforge.quality.detect_spectrum import spectra, write_spectra
    from ganforge.quality.detect_train import DetectorTraining, train_detector

    out = Path(out)
    key = _key(runs, opts)
    cache = out / CACHE
    if cache.is_file():
        try:
            body = json.loads(cache.read_text())
            if body.get("key") == key:
                return body
        except ValueError:
            pass
    fakes = {v: str(r) for v, r in runs.items()}
    recipe = DetectorTraining(epochs=opts.epochs, limit=opts.limit, seed=opts.seed)
    matrix = cross_generator_matrix(
        data,
        list(fakes.values()),
        recipe,
        eval_limit=opts.eval_limit,
        bootstrap=opts.bootstrap,
        seed=opts.seed,
        progress=progress,
    )
    write_matrix(matrix, out)
    if progress:
        print("detector trained on all variants", flush=True)
    det = train_detector(data, list(fakes.values()), out / "all-variants" / "detector.pt", recipe)
    every = evaluate_detector(
        det,
        data,
        list(fakes.values()),
        limit=opts.eval_limit,
        bootstrap=opts.bootstrap,
        seed=opts.seed,
        progress=progress,
    )
    write_eval_report(every, out / "all-variants")
    spec = spectra(data, list(fakes.values()), num_images=opts.spectrum_images, seed=opts.seed)
    write_spectra(spec, out)
    names = matrix["rows"]  # FakeSource names: the run folders' names, i.e. the variants
    body = {
        "key": key,
        "options": asdict(opts),
        "generators": {v: Path(r).name for v, r in runs.items()},
        "own": {
            n: {"auc": matrix["auc"][i][i], "auc_ci": matrix["auc_ci"][i][i]}
            for i, n in enumerate(names)
        },
        "all": {
            n: {"auc": g["auc"], "auc_ci": g.get("auc_ci")} for n, g in every["generators"].items()
        },
        "matrix": {k: matrix[k] for k in ("rows", "columns", "auc", "off_diagonal_mean_auc")},
        "spectral_distance": {n: g["distance"] for n, g in spec["generators"].items()},
        "files": {
            "matrix": "matrix.md",
            "all_variants": "all-variants/report.md",
            "spectrum": "spectrum.png",
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(body, indent=1))
    return body

"""The cross-generator matrix (`ganforge detect matrix`): `cross_generator_matrix`.

One detector per generator, trained on that generator's fakes only (same recipe, same real
training images), each evaluated on every generator's fresh fakes against the same held-out real
images. Rows: trained on; columns: tested on; cell: ROC AUC. The diagonal says how well a
generator can be caught when its fakes are known; the rest, whether a detector generalises to
generators it never saw (the usual failure of deepfake detectors).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ganforge.models.detector import save_detector
from ganforge.quality.detect_eval import evaluate_detector
from ganforge.quality.detect_sources import (
    EVALUATION_SEED,
    DetectError,
    FakeInput,
    RealInput,
    as_sources,
    draw,
    real_images,
)
from ganforge.quality.detect_train import DetectorTraining, train_detector


def cross_generator_matrix(
    real: RealInput,
    fakes: FakeInput,
    recipe: DetectorTraining = DetectorTraining(),
    eval_real: RealInput | None = None,
    eval_split: str = "test",
    eval_limit: int | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    save_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on `real`'s `recipe.split`, test on `eval_real` (default: `real`, a shard dir) split
    `eval_split`. Detectors are saved as `save_dir/<name>.pt` when given.
    -> {"rows", "columns", "auc" [rows][columns], "auc_ci", "evaluations", ...}."""
    started = time.time()
    if eval_real is None:
        if not isinstance(real, (str, Path)):
            raise DetectError("in-memory real images need separate eval_real images")
        eval_real = real
    sources = as_sources(fakes)
    train_real = real_images(real, recipe.split, recipe.limit, recipe.seed, progress)
    test_real = real_images(eval_real, eval_split, eval_limit, seed, progress)
    names = [s.name for s in sources]
    # Every row is tested on the same fakes: draw them once (stored as the reals are).
    encoding = test_real.encoding if recipe.match_encoding else None
    n_test = len(test_real.images)
    tests = {
        s.name: draw(s, n_test, EVALUATION_SEED + seed, test_real.images, encoding) for s in sources
    }
    auc, auc_ci, evaluations = [], [], {}
    for src in sources:
        if progress:
            print(f"detector trained on {src.name}", flush=True)
        recipe_row = replace(recipe, limit=None)  # the subset is taken above, once
        module, record = train_detector(train_real, [src], None, recipe_row, progress)
        if save_dir is not None:
            save_detector(module, record, Path(save_dir) / f"{src.name}.pt")
        body = evaluate_detector(
            (module, record),
            test_real,
            tests,
            bootstrap=bootstrap,
            seed=seed,
            match_encoding=False,  # drawn above, already stored as the reals are
            progress=False,
        )
        auc.append([body["generators"][n]["auc"] for n in names])
        auc_ci.append([body["generators"][n].get("auc_ci") for n in names])
        evaluations[src.name] = {
            "validation_auc": record["validation"]["all"]["auc"],
            "train_seconds": record["train_seconds"],
            "generators": body["generators"],
        }
    off = [auc[i][j] for i in range(len(names)) for j in range(len(names)) if i != j]
    return {
        "rows": names,
        "columns": names,
        "auc": auc,
        "auc_ci": auc_ci,
        "diagonal_mean_auc": sum(auc[i][i] for i in range(len(names))) / len(names),
        "off_diagonal_mean_auc": sum(off) / len(off) if off else None,
        "origins": {s.name: s.origin for s in sources},
        "real": {
            "train": train_real.origin,
            "train_images": len(train_real.images),
            "test": test_real.origin,
            "test_images": len(test_real.images),
            "fake_encoding": encoding,
        },
        "recipe": asdict(recipe),
        "evaluations": evaluations,
        "bootstrap": bootstrap,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def matrix_markdown(body: dict[str, Any]) -> str:
    """The matrix as a Markdown table (rows: trained on, columns: tested on) + the intervals."""
    cols = body["columns"]
    lines = [
        "# Cross-generator matrix (ROC AUC)",
        "",
        f"Rows: the generator whose fakes the detector was trained on; columns: the generator "
        f"whose fresh fakes it was tested on, against {body['real']['test_images']} real images "
        f"of `{body['real']['test']}`. Diagonal (seen generator) mean "
        f"{body['diagonal_mean_auc']:.3f}"
        + (
            f", off-diagonal (unseen) mean {body['off_diagonal_mean_auc']:.3f}."
            if body["off_diagonal_mean_auc"] is not None
            else "."
        )
        + f" Run {body['date']}, {body['seconds']:.0f} s.",
        "",
        "| trained on \\ tested on | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for i, row in enumerate(body["rows"]):
        cells = [f"**{v:.3f}**" if i == j else f"{v:.3f}" for j, v in enumerate(body["auc"][i])]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", f"95% bootstrap intervals ({body['bootstrap']} resamples):", ""]
    for i, row in enumerate(body["rows"]):
        parts = [
            f"{c} [{ci[0]:.3f}, {ci[1]:.3f}]"
            for c, ci in zip(cols, body["auc_ci"][i], strict=True)
            if ci is not None
        ]
        lines.append(f"- trained on {row}: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def write_matrix(body: dict[str, Any], out: str | Path) -> Path:
    """`out/matrix.json` and `out/matrix.md` -> out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.json").write_text(json.dumps(body, indent=1))
    (out / "matrix.md").write_text(matrix_markdown(body))
    return out

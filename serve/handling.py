"""What the app's answers are made of: error responses (with Retry-After), the encodings of
`/v1/generate` and the scores of `/v1/score`. Plain functions of their inputs: no HTTP routing,
no Ray, no app state.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
from fastapi.responses import JSONResponse, Response

from ganforge.serve import codecs
from ganforge.serve.model_pool import GenerationPlan, ModelPool, ServedModel
from ganforge.serve.schemas import ApiError, GenerateRequest, ascii_int

SCORE_CAVEAT = (
    "A discriminator/critic score is relative: it says how much this model's critic, trained "
    "against this generator, finds an image like its training data. It is not a calibrated "
    "deepfake detector; compare scores from the same model only."
)


def retry_after(seconds: float) -> str:
    """HTTP `Retry-After` takes whole seconds; round up like Serve's own back-pressure 503."""
    return str(math.ceil(seconds))


def api_error_response(exc: ApiError, retry_after_s: float) -> JSONResponse:
    """The answer to an ApiError; every 503 (overload, unavailable) says when to come back."""
    headers = dict(exc.headers or {})
    if exc.status == 503:
        headers.setdefault("Retry-After", retry_after(retry_after_s))
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)


def generate_response(body: GenerateRequest, plan: GenerationPlan, images: np.ndarray) -> Response:
    """`/v1/generate`'s answer: `images` (uint8 [N, H, W, C]) in `body.format`, with the seed
    and class indices in X-Ganforge-* headers."""
    labels = plan.labels
    headers = {"X-Ganforge-Seed": str(plan.seed)}
    if labels is not None:
        headers["X-Ganforge-Labels"] = ",".join(map(str, labels))
    if body.format == "grid":
        return Response(codecs.grid_png(images, body.nrow), 200, headers, "image/png")
    if body.format == "npy":
        return Response(codecs.npy_bytes(images), 200, headers, "application/octet-stream")
    names = plan.model.class_names
    # json.dumps of a plain dict: pydantic's round trip costs a visible share of a request.
    resp = {
        "model": body.model,
        "seed": plan.seed,
        "labels": labels,
        "classes": None if labels is None else [names[i] for i in labels],
        "width": images.shape[2],
        "height": images.shape[1],
        "channels": images.shape[3],
        "images": codecs.png_list(images),
    }
    return Response(json.dumps(resp), 200, headers, "application/json")


def score_images(
    pool: ModelPool, served: ServedModel, x: torch.Tensor, label: str | None
) -> list[dict[str, Any]]:
    """Critic scores of images x [N, C, H, W] in [-1, 1], one dict per image: `score`, and for a
    conditional model the class scored (`label`, a name or index; None: every class, the best
    one reported with `class_scores` of all; a label in ASCII digits is an index)."""
    if not served.num_classes:
        return [{"score": float(s)} for s in pool.score(served.name, x, None)]
    if label is not None:
        index = ascii_int(label.strip())  # digits are an index, as in a GET query
        idx = served.class_index(label if index is None else index)
        labels = torch.full((len(x),), idx, dtype=torch.long)
        return [{"score": float(s), "label": idx} for s in pool.score(served.name, x, labels)]
    k = served.num_classes
    # Every image under every class: [N*K] scores, reshaped to [N, K].
    grid = pool.score(
        served.name, x.repeat_interleave(k, 0), torch.arange(k).repeat(len(x))
    ).reshape(len(x), k)
    names = served.class_names
    return [
        {
            "score": float(row.max()),
            "label": int(row.argmax()),
            "class_scores": {names[j]: float(row[j]) for j in range(k)},
        }
        for row in grid
    ]

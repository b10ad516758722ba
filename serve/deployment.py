"""The ganforge Ray Serve deployment: one replica holds every served model.

One deployment (not ingress + model deployments): on CPU the per-request hop between actors
costs more than a generator forward pass, so parsing, batching, inference and encoding share a
replica. Each image of a request is one item of `@serve.batch`, so `max_batch_size` counts
images and batches fill first come, first served across requests; one forward pass per model.
The replica's HTTP app (serve.routes) is built per replica, with the replica's own settings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, UploadFile
from fastapi.responses import Response
from ray import serve

from ganforge.images import to_uint8
from ganforge.models import get_variant
from ganforge.serve import codecs
from ganforge.serve.auth import read_api_token
from ganforge.serve.detection import DETECT_CAVEAT, ServedDetector, detections
from ganforge.serve.handling import SCORE_CAVEAT, generate_response, score_images
from ganforge.serve.metrics import get_metrics
from ganforge.serve.model_pool import ModelPool, ServedModel
from ganforge.serve.routes import build_http_app
from ganforge.serve.schemas import (
    ApiError,
    AppArgs,
    DetectResponse,
    GenerateRequest,
    ModelsResponse,
    Score,
    ScoreResponse,
)

log = logging.getLogger("ganforge.serve")


@dataclass
class Latent:
    """One image to generate: its model, latent [z_dim] and class index (None: unconditional).

    One batch item per image rather than per request, so `max_batch_size` counts images without
    a `batch_size_fn`: with one, Serve recomputes the size of the whole batch for every item it
    adds (quadratic in the batch) and puts an item that does not fit at the back of the queue,
    out of arrival order."""

    model: str
    z: torch.Tensor
    label: int | None
    truncation: float | None = None
    """psi toward the mean w (models that truncate in w; their z is not truncated)."""


async def _read_uploads(files: list[UploadFile]) -> list[tuple[bytes, str | None]]:
    """(bytes, filename) of each upload; the body limit already capped their total size."""
    return [(await f.read(), f.filename) for f in files]


@serve.deployment(name="ganforge")
@serve.ingress()  # the HTTP app comes from `__serve_build_asgi_app__`, once per replica
class GanforgeServer:
    """Holds every served model; `__init__` loads, `_run_batch` infers, the routes parse."""

    def __init__(self, args: dict[str, Any]):
        self.args = AppArgs.model_validate(args)
        # Read once, first: a missing or empty token file stops the replica before it loads.
        self._api_token = read_api_token(self.args.api_token_file)
        device = "cuda" if self.args.gpu and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(self.args.num_cpus)))
        self.pool = ModelPool(self.args.models, device, warmup_batch=self.args.max_batch_size)
        self.detector = (
            None if self.args.detector is None else ServedDetector(self.args.detector, device)
        )
        self._run_batch.set_max_batch_size(self.args.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        self.metrics = get_metrics()
        for name, m in self.pool.models.items():
            self.metrics.load_time.set(m.load_time_s, tags={"model": name})
        # The last inference error since the models last passed a probe; None = none seen.
        self._last_error: str | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this after `__init__`: the replica's HTTP app, with its own settings."""
        return build_http_app(
            self,
            max_body_bytes=self.args.max_upload_bytes,
            retry_after_s=self.args.retry_after_s,
            api_token=self._api_token,
        )

    def _model_label(self, name: str) -> str:
        # Bounded metric label values: arbitrary names from clients become "unknown".
        return name if name in self.pool.models else "unknown"

    def model_names(self) -> list[str]:
        return list(self.pool.models)

    def models(self) -> ModelsResponse:
        return ModelsResponse(
            models=[m.info() for m in self.pool.models.values()],
            detector=None if self.detector is None else self.detector.info(),
        )

    def check_health(self) -> None:
        """Serve's periodic health check (and /healthz). After an inference error, probe every
        model with a 1-image forward pass: a fault that persists fails the check (Serve then
        replaces the replica); one bad batch alone does not."""
        if self._last_error is None:
            return
        try:
            self.pool.probe()
        except Exception as e:
            raise RuntimeError(f"{e} (last request error: {self._last_error})") from None
        log.info("models pass the probe again after: %s", self._last_error)
        self._last_error = None

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # both set from AppArgs
    async def _run_batch(self, items: list[Latent]) -> list[np.ndarray | ApiError]:
        """One forward pass per model, images converted to uint8 [H, W, C] once per batch (no
        torch call is left on the request path after it). A failing model's items get an
        ApiError (returned, not raised, so the other models' requests in the same batch still
        get their images)."""
        out: list[np.ndarray | ApiError | None] = [None] * len(items)
        for name in dict.fromkeys(c.model for c in items):
            idx = [i for i, c in enumerate(items) if c.model == name]
            z = torch.stack([items[i].z for i in idx])
            labels = (
                None
                if items[idx[0]].label is None
                else torch.tensor([items[i].label for i in idx], dtype=torch.long)
            )
            psi = None
            if any(items[i].truncation is not None for i in idx):  # 1 = untruncated
                psi = torch.tensor([items[i].truncation or 1.0 for i in idx])
            t0 = time.perf_counter()
            try:
                # Inline on the event loop, like a bare Serve deployment: measured on 2 CPU cores,
                # a worker thread (asyncio.to_thread) lost 10-30% throughput to contention.
                images = self.pool.generate(name, z, labels, psi)
            except torch.OutOfMemoryError as e:
                # Transient by nature: too much at once. The client retries after Retry-After.
                log.warning("model %s: out of memory on a batch of %d images: %s", name, len(z), e)
                err = ApiError(503, f"out of memory while generating {len(z)} images")
                for i in idx:
                    out[i] = err
                continue
            except Exception as e:
                log.exception("model %s failed on a batch of %d images", name, len(z))
                self._last_error = f"{name}: {type(e).__name__}: {e}"
                # The exception's text stays in the log: it can name files and internals.
                err = ApiError(500, f"model {name!r} failed on this batch (see the server log)")
                for i in idx:
                    out[i] = err
                continue
            self.metrics.inference_latency.observe(
                (time.perf_counter() - t0) * 1e3, tags={"model": name}
            )
            self.metrics.batch_size.observe(len(z), tags={"model": name})
            for i, image in zip(idx, to_uint8(images), strict=True):
                out[i] = image
        return out

    async def generate_response(self, body: GenerateRequest, state: dict[str, Any]) -> Response:
        """`/v1/generate` for a validated request (a POST body or a GET query), from the FastAPI
        routes or the fast path (serve.fast_path); names the model in `state`."""
        state["model"] = self._model_label(body.model)
        plan = self.pool.plan(body, self.args.max_images_per_request)
        n, labels = len(plan.z), plan.labels
        items = [
            Latent(body.model, z, None if labels is None else labels[i], plan.truncation)
            for i, z in enumerate(plan.z.unbind())
        ]
        if n == 1:  # the usual case: no gather
            parts = [await self._run_batch(items[0])]
        else:
            parts = await asyncio.gather(*(self._run_batch(item) for item in items))
        for part in parts:
            if isinstance(part, ApiError):
                raise part
        images = parts[0][None] if n == 1 else np.stack(parts)  # uint8 [N, H, W, C]
        self._count_images(plan.model.name, labels, plan.model.class_names, n)
        return generate_response(body, plan, images)

    def _count_images(self, model: str, labels: list[int] | None, names: list[str], n: int) -> None:
        if labels is None:
            self.metrics.images.inc(n, tags={"model": model, "class": "-"})
            return
        for idx, count in Counter(labels).items():
            self.metrics.images.inc(count, tags={"model": model, "class": names[idx]})

    def _decode_and_score(
        self, served: ServedModel, uploads: list[tuple[bytes, str | None]], label: str | None
    ) -> tuple[list[tuple[torch.Tensor, bool]], list[dict[str, Any]]]:
        """Blocking: decode (uploads, filenames) to the model's shape, then score them."""
        m = served.loaded.config.model
        decoded = [codecs.decode_upload(d, n, m.resolution, m.channels) for d, n in uploads]
        x = torch.stack([d[0] for d in decoded])
        return decoded, score_images(self.pool, served, x, label)

    def _check_upload_count(self, files: list[UploadFile]) -> None:
        if len(files) > self.args.max_images_per_request:
            raise ApiError(
                413,
                f"{len(files)} files uploaded; the limit is "
                f"{self.args.max_images_per_request} per request",
            )

    async def score(
        self, model: str, files: list[UploadFile], label: str | None, state: dict[str, Any]
    ) -> ScoreResponse:
        """`/v1/score`: decode the uploads to the model's resolution and score them in a worker
        thread, so that decoding large uploads never stalls the replica's event loop (other
        requests, /healthz); names the model in `state`."""
        state["model"] = self._model_label(model)
        served = self.pool.get(model)
        self._check_upload_count(files)
        uploads = await _read_uploads(files)
        decoded, scores = await asyncio.to_thread(self._decode_and_score, served, uploads, label)
        return ScoreResponse(
            model=model,
            score_kind=get_variant(served.loaded.config.model.variant).loss.score_kind,
            scores=[
                Score(filename=f.filename, resized=d[1], **s)
                for f, d, s in zip(files, decoded, scores, strict=True)
            ],
            caveat=SCORE_CAVEAT,
        )

    def _decode_and_detect(
        self, detector: ServedDetector, uploads: list[tuple[bytes, str | None]]
    ) -> tuple[list[float], list[bool], float]:
        """Blocking: decode the uploads to the detector's shape and run it -> (P(fake) per image,
        resized? per image, milliseconds of the forward pass)."""
        x, resized = detector.decode(uploads)
        t0 = time.perf_counter()
        probs = detector.predict(x)
        return probs, resized, (time.perf_counter() - t0) * 1e3

    async def detect(self, files: list[UploadFile], state: dict[str, Any]) -> DetectResponse:
        """`/v1/detect`: the served detector's calibrated P(fake) of each upload, decoded and
        run in a worker thread (like /v1/score). 404 when no detector is served."""
        state["model"] = "-"
        detector = self.detector
        if detector is None:
            raise ApiError(
                404, "no deepfake detector is served here (start ganforge serve with --detector)"
            )
        self._check_upload_count(files)
        uploads = await _read_uploads(files)
        probs, resized, ms = await asyncio.to_thread(self._decode_and_detect, detector, uploads)
        found = detections([f.filename for f in files], probs, resized)
        self.metrics.detector_latency.observe(ms)
        for d in found:
            self.metrics.detections.inc(tags={"verdict": d["verdict"]})
        return DetectResponse(
            detections=found,
            trained_on=detector.trained_on,
            caveat=DETECT_CAVEAT,
        )

"""The ganforge Ray Serve application: one FastAPI ingress deployment holding the generators.

Import path for `serve run` / `serve deploy` / the Helm chart's RayService:
`ganforge.serve.app:build_app` with the arguments of `AppArgs`.

One deployment (not ingress + model deployments): on CPU the per-request hop between actors
costs more than a generator forward pass, so parsing, batching, inference and encoding share a
replica. Each image of a request is one item of `@serve.batch`, so `max_batch_size` counts
images and batches fill first come, first served across requests; one forward pass per model.
"""

# No `from __future__ import annotations`: FastAPI must see real types on the ingress methods.
import asyncio
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.config import AutoscalingConfig, BackpressureConfig

from ganforge.images import to_uint8
from ganforge.serve import codecs
from ganforge.serve.fast_path import FastPath
from ganforge.serve.metrics import get_metrics
from ganforge.serve.middleware import RequestMetricsMiddleware
from ganforge.serve.model_pool import ModelPool
from ganforge.serve.schemas import (
    ApiError,
    AppArgs,
    GenerateRequest,
    GenerateResponse,
    ModelsResponse,
    Score,
    ScoreResponse,
    format_errors,
)

log = logging.getLogger("ganforge.serve")
STATIC = Path(__file__).parent / "static"
SCORE_CAVEAT = (
    "A discriminator/critic score is relative: it says how much this model's critic, trained "
    "against this generator, finds an image like its training data. It is not a calibrated "
    "deepfake detector; compare scores from the same model only."
)

fastapi_app = FastAPI(
    title="ganforge",
    description="Generate images with trained GANs and score images with their critics.",
    version="1",
)


def retry_after(seconds: float) -> str:
    """HTTP `Retry-After` takes whole seconds; round up like Serve's own back-pressure 503."""
    return str(math.ceil(seconds))


def api_error_response(app: Any, exc: ApiError) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status == 503:  # every overload/unavailable answer says when to come back
        headers.setdefault("Retry-After", retry_after(getattr(app.state, "retry_s", 1)))
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)


@fastapi_app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return api_error_response(request.app, exc)


@fastapi_app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    for e in errors:  # say why the JSON did not parse, not only that it did not
        if e.get("type") == "json_invalid":
            pos = e.get("loc", ("body", "?"))[-1]
            reason = (e.get("ctx") or {}).get("error", "cannot parse")
            e.update(loc=("body",), input=None, msg=f"malformed JSON at character {pos}: {reason}")
    return JSONResponse({"detail": format_errors(errors)}, status_code=422)


# Added first = innermost: metrics and the body limit wrap the fast path too.
fastapi_app.add_middleware(
    FastPath,
    path="/v1/generate",
    model=GenerateRequest,
    error_type=ApiError,
    on_error=api_error_response,
    from_query=GenerateRequest.from_query,
)
fastapi_app.add_middleware(RequestMetricsMiddleware)


_GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}, "application/octet-stream": {}},
        "description": "format=png: JSON; grid: one PNG; npy: uint8 [N, H, W, C].",
    }
}


def _query_parameters(model: type[GenerateRequest]) -> list[dict[str, Any]]:
    """OpenAPI query parameters of GET /v1/generate, from the request model's fields (the route
    parses the query itself, with `GenerateRequest.from_query`)."""
    schema = model.model_json_schema(by_alias=True)
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", ()),
            "description": prop.get("description", ""),
            "schema": {k: v for k, v in prop.items() if k not in ("description", "title")},
        }
        for name, prop in schema["properties"].items()
    ]


_GENERATE_QUERY = _query_parameters(GenerateRequest)


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


@serve.deployment(name="ganforge")
@serve.ingress(fastapi_app)
class GanforgeServer:
    """Holds every served model; routes parse, `_run_batch` infers, codecs encode."""

    def __init__(self, args: dict[str, Any]):
        self.args = AppArgs.model_validate(args)
        device = "cuda" if self.args.gpu and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(self.args.num_cpus)))
        self.pool = ModelPool(self.args.models, device, warmup_batch=self.args.max_batch_size)
        self._run_batch.set_max_batch_size(self.args.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        fastapi_app.state.max_body_bytes = self.args.max_upload_bytes
        fastapi_app.state.retry_s = self.args.retry_after_s
        fastapi_app.state.fast_routes = {"/v1/generate": self.generate_response}
        self.metrics = get_metrics()
        for name, m in self.pool.models.items():
            self.metrics.load_time.set(m.load_time_s, tags={"model": name})
        # The last inference error since the models last passed a probe; None = none seen.
        self._last_error: str | None = None

    def _model_label(self, name: str) -> str:
        # Bounded metric label values: arbitrary names from clients become "unknown".
        return name if name in self.pool.models else "unknown"

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
            t0 = time.perf_counter()
            try:
                # Inline on the event loop, like a bare Serve deployment: measured on 2 CPU cores,
                # a worker thread (asyncio.to_thread) lost 10-30% throughput to contention.
                images = self.pool.generate(name, z, labels)
            except torch.OutOfMemoryError as e:
                # Transient by nature: too much at once. The client retries after Retry-After.
                err = ApiError(503, f"out of memory while generating {len(z)} images: {e}")
                for i in idx:
                    out[i] = err
                continue
            except Exception as e:
                log.exception("model %s failed on a batch of %d images", name, len(z))
                self._last_error = f"{name}: {type(e).__name__}: {e}"
                err = ApiError(500, f"model {name!r} failed on this batch: {type(e).__name__}: {e}")
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

    @fastapi_app.get("/", include_in_schema=False)
    async def index(self) -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @fastapi_app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness: the replica is up and its models run (probed after an inference error)."""
        try:
            self.check_health()
        except RuntimeError as e:
            raise ApiError(503, f"unhealthy: {e}") from None
        return {"status": "ok", "models": list(self.pool.models)}

    @fastapi_app.get("/v1/models", response_model=ModelsResponse)
    async def list_models(self) -> ModelsResponse:
        """Every served model: variant, classes, resolution, training progress, quality."""
        return ModelsResponse(models=[m.info() for m in self.pool.models.values()])

    @fastapi_app.post(
        "/v1/generate", response_model=GenerateResponse, responses=_GENERATE_RESPONSES
    )
    async def generate(self, body: GenerateRequest, request: Request) -> Response:
        """Generate images; the same seed and request give the same images."""
        return await self.generate_response(body, request.scope.setdefault("state", {}))

    @fastapi_app.get(
        "/v1/generate",
        response_model=GenerateResponse,
        responses=_GENERATE_RESPONSES,
        openapi_extra={"parameters": _GENERATE_QUERY},
    )
    async def generate_get(self, request: Request) -> Response:
        """`POST /v1/generate`'s fields as query parameters, e.g.
        `?model=demo&class=cat&count=8&seed=1&format=grid` (usable as an `<img src>`). `labels`
        may repeat or be comma-separated; labels and classes in digits are class indices. On Ray
        Serve a GET also answers sooner: a POST's body costs the replica one more actor call to
        the proxy."""
        try:
            body = GenerateRequest.from_query(request.query_params.multi_items())
        except ValidationError as e:
            raise RequestValidationError(
                [{**err, "loc": ("query", *err["loc"])} for err in e.errors()]
            ) from None
        return await self.generate_response(body, request.scope.setdefault("state", {}))

    async def generate_response(self, body: GenerateRequest, state: dict[str, Any]) -> Response:
        """`/v1/generate` for a validated request (a POST body or a GET query), from the FastAPI
        routes or the fast path (serve.fast_path); names the model in `state`."""
        state["model"] = self._model_label(body.model)
        plan = self.pool.plan(body, self.args.max_images_per_request)
        n, labels = len(plan.z), plan.labels
        items = [
            Latent(body.model, z, None if labels is None else labels[i])
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

    def _count_images(self, model: str, labels: list[int] | None, names: list[str], n: int) -> None:
        if labels is None:
            self.metrics.images.inc(n, tags={"model": model, "class": "-"})
            return
        for idx, count in Counter(labels).items():
            self.metrics.images.inc(count, tags={"model": model, "class": names[idx]})

    @fastapi_app.post("/v1/score", response_model=ScoreResponse)
    async def score(
        self,
        request: Request,
        model: str = Form(description="Served model name."),
        files: list[UploadFile] = File(description="PNG or JPEG images (one or more)."),
        label: str | None = Form(
            None, description="Class name or index for conditional models (default: all)."
        ),
    ) -> ScoreResponse:
        """Discriminator/critic score of uploaded images (relative; see the caveat)."""
        request.state.model = self._model_label(model)
        served = self.pool.get(model)
        if len(files) > self.args.max_images_per_request:
            raise ApiError(
                413,
                f"{len(files)} files uploaded; the limit is "
                f"{self.args.max_images_per_request} per request",
            )
        m = served.loaded.config.model
        decoded = [
            codecs.decode_upload(await f.read(), f.filename, m.resolution, m.channels)
            for f in files
        ]
        x = torch.stack([d[0] for d in decoded])
        scores = await asyncio.to_thread(self._score, served, x, label)
        return ScoreResponse(
            model=model,
            score_kind="logit" if served.loaded.config.loss.kind == "bce" else "critic",
            scores=[
                Score(filename=f.filename, resized=d[1], **s)
                for f, d, s in zip(files, decoded, scores, strict=True)
            ],
            caveat=SCORE_CAVEAT,
        )

    def _score(self, served, x: torch.Tensor, label: str | None) -> list[dict[str, Any]]:
        if not served.num_classes:
            return [{"score": float(s)} for s in self.pool.score(served.name, x, None)]
        if label is not None:
            key: int | str = int(label) if label.strip().isdigit() else label
            idx = served.class_index(key)
            labels = torch.full((len(x),), idx, dtype=torch.long)
            return [
                {"score": float(s), "label": idx} for s in self.pool.score(served.name, x, labels)
            ]
        k = served.num_classes
        # Every image under every class: [N*K] scores, reshaped to [N, K].
        grid = self.pool.score(
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


def _deployment_options(a: AppArgs) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "max_ongoing_requests": a.ongoing_requests,
        "max_queued_requests": a.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=a.retry_after_s),
        "ray_actor_options": {"num_cpus": a.num_cpus, "num_gpus": 1 if a.gpu else 0},
    }
    if a.autoscaling is None:
        opts["num_replicas"] = a.num_replicas
    else:
        opts["autoscaling_config"] = AutoscalingConfig(**a.autoscaling.model_dump())
    return opts


def parse_args(args: dict[str, Any] | None) -> AppArgs:
    """Validate `build_app` arguments; a bad one raises ValueError naming the key."""
    try:
        return AppArgs.model_validate(args or {})
    except ValidationError as e:
        raise ValueError(
            format_errors(e, prefix="invalid ganforge serve arguments: ", whole="")
        ) from None


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for `serve run ganforge.serve.app:build_app` and configs/serve.yaml.

    Validates the arguments and (unless `validate_on_build: false`) loads every checkpoint once,
    so a corrupt or mismatched one fails here with `CheckpointError` naming the model.
    """
    from ganforge.checkpoint import CheckpointError
    from ganforge.models import load_model

    a = parse_args(args)
    if a.validate_on_build:
        for name, path in a.models.items():
            try:
                load_model(path)
            except CheckpointError as e:
                raise CheckpointError(f"model {name!r}: {e}") from None
    return GanforgeServer.options(**_deployment_options(a)).bind(a.model_dump(mode="json"))

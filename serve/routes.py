"""The app's HTTP face: one FastAPI app per replica, built by `build_http_app` around the
replica's handlers and with its own settings.

Routes only parse and answer; the replica (serve.deployment) plans, batches, infers and encodes.
Nothing here is module-level mutable state: the body limit, the Retry-After seconds and the
fast path's handler are given to the middleware when the app is built, so two apps in one
process never see each other's settings.
"""

# No `from __future__ import annotations`: FastAPI must see real types on the route functions.
import logging
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError

from ganforge.serve.auth import OPEN_PATHS, BearerAuth
from ganforge.serve.fast_path import FastPath
from ganforge.serve.handling import api_error_response
from ganforge.serve.middleware import INTERNAL_ERROR, RequestMetricsMiddleware
from ganforge.serve.schemas import (
    ApiError,
    DetectResponse,
    GenerateRequest,
    GenerateResponse,
    ModelsResponse,
    ScoreResponse,
    format_errors,
)

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("ganforge.serve")

_GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}, "application/octet-stream": {}},
        "description": "format=png: JSON; grid: one PNG; npy: uint8 [N, H, W, C].",
    }
}


class Handlers(Protocol):
    """What the routes call on the replica."""

    def check_health(self) -> None: ...

    def model_names(self) -> list[str]: ...

    def models(self) -> ModelsResponse: ...

    async def generate_response(self, body: GenerateRequest, state: dict[str, Any]) -> Response: ...

    async def score(
        self, model: str, files: list[UploadFile], label: str | None, state: dict[str, Any]
    ) -> ScoreResponse: ...

    async def detect(self, files: list[UploadFile], state: dict[str, Any]) -> DetectResponse: ...


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


def _parse_query(items: Iterable[tuple[str, str]]) -> GenerateRequest:
    """GET /v1/generate's query as a request; errors located in the query, as FastAPI does."""
    try:
        return GenerateRequest.from_query(items)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("query", *err["loc"])} for err in e.errors()]
        ) from None


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    for e in errors:  # say why the JSON did not parse, not only that it did not
        if e.get("type") == "json_invalid":
            pos = e.get("loc", ("body", "?"))[-1]
            reason = (e.get("ctx") or {}).get("error", "cannot parse")
            e.update(loc=("body",), input=None, msg=f"malformed JSON at character {pos}: {reason}")
    return JSONResponse({"detail": format_errors(errors)}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)


def _document_bearer_auth(app: FastAPI) -> None:
    """Declare the bearer token in the OpenAPI schema (all but OPEN_PATHS), so that /docs shows
    an "Authorize" button and its "Try it out" requests send the token."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI keeps it in app.openapi_schema
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearer"] = {"type": "http", "scheme": "bearer"}
            schema["security"] = [{"bearer": []}]
            for path in OPEN_PATHS:
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = []
        return app.openapi_schema

    app.openapi = openapi


def build_http_app(
    server: Handlers, *, max_body_bytes: int, retry_after_s: float, api_token: str | None = None
) -> FastAPI:
    """The FastAPI app of one replica: its routes call `server`; request bodies are held to
    `max_body_bytes`; 503 answers carry `Retry-After: retry_after_s` (rounded up); with an
    `api_token`, requests need `Authorization: Bearer <api_token>` (serve.auth)."""
    app = FastAPI(
        title="ganforge",
        description="Generate images with trained GANs, score images with their critics and check "
        "them with a deepfake detector.",
        version="1",
    )
    on_error = partial(api_error_response, retry_after_s=retry_after_s)

    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return on_error(exc)

    app.add_exception_handler(ApiError, api_error)
    # A bug in a route: a JSON 500 without the exception's text (it can name files and
    # internals); Starlette re-raises it afterwards, and the metrics middleware logs it.
    app.add_exception_handler(Exception, _internal_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    # Added first = innermost: authentication, metrics and the body limit wrap the fast path too.
    app.add_middleware(
        FastPath,
        path="/v1/generate",
        model=GenerateRequest,
        handler=server.generate_response,
        error_type=ApiError,
        on_error=on_error,
        from_query=GenerateRequest.from_query,
    )
    if api_token is not None:
        app.add_middleware(BearerAuth, token=api_token)  # inside the metrics: 401s are counted
        _document_bearer_auth(app)
    app.add_middleware(RequestMetricsMiddleware, max_body_bytes=max_body_bytes)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the replica is up and its models run (probed after an inference error)."""
        try:
            server.check_health()
        except RuntimeError as e:
            # What failed stays in the log: exception texts can name files and internals.
            log.warning("unhealthy: %s", e)
            detail = "unhealthy: a served model fails its probe (see the server log)"
            raise ApiError(503, detail) from None
        return {"status": "ok", "models": server.model_names()}

    @app.get("/v1/models", response_model=ModelsResponse)
    async def list_models() -> ModelsResponse:
        """Every served model: variant, classes, resolution, training progress, quality."""
        return server.models()

    @app.post("/v1/generate", response_model=GenerateResponse, responses=_GENERATE_RESPONSES)
    async def generate(body: GenerateRequest, request: Request) -> Response:
        """Generate images; the same seed and request give the same images."""
        return await server.generate_response(body, request.scope.setdefault("state", {}))

    @app.get(
        "/v1/generate",
        response_model=GenerateResponse,
        responses=_GENERATE_RESPONSES,
        openapi_extra={"parameters": _GENERATE_QUERY},
    )
    async def generate_get(request: Request) -> Response:
        """`POST /v1/generate`'s fields as query parameters, e.g.
        `?model=demo&class=cat&count=8&seed=1&format=grid` (usable as an `<img src>`). `labels`
        may repeat or be comma-separated; labels and classes in digits are class indices. On Ray
        Serve a GET also answers sooner: a POST's body costs the replica one more actor call to
        the proxy."""
        body = _parse_query(request.query_params.multi_items())
        return await server.generate_response(body, request.scope.setdefault("state", {}))

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score(
        request: Request,
        model: str = Form(description="Served model name."),
        files: list[UploadFile] = File(description="PNG or JPEG images (one or more)."),
        label: str | None = Form(
            None, description="Class name or index for conditional models (default: all)."
        ),
    ) -> ScoreResponse:
        """Discriminator/critic score of uploaded images (relative; see the caveat)."""
        return await server.score(model, files, label, request.scope.setdefault("state", {}))

    @app.post("/v1/detect", response_model=DetectResponse)
    async def detect(
        request: Request,
        files: list[UploadFile] = File(description="PNG or JPEG images (one or more)."),
    ) -> DetectResponse:
        """Calibrated probability that each uploaded image is generated, from the deepfake
        detector given to `ganforge serve --detector` (404 without one; see the caveat)."""
        return await server.detect(files, request.scope.setdefault("state", {}))

    return app

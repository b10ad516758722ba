"""ASGI middleware: request metrics, in-flight gauge, body-size limit, last-resort 500s.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: it sits on every request's hot path.
The body limit holds for every request: a declared Content-Length over it is refused before the
body is read; a body without one (Transfer-Encoding: chunked) is counted as it streams in and
refused as soon as it passes the limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.exceptions import HTTPException

from ganforge.serve.metrics import get_metrics

log = logging.getLogger("ganforge.serve")
# The queue-depth gauge is sampled and the request/image counters are summed, not recorded on
# every request: the exporter only reads them every few seconds, and each Ray metrics call per
# request costs ~40 us of a replica's Python on 2 CPU cores (py-spy). Every EXPORT_PERIOD_S the
# gauge is set and the counters are flushed.
EXPORT_PERIOD_S = 0.5
# The whole answer to an unexpected exception: its text stays in the log.
INTERNAL_ERROR = "internal error (see the server log)"
ROUTES = {
    "/",
    "/healthz",
    "/v1/models",
    "/v1/generate",
    "/v1/score",
    "/v1/detect",
    "/docs",
    "/openapi.json",
}


def relative_path(scope: dict[str, Any]) -> str:
    """The request's path relative to the app's prefix (`root_path`)."""
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def route_label(scope: dict[str, Any]) -> str:
    """The request's route; unknown paths collapse to 'other' (bounded metric labels)."""
    path = relative_path(scope)
    return path if path in ROUTES else "other"


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit. An HTTPException so that
    FastAPI's body parsing passes it on (any other error there becomes a generic 400) and its
    exception middleware answers 413 with this detail."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


def limit_body(receive, limit: int):
    """`receive` that raises BodyTooLarge when the body's bytes so far pass `limit`."""
    seen = 0

    async def limited():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return limited


async def send_json(
    send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer `{"detail": detail}` with `status` (and any extra `headers`) in plain ASGI."""
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetricsMiddleware:
    """Counts every answered request by model/route/status and times it.

    Handlers name the model in `request.state.model` (scope["state"]). `max_body_bytes`: the
    body limit (None: none), given by whoever builds the app (serve.routes, per replica).
    """

    def __init__(self, app, max_body_bytes: int | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.in_flight = 0
        self._sampler: asyncio.Task | None = None

    async def _export(self) -> None:
        metrics = get_metrics()
        while True:
            try:
                metrics.queue_depth.set(self.in_flight)
                metrics.flush()
            except Exception:  # keep exporting; a metrics hiccup must not stop the loop
                log.exception("recording serve metrics failed")
            await asyncio.sleep(EXPORT_PERIOD_S)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = get_metrics()
        state = scope.setdefault("state", {})
        route, status, started = route_label(scope), 500, False
        t0 = time.perf_counter()

        async def send_wrapper(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        if self._sampler is None:  # needs the replica's running event loop
            self._sampler = asyncio.get_running_loop().create_task(self._export())
        self.in_flight += 1
        try:
            refusal, limit = self._check_size(scope)
            if refusal:
                await send_json(send_wrapper, *refusal)
            else:
                if limit is not None:
                    receive = limit_body(receive, limit)
                await self.app(scope, receive, send_wrapper)
        except BodyTooLarge as e:  # raised outside FastAPI's body parsing
            if not started:
                await send_json(send_wrapper, e.status_code, e.detail)
        except Exception:  # a bug must cost one request, never the replica
            # The exception's text stays in the log: it can name files and internals.
            log.exception("unhandled error on %s", route)
            if not started:
                await send_json(send_wrapper, 500, INTERNAL_ERROR)
        finally:
            self.in_flight -= 1
            model = state.get("model", "-")
            metrics.requests.inc(tags={"model": model, "route": route, "status": str(status)})
            metrics.request_latency.observe(
                (time.perf_counter() - t0) * 1e3, tags={"model": model, "route": route}
            )

    def _check_size(self, scope) -> tuple[tuple[int, str] | None, int | None]:
        """(refusal or None, the limit a streamed body must keep to or None)."""
        limit = self.max_body_bytes
        if limit is None:
            return None, None
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    return (400, "invalid Content-Length header"), None
                if size > limit:
                    detail = f"request body of {size} bytes exceeds the limit of {limit} bytes"
                    return (413, detail), None
                # The server delivers at most Content-Length bytes: nothing to count.
                return None, None
        return None, limit

"""ASGI middleware: request metrics, in-flight gauge, body-size limit, last-resort 500s.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: it sits on every request's hot path.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ganforge.serve.metrics import get_metrics

log = logging.getLogger("ganforge.serve")
ROUTES = {"/", "/healthz", "/v1/models", "/v1/generate", "/v1/score", "/docs", "/openapi.json"}


def route_label(scope: dict[str, Any]) -> str:
    """The request's route relative to the app's prefix; unknown paths collapse to 'other'."""
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path if path in ROUTES else "other"


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetricsMiddleware:
    """Counts every answered request by model/route/status and times it.

    Handlers name the model in `request.state.model` (scope["state"]); the body limit comes from
    `app.state.max_body_bytes`, set by the deployment.
    """

    def __init__(self, app):
        self.app = app
        self.in_flight = 0

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

        self.in_flight += 1
        metrics.queue_depth.set(self.in_flight)
        try:
            refusal = self._check_size(scope)
            if refusal:
                await _send_json(send_wrapper, *refusal)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception as e:  # a bug must cost one request, never the replica
            log.exception("unhandled error on %s", route)
            if not started:
                await _send_json(send_wrapper, 500, f"internal error: {type(e).__name__}: {e}")
        finally:
            self.in_flight -= 1
            metrics.queue_depth.set(self.in_flight)
            model = state.get("model", "-")
            metrics.requests.inc(tags={"model": model, "route": route, "status": str(status)})
            metrics.request_latency.observe(
                (time.perf_counter() - t0) * 1e3, tags={"model": model, "route": route}
            )

    @staticmethod
    def _check_size(scope) -> tuple[int, str] | None:
        app = scope.get("app")
        limit = getattr(getattr(app, "state", None), "max_body_bytes", None)
        if limit is None:
            return None
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    return 400, "invalid Content-Length header"
                if size > limit:
                    return 413, f"request body of {size} bytes exceeds the limit of {limit} bytes"
        return None

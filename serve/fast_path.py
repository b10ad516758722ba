"""A route around FastAPI for the hot path: `POST /v1/generate` with a valid JSON body, and
`GET /v1/generate?...` with valid query parameters.

Why by hand: FastAPI's routing, dependency solving and wrappers cost ~65 us per request in
isolation, and several times that in a Serve replica, whose Python is bound by the GIL under
load (py-spy at 128 clients on 2 CPU cores: 0.3-0.4 ms of replica thread time per request in
FastAPI's frames outside the handler). No library serves one route of a FastAPI app outside it.
Only a request that parses and validates is served here; anything else (another method or content
type, malformed JSON, invalid fields) is handed to FastAPI (a read body replayed), so every error
answer and the OpenAPI docs still come from the FastAPI routes; all share one handler.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from ganforge.serve.middleware import relative_path

# handler(validated body, scope["state"]) -> the response: a bound method of the replica that
# built the app, given to the middleware with the app (serve.routes).
Handler = Callable[[Any, dict[str, Any]], Awaitable[Response]]


def _is_json(scope: dict[str, Any]) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def replay(body: bytes, receive):
    """`receive` that first returns the already-read body, then defers to the real one."""
    pending = True

    async def replayed():
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class FastPath:
    """Pure-ASGI middleware: serves `POST <path>` with a JSON body valid for `model`, and (when
    `from_query` is given) `GET <path>` whose query parameters `from_query` turns into a valid
    `model`, by calling `handler` (None: none, FastAPI serves everything); passes everything else
    to the wrapped app unchanged.

    GET matters on Ray Serve: a replica pulls a request's body from the proxy with one more
    actor call, a round trip on every POST's critical path that a GET does not wait for.

    Sits inside the request-metrics middleware, so fast requests are counted, timed and held to
    the body limit like any other. `on_error(exc)` turns an `error_type` exception from the
    handler into a response (what the app's own exception handler answers); others propagate.
    """

    def __init__(
        self,
        app,
        path: str,
        model: type[BaseModel],
        handler: Handler | None,
        error_type: type[Exception],
        on_error: Callable[[Exception], Response],
        from_query: Callable[[Iterable[tuple[str, str]]], BaseModel] | None = None,
    ):
        self.app, self.path, self.model, self.handler = app, path, model, handler
        self.error_type, self.on_error, self.from_query = error_type, on_error, from_query

    def _serves(self, scope: dict[str, Any]) -> bool:
        if self.handler is None or scope["type"] != "http" or relative_path(scope) != self.path:
            return False
        method = scope.get("method")
        return (method == "POST" and _is_json(scope)) or (
            method == "GET" and self.from_query is not None
        )

    async def __call__(self, scope, receive, send):
        if not self._serves(scope):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET":
            query = scope.get("query_string", b"").decode("latin-1")
            try:
                parsed = self.from_query(parse_qsl(query, keep_blank_values=True))
            except (ValueError, ValidationError):  # FastAPI words the error
                await self.app(scope, receive, send)
                return
        else:
            chunks, more = [], True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client left before sending its body
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            try:
                parsed = self.model.model_validate(json.loads(body))
            except (ValueError, ValidationError):  # FastAPI words the error (JSONDecodeError too)
                await self.app(scope, replay(body, receive), send)
                return
        try:
            response = await self.handler(parsed, scope.setdefault("state", {}))
        except self.error_type as e:
            response = self.on_error(e)
        await response(scope, receive, send)

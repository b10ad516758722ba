"""`serve.fast_path.FastPath` in process: which requests (JSON POSTs, GETs with a query) it
serves and which it hands to FastAPI, with the body intact. A small FastAPI app (no Ray) stands
in for the deployment; the real app's fast and FastAPI routes are compared end to end in
tests/test_serve.py. Last, the app's own HTTP layer (`serve.routes.build_http_app`) around
stand-in replicas: each app built in a process keeps its own settings."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ganforge.serve.fast_path import FastPath
from ganforge.serve.routes import build_http_app
from ganforge.serve.schemas import ApiError, ModelsResponse


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    count: int = Field(1, ge=1)


class Refused(Exception):
    pass


def body_from_query(items) -> Body:
    fields = dict(items)
    if "count" in fields:
        fields["count"] = int(fields["count"])  # ValueError: handed to FastAPI
    return Body.model_validate(fields)


def make_app(query: bool = True, handler: bool = True) -> tuple[FastAPI, dict[str, list]]:
    calls: dict[str, list] = {"fast": [], "route": []}

    async def fast(body: Body, state: dict) -> Response:
        calls["fast"].append(body)
        state["seen"] = True
        if body.name == "refuse":
            raise Refused("refused by the handler")
        return Response(f"fast:{body.name}:{body.count}", media_type="text/plain")

    app = FastAPI()
    app.add_middleware(
        FastPath,
        path="/v1/go",
        model=Body,
        handler=fast if handler else None,
        error_type=Refused,
        on_error=lambda e: JSONResponse({"detail": str(e)}, status_code=409),
        from_query=body_from_query if query else None,
    )

    @app.post("/v1/go")
    async def route(body: Body) -> Response:
        calls["route"].append(body)
        return Response(f"route:{body.name}:{body.count}", media_type="text/plain")

    if query:

        @app.get("/v1/go")
        async def route_get(name: str, count: int = Query(1, ge=1)) -> Response:
            calls["route"].append(Body(name=name, count=count))
            return Response(f"route:{name}:{count}", media_type="text/plain")

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"errors": [list(e["loc"]) for e in exc.errors()]}, status_code=422)

    return app, calls


def request(app: FastAPI, method: str, url: str, **kwargs) -> httpx.Response:
    """One request to `app` in process (no server)."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def post(app: FastAPI, content, content_type: str | None = "application/json"):
    headers = {} if content_type is None else {"content-type": content_type}
    return request(app, "POST", "/v1/go", content=content, headers=headers)


def get(app: FastAPI, query: str, path: str = "/v1/go"):
    return request(app, "GET", f"{path}?{query}")


def test_a_valid_json_body_is_served_by_the_handler_not_the_route():
    app, calls = make_app()
    r = post(app, json.dumps({"name": "a", "count": 3}).encode())
    assert (r.status_code, r.text) == (200, "fast:a:3")
    assert [b.count for b in calls["fast"]] == [3] and calls["route"] == []


def test_a_body_sent_in_chunks_is_joined():
    app, calls = make_app()

    async def chunks():
        for part in (b'{"name": ', b'"chunked", "co', b'unt": 2}'):
            yield part

    r = post(app, chunks())  # no Content-Length: streamed in three messages
    assert r.text == "fast:chunked:2" and calls["route"] == []


@pytest.mark.parametrize(
    "content, loc",
    [
        (b'{"name": "a", "count": 0}', ["body", "count"]),  # invalid field
        (b'{"name": "a", "colour": 1}', ["body", "colour"]),  # unknown field
        (b'{"name": ', ["body", 9]),  # malformed JSON: FastAPI reports the character
        (b"[1, 2]", ["body"]),  # not an object
    ],
)
def test_an_invalid_body_is_replayed_into_fastapi_which_words_the_error(content, loc):
    app, calls = make_app()
    r = post(app, content)
    assert r.status_code == 422
    # FastAPI saw the same bytes: its error points at the same field or character.
    assert loc in r.json()["errors"]
    assert calls["fast"] == [] and calls["route"] == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x.ganforge+json", None])
def test_other_content_types_go_to_fastapi(content_type):
    app, calls = make_app()
    r = post(app, json.dumps({"name": "b"}).encode(), content_type=content_type)
    assert calls["fast"] == []
    if content_type and content_type.endswith("+json"):  # FastAPI reads +json types as JSON
        assert r.text == "route:b:1" and len(calls["route"]) == 1
    else:
        assert r.status_code == 422 and calls["route"] == []


def test_a_content_type_with_parameters_is_still_json():
    app, calls = make_app()
    r = post(app, b'{"name": "c"}', content_type="application/json; charset=utf-8")
    assert r.text == "fast:c:1" and calls["route"] == []


def test_the_handler_errors_become_the_apps_error_response():
    app, _ = make_app()
    r = post(app, b'{"name": "refuse"}')
    assert (r.status_code, r.json()) == (409, {"detail": "refused by the handler"})


def test_without_a_registered_handler_fastapi_serves_everything():
    app, calls = make_app(handler=False)
    r = post(app, b'{"name": "d"}')
    assert r.text == "route:d:1" and calls["fast"] == []


def test_other_methods_and_paths_are_not_intercepted():
    app, calls = make_app(query=False)

    got = get(app, "name=e")  # no `from_query`: GET is not served here
    put = request(app, "PUT", "/v1/go", json={"name": "e"})
    other = request(app, "POST", "/v1/gone", json={"name": "e"})
    assert (got.status_code, put.status_code, other.status_code) == (405, 405, 404)
    assert calls["fast"] == []


def test_a_valid_query_is_served_by_the_handler_not_the_route():
    app, calls = make_app()
    r = get(app, "name=q%20r&count=2")  # percent-escapes are decoded
    assert (r.status_code, r.text) == (200, "fast:q r:2")
    assert calls["route"] == []
    r = get(app, "name=refuse")  # the handler's own errors, as for a POST
    assert (r.status_code, r.json()) == (409, {"detail": "refused by the handler"})


@pytest.mark.parametrize(
    "query, loc",
    [
        ("name=a&count=x", ["query", "count"]),  # not a number: from_query raises ValueError
        ("name=a&count=0", ["query", "count"]),  # invalid field: ValidationError
        ("count=2", ["query", "name"]),  # missing field
    ],
)
def test_an_invalid_query_goes_to_fastapi_which_words_the_error(query, loc):
    app, calls = make_app()
    r = get(app, query)
    assert r.status_code == 422 and loc in r.json()["errors"]
    assert calls["fast"] == [] and calls["route"] == []


def test_a_get_on_another_path_is_not_intercepted():
    app, calls = make_app()
    assert get(app, "name=a", path="/v1/gone").status_code == 404
    assert calls["fast"] == []


class StandInReplica:
    """The handlers `build_http_app` calls, answering with the replica's name; model "busy"
    gets a 503 (as an overloaded or out-of-memory replica answers)."""

    def __init__(self, name: str):
        self.name = name

    def check_health(self) -> None:
        pass

    def model_names(self) -> list[str]:
        return [self.name]

    def models(self) -> ModelsResponse:
        return ModelsResponse(models=[])

    async def generate_response(self, body, state: dict) -> Response:
        state["model"] = body.model
        if body.model == "busy":
            raise ApiError(503, f"{self.name} is busy")
        return Response(f"{self.name}:{body.model}", media_type="text/plain")

    async def score(self, model, files, label, state):
        raise ApiError(404, f"unknown model {model!r}")


def test_two_apps_in_one_process_keep_their_own_settings():
    """Body limit, Retry-After and the fast path's handler are each app's own: nothing is
    shared through module state, whichever app was built or called last."""
    small = build_http_app(StandInReplica("small"), max_body_bytes=2048, retry_after_s=2)
    large = build_http_app(StandInReplica("large"), max_body_bytes=1 << 20, retry_after_s=7.5)
    padded = json.dumps({"model": "m"}) + " " * 4000  # valid JSON of ~4 KB
    json_type = {"content-type": "application/json"}
    routed_type = {"content-type": "application/x.test+json"}  # FastAPI's route, not the fast path

    async def go():
        answers = {}
        for name, app in (("small", small), ("large", large), ("small again", small)):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                answers[name] = [
                    await client.post("/v1/generate", content=padded, headers=json_type),
                    await client.get("/v1/generate?model=busy"),
                    await client.post("/v1/generate", json={"model": "busy"}),
                    await client.post(
                        "/v1/generate", content=b'{"model": "busy"}', headers=routed_type
                    ),
                    await client.get("/healthz"),
                ]
        return answers

    answers = asyncio.run(go())
    for name in ("small", "small again"):
        big_body, *busy, health = answers[name]
        assert big_body.status_code == 413, big_body.text
        assert "exceeds the limit of 2048 bytes" in big_body.json()["detail"]
        assert [(r.status_code, r.headers.get("retry-after")) for r in busy] == [(503, "2")] * 3
        assert all(r.json()["detail"] == "small is busy" for r in busy)
        assert health.json()["models"] == ["small"]
    big_body, *busy, health = answers["large"]
    assert (big_body.status_code, big_body.text) == (200, "large:m")
    assert [(r.status_code, r.headers.get("retry-after")) for r in busy] == [(503, "8")] * 3
    assert all(r.json()["detail"] == "large is busy" for r in busy)
    assert health.json()["models"] == ["large"]

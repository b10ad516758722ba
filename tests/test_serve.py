"""The serving app end to end: real Ray Serve on loopback, real HTTP (httpx), real metrics.

Checkpoints are tiny random-weight models written with `write_weights_checkpoint` (no training),
except in the slow test that trains every variant with `ganforge train`'s code path. Nothing is
mocked; the one injected fault is a generator whose forward pass raises on two chosen seeds (a
Ray worker setup hook, see `serve_helpers.poison_generators`), to test that a failing batch
costs only its requests. One Ray session and Serve instance per module: the main app at `/`, a
deliberately tight app (queue limit 1) at `/tight` for the overload test, and the trained
variants at `/trained`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
import serve_helpers  # noqa: E402
from browser_helpers import Page  # noqa: E402
from dashboard_helpers import DASHBOARDS, dashboard_queries  # noqa: E402
from serve_helpers import (  # noqa: E402
    CLASSES,
    FAIL_SEED,
    OOM_SEED,
    free_port,
    make_checkpoint,
    make_detector,
    poison_generators,
)

MAX_IMAGES = 64
UPLOAD_LIMIT = 1_048_576  # the app's default max_upload_bytes


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-runs")
    cd = root / "cd"
    make_checkpoint(cd, "cdcgan", classes=CLASSES)
    (cd / "quality").mkdir()
    (cd / "quality" / "metrics.json").write_text(json.dumps({"fid": 41.5, "kid": 0.02}))
    dc_ckpt = make_checkpoint(root / "dc", "wgan-gp", extra_meta={"quality": {"fid": 77.0}})
    # "solo" only ever gets one-image requests (test_concurrent_requests_form_batches).
    return {"cd": cd, "dc": dc_ckpt / "weights.pt", "solo": make_checkpoint(root / "solo", "dcgan")}


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    return make_detector(tmp_path_factory.mktemp("detector") / "detector.pt")


@pytest.fixture(scope="module")
def server(runs, detector):
    import ray
    from ray import cloudpickle, serve

    from ganforge.serve.app import build_app

    metrics_port, http_port = free_port(), free_port()
    cloudpickle.register_pickle_by_value(serve_helpers)  # the workers cannot import it by name
    # Logical CPUs: main (1) + tight (0.5) + a training worker (1) + the trained app (0.5).
    ray.init(
        address="local",  # a cluster of its own, even when another one runs on this machine
        num_cpus=4,
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        runtime_env={"worker_process_setup_hook": poison_generators},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        models = {k: str(v) for k, v in runs.items()}
        serve.run(
            build_app(
                {
                    "models": models,
                    "max_images_per_request": MAX_IMAGES,
                    "num_cpus": 1,
                    "detector": str(detector),
                }
            ),
            name="main",
            route_prefix="/",
            blocking=False,
        )
        # One request at a time, one waiting: anything beyond gets Serve's 503.
        tight = {
            "models": {"cd": models["cd"]},
            "max_batch_size": 1,
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
            "retry_after_s": 2,
            "num_cpus": 0.5,
        }
        serve.run(build_app(tight), name="tight", route_prefix="/tight", blocking=False)
        url = f"http://127.0.0.1:{http_port}"
        serve_helpers.wait_ready(url + "/healthz")
        serve_helpers.wait_ready(url + "/tight/healthz")
        yield {"url": url, "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server["url"], timeout=60) as c:
        yield c


def gen(client, **body) -> httpx.Response:
    return client.post("/v1/generate", json=body)


def npy(client, **body) -> np.ndarray:
    r = gen(client, format="npy", **body)
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


# --- routes -------------------------------------------------------------------------------


def test_healthz_and_index(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and set(r.json()["models"]) == {"cd", "dc", "solo"}
    page = client.get("/")
    assert page.status_code == 200 and "v1/generate" in page.text
    assert client.get("/docs").status_code == 200
    assert "/v1/score" in client.get("/openapi.json").json()["paths"]


def test_models_listing(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    cd, dc = models["cd"], models["dc"]
    assert cd["variant"] == "cdcgan" and cd["conditional"] and cd["classes"] == CLASSES
    assert (cd["resolution"], cd["channels"], cd["step"], cd["images_seen"]) == (32, 3, 10, 640)
    assert cd["quality"] == {"fid": 41.5, "kid": 0.02}  # from <run_dir>/quality/metrics.json
    assert dc["variant"] == "wgan-gp" and not dc["conditional"] and dc["classes"] == []
    assert dc["quality"] == {"fid": 77.0}  # from the checkpoint meta
    assert cd["load_time_s"] > 0


def test_generate_png_labels_by_name_and_index(client):
    r = gen(client, model="cd", labels=["cat", 2, "dog"], seed=1)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == [0, 2, 1] and body["classes"] == ["cat", "frog", "dog"]
    assert body["seed"] == 1 and (body["width"], body["height"], body["channels"]) == (32, 32, 3)
    imgs = [Image.open(io.BytesIO(base64.b64decode(s))) for s in body["images"]]
    assert [(i.format, i.size, i.mode) for i in imgs] == [("PNG", (32, 32), "RGB")] * 3


def test_generate_grid_and_npy(client):
    r = gen(client, model="cd", **{"class": "frog"}, count=4, nrow=2, format="grid", seed=5)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-ganforge-labels"] == "2,2,2,2" and r.headers["x-ganforge-seed"] == "5"
    assert Image.open(io.BytesIO(r.content)).size == (2 * 34 + 2, 2 * 34 + 2)
    arr = npy(client, model="dc", count=5, seed=5)
    assert arr.dtype == np.uint8 and arr.shape == (5, 32, 32, 3)


def test_seed_determinism_and_label_forms(client):
    a = npy(client, model="cd", labels=["dog", "cat"], seed=123)
    b = npy(client, model="cd", labels=[1, 0], seed=123)
    c = npy(client, model="cd", labels=[1, 0], seed=124)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # A random seed is chosen and reported when none is given; reusing it reproduces the images.
    r = gen(client, model="dc", count=2)
    again = gen(client, model="dc", count=2, seed=r.json()["seed"])
    assert r.json()["images"] == again.json()["images"]


def assert_same_answer(a: httpx.Response, b: httpx.Response, request) -> None:
    """Same status, same bytes and the same content type and X-Ganforge-* headers."""
    assert a.status_code == b.status_code, (request, a.text, b.text)
    assert a.content == b.content
    for h in ("content-type", "x-ganforge-seed", "x-ganforge-labels"):
        assert a.headers.get(h) == b.headers.get(h)


def test_fast_path_and_fastapi_route_answer_alike(client):
    """`application/json` bodies take the fast path (serve.fast_path); FastAPI serves other JSON
    types (`+json`) itself. Both must give the same images, headers and errors."""
    for body in (
        {"model": "cd", "labels": ["cat", 1], "seed": 9},
        {"model": "dc", "count": 2, "seed": 9, "format": "npy"},
        {"model": "cd", "labels": ["unicorn"]},  # 422 from the handler (ApiError)
        {"model": "nope", "count": 1},  # 404 from the handler
    ):
        data = json.dumps(body)
        fast = client.post(
            "/v1/generate", content=data, headers={"content-type": "application/json"}
        )
        routed = client.post(
            "/v1/generate", content=data, headers={"content-type": "application/x.test+json"}
        )
        assert_same_answer(fast, routed, body)


@pytest.mark.parametrize(
    "query, body",
    [
        ("model=cd&labels=cat,1&seed=9", {"model": "cd", "labels": ["cat", 1], "seed": 9}),
        ("model=cd&labels=cat&labels=1&seed=9", {"model": "cd", "labels": ["cat", 1], "seed": 9}),
        (
            "model=cd&class=dog&count=3&seed=4&truncation=0.5&format=grid&nrow=1",
            {
                "model": "cd",
                "class": "dog",
                "count": 3,
                "seed": 4,
                "truncation": 0.5,
                "format": "grid",
                "nrow": 1,
            },
        ),
        (
            "model=dc&count=2&seed=9&format=npy",
            {"model": "dc", "count": 2, "seed": 9, "format": "npy"},
        ),
        ("model=cd&labels=unicorn", {"model": "cd", "labels": ["unicorn"]}),  # 422, handler
        ("model=nope", {"model": "nope"}),  # 404 from the handler
        ("model=cd&class=-1", {"model": "cd", "class": -1}),  # 422: index out of range
    ],
)
def test_get_with_a_query_answers_like_post(client, query, body):
    """GET /v1/generate?... takes the same fields as the POST body and gives the same images,
    headers and handler errors."""
    got, posted = client.get(f"/v1/generate?{query}"), client.post("/v1/generate", json=body)
    assert_same_answer(got, posted, query)


@pytest.mark.parametrize(
    "query, needle",
    [
        ("model=cd&count=x", "query.count: Input should be a valid integer (got 'x')"),
        ("model=cd&count=0", "query.count: Input should be greater than or equal to 1"),
        ("model=cd&colour=red", "query.colour: Extra inputs are not permitted"),
        ("count=2", "query.model: Field required"),
        ("model=cd&labels=1&count=2", "either `labels` or `class`"),
        ("model=cd&labels=", "query.labels: List should have at least 1 item"),
        ("model=cd&format=gif", "query.format"),
        ("model=cd&truncation=wide", "query.truncation"),
    ],
)
def test_bad_generate_queries(client, query, needle):
    r = client.get(f"/v1/generate?{query}")
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


def test_get_generate_is_documented_with_its_query_parameters(client):
    params = client.get("/openapi.json").json()["paths"]["/v1/generate"]["get"]["parameters"]
    by_name = {p["name"]: p for p in params}
    assert set(by_name) == {
        "model",
        "labels",
        "class",
        "count",
        "seed",
        "truncation",
        "format",
        "nrow",
    }
    assert by_name["model"]["required"] and by_name["model"]["in"] == "query"
    assert "same images" in by_name["seed"]["description"]


def test_batching_does_not_change_results(server):
    seeds = list(range(100, 116))

    async def fire():
        async with httpx.AsyncClient(base_url=server["url"], timeout=60) as c:
            rs = await asyncio.gather(
                *(
                    c.post(
                        "/v1/generate", json={"model": "cd", "count": 3, "seed": s, "format": "npy"}
                    )
                    for s in seeds
                )
            )
        return [np.load(io.BytesIO(r.content)) for r in rs]

    together = asyncio.run(fire())
    with httpx.Client(base_url=server["url"], timeout=60) as c:
        alone = [npy(c, model="cd", count=3, seed=s) for s in seeds]
    for x, y in zip(together, alone, strict=True):
        # Batch size can change float summation order in the convolutions: allow one uint8 step.
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1


def test_unconditional_ignores_labels_and_truncation(client):
    r = gen(client, model="dc", labels=["anything", 7], seed=3)
    assert r.status_code == 200 and len(r.json()["images"]) == 2 and r.json()["labels"] is None
    plain = npy(client, model="dc", count=2, seed=3)
    trunc = npy(client, model="dc", count=2, seed=3, truncation=0.5)
    assert not np.array_equal(plain, trunc)
    assert np.array_equal(trunc, npy(client, model="dc", count=2, seed=3, truncation=0.5))


def test_conditional_count_only_draws_classes_from_seed(client):
    a = gen(client, model="cd", count=8, seed=9).json()
    b = gen(client, model="cd", count=8, seed=9).json()
    assert a["labels"] == b["labels"] and all(0 <= i < 3 for i in a["labels"])


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "nope", "count": 1}, 404, "unknown model 'nope'"),
        ({"model": "cd", "labels": ["cat", "unicorn"]}, 422, "unknown class 'unicorn'"),
        ({"model": "cd", "labels": [3]}, 422, "out of range"),
        ({"model": "cd", "count": 0}, 422, "count"),
        ({"model": "cd", "count": MAX_IMAGES + 1}, 422, f"limit is {MAX_IMAGES}"),
        ({"model": "cd", "count": "3"}, 422, "count: Input should be a valid integer"),
        ({"model": "cd", "labels": [0], "count": 1}, 422, "either `labels` or `class`"),
        ({"model": "cd", "labels": []}, 422, "labels"),
        ({"model": "cd", "format": "gif"}, 422, "format"),
        ({"model": "cd", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
        ({"model": "cd", "seed": -1}, 422, "seed"),
        ({"model": "cd", "truncation": 0}, 422, "truncation"),
        ({"count": 1}, 422, "model: Field required"),
        ([1, 2], 422, "valid dictionary"),
    ],
)
def test_bad_generate_requests(client, body, status, needle):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_malformed_json_and_oversized_body(client):
    r = client.post(
        "/v1/generate", content=b'{"model": "cd",', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "malformed JSON" in r.json()["detail"]
    big = json.dumps({"model": "cd", "labels": ["cat"] * 200_000}).encode()
    r = client.post("/v1/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]


def _chunks(data: bytes, size: int = 65536):
    # A generator body: httpx sends it with Transfer-Encoding: chunked and no Content-Length.
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_chunked_bodies_are_held_to_the_upload_limit(client):
    big = json.dumps({"model": "cd", "labels": ["cat"] * 200_000}).encode()
    assert len(big) > UPLOAD_LIMIT
    json_type = {"content-type": "application/json"}
    r = client.post("/v1/generate", content=_chunks(big), headers=json_type)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == f"request body exceeds the limit of {UPLOAD_LIMIT} bytes"
    # The same for a multipart upload to /v1/score.
    boundary = "gfboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ncd\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    upload = head + b"\0" * (UPLOAD_LIMIT + 1) + f"\r\n--{boundary}--\r\n".encode()
    form_type = {"content-type": f"multipart/form-data; boundary={boundary}"}
    r = client.post("/v1/score", content=_chunks(upload), headers=form_type)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"], r.text
    # A chunked body under the limit is served as usual.
    small = json.dumps({"model": "cd", "labels": ["cat", "dog"], "seed": 3}).encode()
    r = client.post("/v1/generate", content=_chunks(small, 7), headers=json_type)
    assert r.status_code == 200 and r.json()["classes"] == ["cat", "dog"], r.text


def test_score_uploads(client):
    arr = npy(client, model="cd", labels=["dog"], seed=2)[0]
    files = [
        ("files", ("a.png", png_bytes(arr), "image/png")),
        ("files", ("b.jpg", png_bytes(arr, "JPEG"), "image/jpeg")),
    ]
    r = client.post("/v1/score", data={"model": "cd", "label": "dog"}, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["score_kind"] == "logit" and "not a calibrated" in body["caveat"]
    assert [s["label"] for s in body["scores"]] == [1, 1]
    assert [s["resized"] for s in body["scores"]] == [False, False]
    by_index = client.post("/v1/score", data={"model": "cd", "label": "1"}, files=files[:1])
    assert by_index.json()["scores"][0]["score"] == pytest.approx(body["scores"][0]["score"])
    # No label: every class is scored and the best one reported.
    grey = png_bytes(np.full((48, 40), 128, np.uint8))
    r = client.post("/v1/score", data={"model": "cd"}, files=[("files", ("g.png", grey))])
    s = r.json()["scores"][0]
    assert s["resized"] and set(s["class_scores"]) == set(CLASSES)
    assert s["score"] == max(s["class_scores"].values())
    r = client.post("/v1/score", data={"model": "dc"}, files=files[:1])
    assert r.status_code == 200 and r.json()["score_kind"] == "critic"


@pytest.mark.parametrize(
    ("data", "files", "status", "needle"),
    [
        ({"model": "cd"}, [("files", ("x.txt", b"not an image"))], 415, "not a readable PNG"),
        ({"model": "cd"}, [("files", ("x.gif", b"GIF89a" + b"\0" * 40))], 415, "x.gif"),
        ({"model": "zz"}, [("files", ("a.png", b"x"))], 404, "unknown model 'zz'"),
        ({"model": "cd", "label": "unicorn"}, "PNG", 422, "unknown class 'unicorn'"),
        ({"model": "cd"}, [], 422, "files: Field required"),
        ({"model": "cd"}, "MANY", 413, f"limit is {MAX_IMAGES}"),
    ],
)
def test_bad_score_requests(client, data, files, status, needle):
    png = png_bytes(np.zeros((32, 32, 3), np.uint8))
    if files == "PNG":
        files = [("files", ("a.png", png))]
    elif files == "MANY":
        files = [("files", (f"{i}.png", png)) for i in range(MAX_IMAGES + 1)]
    r = client.post("/v1/score", data=data, files=files or None)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_gif_upload_is_refused_by_format(client):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="GIF")
    r = client.post("/v1/score", data={"model": "cd"}, files=[("files", ("a.gif", buf.getvalue()))])
    assert r.status_code == 415 and "GIF images are not accepted" in r.json()["detail"]


def test_detect_uploads_get_the_detectors_calibrated_probability(client, detector):
    """/v1/detect answers what the detector file itself predicts on the decoded upload (with the
    record's temperature), for PNG and JPEG, as-is or converted to its shape."""
    from ganforge.models.detector import load_detector
    from ganforge.serve.codecs import decode_upload_uint8

    module, record = load_detector(detector)
    arr = npy(client, model="cd", labels=["dog"], seed=3)[0]
    grey = png_bytes(np.full((48, 40), 90, np.uint8))
    uploads = {"a.png": png_bytes(arr), "b.jpg": png_bytes(arr, "JPEG"), "g.png": grey}
    r = client.post("/v1/detect", files=[("files", (n, b)) for n, b in uploads.items()])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["trained_on"] == ["cd"] and "not proof that an image is real" in body["caveat"]
    assert [d["filename"] for d in body["detections"]] == list(uploads)
    assert [d["resized"] for d in body["detections"]] == [False, False, True]
    x = torch.stack([decode_upload_uint8(b, n, 32, 3)[0] for n, b in uploads.items()])
    logits = module.logits(x)
    assert record["temperature"] == 2.0  # calibrated: the logit over the temperature
    want = torch.sigmoid(logits / 2.0).tolist()
    got = [d["p_fake"] for d in body["detections"]]
    assert got == pytest.approx(want, abs=1e-5) and got != pytest.approx(
        torch.sigmoid(logits).tolist(), abs=1e-5
    )
    assert [d["verdict"] for d in body["detections"]] == [
        "fake" if p >= 0.5 else "real" for p in want
    ]


def test_models_lists_the_detector_without_its_paths(client):
    r = client.get("/v1/models")
    info = r.json()["detector"]
    assert info["trained_on"] == ["cd"] and info["image_size"] == 32 and info["channels"] == 3
    assert (
        info["calibration"]["method"] == "temperature" and info["calibration"]["temperature"] == 2
    )
    assert info["calibration"]["calibrated"]["ece"] == 0.05
    assert info["validation"]["all"]["auc"] == 0.91 and "cd" in info["validation"]["per_generator"]
    assert info["real_data"] == "cifar10 (split train)"
    assert "/secret" not in r.text and "fake_origins" not in r.text


@pytest.mark.parametrize(
    ("files", "status", "needle"),
    [
        ([("files", ("x.txt", b"not an image"))], 415, "not a readable PNG"),
        ([("files", ("x.gif", b"GIF89a" + b"\0" * 40))], 415, "GIF images are not accepted"),
        ([], 422, "files: Field required"),
        ("MANY", 413, f"limit is {MAX_IMAGES}"),
        ("HUGE", 413, "more than this model accepts"),
    ],
)
def test_bad_detect_requests(client, files, status, needle):
    png = png_bytes(np.zeros((32, 32, 3), np.uint8))
    if files == "MANY":
        files = [("files", (f"{i}.png", png)) for i in range(MAX_IMAGES + 1)]
    elif files == "HUGE":  # a few KB that declare 2000 x 2000 pixels
        files = [("files", ("big.png", png_bytes(np.zeros((2000, 2000), np.uint8))))]
    r = client.post("/v1/detect", files=files or None, data={} if files else {"x": "1"})
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_detect_without_a_detector_is_404(client):
    png = png_bytes(np.zeros((32, 32, 3), np.uint8))
    r = client.post("/tight/v1/detect", files=[("files", ("a.png", png))])
    assert r.status_code == 404 and "--detector" in r.json()["detail"]
    assert client.get("/tight/v1/models").json()["detector"] is None


# --- failures, overload, batching, metrics ------------------------------------------------


def test_a_failing_batch_costs_only_its_requests(server, client):
    async def fire():
        async with httpx.AsyncClient(base_url=server["url"], timeout=60) as c:
            bad = c.post("/v1/generate", json={"model": "dc", "count": 2, "seed": FAIL_SEED})
            good = [
                c.post("/v1/generate", json={"model": "cd", "count": 1, "seed": s})
                for s in range(4)
            ]
            return await asyncio.gather(bad, *good)

    # The poisoned batch of "dc" may share a forward-pass round with "cd" requests: only the
    # failing model's requests fail.
    bad, *good = asyncio.run(fire())
    assert bad.status_code == 500, bad.text
    # The exception's text stays in the replica's log (tests/test_serve_hostile.py).
    assert bad.json()["detail"] == "model 'dc' failed on this batch (see the server log)"
    assert [r.status_code for r in good] == [200] * 4
    # The replica keeps serving that model, and stays healthy: the models pass the probe.
    assert gen(client, model="dc", count=2, seed=1).status_code == 200
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text


def test_out_of_memory_gets_503_with_retry_after(client):
    r = gen(client, model="dc", count=3, seed=OOM_SEED)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"  # retry_after_s of the main app (default 1 s)
    assert "out of memory while generating 3 images" in r.json()["detail"]
    assert gen(client, model="dc", count=3, seed=2).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_overload_gets_fast_503_with_retry_after(server):
    async def fire(n: int):
        async def timed(c):
            t0 = time.perf_counter()
            r = await c.post("/tight/v1/generate", json=body)
            return r, time.perf_counter() - t0

        async with httpx.AsyncClient(base_url=server["url"], timeout=60) as c:
            body = {"model": "cd", "count": 32, "format": "npy"}
            return await asyncio.gather(*(timed(c) for _ in range(n)))

    out = asyncio.run(fire(30))
    codes = [r.status_code for r, _ in out]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 1, codes
    rejected = [(r, dt) for r, dt in out if r.status_code == 503]
    assert all(r.headers["retry-after"] == "2" for r, _ in rejected)
    # Fast: the proxy refuses at once instead of queueing (each accepted request runs 32
    # one-image forward passes one after the other).
    fastest_ok = min(dt for r, dt in out if r.status_code == 200)
    slowest_503 = max(dt for _, dt in rejected)
    assert slowest_503 < 1.0, (slowest_503, fastest_ok)
    # The replica survived the burst.
    assert httpx.get(server["url"] + "/tight/healthz").status_code == 200


def test_concurrent_requests_form_batches(server):
    """Only this test sends to "solo", one image per request: a forward pass of more than one
    image is a batch merged from concurrent requests."""
    n = 32

    async def fire():
        async with httpx.AsyncClient(base_url=server["url"], timeout=60) as c:
            body = {"model": "solo", "count": 1, "format": "npy"}
            return await asyncio.gather(*(c.post("/v1/generate", json=body) for _ in range(n)))

    assert [r.status_code for r in asyncio.run(fire())] == [200] * n
    key = {"model": "solo", "application": "main"}
    deadline, text = time.time() + 40, ""
    while time.time() < deadline:  # Ray exports with a delay of a few seconds
        text = httpx.get(server["metrics"]).text
        if _sample(text, "ray_ganforge_serve_images_generated_total", **key) >= n:
            break
        time.sleep(2)
    assert _sample(text, "ray_ganforge_serve_images_generated_total", **key) == n
    # Counts only: Ray exports a histogram's _sum approximately.
    passes = _sample(text, "ray_ganforge_serve_batch_size_count", **key)
    single = _sample(text, "ray_ganforge_serve_batch_size_bucket", le="1.0", **key)
    assert 1 <= passes < n, f"{n} one-image requests took {passes} forward passes"
    assert single < passes, f"every one of the {passes} forward passes had one image"


def _sample(text: str, name: str, **labels) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_metrics_exported_on_ray_port(server, client):
    key = {"model": "dc", "route": "/v1/generate", "application": "main"}
    before = _sample(
        httpx.get(server["metrics"]).text, "ray_ganforge_serve_requests_total", status="200", **key
    )
    for seed in range(5):
        assert gen(client, model="dc", count=2, seed=seed).status_code == 200
    assert gen(client, model="nope").status_code == 404
    deadline, text = time.time() + 40, ""
    while time.time() < deadline:  # Ray exports with a delay of a few seconds
        text = httpx.get(server["metrics"]).text
        if _sample(text, "ray_ganforge_serve_requests_total", status="200", **key) >= before + 5:
            break
        time.sleep(2)
    assert _sample(text, "ray_ganforge_serve_requests_total", status="200", **key) >= before + 5
    assert _sample(text, "ray_ganforge_serve_requests_total", model="unknown", status="404") >= 1
    assert _sample(text, "ray_ganforge_serve_images_generated_total", model="dc") >= 10
    assert _sample(text, "ray_ganforge_serve_batch_size_count", model="dc") >= 5
    assert _sample(text, "ray_ganforge_serve_inference_latency_ms_count", model="dc") >= 5
    assert _sample(text, "ray_ganforge_serve_request_latency_ms_count", route="/v1/generate") > 0
    assert _sample(text, "ray_ganforge_serve_model_load_seconds", model="cd") > 0
    # /v1/detect: its route in the request counters, its verdicts and its forward-pass latency.
    det = _sample(text, "ray_ganforge_serve_requests_total", route="/v1/detect", status="200")
    assert det >= 1, "run after the /v1/detect tests"
    verdicts = sum(
        _sample(text, "ray_ganforge_serve_detector_images_total", verdict=v)
        for v in ("fake", "real")
    )
    assert verdicts >= 3
    assert _sample(text, "ray_ganforge_serve_detector_latency_ms_count") >= det
    assert "ray_ganforge_serve_queue_depth" in text


def test_serve_dashboard_reads_what_the_app_exports(server, client):
    """Every metric of ganforge-serve.json (the app's and Serve proxy's own) is on Ray's
    metrics port once the app answered a request and an error."""
    queries = dashboard_queries(DASHBOARDS / "ganforge-serve.json")
    used = set().union(*queries.values())
    assert any(n.startswith("ray_ganforge_serve_") for n in used)
    assert gen(client, model="dc", seed=1).status_code == 200
    assert gen(client, model="nope").status_code == 404  # the proxy's error counter
    deadline, missing = time.time() + 40, used
    while missing and time.time() < deadline:  # Ray exports with a delay of a few seconds
        text = httpx.get(server["metrics"]).text
        exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        missing = used - exported
        time.sleep(0 if not missing else 2)
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"


# --- every variant, trained by ganforge train ---------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_serves_every_variant_trained_by_ganforge_train(server, tmp_path_factory):
    """Each registered variant trained for one step (`run_training`, what `ganforge train`
    runs) on the embedded demo data at width 8, in this module's Ray session; then all of
    them in one Serve app: generate from each and score an upload with each."""
    from ray import serve

    from ganforge.cluster.launch import run_training
    from ganforge.data import ensure_demo_shards
    from ganforge.data.resolve import demo_cache_dir
    from ganforge.models import VARIANTS
    from ganforge.serve.app import build_app
    from tests.train_helpers import tiny_config

    shards = ensure_demo_shards(demo_cache_dir())
    root = tmp_path_factory.mktemp("trained")
    # One step, one report: each ray.train.report costs about 2 s on CPU.
    one_step = {f"train.{k}": 1 for k in ("max_steps", "log_every", "checkpoint_every")}
    runs = {}
    for variant in sorted(VARIANTS):
        cfg = tiny_config(variant, shards, root / variant, **one_step, **{"train.sample_every": 1})
        runs[variant] = run_training(cfg, show_progress=False)
    assert len(runs) == len(VARIANTS) >= 7
    serve.run(
        build_app({"models": {v: str(r) for v, r in runs.items()}, "num_cpus": 0.5}),
        name="trained",
        route_prefix="/trained",
        blocking=False,
    )
    try:
        serve_helpers.wait_ready(server["url"] + "/trained/healthz")
        with httpx.Client(base_url=server["url"] + "/trained", timeout=60) as c:
            models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
            assert set(models) == set(VARIANTS)
            for variant, spec in VARIANTS.items():
                info = models[variant]
                assert (info["variant"], info["step"]) == (variant, 1)
                assert info["conditional"] == spec.conditional
                if spec.conditional:
                    assert "cat" in info["classes"]  # the CIFAR-10 demo subset's names
                    body = {"model": variant, "class": "cat", "count": 2, "seed": 4}
                else:
                    body = {"model": variant, "count": 2, "seed": 4}
                r = c.post("/v1/generate", json=body)
                assert r.status_code == 200, (variant, r.text)
                out = r.json()
                assert len(out["images"]) == 2
                assert out["classes"] == (["cat", "cat"] if spec.conditional else None)
                png = base64.b64decode(out["images"][0])
                r = c.post("/v1/score", data={"model": variant}, files=[("files", ("a.png", png))])
                assert r.status_code == 200, (variant, r.text)
                score = r.json()
                assert score["score_kind"] == ("critic" if "wgan" in variant else "logit")
                assert np.isfinite(score["scores"][0]["score"])
    finally:
        serve.delete("trained")


# --- web page in a real browser -----------------------------------------------------------


def _entries(page: Page, dl: str) -> dict[str, str]:
    """A <dl> of the page as {term: value}."""
    return page.js(
        f"Object.fromEntries([...document.querySelectorAll('#{dl} dt')]"
        ".map((dt) => [dt.textContent, dt.nextElementSibling.textContent]))"
    )


def _next_grid(page: Page, before: str | None) -> None:
    """Wait for the grid after generation `before` (the grid's data-generation)."""
    page.wait_for(f"({GRID}.dataset.generation || '0') !== '{before or '0'}'")


GRID = "document.getElementById('grid')"


@pytest.mark.slow
def test_the_page_as_a_user_drives_it_in_chromium(server, client, tmp_path):
    """Headless Chromium driven through the DevTools protocol with clicks and keys, as a user
    drives the page: the first grid and model card, every setting changed by keyboard only, the
    download, an upload to /v1/score, another model. The grid shown is the API's own answer."""
    page = Page(tmp_path / "profile")
    try:
        page.goto(server["url"] + "/")
        page.wait_for(f"{GRID}.dataset.loaded === 'yes'")
        # Accessibility basics: every visible control is labelled; the grid says what it shows.
        unlabelled = page.js(
            "[...document.querySelectorAll('input, select, button')].filter((e) =>"
            " !e.closest('[hidden]') && !(e.labels && e.labels.length) &&"
            " !(e.tagName === 'BUTTON' && e.textContent.trim())).map((e) => e.id || e.outerHTML)"
        )
        assert unlabelled == []
        assert page.js(f"{GRID}.alt").startswith("Generated by cd (cdcgan): all classes")
        # First view: every class of the first model, one row each, 4 per row (32 px + 2 pad).
        assert page.js(f"[{GRID}.naturalWidth, {GRID}.naturalHeight]") == [138, 104]
        card = _entries(page, "card")
        progress = (card["Variant"], card["Training step"], card["Images seen"])
        assert progress == ("cdcgan", "10", "640")
        assert card["Classes"] == "3: cat, dog, frog"
        assert _entries(page, "quality")["FID (lower is better)"] == "41.5"

        # Keyboard only: class by typing its initial, then Tab through grid size, seed, truncation.
        page.click("label[for=class]")
        assert page.focused() == "class"
        page.press("d")  # the menu's type-ahead: "dog"
        assert page.js("document.getElementById('class').value") == "1"
        page.press("Tab")
        assert page.focused() == "grid-size"
        page.press("2")  # "2 × 2"
        page.press("Tab")
        assert page.focused() == "seed"
        page.type("123")
        page.press("Tab")
        assert page.focused() == "new-seed"
        page.press("Tab")
        assert page.focused() == "truncation"
        page.type("0.8")
        before = page.js(f"{GRID}.dataset.generation")
        page.press("Enter")
        _next_grid(page, before)
        assert page.js("document.getElementById('status').textContent").startswith("seed 123 ")
        search = page.js("location.search")
        assert search == "?model=cd&class=1&grid=2&seed=123&truncation=0.8", search
        shown = page.js(
            f"fetch({GRID}.src).then((r) => r.arrayBuffer()).then((b) =>"
            " btoa(String.fromCharCode(...new Uint8Array(b))))"
        )
        query = {"model": "cd", "class": 1, "count": 4, "nrow": 2, "seed": 123}
        api = client.get("/v1/generate", params={**query, "truncation": 0.8, "format": "grid"})
        assert api.status_code == 200, api.text
        a = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown))), dtype=np.int16)
        b = np.asarray(Image.open(io.BytesIO(api.content)), dtype=np.int16)
        assert a.shape == b.shape == (70, 70, 3) and np.abs(a - b).max() <= 1

        # Download: the link saves the grid as a PNG file.
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        page.allow_downloads(downloads)
        page.click("#download")
        saved = downloads / "ganforge-cd-dog-seed123.png"
        deadline = time.time() + 30
        while not saved.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert Image.open(saved).size == (70, 70), sorted(p.name for p in downloads.iterdir())

        # Upload to /v1/score: the table shows the critic's answer for the file.
        upload = tmp_path / "upload.png"
        upload.write_bytes(base64.b64decode(gen(client, model="cd", seed=5).json()["images"][0]))
        # The app serves a detector: the page offers it next to the critic (critic by default).
        assert not page.js("document.getElementById('check-kind').hidden")
        page.choose_files("#files", [upload])
        page.click("#check")
        page.wait_for("!document.getElementById('check-results').hidden")
        rows = page.js(
            "[...document.querySelectorAll('#check-body tr')]"
            ".map((tr) => [...tr.cells].map((td) => td.textContent))"
        )
        with open(upload, "rb") as f:
            scored = client.post(
                "/v1/score", data={"model": "cd"}, files=[("files", ("upload.png", f))]
            ).json()["scores"][0]
        assert rows == [["upload.png", f"{scored['score']:.3f}", CLASSES[scored["label"]], "no"]]
        assert "logit" in page.js("document.getElementById('check-caption').textContent")
        # The same file through the deepfake detector: its calibrated P(fake), as the API says.
        page.click("input[name=kind][value=detect]")
        page.js("document.getElementById('check-results').hidden = true")
        page.click("#check")
        page.wait_for("!document.getElementById('check-results').hidden")
        with open(upload, "rb") as f:
            found = client.post("/v1/detect", files=[("files", ("upload.png", f))]).json()
        det = found["detections"][0]
        assert page.js(
            "[...document.querySelectorAll('#check-head th')].map((th) => th.textContent)"
        ) == ["filename", "p_fake", "verdict", "resized"]
        cells = page.js(
            "[...document.querySelectorAll('#check-body td')].map((td) => td.textContent)"
        )
        assert cells[0] == "upload.png" and cells[2:] == [det["verdict"], "false"]
        assert float(cells[1]) == pytest.approx(det["p_fake"], rel=1e-3)
        assert "not proof" in page.js("document.getElementById('check-caveat').textContent")
        page.click("input[name=kind][value=score]")

        # A bad seed is an error line, not a request.
        page.click("label[for=seed]")
        page.js("document.getElementById('seed').select()")
        page.type("x1")
        page.press("Enter")
        page.wait_for("document.getElementById('status').className === 'error'")
        assert "whole number" in page.js("document.getElementById('status').textContent")

        # Another model, by keyboard: the grid, the card and the class menu follow it.
        page.js("document.getElementById('seed').value = ''")
        before = page.js(f"{GRID}.dataset.generation")
        page.click("label[for=model]")
        page.press("d")  # "dc (wgan-gp)"
        _next_grid(page, before)
        assert page.js(f"{GRID}.alt").startswith("Generated by dc (wgan-gp)")
        card = _entries(page, "card")
        assert (card["Variant"], card["Classes"]) == ("wgan-gp", "unconditional")
        assert _entries(page, "quality")["FID (lower is better)"] == "77"
        assert page.js("document.getElementById('class').disabled")
    finally:
        page.close()

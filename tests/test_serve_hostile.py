"""Every input is hostile: the HTTP boundary of `ganforge serve` under bad, huge, odd and
unauthenticated requests, each test sending the bad input itself.

In process (no Ray): the upload decoder (`serve.codecs.decode_upload`), and the real replica's
HTTP app through an ASGI client (`serve_helpers.InProcessApp`) for label parsing, numeric class
names, leaks, authentication and the property-based tests of the request schema (hypothesis).
Over real HTTP (one Ray session and Serve instance for the module, loopback only): uploads under
load, leaks from a model served from a temporary path and from an internal error, and
authentication end to end with its Prometheus count.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import serve_helpers  # noqa: E402
from serve_helpers import (  # noqa: E402
    FAIL_SEED,
    OOM_SEED,
    InProcessApp,
    chromium_dom,
    free_port,
    make_checkpoint,
    poison_generators,
)

from ganforge.data.codec import encode_image  # noqa: E402
from ganforge.serve import codecs  # noqa: E402
from ganforge.serve.auth import TOKEN_ENV, UNAUTHORIZED, read_api_token  # noqa: E402
from ganforge.serve.model_pool import public_quality  # noqa: E402
from ganforge.serve.schemas import ApiError, label_from_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NUMERIC_CLASSES = ["1", "10", "2"]  # names that read as indices
TOKEN = "s3cr3t-Token_0123456789"
RES = 32  # every test model's resolution
CAP_SIDE = 16 * RES  # uploads up to (16 x resolution)^2 pixels


def image_bytes(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    """An RGB PNG that does not compress: the largest file for its pixel count."""
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return image_bytes(Image.fromarray(arr), compress_level=1)


def pattern_png(width: int, height: int) -> bytes:
    """An RGB PNG with every pixel to decode, in a few KB (a diagonal gradient)."""
    y, x = np.indices((height, width))
    arr = np.stack([(x + y) % 256, (x * 2) % 256, (y * 3) % 256], -1).astype(np.uint8)
    return image_bytes(Image.fromarray(arr))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds almost none (a few dozen bytes
    of pixel data: decoding would fail, or need width*height*3 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    chunks = (
        codecs._chunk(b"IHDR", ihdr),
        codecs._chunk(b"IDAT", idat),
        codecs._chunk(b"IEND", b""),
    )
    return codecs.PNG_SIGNATURE + b"".join(chunks)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    data = bytearray(image_bytes(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def decode(data: bytes, channels: int = 3, resolution: int = RES):
    return codecs.decode_upload(data, "u.png", resolution, channels)


def refusal(data: bytes, channels: int = 3, resolution: int = RES) -> ApiError:
    with pytest.raises(ApiError) as e:
        decode(data, channels, resolution)
    return e.value


# --- uploads: formats, pixel cap, colour modes (serve.codecs, no HTTP) ---------------------


def test_the_pixel_cap_follows_the_model_size():
    assert codecs.upload_pixel_cap(32) == 512 * 512
    assert codecs.upload_pixel_cap(64) == 1024 * 1024
    assert codecs.upload_pixel_cap(256) == codecs.upload_pixel_cap(1024) == 4096 * 4096


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM", "TGA"])
def test_only_the_png_and_jpeg_decoders_ever_run(fmt, monkeypatch):
    """A file in another format is refused with a 415 before any decoder of its format runs
    (each decoder is a parser of its own, with its own bugs)."""
    from PIL import features

    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow has no WEBP support to write the file")
    data = image_bytes(Image.new("RGB", (16, 16), (200, 10, 10)), fmt)
    Image.init()

    def trap(*args, **kwargs):
        raise AssertionError(f"the {fmt} decoder ran on an upload")

    for other in set(Image.OPEN) - set(codecs.UPLOAD_FORMATS):
        monkeypatch.setitem(Image.OPEN, other, (trap, Image.OPEN[other][1]))
    err = refusal(data)
    assert err.status == 415
    known = fmt in ("GIF", "BMP", "TIFF", "WEBP", "ICO")
    expected = f"{fmt} images are not accepted" if known else "not a readable PNG or JPEG image"
    assert expected in err.message


@pytest.mark.parametrize(
    "data",
    [png_header_only(100_000, 100_000), png_header_only(CAP_SIDE, CAP_SIDE + 1)],
    ids=["10-gigapixel-png", "one-row-over-the-cap-png"],
)
def test_a_png_over_the_pixel_cap_is_refused_from_its_header(data):
    t0 = time.perf_counter()
    err = refusal(data)
    assert time.perf_counter() - t0 < 0.1  # nothing was inflated
    assert err.status == 413
    assert f"at most {CAP_SIDE * CAP_SIDE} pixels (e.g. {CAP_SIDE}x{CAP_SIDE})" in err.message


def test_a_jpeg_over_the_pixel_cap_is_refused_from_its_header():
    err = refusal(jpeg_declaring(6000, 6000))
    assert err.status == 413
    assert "6000x6000 pixels is more than this model accepts" in err.message


def test_an_upload_at_the_pixel_cap_is_scored_and_the_cap_grows_with_the_model():
    x, resized = decode(noise_png(CAP_SIDE, CAP_SIDE))
    assert resized and x.shape == (3, RES, RES)
    big = noise_png(2 * CAP_SIDE, CAP_SIDE // 2)  # as many pixels, another shape
    assert decode(big)[0].shape == (3, RES, RES)
    over = png_header_only(CAP_SIDE * 2, CAP_SIDE * 2)
    assert refusal(over).status == 413
    assert refusal(over, resolution=64).status == 415  # under a 64-px model's cap: decoded


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n",  # the signature alone
        b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
        noise_png(40, 40)[:200],  # truncated inside the pixel data
        image_bytes(Image.new("RGB", (40, 40)), "JPEG")[:150],
        png_header_only(64, 64),  # declares pixels it does not hold
    ],
    ids=["empty", "signature", "garbage-after-signature", "cut-png", "cut-jpeg", "hollow-png"],
)
def test_corrupt_uploads_are_415_without_pillows_words(data):
    err = refusal(data)
    assert err.status == 415
    assert err.message == "u.png: not a readable PNG or JPEG image"


def _pack_pixels(data: bytes, channels: int) -> np.ndarray:
    """What `ganforge data pack` stores for the file (raw pixels, no resize)."""
    encoded = encode_image(data, RES, channels, "raw", resize=False)
    return np.load(io.BytesIO(encoded.data))


def _uploads_in_every_mode() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    grey16 = rng.integers(0, 65536, (RES, RES), dtype=np.uint16)
    rgb = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (RES, RES, 4), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(16)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    return {
        "I;16": image_bytes(Image.fromarray(grey16)),
        "1": image_bytes(Image.fromarray(rgb[..., 0] > 127)),
        "L": image_bytes(Image.fromarray(rgb[..., 0])),
        "LA": image_bytes(Image.fromarray(rgba[..., :2].copy())),
        "P": image_bytes(palette),
        "P+transparency": image_bytes(transparent),
        "RGB": image_bytes(Image.fromarray(rgb)),
        "RGBA": image_bytes(Image.fromarray(rgba)),
        "JPEG L": image_bytes(Image.fromarray(rgb[..., 1]), "JPEG"),
        "JPEG CMYK": image_bytes(Image.fromarray(rgba).convert("CMYK"), "JPEG"),
    }


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", list(_uploads_in_every_mode()))
def test_uploads_convert_exactly_as_pack_converts_training_images(mode, channels):
    """One conversion (`ganforge.data.codec.to_mode`) for training data and uploads: a model
    is scored on pixels made the way its training pixels were."""
    data = _uploads_in_every_mode()[mode]
    x, _ = decode(data, channels)
    got = ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(got, _pack_pixels(data, channels)), mode


def test_a_16_bit_upload_is_scaled_not_clipped():
    grey = np.full((RES, RES), 32768, np.uint16)  # mid-grey in 16 bits
    data = image_bytes(Image.fromarray(grey))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    x, resized = decode(data)
    assert resized  # 16-bit grey -> 8-bit RGB
    assert float(x.mean()) == pytest.approx(128 / 127.5 - 1, abs=1e-6)  # not 255, as a clip gives


# --- labels and numbers in text: ASCII digits only ------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("1", 1),
        ("-1", -1),
        ("007", 7),
        ("²", "²"),  # "²".isdigit() is true, int("²") raises
        ("١٢", "١٢"),  # Arabic-Indic digits: int() reads them, a class name here
        ("1_0", "1_0"),
        (" 1", " 1"),
        ("", ""),
        ("-", "-"),
        ("9" * 5000, "9" * 5000),  # beyond int()'s digit limit: a name, not an error
    ],
)
def test_label_text_is_an_index_only_in_ascii_digits(text, value):
    assert label_from_text(text) == value


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two models under a temporary path: `num`, conditional with classes named "1", "10",
    "2", and an evaluated run dir; `dc`, unconditional, served from its weights.pt."""
    root = tmp_path_factory.mktemp("hostile-runs")
    num = root / "num"
    make_checkpoint(num, "cdcgan", classes=NUMERIC_CLASSES)
    (num / "quality").mkdir()
    report = {
        "fid": 12.5,
        "settings": {"inception_weights": str(root / "weights" / "pt_inception.pth")},
        "data": "s3://private-bucket/datasets/numbers",
    }
    (num / "quality" / "metrics.json").write_text(json.dumps(report))
    dc = make_checkpoint(root / "dc", "wgan-gp")
    return {"root": root, "num": num, "dc": dc / "weights.pt"}


@pytest.fixture(scope="module")
def inproc(runs):
    app = InProcessApp({"models": {"num": str(runs["num"]), "dc": str(runs["dc"])}})
    yield app
    app.close()


def score(app, data: dict, files=None):
    png = image_bytes(Image.new("RGB", (RES, RES)))
    return app.request("POST", "/v1/score", data=data, files=files or [("files", ("a.png", png))])


@pytest.mark.parametrize("label", ["²", "١", "٣", "1_0", "¹⁰", "-²"])
def test_non_ascii_digit_labels_are_a_422_in_every_route(inproc, label):
    r = score(inproc, {"model": "num", "label": label})
    assert r.status_code == 422 and f"unknown class {label!r}" in r.json()["detail"], r.text
    for query in (f"class={quote(label)}", f"labels={quote(label)}"):
        r = inproc.request("GET", f"/v1/generate?model=num&{query}")
        assert r.status_code == 422 and f"unknown class {label!r}" in r.json()["detail"], r.text
    r = inproc.request("POST", "/v1/generate", json={"model": "num", "class": label})
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("field", ["count", "seed", "nrow", "truncation"])
@pytest.mark.parametrize("value", ["²", "١٢", "1_0", " 3", "٣.٥", "1e999999"])
def test_non_ascii_numbers_in_a_query_are_a_422(inproc, field, value):
    r = inproc.request("GET", f"/v1/generate?model=dc&{field}={quote(value)}")
    assert r.status_code == 422, r.text
    assert f"query.{field}" in r.json()["detail"]


def test_uploads_are_decoded_off_the_event_loop(inproc, monkeypatch):
    threads = []
    decode_upload = codecs.decode_upload

    def watched(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            threads.append("event loop")
        except RuntimeError:  # no loop runs in this thread: a worker thread
            threads.append("worker")
        return decode_upload(*args, **kwargs)

    monkeypatch.setattr(codecs, "decode_upload", watched)
    files = [("files", (f"{i}.png", pattern_png(CAP_SIDE, CAP_SIDE))) for i in range(3)]
    r = inproc.request("POST", "/v1/score", data={"model": "num"}, files=files)
    assert r.status_code == 200, r.text
    assert threads == ["worker"] * 3


def test_a_label_in_ascii_digits_scores_the_class_of_that_index(inproc):
    by_index = score(inproc, {"model": "num", "label": "1"}).json()["scores"][0]
    assert by_index["label"] == 1  # index 1: the class named "10"


# --- class names in digits ------------------------------------------------------------------


def classes_of(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return r.json()["classes"]


def test_a_class_is_an_index_in_digits_and_a_name_only_in_a_json_string(inproc):
    def post(body: dict) -> httpx.Response:
        return inproc.request("POST", "/v1/generate", json={"model": "num", **body})

    def get(query: str) -> httpx.Response:
        return inproc.request("GET", f"/v1/generate?model=num&{query}")

    for index, name in enumerate(NUMERIC_CLASSES):
        assert classes_of(post({"class": index, "count": 2})) == [name, name]
        assert classes_of(get(f"class={index}&count=2")) == [name, name]
    assert classes_of(post({"class": "1"})) == ["1"]  # a JSON string is a name
    assert classes_of(post({"labels": ["10", 0, "2"]})) == ["10", "1", "2"]
    assert classes_of(get("labels=2,0,1")) == ["2", "1", "10"]  # query digits are indices


def _page_functions(script: str, model: dict) -> list:
    """Runs the web page's own script in node: each class menu entry and the GET query the page
    sends when it is picked (node has no `document`, so the page does not start)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node binary on this machine to run the page's script")
    html = (ROOT / "serve" / "static" / "index.html").read_text()
    page_js = html.split("<script>", 1)[1].split("</script>", 1)[0]
    out = subprocess.run(
        [node, "-e", page_js + "\n" + script, json.dumps(model)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def test_the_page_asks_for_the_class_the_user_picked(inproc):
    """With classes named "1", "10", "2", the page used to send `class=1` for "1", which the
    server reads as index 1 ("10"). It now sends indices; each menu entry's query gives that
    class."""
    menu = _page_functions(
        """
        const m = JSON.parse(process.argv[1]);
        const entries = classOptions(m).filter(([, value]) => value !== "" && value !== "all")
          .map(([label, value]) => [label, generateQuery(m, value, "3", "7", "")]);
        console.log(JSON.stringify(entries));
        """,
        {"name": "num", "conditional": True, "classes": NUMERIC_CLASSES},
    )
    assert [name for name, _ in menu] == NUMERIC_CLASSES
    for name, query in menu:
        r = inproc.request("GET", f"/v1/generate?{query}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        picked = [NUMERIC_CLASSES[int(i)] for i in r.headers["x-ganforge-labels"].split(",")]
        assert picked == [name] * 9, query  # a 3 x 3 grid of the picked class


# --- nothing from inside the server in a response -------------------------------------------


class FailingReplica:
    """Handlers that fail the way bugs do, with paths and internals in the exception text."""

    secret = "/srv/ganforge/private/runs/x/weights.pt"

    def check_health(self) -> None:
        raise RuntimeError(f"model 'm' cannot run a 1-image forward pass: {self.secret}")

    def model_names(self) -> list[str]:
        return ["m"]

    def models(self):
        raise KeyError(self.secret)

    async def generate_response(self, body, state):
        raise RuntimeError(f"cannot open {self.secret}")

    async def score(self, model, files, label, state):
        raise OSError(2, "No such file or directory", self.secret)


def test_internal_errors_say_nothing_of_the_inside(caplog):
    from ganforge.serve.routes import build_http_app

    app = build_http_app(FailingReplica(), max_body_bytes=1 << 20, retry_after_s=1)
    png = image_bytes(Image.new("RGB", (8, 8)))
    answers = asyncio.run(_requests(app, [
        ("GET", "/healthz", {}),
        ("GET", "/v1/models", {}),
        ("GET", "/v1/generate?model=m", {}),
        ("POST", "/v1/generate", {"json": {"model": "m"}}),
        ("POST", "/v1/score", {"data": {"model": "m"}, "files": [("files", ("a.png", png))]}),
    ]))  # fmt: skip
    assert [r.status_code for r in answers] == [503, 500, 500, 500, 500]
    for r in answers:
        assert FailingReplica.secret not in r.text and "Error" not in r.text, r.text
        assert r.json()["detail"].endswith("(see the server log)")
    assert FailingReplica.secret in caplog.text  # ... but the log has it


async def _requests(app, requests: list[tuple[str, str, dict]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return [await client.request(method, url, **kw) for method, url, kw in requests]


def test_quality_reports_lose_their_paths():
    report = {
        "fid": 3.0,
        "settings": {"classifier": "/home/u/clf.pt", "seed": 0, "split": "train"},
        "runs": [{"dir": "gs://bucket/a/run-7/"}, {"dir": "C:\\data\\run-8"}],
    }
    assert public_quality(report) == {
        "fid": 3.0,
        "settings": {"classifier": "clf.pt", "seed": 0, "split": "train"},
        "runs": [{"dir": "run-7"}, {"dir": "run-8"}],
    }
    assert public_quality(None) is None


def test_models_listing_names_no_path(inproc, runs):
    text = inproc.request("GET", "/v1/models").text
    assert str(runs["root"]) not in text and "private-bucket" not in text
    models = {m["name"]: m for m in json.loads(text)["models"]}
    assert models["num"]["checkpoint"] == models["dc"]["checkpoint"] == "step-000010"
    assert models["num"]["quality"]["settings"] == {"inception_weights": "pt_inception.pth"}


# --- authentication ------------------------------------------------------------------------


def test_the_token_comes_from_the_file_then_the_environment(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    env = {TOKEN_ENV: "from-env"}
    assert read_api_token(str(token_file), env) == TOKEN  # whitespace stripped; file first
    assert read_api_token(None, env) == "from-env"
    assert read_api_token(None, {}) is None  # no authentication
    empty = tmp_path / "empty"
    empty.write_text(" \n\t")
    with pytest.raises(ValueError, match="is empty"):
        read_api_token(str(empty), {})
    with pytest.raises(ValueError, match=f"{TOKEN_ENV} is empty"):
        read_api_token(None, {TOKEN_ENV: " "})
    with pytest.raises(ValueError, match="missing"):
        read_api_token(str(tmp_path / "missing"), {})
    spaced = tmp_path / "spaced"
    spaced.write_text("two words")
    with pytest.raises(ValueError, match="printable ASCII without spaces") as e:
        read_api_token(str(spaced), {})
    assert "two words" not in str(e.value)  # a message never shows the token


def test_build_app_and_the_cli_refuse_an_empty_token_file_before_starting(tmp_path, runs):
    from typer.testing import CliRunner

    from ganforge.cli import app
    from ganforge.serve.app import build_app

    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        build_app({"models": {"num": str(runs["num"])}, "api_token_file": str(empty)})
    cmd = ["serve", "--model", f"num={runs['num']}", "--api-token-file", str(empty)]
    r = CliRunner().invoke(app, cmd)
    assert r.exit_code == 2 and "is empty" in r.output, r.output


@pytest.fixture(scope="module")
def secured(runs, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")
    app = InProcessApp({"models": {"num": str(runs["num"])}, "api_token_file": str(token_file)})
    yield app
    app.close()


PNG_8 = image_bytes(Image.new("RGB", (8, 8)))
# Every kind of route: the fast path (GET and JSON POST), FastAPI's generate route (a +json
# body), the other API routes, an unknown path, and a /metrics the app does not serve.
GUARDED = [
    ("GET", "/v1/generate?model=num&seed=1", {}),
    ("POST", "/v1/generate", {"json": {"model": "num", "seed": 1}}),
    (
        "POST",
        "/v1/generate",
        {"content": b'{"model": "num"}', "headers": {"content-type": "application/x.t+json"}},
    ),
    ("GET", "/v1/models", {}),
    ("POST", "/v1/score", {"data": {"model": "num"}, "files": [("files", ("a.png", PNG_8))]}),
    ("GET", "/nowhere", {}),
    ("GET", "/metrics", {}),
]
BAD_CREDENTIALS = {
    "none": {},
    "wrong token": {"authorization": "Bearer wrong"},
    "token prefix": {"authorization": f"Bearer {TOKEN[:-1]}"},
    "token plus one": {"authorization": f"Bearer {TOKEN}x"},
    "other scheme": {"authorization": f"Basic {TOKEN}"},
    "no scheme": {"authorization": TOKEN},
    "scheme only": {"authorization": "Bearer"},
    "empty": {"authorization": ""},
}


def _with_headers(kwargs: dict, headers: dict) -> dict:
    return {**kwargs, "headers": {**kwargs.get("headers", {}), **headers}}


def test_every_route_but_the_open_ones_needs_the_token(secured, monkeypatch):
    from ganforge.serve.metrics import get_metrics

    counted = []
    requests = get_metrics().requests
    monkeypatch.setattr(requests, "inc", lambda value=1.0, tags=None: counted.append(tags))
    for method, url, kwargs in GUARDED:
        for why, headers in BAD_CREDENTIALS.items():
            r = secured.request(method, url, **_with_headers(kwargs, headers))
            assert r.status_code == 401, (url, why, r.text)
            assert r.json() == {"detail": UNAUTHORIZED}  # the same, whatever was wrong
            assert r.headers["www-authenticate"] == "Bearer"
        right = {"authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
        r = secured.request(method, url, **_with_headers(kwargs, right))
        assert r.status_code == (404 if url in ("/nowhere", "/metrics") else 200), (url, r.text)
    unauthorized = [t for t in counted if t["status"] == "401"]
    assert len(unauthorized) == len(GUARDED) * len(BAD_CREDENTIALS)  # counted like any status
    assert {t["route"] for t in unauthorized} == {
        "/v1/generate",
        "/v1/models",
        "/v1/score",
        "other",
    }


def test_health_the_page_and_the_docs_are_open(secured):
    assert secured.request("GET", "/healthz").json()["status"] == "ok"
    page = secured.request("GET", "/")
    assert page.status_code == 200 and "Authorization" in page.text  # the page sends it
    assert secured.request("GET", "/docs").status_code == 200
    schema = secured.request("GET", "/openapi.json").json()
    # Declared, so that /docs has an "Authorize" button: every route but the open ones.
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schema["security"] == [{"bearer": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []


def test_the_token_can_come_from_the_environment(runs, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    app = InProcessApp({"models": {"num": str(runs["num"])}})
    try:
        assert app.request("GET", "/v1/models").status_code == 401
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert app.request("GET", "/v1/models", headers=auth).status_code == 200
    finally:
        app.close()


# --- property-based: the request schema never makes a 5xx -----------------------------------

KEYS = ["model", "labels", "class", "count", "seed", "truncation", "format", "nrow"]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-3, max_value=70)
    | st.floats()  # NaN and infinities too: json.dumps writes them, json.loads reads them
    | st.text(max_size=12)
    | st.sampled_from(["num", "dc", "png", "grid", "npy", "1", "10", "²", "-1"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
plausible_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["num", "dc", "nope", ""])},
    optional={
        "labels": st.lists(
            st.integers(-2, 4) | st.sampled_from(NUMERIC_CLASSES + ["x", "²"]), max_size=5
        ),
        "class": st.integers(-2, 4) | st.sampled_from(NUMERIC_CLASSES + ["²"]),
        "count": st.integers(-1, 70),
        "seed": st.integers(-1, 2**64),
        "truncation": st.floats(min_value=0, max_value=11) | st.just(float("nan")),
        "format": st.sampled_from(["png", "grid", "npy", "gif"]),
        "nrow": st.integers(-1, 70),
    },
)
any_bodies = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=6)
bodies = plausible_bodies | any_bodies | json_values


def assert_no_server_error(r: httpx.Response, sent) -> None:
    assert r.status_code < 500, (sent, r.status_code, r.text[:500])
    assert "Traceback" not in r.text, (sent, r.text[:500])


FAST = settings(
    max_examples=150,
    deadline=2000,  # ms per example; a 64-image request is the slowest
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(FAST, max_examples=100)  # two requests each, some of 64 images
@given(body=bodies)
def test_any_json_body_is_answered_without_a_server_error(inproc, body):
    data = json.dumps(body).encode()  # allow_nan: NaN and Infinity literals included
    for content_type in ("application/json", "application/x.t+json"):  # fast path, FastAPI
        r = inproc.request(
            "POST", "/v1/generate", content=data, headers={"content-type": content_type}
        )
        assert_no_server_error(r, body)


@FAST
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_a_json_body_are_answered_without_a_server_error(inproc, data):
    r = inproc.request(
        "POST", "/v1/generate", content=data, headers={"content-type": "application/json"}
    )
    assert_no_server_error(r, data)


# Any character a URL can carry (percent-encoded as UTF-8): not lone surrogates.
chars = st.characters(exclude_categories=("Cs",))
query_values = (
    st.text(chars, max_size=10)
    | st.integers(-(2**70), 2**70).map(str)
    | st.floats().map(str)
    | st.sampled_from(["num", "dc", "1", "10", "²", "١٢", "1,²,10", ",", "grid", "npy"])
)
plausible_queries = st.lists(
    st.tuples(st.sampled_from(KEYS) | st.text(chars, max_size=6), query_values), max_size=8
).map(lambda items: urlencode([("model", "num"), *items]))


def _as_sent(text: str) -> str:
    """A query as a client can send it: printable ASCII as is (broken percent-escapes such as
    "%zz" or "%C3" included), any other character percent-encoded."""
    return "".join(
        c if c.isascii() and c.isprintable() and c not in " #" else quote(c, safe="") for c in text
    )


# Broken percent-escapes, bare '&' and '=', '+', any character.
raw_queries = st.text(st.sampled_from("%&=,+;?/aZ0²") | chars, max_size=40).map(_as_sent)


@FAST
@given(query=plausible_queries | raw_queries)
def test_any_query_is_answered_without_a_server_error(inproc, query):
    r = inproc.request("GET", "/v1/generate?" + query)
    assert_no_server_error(r, query)


# --- over real HTTP: a Ray session for the module -------------------------------------------


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    """The `main` app (`num`, `dc`) at `/` and the same `num` at `/secure` behind a token;
    inference fails on chosen seeds (serve_helpers.poison_generators)."""
    import ray
    from ray import cloudpickle, serve

    from ganforge.serve.app import build_app

    token_file = tmp_path_factory.mktemp("serve-secret") / "token"
    token_file.write_text(f"\n{TOKEN}\n")
    metrics_port, http_port = free_port(), free_port()
    cloudpickle.register_pickle_by_value(serve_helpers)  # the workers cannot import it by name
    ray.init(
        address="local",  # a cluster of its own, even when another one runs on this machine
        num_cpus=2,
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        runtime_env={"worker_process_setup_hook": poison_generators},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        models = {"num": str(runs["num"]), "dc": str(runs["dc"])}
        serve.run(build_app({"models": models, "num_cpus": 1}), name="main", route_prefix="/")
        secure = {"models": {"num": models["num"]}, "num_cpus": 0.5}
        serve.run(
            build_app({**secure, "api_token_file": str(token_file)}),
            name="secure",
            route_prefix="/secure",
        )
        url = f"http://127.0.0.1:{http_port}"
        for path in ("/healthz", "/secure/healthz"):
            serve_helpers.wait_ready(url + path)
        yield {
            "url": url,
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def upload_under_load(url: str, clients: int = 3, rounds: int = 6, files: int = 12):
    """`clients` upload to /v1/score in a loop, `rounds` requests each of `files` images:
    alternately images at the pixel cap of the 32-px model `num` (decoded and scored) and 4096 x
    4096 ones (what the former 16-Mpixel cap let through; refused from their header). A prober
    meanwhile asks for /healthz and a one-image /v1/generate of `dc`, one after the other.
    -> ({(kind, status), ...} of the uploads, the probes' latencies in seconds)."""
    kinds = {
        "cap": pattern_png(CAP_SIDE, CAP_SIDE),  # ~2 KB each, 0.26 Mpixel
        "16mpx": image_bytes(Image.new("RGB", (4096, 4096)), compress_level=9),  # ~50 KB
    }
    statuses: set[tuple[str, int]] = set()
    latencies: list[float] = []

    async def uploader(c: httpx.AsyncClient, i: int) -> None:
        for k in range(rounds):
            kind = "cap" if (i + k) % 2 else "16mpx"
            upload = [("files", (f"{kind}-{j}.png", kinds[kind])) for j in range(files)]
            r = await c.post("/v1/score", data={"model": "num"}, files=upload)
            statuses.add((kind, r.status_code))

    async def prober(c: httpx.AsyncClient, done: asyncio.Event) -> None:
        seed = 0
        while not done.is_set():
            for path in ("/healthz", f"/v1/generate?model=dc&seed={seed}&format=npy"):
                t0 = time.perf_counter()
                r = await c.get(path)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            seed += 1
            await asyncio.sleep(0.02)

    async def run() -> None:
        limits = httpx.Limits(max_connections=clients + 2)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            assert (await c.get("/healthz")).status_code == 200
            done = asyncio.Event()
            probe = asyncio.create_task(prober(c, done))
            uploads = asyncio.gather(*(uploader(c, i) for i in range(clients)))
            await asyncio.wait_for(uploads, timeout=180)
            done.set()
            await probe

    asyncio.run(run())
    return statuses, latencies


def test_uploads_do_not_stall_health_checks_or_generation(server):
    """While clients upload large images in a loop, /healthz and a small /v1/generate keep
    answering promptly. Before the fix, each 16-Mpixel upload was decoded on the replica's
    event loop, holding every other request for its duration (~0.25 s per 4096 x 4096 PNG);
    measured on 2 shared cores, this load then held probes for 4 s (median) to 13 s, against
    0.05-0.1 s (median) and at most 0.5 s now. The bounds leave room for a busy machine."""
    statuses, latencies = upload_under_load(server["url"])
    assert statuses == {("cap", 200), ("16mpx", 413)}, statuses
    assert len(latencies) >= 10, latencies
    worst, median = max(latencies), float(np.median(latencies))
    assert worst < 2.0 and median < 0.5, f"probes: worst {worst:.2f} s, median {median:.3f} s"


def _bodies(client: httpx.Client, requests: list[tuple[str, str, dict]]) -> list[str]:
    return [client.request(method, url, **kw).text for method, url, kw in requests]


def test_no_response_shows_a_path_or_an_internal_error(server, runs):
    png = image_bytes(Image.new("RGB", (RES, RES)))
    requests = [
        ("GET", "/v1/models", {}),
        ("GET", "/healthz", {}),
        ("GET", "/v1/generate?model=dc&count=2&seed=" + str(FAIL_SEED), {}),  # a failing batch
        ("POST", "/v1/generate", {"json": {"model": "dc", "seed": OOM_SEED}}),  # out of memory
        ("GET", "/v1/generate?model=nope", {}),
        ("POST", "/v1/score", {"data": {"model": "num"}, "files": [("files", ("x", b"GIF89a"))]}),
        ("POST", "/v1/score", {"data": {"model": "num"}, "files": [("files", ("x", png[:60]))]}),
        ("POST", "/v1/score", {"data": {"model": "num"}, "files": [("files", ("y", png))]}),
        ("GET", "/healthz", {}),  # after the failure: the models pass the probe
        ("GET", "/openapi.json", {}),
    ]
    with httpx.Client(base_url=server["url"], timeout=60) as c:
        bodies = _bodies(c, requests)
    assert "failed on this batch" in bodies[2] and "out of memory" in bodies[3]
    for (_, url, _), body in zip(requests, bodies, strict=True):
        for secret in (str(runs["root"]), "private-bucket", "poisoned", "Traceback", "Error:"):
            assert secret not in body, (url, secret, body[:300])


def test_a_token_guards_the_app_over_http(server):
    key = {"application": "secure", "route": "/v1/generate", "status": "401"}
    before = _sample(httpx.get(server["metrics"]).text, "ray_ganforge_serve_requests_total", **key)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server["url"] + "/secure", timeout=60) as c:
        assert c.get("/healthz").status_code == 200  # open: probes carry no token
        assert c.get("/").status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}):
            for r in (
                c.get("/v1/generate?model=num", headers=headers),
                c.post("/v1/generate", json={"model": "num"}, headers=headers),
                c.get("/v1/models", headers=headers),
            ):
                assert r.status_code == 401 and r.json() == {"detail": UNAUTHORIZED}
                assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/generate?model=num&class=1", headers=auth).json()["classes"] == ["10"]
        assert c.post("/v1/generate", json={"model": "num"}, headers=auth).status_code == 200
        r = c.post(
            "/v1/score", data={"model": "num"}, files=[("files", ("a", PNG_8))], headers=auth
        )
        assert r.status_code == 200, r.text
    # The main app, without a token, stays open.
    assert httpx.get(server["url"] + "/v1/models").status_code == 200
    deadline, text = time.time() + 40, ""
    while time.time() < deadline:  # Ray exports with a delay of a few seconds
        text = httpx.get(server["metrics"]).text
        if _sample(text, "ray_ganforge_serve_requests_total", **key) >= before + 4:
            break
        time.sleep(2)
    assert _sample(text, "ray_ganforge_serve_requests_total", **key) >= before + 4


def _sample(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.mark.slow
def test_the_page_works_behind_a_token_in_chromium(server):
    """The page loads without the token, says that the API needs one, and with a link's
    `#token=...` renders a grid (its API calls carry `Authorization: Bearer`)."""
    dom, stderr = chromium_dom(server["url"] + "/secure/")
    assert f"error 401: {UNAUTHORIZED}" in dom, stderr[-2000:]
    dom, stderr = chromium_dom(server["url"] + f"/secure/#token={TOKEN}")
    assert 'data-loaded="yes"' in dom and 'src="blob:' in dom, stderr[-2000:]
    assert TOKEN not in dom  # not in the page, nor left in its address

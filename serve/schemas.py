"""Typed shapes of the serving app: its build arguments, request bodies and responses.

The same pydantic models validate `build_app` arguments (CLI, `serve run`, the Helm chart's
RayService) and document the HTTP API in FastAPI's OpenAPI page at `/docs`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)


class ApiError(Exception):
    """A request the app refuses, with the HTTP status and a message that says what is wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def format_errors(
    err: ValidationError | list[dict[str, Any]], prefix: str = "", whole: str = "body"
) -> str:
    """One readable line per pydantic error: `field: message (got ...)`. An error about the
    input as a whole (a model validator's) is named `whole`, or only its message when empty."""
    errors = err.errors() if isinstance(err, ValidationError) else err
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or whole
        msg = e.get("msg", "invalid").removeprefix("Value error, ")
        got = e.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    return prefix + "; ".join(parts)


class _Strict(BaseModel):
    # A typo in a key is an error, never a silently ignored option.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class AutoscalingArgs(_Strict):
    min_replicas: int = Field(1, ge=0)
    """Fewest replicas the autoscaler keeps."""
    max_replicas: int = Field(2, ge=1)
    """Most replicas the autoscaler starts."""
    target_ongoing_requests: float = Field(32.0, gt=0)
    """Ongoing requests per replica the autoscaler aims at (about one full batch)."""

    @model_validator(mode="after")
    def _order(self) -> AutoscalingArgs:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.min_replicas must be <= autoscaling.max_replicas")
        return self


class AppArgs(_Strict):
    """Arguments of `ganforge.serve.app:build_app` (also the `args:` of configs/serve.yaml)."""

    models: dict[str, str] = Field(min_length=1)
    """Served name -> run dir, checkpoints/ dir, checkpoint dir or weights.pt."""
    max_batch_size: int = Field(32, ge=1, le=4096)
    """Most images one generator forward pass takes (`@serve.batch`, counted in images)."""
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10)
    """How long a batch waits to fill after its first request. 0: a batch takes the requests
    queued when it starts (those that arrived during the previous forward pass) and never waits."""
    max_images_per_request: int = Field(64, ge=1, le=4096)
    """Most images one /v1/generate or /v1/score request may ask for."""
    max_upload_bytes: int = Field(1_048_576, ge=1024)
    """Largest request body (uploads to /v1/score included); larger ones get 413."""
    num_replicas: int = Field(1, ge=1)
    """Replicas when autoscaling is off."""
    autoscaling: AutoscalingArgs | None = None
    """Autoscaling bounds; null = a fixed `num_replicas`."""
    gpu: bool = False
    """One GPU per replica (inference on CUDA)."""
    num_cpus: float = Field(1.0, ge=0)
    """CPUs reserved per replica (also its torch thread count on CPU)."""
    max_ongoing_requests: int | None = Field(None, ge=1)
    """Requests a replica holds at once; null = max(256, 2 x max_batch_size). Must be >=
    max_batch_size or batches never fill. Keep it above the expected concurrent clients per
    replica: requests beyond it wait in the proxy, whose retry back-off costs seconds."""
    max_queued_requests: int = Field(256, ge=-1)
    """Requests waiting at each proxy beyond the replicas' capacity; more get a fast 503 with
    Retry-After (-1 = unbounded)."""
    retry_after_s: float = Field(1.0, ge=0)
    """Retry-After seconds sent with overload 503s."""
    validate_on_build: bool = True
    """Load every checkpoint once in `build_app` so a bad one fails before replicas start."""
    detector: str | None = None
    """A deepfake detector (`ganforge detect train`'s .pt, its .json record beside it) to serve at
    `POST /v1/detect`; null = that route answers 404."""
    api_token_file: str | None = None
    """File holding a bearer token (surrounding whitespace stripped; an empty file is an error).
    When set, or when the replica's environment has GANFORGE_API_TOKEN, every route but `/`,
    `/healthz`, `/docs` and `/openapi.json` needs `Authorization: Bearer <token>`. Read when a
    replica starts (and by `build_app` when `validate_on_build`)."""

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"model name {name!r}: use letters, digits, '-', '_' or '.'")
        return v

    @model_validator(mode="after")
    def _batching(self) -> AppArgs:
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < min(
            self.max_batch_size, self.max_images_per_request
        ):
            fill = min(self.max_batch_size, self.max_images_per_request)
            raise ValueError(
                f"max_ongoing_requests={self.max_ongoing_requests} is below {fill} (max_batch_size"
                f"={self.max_batch_size}, or max_images_per_request when smaller): batches could "
                "never fill"
            )
        return self

    @property
    def ongoing_requests(self) -> int:
        return self.max_ongoing_requests or default_ongoing_requests(self.max_batch_size)


def default_ongoing_requests(max_batch_size: int) -> int:
    """`max_ongoing_requests` when not given. Headroom over the clients one replica usually
    faces: a full replica rejects a request and Serve's router retries it after a backoff, which
    showed as the p99 tail of 128 clients against a limit of 128 (docs/serving-benchmark.md)."""
    return max(256, 2 * max_batch_size)


Label = StrictInt | str


class GenerateRequest(_Strict):
    """Body of POST /v1/generate. Give `labels`, or `class` (+ `count`), or only `count`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    model: str
    """Served model name (see GET /v1/models)."""
    labels: list[Label] | None = Field(None, min_length=1)
    """One image per entry: class index or class name. Unconditional models use only the count."""
    class_: Label | None = Field(None, alias="class")
    """One class (index or name) for all `count` images."""
    count: StrictInt | None = Field(None, ge=1)
    """Number of images (default 1). Conditional models without labels/class draw random
    classes from the seed."""
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    """Same seed, same model, same request -> same images. Omitted: a random seed (returned)."""
    truncation: StrictFloat | None = Field(None, gt=0, le=10)
    """Truncation trick (lower = less variety, more typical images). StyleGAN2 models: psi in
    (0, 1], w moved toward the tracked mean w (w_avg + psi (w - w_avg)); other models: latents
    drawn from a normal truncated to [-t, t]."""
    format: Literal["png", "grid", "npy"] = "png"
    """png: JSON with base64 PNGs; grid: one image/png; npy: numpy .npy of uint8 [N, H, W, C]."""
    nrow: StrictInt | None = Field(None, ge=1, le=64)
    """Images per row of the grid (default: about sqrt(N))."""

    @model_validator(mode="after")
    def _one_way(self) -> GenerateRequest:
        if self.labels is not None and (self.class_ is not None or self.count is not None):
            raise ValueError("give either `labels` or `class`/`count`, not both")
        return self

    @classmethod
    def from_query(cls, items: Iterable[tuple[str, str]]) -> GenerateRequest:
        """The request of `GET /v1/generate?model=...`: the body's fields as query parameters.
        `labels` may repeat or hold a comma-separated list; a label, `class` or number written
        in ASCII digits is an integer (so a label in digits is a class index, never a name).
        Raises ValidationError like `model_validate` (a value that is not a number stays a
        string, which the strict fields refuse with their own message)."""
        fields: dict[str, Any] = {}
        for key, value in items:
            if key == "labels":
                fields.setdefault("labels", []).extend(
                    label_from_text(v) for v in value.split(",") if v != ""
                )
            elif key == "class":
                fields[key] = label_from_text(value)
            elif key in _QUERY_NUMBERS:
                fields[key] = _query_number(value, _QUERY_NUMBERS[key])
            else:  # model, format, and unknown keys (refused by extra="forbid")
                fields[key] = value
        return cls.model_validate(fields)


# Query parameters that are numbers, and their type.
_QUERY_NUMBERS: dict[str, type] = {"count": int, "seed": int, "nrow": int, "truncation": float}


def ascii_int(value: str) -> int | None:
    """`value` as an integer when it is ASCII digits with an optional leading '-', else None.

    Not `str.isdigit` + `int`: "²".isdigit() is true and int("²") raises; and `int` alone takes
    other scripts' digits ("١٢"), '_' separators and surrounding spaces."""
    digits = value[1:] if value.startswith("-") else value
    if digits.isascii() and digits.isdigit():
        try:
            return int(value)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            return None
    return None


def _query_number(value: str, kind: type) -> int | float | str:
    if kind is int:
        n = ascii_int(value)
        return value if n is None else n
    # As strict as for integers: float() also reads other scripts' digits, '_' separators and
    # surrounding spaces.
    if not value.isascii() or "_" in value or value != value.strip():
        return value
    try:
        return float(value)
    except ValueError:
        return value


def label_from_text(value: str) -> int | str:
    """A class given as text (a query value, a form field): ASCII digits are a class index
    (negative too, so `-1` gets the same "out of range" answer as in JSON), anything else a
    class name."""
    n = ascii_int(value)
    return value if n is None else n


class GenerateResponse(BaseModel):
    model: str
    seed: int
    labels: list[int] | None = None
    """Class index of each image (null for unconditional models)."""
    classes: list[str] | None = None
    """Class name of each image (null for unconditional models)."""
    width: int
    height: int
    channels: int
    images: list[str]
    """Base64-encoded PNG files, one per image."""


class ModelInfo(BaseModel):
    name: str
    variant: str
    conditional: bool
    classes: list[str]
    num_classes: int
    resolution: int
    channels: int
    z_dim: int
    step: int
    images_seen: int
    checkpoint: str
    """The checkpoint's name (its folder's, e.g. `step-001500`); never a path or URI."""
    load_time_s: float
    quality: dict[str, Any] | None = None
    """Figures of the latest evaluation report (`<run_dir>/quality/metrics.json` or the
    checkpoint's `quality` meta key), a path or URI in it shortened to its last part; null when
    the model was never evaluated."""


class DetectorInfo(BaseModel):
    """The deepfake detector served at /v1/detect (`ganforge serve --detector`), from its record."""

    image_size: int
    """Uploads are converted to this size (and the detector's channels) first."""
    channels: int
    trained_on: list[str]
    """Names of the generators whose fakes it was trained against."""
    real_data: str
    """The real images it was trained on (dataset name and split; no path)."""
    calibration: dict[str, Any]
    """`method` ("temperature": one scalar fitted on held-out data), its `temperature`, and the
    held-out NLL / expected calibration error before and after."""
    validation: dict[str, Any]
    """Held-out figures (AUC, accuracy, EER, TPR at 1% FPR, with bootstrap intervals), over all
    its generators and per generator."""
    caveat: str


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    detector: DetectorInfo | None = None
    """The deepfake detector behind /v1/detect; null when none is served."""


class Score(BaseModel):
    filename: str | None
    score: float
    """Discriminator logit (dcgan/cdcgan) or critic value (WGAN family): higher = judged more
    like the training data. Relative, not a calibrated probability."""
    label: int | None = None
    """Class the score was computed for (conditional models); without a given label, the class
    with the highest score."""
    class_scores: dict[str, float] | None = None
    """Score under every class (conditional models scored without a label)."""
    resized: bool
    """The upload was converted to the model's resolution/channels first."""


class ScoreResponse(BaseModel):
    model: str
    score_kind: Literal["logit", "critic"]
    scores: list[Score]
    caveat: str


class Detection(BaseModel):
    filename: str | None
    p_fake: float
    """Calibrated probability that the image is generated (temperature scaling fitted on the
    detector's held-out data). Meaningful for images like its training data (see the caveat)."""
    verdict: Literal["fake", "real"]
    """`fake` when p_fake >= 0.5."""
    resized: bool
    """The upload was converted to the detector's size/channels first."""


class DetectResponse(BaseModel):
    detections: list[Detection]
    trained_on: list[str]
    caveat: str

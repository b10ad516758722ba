"""`ganforge_serve_*` Prometheus metrics, recorded with `ray.serve.metrics`.

Ray's metrics agent exports them on each node's metrics export port with a `ray_` prefix (e.g.
`ray_ganforge_serve_requests_total`); Serve adds `deployment`, `replica` and `application`
labels. Created lazily inside the replica so those labels are filled in.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class BufferedCounter:
    """A Ray Serve Counter whose increments are summed in the replica and recorded on `flush`.

    Each `ray.serve.metrics` record call costs ~40 us of Python (tag validation and merging);
    per-request counters cost two of them per request (py-spy on 2 CPU cores, 32 clients).
    The exporter reads them every few seconds anyway, so summing in between loses nothing; the
    middleware flushes with its periodic gauge sampling (serve.middleware.EXPORT_PERIOD_S).
    """

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.pending: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        key = tuple(sorted((tags or {}).items()))
        self.pending[key] = self.pending.get(key, 0.0) + value

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for key, value in pending.items():
            self.counter.inc(value, tags=dict(key))


class StickyGauge:
    """A Ray Serve Gauge whose values are recorded again on every `flush`.

    Ray's metrics agent drops a gauge series that its process has not reported for two export
    intervals: a value set once (a model's load time) left the exported metrics about half a
    minute after the replica started (seen with Ray 2.60)."""

    def __init__(self, gauge: Any) -> None:
        self.gauge = gauge
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.values[tuple(sorted((tags or {}).items()))] = value
        self.gauge.set(value, tags=tags)

    def flush(self) -> None:
        for key, value in self.values.items():
            self.gauge.set(value, tags=dict(key))


class ServeMetrics:
    """The app's metrics; one instance per replica process (see `get_metrics`)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.requests = BufferedCounter(
            Counter(
                "ganforge_serve_requests",
                "HTTP requests answered by the ganforge app, by model, route and status code.",
                tag_keys=("model", "route", "status"),
            )
        )
        self.request_latency = Histogram(
            "ganforge_serve_request_latency_ms",
            "Time from request arrival at the replica to the response, in milliseconds.",
            boundaries=LATENCY_MS,
            tag_keys=("model", "route"),
        )
        self.inference_latency = Histogram(
            "ganforge_serve_inference_latency_ms",
            "Time of one batched generator forward pass, in milliseconds.",
            boundaries=LATENCY_MS,
            tag_keys=("model",),
        )
        self.batch_size = Histogram(
            "ganforge_serve_batch_size",
            "Images per generator forward pass (dynamic batching across requests).",
            boundaries=BATCH_SIZES,
            tag_keys=("model",),
        )
        self.images = BufferedCounter(
            Counter(
                "ganforge_serve_images_generated",
                "Images generated, by model and class ('-' for unconditional models).",
                tag_keys=("model", "class"),
            )
        )
        self.detections = BufferedCounter(
            Counter(
                "ganforge_serve_detector_images",
                "Images checked by the deepfake detector (/v1/detect), by verdict (fake: "
                "calibrated P(fake) >= 0.5).",
                tag_keys=("verdict",),
            )
        )
        self.detector_latency = Histogram(
            "ganforge_serve_detector_latency_ms",
            "Time of one deepfake-detector forward pass over a request's images, in ms.",
            boundaries=LATENCY_MS,
        )
        self.load_time = StickyGauge(
            Gauge(
                "ganforge_serve_model_load_seconds",
                "Seconds to load, validate and warm up a model in this replica.",
                tag_keys=("model",),
            )
        )
        self.queue_depth = Gauge(
            "ganforge_serve_queue_depth",
            "Requests in progress or waiting inside this replica.",
        )

    def flush(self) -> None:
        """Record the summed counter increments and the set-once gauges again (called
        periodically and on shutdown)."""
        self.requests.flush()
        self.images.flush()
        self.detections.flush()
        self.load_time.flush()


@lru_cache(maxsize=1)
def get_metrics() -> ServeMetrics:
    return ServeMetrics()

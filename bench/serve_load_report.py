"""The figures of the serving load test (bench.serve_load): passes pooled into one point per
level, and each ganforge server set against the floor (throughput, p99, CPU per request).
"""

from __future__ import annotations

from typing import Any


def percentile(sorted_s: list[float], p: float) -> float | None:
    """Nearest-rank percentile in milliseconds."""
    if not sorted_s:
        return None
    return round(1e3 * sorted_s[min(len(sorted_s) - 1, int(p * len(sorted_s)))], 2)


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's passes pooled: images/s over all timed seconds, percentiles over all
    requests; each pass's own images/s is kept to show the spread."""
    lat = sorted(x for p in points for x in p["latencies"])
    seconds = sum(p["seconds"] for p in points)
    errors: dict[str, int] = {}
    for p in points:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    cpu = [p["cpu_s"] for p in points]
    answered = len(lat) + sum(errors.values())
    return {
        "clients": points[0]["clients"],
        "method": points[0]["method"],
        "requests": len(lat),
        "errors": errors,
        "seconds": round(seconds, 2),
        "images_per_s": round(len(lat) / seconds, 2),
        "images_per_s_per_pass": [round(len(p["latencies"]) / p["seconds"], 2) for p in points],
        "p50_ms": percentile(lat, 0.50),
        "p95_ms": percentile(lat, 0.95),
        "p99_ms": percentile(lat, 0.99),
        # The server's whole cluster (proxy, replica, driver, GCS, raylet, dashboard...) over
        # the timed seconds, per answered request.
        "cpu_ms_per_request": round(1e3 * sum(cpu) / answered, 2)
        if answered and None not in cpu
        else None,
        "settled_s": [p["settled_s"] for p in points],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to 3 places; None when either is missing (or zero)."""
    return round(a / b, 3) if a and b else None


def goals(results: dict[str, list[dict]]) -> dict[str, Any]:
    floor = {p["clients"]: p for p in results["floor"]}
    on = {p["clients"]: p for p in results["ganforge_batch32"]}
    off = {p["clients"]: p for p in results["ganforge_batch1"]}

    tput = {c: ratio(on[c]["images_per_s"], floor[c]["images_per_s"]) for c in on}
    p99 = {c: ratio(on[c]["p99_ms"], floor[c]["p99_ms"]) for c in on}
    speedup = ratio(on[32]["images_per_s"], off[32]["images_per_s"]) if 32 in on else None
    return {
        "throughput_vs_floor": {
            "goal": "ganforge (batch 32) images/s >= 0.8 x floor at every concurrency",
            "ratio": tput,
            "pass": all(r is not None and r >= 0.8 for r in tput.values()),
        },
        "batching_speedup_at_32": {
            "goal": "batch 32 images/s >= 2 x batch 1 images/s at 32 clients",
            "ratio": speedup,
            "pass": None if speedup is None else speedup >= 2,
        },
        "p99_vs_floor": {
            "goal": "ganforge (batch 32) p99 < 2 x floor p99 at every concurrency",
            "ratio": p99,
            "pass": all(r is not None and r < 2 for r in p99.values()),
        },
    }


def cpu_vs_floor(results: dict[str, list[dict]]) -> dict[str, dict[int, float | None]]:
    """Each ganforge server's CPU per request over the floor's, per level: what ganforge's own
    work (validation, encoding, metrics, the FastAPI app) costs on top of bare Serve."""
    floor = {p["clients"]: p["cpu_ms_per_request"] for p in results["floor"]}
    return {
        name: {p["clients"]: ratio(p["cpu_ms_per_request"], floor.get(p["clients"])) for p in pts}
        for name, pts in results.items()
        if name != "floor"
    }

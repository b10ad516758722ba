"""The shipped Grafana dashboards query metrics the code really exports.

The training dashboard is checked here against the exposition of a real `PrometheusExporter`
(rank 0's `ganforge_train_*` gauges, scraped over HTTP); the serving dashboard against Ray's
metrics port in tests/test_serve.py (its metrics exist only inside a Serve replica)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboard_helpers import DASHBOARDS, dashboard_queries, metric_names
from tests.serve_helpers import free_port


@pytest.mark.parametrize(
    "expr, names",
    [
        ('ganforge_train_loss_d{instance=~"$instance"}', {"ganforge_train_loss_d"}),
        (
            "histogram_quantile(0.95, sum by (le, model) (rate(ray_x_bucket{application=~"
            '"$application",status=~"4..|5.."}[$__rate_interval])))',
            {"ray_x_bucket"},
        ),
        (
            "sum by (model) (rate(a_sum[5m])) / sum by (model) (rate(a_count[5m]))",
            {"a_sum", "a_count"},
        ),
        ("a > bool 0 and on (pod) b offset 5m", {"a", "b"}),
    ],
)
def test_metric_names_of_a_query(expr, names):
    assert metric_names(expr) == names


def test_every_dashboard_panel_queries_something():
    for path in DASHBOARDS.glob("*.json"):
        for where, names in dashboard_queries(path).items():
            assert names, f"{path.name}: {where} names no metric"


def test_training_dashboard_reads_what_rank_0_exports():
    """Every metric of ganforge-train.json is a gauge the exporter serves, and every gauge it
    serves has a panel (images/s, losses, penalty, input wait, checkpoint time, restarts...)."""
    from ganforge.cluster.run_logging import PROM_GAUGES, PrometheusExporter

    port = free_port()
    exporter = PrometheusExporter(port)
    try:
        # A metrics.jsonl record as the loop logs it (its keys, renamed for Prometheus).
        exporter.set({"step": 3, "images_per_s": 120.5, "loss_d": 0.7, "gp": 0.1, "restarts": 1})
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        exporter.close()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    exported = {n for n in samples if n.startswith("ganforge_train_")}
    assert exported == {f"ganforge_train_{k}" for k in PROM_GAUGES}
    assert samples["ganforge_train_images_per_second"] == 120.5  # the rename reached it
    queries = dashboard_queries(DASHBOARDS / "ganforge-train.json")
    used = set().union(*queries.values())
    assert used <= exported, f"queried but never exported: {sorted(used - exported)}"
    assert exported <= used, f"exported without a panel: {sorted(exported - used)}"

"""Wrong chart values fail `helm template`/`helm lint` with a message that says what to change;
the chart's schema holds the serving app's own bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helm_helpers import (
    CHART,
    RUNS_URL,
    merge,
    run_helm,
)

# templates fail template/install only, since `helm lint` reports them as INFO by design.
BOTH = ("template", "lint")
TPL = ("template",)
AUTOSCALE = {"enabled": True, "autoscaling": {"enabled": True}}
BAD_VALUES = [
    ({"train": {"workers": {"replicas": -1}}}, "train.workers.replicas: Must be greater", BOTH),
    ({"serve": {"workers": {"maxReplicas": -2}}}, "serve.workers.maxReplicas: Must be great", BOTH),
    ({"trian": {"enabled": True}}, "Additional property trian is not allowed", BOTH),
    ({"serve": {"autoscaling": {"maxReplica": 3}}}, "Additional property maxReplica is not", BOTH),
    ({"image": {"tag": ""}}, "image.tag: String length must be greater than or equal to 1", BOTH),
    ({"image": {"tag": None}}, "image: tag is required", BOTH),
    (
        {"train": {"workers": {"gpus": "1"}}},
        "train.workers.gpus: Invalid type. Expected: int",
        BOTH,
    ),
    ({"train": {"config": {"trainn": {}}}}, "Additional property trainn is not allowed", BOTH),
    ({"train": {"variant": "stylegan"}}, "train.variant: train.variant must be one of", BOTH),
    ({"train": {"head": {"resources": {"requests": None}}}}, "requests is required", BOTH),
    ({"kuberayVersion": "v1.5"}, "kuberayVersion: Does not match pattern", BOTH),
    ({"storage": {"url": "my-bucket/runs"}}, "storage.url: Does not match pattern", BOTH),
    (
        {"storage": {"url": RUNS_URL}},
        "data.urls (/mnt/ganforge/shards) is a folder on the run claim, but storage.url is set",
        TPL,
    ),
    (
        {
            "storage": {"url": RUNS_URL},
            "train": {"enabled": False},
            "serve": {"enabled": True},
        },
        "serve.models.cwgan-gp is /mnt/ganforge/runs/cwgan-gp, a path, but storage.url is set",
        TPL,
    ),
    # The app's own bounds (serve/schemas.py AppArgs), refused before anything is deployed.
    (
        {"serve": {"maxUploadBytes": 512}},
        "serve.maxUploadBytes: Must be greater than or equal to 1024",
        BOTH,
    ),
    (
        {"serve": {"maxBatchSize": 5000}},
        "serve.maxBatchSize: Must be less than or equal to 4096",
        BOTH,
    ),
    (
        {"serve": {"maxImagesPerRequest": 4097}},
        "serve.maxImagesPerRequest: Must be less than or equal to 4096",
        BOTH,
    ),
    (
        {"serve": {"batchWaitTimeoutS": 11}},
        "serve.batchWaitTimeoutS: Must be less than or equal to 10",
        BOTH,
    ),
    # Consistency the schema cannot express.
    (
        {"serve": {"enabled": True, "maxOngoingRequests": 8}},
        "serve.maxOngoingRequests (8) must be >= ",
        TPL,
    ),
    (
        {
            "serve": {
                "enabled": True,
                "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
            }
        },
        "serve.autoscaling.minReplicas (5) must be <=",
        TPL,
    ),
    (
        {"train": {"workers": {"gpus": 8}}},
        "its Ray Train workers reserve 32: 8 workers per pod x train.cpusPerWorker (4)",
        TPL,
    ),
    ({"train": {"cpusPerWorker": 16}}, "a worker pod has 8 CPUs (limits.cpu", TPL),
    ({"train": {"numWorkers": 3}}, "train.numWorkers (3) needs 3 GPUs", TPL),
    (
        {"serve": {"enabled": True, "gpusPerReplica": 2}},
        "serve.gpusPerReplica (2) is more than a serve worker pod has (serve.workers.gpus: 1)",
        TPL,
    ),
    (
        {"serve": {"enabled": True, "gpusPerReplica": 1.5, "workers": {"gpus": 2}}},
        "Ray accepts a fraction of one GPU",
        TPL,
    ),
    (
        {"serve": {"enabled": True, "cpusPerReplica": 8}},
        "serve.cpusPerReplica (8) is more than",
        TPL,
    ),
    (
        {"serve": {"enabled": True, "numReplicas": 2}},
        "serve.numReplicas (2) is more than the serve worker group holds",
        TPL,
    ),
    (
        {"serve": merge(AUTOSCALE, {"autoscaling": {"maxReplicas": 6}})},
        "serve.autoscaling.maxReplicas (6) is more than the serve worker group can hold: "
        "serve.workers.maxReplicas (4) pods",
        TPL,
    ),
    (
        {"serve": merge(AUTOSCALE, {"autoscaling": {"targetOngoingRequests": 16}})},
        "serve.autoscaling.targetOngoingRequests (16) must be >= serve.maxBatchSize (32)",
        TPL,
    ),
    (
        {"serve": merge(AUTOSCALE, {"autoscaling": {"targetOngoingRequests": 100}})},
        "serve.autoscaling.targetOngoingRequests (100) must be <= serve.maxOngoingRequests (64)",
        TPL,
    ),
    (
        {"serve": {"enabled": True, "workers": {"replicas": 5}}},
        "serve.workers.replicas (5) must lie",
        TPL,
    ),
    (
        {"rayAuth": {"secretName": "tok"}},
        "rayAuth.secretName renders authOptions.secretName, which KubeRay defines from v1.6.0",
        TPL,
    ),
    ({"kuberayVersion": "1.4.2"}, "rayAuth.mode=token needs KubeRay >= 1.5.1", TPL),
    # Access control: the API token Secret and the NetworkPolicy peers.
    (
        {"serve": {"auth": {"existingSecret": "Gan_Token"}}},
        "serve.auth.existingSecret: Does not match pattern",
        BOTH,
    ),
    ({"serve": {"auth": {"secretKey": ""}}}, "serve.auth.secretKey: Does not match pattern", BOTH),
    ({"serve": {"auth": {"token": "s3cr3t"}}}, "Additional property token is not allowed", BOTH),
    ({"networkPolicy": {"enabled": "yes"}}, "networkPolicy.enabled: Invalid type", BOTH),
    (
        {"networkPolicy": {"serveFrom": [{}]}},
        "networkPolicy.serveFrom.0: Must have at least 1",
        BOTH,
    ),
    (
        {"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabel": {"a": "b"}}}]}},
        "Additional property matchLabel is not allowed",
        BOTH,
    ),
    (
        {"networkPolicy": {"serveFrom": None}},
        "networkPolicy: serveFrom is required",
        BOTH,
    ),
    (
        {"networkPolicy": {"kuberayOperator": {"podLabels": {"app": 1}}}},
        "networkPolicy.kuberayOperator.podLabels.app: Invalid type",
        BOTH,
    ),
    (
        {"networkPolicy": {"serveFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}},
        "networkPolicy.serveFrom[0] has an ipBlock and a podSelector or namespaceSelector",
        TPL,
    ),
]


@pytest.mark.parametrize("values,message,verbs", BAD_VALUES, ids=[m[:32] for _, m, _ in BAD_VALUES])
def test_wrong_values_fail_with_a_clear_message(
    helm: str, tmp_path: Path, values: dict, message: str, verbs: tuple[str, ...]
) -> None:
    for verb in verbs:
        proc = run_helm(helm, verb, values, tmp_path)
        assert proc.returncode != 0, f"helm {verb} accepted {values}"
        assert message in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# Chart value -> AppArgs field (serve/schemas.py): the schema must hold the app's bounds exactly.
APP_BOUNDS = {
    ("maxBatchSize",): "max_batch_size",
    ("batchWaitTimeoutS",): "batch_wait_timeout_s",
    ("maxImagesPerRequest",): "max_images_per_request",
    ("maxUploadBytes",): "max_upload_bytes",
    ("maxOngoingRequests",): "max_ongoing_requests",
    ("numReplicas",): "num_replicas",
    ("cpusPerReplica",): "num_cpus",
    ("autoscaling", "minReplicas"): "autoscaling.min_replicas",
    ("autoscaling", "maxReplicas"): "autoscaling.max_replicas",
    ("autoscaling", "targetOngoingRequests"): "autoscaling.target_ongoing_requests",
}


def test_serve_schema_bounds_match_the_app() -> None:
    import annotated_types as at

    from ganforge.serve.schemas import AppArgs, AutoscalingArgs

    serve = json.loads((CHART / "values.schema.json").read_text())["properties"]["serve"]
    for chart_path, field in APP_BOUNDS.items():
        node = serve
        for key in chart_path:
            node = node["properties"][key]
        model, name = (AutoscalingArgs, field.split(".")[1]) if "." in field else (AppArgs, field)
        meta = model.model_fields[name].metadata
        app = {
            "minimum": next((m.ge for m in meta if isinstance(m, at.Ge)), None),
            "exclusiveMinimum": next((m.gt for m in meta if isinstance(m, at.Gt)), None),
            "maximum": next((m.le for m in meta if isinstance(m, at.Le)), None),
            "exclusiveMaximum": next((m.lt for m in meta if isinstance(m, at.Lt)), None),
        }
        chart = {k: node.get(k) for k in app}
        assert chart == app, (chart_path, field)

"""JSON schemas (draft-07) of the KubeRay ray.io/v1 and Prometheus Operator fields the chart uses.

Field names follow KubeRay's Go types (`ray-operator/apis/ray/v1/{rayjob,rayservice,raycluster}
_types.go`, v1.5-v1.6). Objects whose full field set is known there are closed with
`additionalProperties: false`, so a misspelt or invented field fails the test. Pod templates are
left open here: the tests validate them as core `v1/Pod` objects with kubernetes-validate.
"""

from __future__ import annotations

from typing import Any

_OPEN = {"type": "object"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_POD_TEMPLATE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["spec"],
    "properties": {"metadata": _OPEN, "spec": _OPEN},
}


def _closed(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    return out


AUTH_OPTIONS = _closed(
    {
        "mode": {"enum": ["disabled", "token"]},
        "secretName": {"type": "string", "minLength": 1},
        "enableK8sTokenAuth": {"type": "boolean"},
    }
)

AUTOSCALER_OPTIONS = _closed(
    {
        "resources": _OPEN,
        "image": {"type": "string"},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "env": {"type": "array"},
        "envFrom": {"type": "array"},
        "volumeMounts": {"type": "array"},
        "securityContext": _OPEN,
        "idleTimeoutSeconds": _INT32,
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "version": {"enum": ["v1", "v2"]},
    }
)

HEAD_GROUP_SPEC = _closed(
    {
        "serviceType": {"type": "string"},
        "headService": _OPEN,
        "enableIngress": {"type": "boolean"},
        "rayStartParams": _STR_MAP,
        "template": _POD_TEMPLATE,
    },
    required=["rayStartParams", "template"],
)

WORKER_GROUP_SPEC = _closed(
    {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": _INT32,
        "minReplicas": _INT32,
        "maxReplicas": _INT32,
        "numOfHosts": {"type": "integer", "minimum": 1},
        "idleTimeoutSeconds": _INT32,
        "suspend": {"type": "boolean"},
        "rayStartParams": _STR_MAP,
        "template": _POD_TEMPLATE,
        "scaleStrategy": _OPEN,
    },
    required=["groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"],
)

RAY_CLUSTER_SPEC = _closed(
    {
        "headGroupSpec": HEAD_GROUP_SPEC,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP_SPEC},
        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": AUTOSCALER_OPTIONS,
        "headServiceAnnotations": _STR_MAP,
        "suspend": {"type": "boolean"},
        "authOptions": AUTH_OPTIONS,
        "managedBy": {"type": "string"},
        "gcsFaultToleranceOptions": _OPEN,
        "upgradeStrategy": _OPEN,
        "networkPolicy": _OPEN,
        "tlsOptions": _OPEN,
        "historyServerOptions": _OPEN,
    },
    required=["headGroupSpec"],
)

_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        # KubeRay derives pod and service names from it: keep well under 63 characters.
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 47},
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
}


def _resource(kind: str, api_version: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _closed(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        required=["apiVersion", "kind", "metadata", "spec"],
    )


RAYJOB = _resource(
    "RayJob",
    "ray.io/v1",
    _closed(
        {
            "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
            "backoffLimit": _INT32,
            "rayClusterSpec": RAY_CLUSTER_SPEC,
            "submitterPodTemplate": _POD_TEMPLATE,
            "metadata": _STR_MAP,
            "clusterSelector": _STR_MAP,
            "submitterConfig": _closed({"backoffLimit": _INT32}),
            "managedBy": {"type": "string"},
            "deletionStrategy": _OPEN,
            "entrypoint": {"type": "string", "minLength": 1},
            "runtimeEnvYAML": {"type": "string"},
            "jobId": {"type": "string"},
            "submissionMode": {
                "enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]
            },
            "entrypointResources": {"type": "string"},
            "entrypointNumCpus": {"type": "number"},
            "entrypointNumGpus": {"type": "number"},
            "ttlSecondsAfterFinished": _INT32,
            "shutdownAfterJobFinishes": {"type": "boolean"},
            "suspend": {"type": "boolean"},
            "schedule": {"type": "string"},
        },
        required=["entrypoint", "rayClusterSpec"],
    ),
)

RAYSERVICE = _resource(
    "RayService",
    "ray.io/v1",
    _closed(
        {
            "serveConfigV2": {"type": "string", "minLength": 1},
            "rayClusterConfig": RAY_CLUSTER_SPEC,
            "serveService": _OPEN,
            "upgradeStrategy": _OPEN,
            "excludeHeadPodFromServeSvc": {"type": "boolean"},
            "rayClusterDeletionDelaySeconds": _INT32,
            "serviceUnhealthySecondThreshold": _INT32,
            "deploymentUnhealthySecondThreshold": _INT32,
        },
        required=["serveConfigV2", "rayClusterConfig"],
    ),
)

# monitoring.coreos.com/v1 PodMonitor: the subset the chart renders.
_RELABEL = _closed(
    {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
        "separator": {"type": "string"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "action": {"type": "string"},
    }
)
PODMONITOR = _resource(
    "PodMonitor",
    "monitoring.coreos.com/v1",
    _closed(
        {
            "selector": _closed({"matchLabels": _STR_MAP}, required=["matchLabels"]),
            "namespaceSelector": _OPEN,
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": _closed(
                    {
                        "port": {"type": "string", "minLength": 1, "maxLength": 15},
                        "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                        "relabelings": {"type": "array", "items": _RELABEL},
                    },
                    required=["port"],
                ),
            },
        },
        required=["selector", "podMetricsEndpoints"],
    ),
)

SCHEMAS = {"RayJob": RAYJOB, "RayService": RAYSERVICE, "PodMonitor": PODMONITOR}

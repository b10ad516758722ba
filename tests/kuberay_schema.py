"""JSON schemas (draft-07) of the KubeRay ray.io/v1 and Prometheus Operator fields the chart uses.

Field names follow KubeRay's Go types (`ray-operator/apis/ray/v1/{rayjob,rayservice,raycluster}
_types.go`) and its generated API reference (`docs/reference/api.md`). Objects are closed with
`additionalProperties: false` and list only fields checked against those sources, so a misspelt,
invented or too-new field fails the test. Version-dependent fields:
- `authOptions` (RayClusterSpec) with `mode` (disabled|token): added in v1.5.1 (ray-project/
  kuberay#4179, "Add support for Ray token auth"); not in v1.5.0 or earlier.
- `authOptions.secretName` (a user Secret instead of one generated per cluster) and
  `authOptions.enableK8sTokenAuth`: not in v1.5.1 (requested after it, ray-project/ray#60703);
  listed in the v1.6 API reference, so allowed from 1.6.0.
Pod templates are left open here: the tests validate them as core `v1/Pod` objects with
kubernetes-validate.
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


# authOptions as KubeRay v1.5.1 defines it, and the fields v1.6 added.
AUTH_OPTIONS_V1_5 = _closed({"mode": {"enum": ["disabled", "token"]}})
AUTH_OPTIONS_V1_6 = _closed(
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

# RayClusterSpec fields of KubeRay v1.5 (authOptions is added per version in schemas_for).
_RAY_CLUSTER_FIELDS: dict[str, Any] = {
    "headGroupSpec": HEAD_GROUP_SPEC,
    "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP_SPEC},
    "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
    "enableInTreeAutoscaling": {"type": "boolean"},
    "autoscalerOptions": AUTOSCALER_OPTIONS,
    "headServiceAnnotations": _STR_MAP,
    "suspend": {"type": "boolean"},
    "managedBy": {"type": "string"},
    "gcsFaultToleranceOptions": _OPEN,
}

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


_RAYJOB_FIELDS: dict[str, Any] = {
    "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
    "backoffLimit": _INT32,
    "submitterPodTemplate": _POD_TEMPLATE,
    "metadata": _STR_MAP,
    "clusterSelector": _STR_MAP,
    "submitterConfig": _closed({"backoffLimit": _INT32}),
    "managedBy": {"type": "string"},
    "deletionStrategy": _OPEN,
    "entrypoint": {"type": "string", "minLength": 1},
    "runtimeEnvYAML": {"type": "string"},
    "jobId": {"type": "string"},
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
    "entrypointResources": {"type": "string"},
    "entrypointNumCpus": {"type": "number"},
    "entrypointNumGpus": {"type": "number"},
    "ttlSecondsAfterFinished": _INT32,
    "shutdownAfterJobFinishes": {"type": "boolean"},
    "suspend": {"type": "boolean"},
    "schedule": {"type": "string"},
}

_RAYSERVICE_FIELDS: dict[str, Any] = {
    "serveConfigV2": {"type": "string", "minLength": 1},
    "serveService": _OPEN,
    "upgradeStrategy": _OPEN,
    "excludeHeadPodFromServeSvc": {"type": "boolean"},
    "serviceUnhealthySecondThreshold": _INT32,
    "deploymentUnhealthySecondThreshold": _INT32,
}

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


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def schemas_for(kuberay_version: str = "1.5.1") -> dict[str, dict[str, Any]]:
    """Schemas of the kinds the chart renders, as KubeRay `kuberay_version` defines them."""
    cluster_fields = dict(_RAY_CLUSTER_FIELDS)
    if _version(kuberay_version) >= (1, 6, 0):
        cluster_fields["authOptions"] = AUTH_OPTIONS_V1_6
    elif _version(kuberay_version) >= (1, 5, 1):
        cluster_fields["authOptions"] = AUTH_OPTIONS_V1_5
    cluster = _closed(cluster_fields, required=["headGroupSpec"])
    rayjob = _closed(
        _RAYJOB_FIELDS | {"rayClusterSpec": cluster}, required=["entrypoint", "rayClusterSpec"]
    )
    rayservice = _closed(
        _RAYSERVICE_FIELDS | {"rayClusterConfig": cluster},
        required=["serveConfigV2", "rayClusterConfig"],
    )
    return {
        "RayJob": _resource("RayJob", "ray.io/v1", rayjob),
        "RayService": _resource("RayService", "ray.io/v1", rayservice),
        "PodMonitor": PODMONITOR,
    }


SCHEMAS = schemas_for()

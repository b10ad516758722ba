"""The Helm chart renders valid, secure manifests for every supported value set.

Runs the real `helm` binary (from $GANFORGE_HELM, PATH, or .tools/helm fetched by
scripts/get_helm.sh) and validates its output offline: core objects with kubernetes-validate
(Kubernetes 1.30 schemas, strict), KubeRay and Prometheus Operator objects with the schemas in
tests/kuberay_schema.py, pod templates as v1 Pods. No cluster is contacted (none exists here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm_helpers import (
    CASES,
    CHART,
    K8S_VERSION,
    RUNS_URL,
    RWX_REFUSAL,
    SERVE_ARGS,
    SERVE_ON,
    by_kind,
    check_pod,
    merged,
    parse_entrypoint,
    pod_templates,
    render,
    run_helm,
    version_tuple,
)
from tests.kuberay_schema import schemas_for


@pytest.mark.parametrize("case", sorted(CASES))
def test_chart_renders_and_validates(helm: str, tmp_path: Path, case: str) -> None:
    values = merged(case)
    lint = run_helm(helm, "lint", CASES[case], tmp_path)
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
            for name, template in pod_templates(doc):
                check_pod(name, template, values)
                if name != "submitter":
                    assert "ganforge.dev/runs-claim" in template["metadata"]["labels"], name
                    assert ("affinity" in template["spec"]) is single, name
            cluster = doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]
            if version_tuple(values["kuberayVersion"]) >= (1, 5, 1):
                assert cluster["authOptions"]["mode"] == values["rayAuth"]["mode"]
            else:
                assert "authOptions" not in cluster
            for g in cluster.get("workerGroupSpecs", []):
                assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_storage_class_must_be_chosen(helm: str, tmp_path: Path) -> None:
    """The default StorageClass of a GPU pool is RWO: the chart refuses to guess (issue 7)."""
    proc = run_helm(helm, "template", {}, tmp_path, base=False)
    assert proc.returncode != 0
    assert RWX_REFUSAL in proc.stderr and "ReadWriteOnce" in proc.stderr, proc.stderr
    # Storage only (training and serving off) still needs the choice: the claim is made then.
    proc = run_helm(helm, "template", {"train": {"enabled": False}}, tmp_path, base=False)
    assert RWX_REFUSAL in proc.stderr, proc.stderr
    # Each way out renders.
    for values in (
        {"storage": {"create": {"storageClassName": "efs-sc"}}},
        {"storage": {"existingClaim": "runs"}},
        {"storage": {"singleNode": True}},
        {"storage": {"url": RUNS_URL}, "data": {"urls": "pipe:cat /dev/null"}},
    ):
        proc = run_helm(helm, "template", values, tmp_path, base=False)
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
    _, params = parse_entrypoint(job["spec"]["entrypoint"])
    assert params["num_workers"] == replicas * max(gpus, 1)
    assert params["gpu"] is (gpus > 0)


@pytest.mark.parametrize(
    "case", ["defaults", "gpu8-bf16", "object-store", "object-store-runs", "config-file"]
)
def test_entrypoint_yields_a_valid_training_config(helm: str, tmp_path: Path, case: str) -> None:
    from ganforge.config import load_config, parse_override, resolve_config_path

    values = merged(case)
    docs = render(helm, CASES[case], tmp_path)
    job = by_kind(docs, "RayJob")[0]
    argv, params = parse_entrypoint(job["spec"]["entrypoint"])
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
    for name, template in pod_templates(job):
        if name == "submitter":
            continue
        c = template["spec"]["containers"][0]
        assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        assert {"name": "AWS_REGION", "value": "eu-west-1"} in c["env"]
        assert not any(v["name"] == "shards" for v in template["spec"]["volumes"])
    _, params = parse_entrypoint(job["spec"]["entrypoint"])
    assert params["data"] == CASES["object-store"]["data"]["urls"]


def test_object_store_runs_mount_no_claim(helm: str, tmp_path: Path) -> None:
    """storage.url: the run dir is the bucket URL; no pod mounts a run claim, none is created;
    every Ray pod (training and serving) gets the credentials to reach the bucket."""
    docs = render(helm, CASES["object-store-runs"], tmp_path)
    assert not by_kind(docs, "PersistentVolumeClaim")
    job, svc = by_kind(docs, "RayJob")[0], by_kind(docs, "RayService")[0]
    _, params = parse_entrypoint(job["spec"]["entrypoint"])
    assert params["run_dir"] == f"{RUNS_URL}/runs/cwgan-gp"
    for doc in (job, svc):
        for name, template in pod_templates(doc):
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
        for name, template in pod_templates(doc):
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
    values = merged(case)
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
        for _, template in pod_templates(doc):
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

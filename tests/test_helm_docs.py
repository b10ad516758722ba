"""The deployment docs name only values the chart has, and their helm commands render in order."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from tests.helm_helpers import (
    CHART,
    DEPLOY_DOC,
    by_kind,
    parse_entrypoint,
)


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
    argv, params = parse_entrypoint(by_kind(rendered[2], "RayJob")[0]["spec"]["entrypoint"])
    (app,) = yaml.safe_load(by_kind(rendered[2], "RayService")[0]["spec"]["serveConfigV2"])[
        "applications"
    ]
    assert str(params["run_dir"]) in app["args"]["models"].values()

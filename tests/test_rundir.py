"""The run folder's layout lives in `ganforge.rundir` only: its API, the object-store sync it
owns (against a `file://` store, so no S3 is needed), and a scan of the package source that fails
when code elsewhere spells a run-folder name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from ganforge.checkpoint import (
    checkpoint_meta,
    hash_tree,
    latest_valid,
    list_checkpoints,
    verify,
    write_marker,
    write_weights,
)
from ganforge.config import GanforgeConfig
from ganforge.models import build_discriminator, build_generator
from ganforge.rundir import CheckpointDir, RunDir
from ganforge.storage import RemoteRun, StorageError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("ganforge", "data", "models", "cluster", "serve", "quality", "bench")
LAYOUT_MODULE = ROOT / "ganforge" / "rundir.py"

# Every name a run folder or checkpoint dir holds. "metrics.json" alone is missing on purpose: it
# is also the report folder's file (`ganforge eval --out`); the run's copy is caught by "quality".
RUN_NAMES = {
    "config.yaml",
    "checkpoints",
    "samples",
    "metrics.jsonl",
    "tensorboard",
    "quality",
    ".launches",
    "pids",
    "placement",
    ".restore",
    "ganforge.json",
    "weights.pt",
    "deepspeed",
}
RUN_PREFIXES = ("step-", "rank-")  # checkpoint dirs, sample grids, rank files, pid files
# Strings that equal a run-folder name but mean something else: (file, string) -> why.
NOT_RUN_NAMES = {
    ("data/commands.py", "samples"): "a column of the manifest table",
    ("quality/commands.py", "quality"): "the name of the `ganforge quality` command group",
    ("bench/common.py", "deepspeed"): "a module whose version the benchmark records",
    ("cluster/run_logging.py", "samples"): "the TensorBoard image tag of the sample grids",
    ("cluster/summary.py", "samples"): "a row label of the end-of-run summary",
    ("bench/first_start.py", "deepspeed"): "a way of building the comm op that the bench times",
    ("bench/kernel_launches.py", "samples"): "the kind of launch (sample grid) a problem counts",
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the constants that are module, class or function docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _keys(tree: ast.AST) -> set[int]:
    """ids of constants used as mapping keys: `{"k": ...}`, `d["k"]`, `d.get("k")`, `d.pop("k")`
    (a JSON field named like a folder is not a path)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            out |= {id(k) for k in node.keys if k is not None}
        elif isinstance(node, ast.Subscript):
            out.add(id(node.slice))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault")
            and node.args
        ):
            out.add(id(node.args[0]))
    return out


def _is_run_name(text: str) -> bool:
    """A path-like string (no whitespace: prose may name files) with a run-folder component."""
    if not text or any(c.isspace() for c in text):
        return False
    return any(part in RUN_NAMES or part.startswith(RUN_PREFIXES) for part in text.split("/"))


def run_name_literals(source: str, rel: str) -> list[tuple[int, str]]:
    """(line, string) of every string constant in the code of `rel` that spells a run-folder
    name; f-string pieces count, docstrings and mapping keys do not."""
    tree = ast.parse(source, filename=rel)
    skip = _docstrings(tree) | _keys(tree)
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and _is_run_name(node.value)
        and (rel, node.value) not in NOT_RUN_NAMES
    )


def test_no_run_folder_name_is_spelt_outside_rundir():
    offenders = []
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == LAYOUT_MODULE:
                continue
            rel = path.relative_to(ROOT).as_posix()
            found = run_name_literals(path.read_text(), rel)
            offenders += [f"{rel}:{line}: {text!r}" for line, text in found]
    assert not offenders, (
        "run-folder names spelt outside ganforge/rundir.py (use RunDir / CheckpointDir, or add "
        "a string that only looks like one to NOT_RUN_NAMES with the reason):\n"
        + "\n".join(offenders)
    )


def test_the_scan_finds_names_in_paths_and_f_strings():
    """The scan itself: path pieces and f-string parts are caught; prose, keys, docstrings not."""
    source = (
        '"""Writes RUN_DIR/config.yaml."""\n'
        "def f(run, rank, d):\n"
        '    """metrics.jsonl"""\n'
        '    a = run / "metrics.jsonl"\n'
        '    b = f"checkpoints/{rank}"\n'
        '    c = run / f"rank-{rank}.pt"\n'
        '    e = d["checkpoints"], d.get("quality"), {"samples": 1}\n'
        '    g = "see the samples folder"\n'
        "    return a, b, c, e, g\n"
    )
    found = run_name_literals(source, "ganforge/probe.py")
    assert found == [(4, "metrics.jsonl"), (5, "checkpoints/"), (6, "rank-")]
    assert run_name_literals('x = ("split", "samples")', "data/commands.py") == []


def test_layout_of_a_local_run(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.uri == str(tmp_path / "run") and run.store is None
    assert run.config_path == tmp_path / "run" / "config.yaml"
    assert run.metrics_path == tmp_path / "run" / "metrics.jsonl"
    assert run.tensorboard == tmp_path / "run" / "tensorboard"
    assert run.quality_metrics == tmp_path / "run" / "quality" / "metrics.json"
    assert run.sample_grid(40) == tmp_path / "run" / "samples" / "step-000040.png"
    assert run.launch_counter("abc") == tmp_path / "run" / ".launches" / "abc"
    assert run.pid_file(1) == tmp_path / "run" / "pids" / "rank-1"
    assert run.placement_log(1) == tmp_path / "run" / "placement" / "rank-1.jsonl"
    assert run.restore_dir(1) == tmp_path / "run" / ".restore" / "rank-1"

    ckpt = run.checkpoint(40)
    assert ckpt.path == run.checkpoint("step-000040").path == run.checkpoints / "step-000040"
    assert ckpt.marker.name == "ganforge.json" and ckpt.weights.name == "weights.pt"
    assert ckpt.deepspeed.name == "deepspeed" and ckpt.rank_state(2).name == "rank-2.pt"
    assert RunDir.of_checkpoint(ckpt.path).path == run.path
    assert RunDir.of_checkpoint(tmp_path / "loose" / "step-000040") is None

    for step in (100, 20):
        run.sample_grid(step).parent.mkdir(parents=True, exist_ok=True)
        run.sample_grid(step).write_bytes(b"")
    assert run.sample_grids() == [run.sample_grid(20), run.sample_grid(100)]


def test_a_local_run_is_its_own_copy(tmp_path):
    run = RunDir.open(str(tmp_path / "run"))
    run.path.mkdir()
    run.write_config("name: x\n")
    assert run.config_path.read_text() == "name: x\n"
    assert run.pull(run.metrics_path) is False and run.push(run.config_path) == 0
    assert run.push_logs() == 0
    run.pull_metrics()  # no store: nothing to mirror, nothing removed
    with pytest.raises(StorageError, match="no object store"):
        run.pull_markers()


def _checkpoint(run: RunDir, step: int) -> CheckpointDir:
    """A checkpoint as training writes it: weights, DeepSpeed states, a rank file, the marker."""
    cfg = GanforgeConfig.model_validate({"name": "x", "model": {"width": 8, "z_dim": 16}})
    torch.manual_seed(step)
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    ckpt = run.checkpoint(step)
    write_weights(ckpt.path, g, g, d)
    ckpt.deepspeed.mkdir()
    (ckpt.deepspeed / "engine.pt").write_bytes(b"ds")
    torch.save({"step": step}, ckpt.rank_state(0))
    write_marker(ckpt.path, hash_tree(ckpt.path), checkpoint_meta(cfg, step, step * 64, None))
    return ckpt


def _mirror(folder: Path) -> RunDir:
    """A RunDir over the mirror of `folder`, served as a `file://` store."""
    store = RemoteRun(f"file://{folder}")
    return RunDir(store.local, store)


@pytest.fixture
def store_run(tmp_path, monkeypatch):
    """A run folder in a `file://` store and a RunDir over its (empty) mirror."""
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    origin = RunDir(tmp_path / "store" / "run")
    origin.path.mkdir(parents=True)
    origin.config_path.write_text("name: x\n")
    origin.metrics_path.write_text(json.dumps({"step": 20}) + "\n")
    for step in (10, 20):
        _checkpoint(origin, step)
    return origin, _mirror(origin.path)


def test_open_gives_a_uri_its_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    # An endpoint and region of its own: pyarrow then opens the URI without asking AWS.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    run = RunDir.open("s3://bucket/runs/x")
    assert run.store is not None and run.uri == "s3://bucket/runs/x"
    assert run.path == tmp_path / "cache" / "runs" / "s3" / "bucket" / "runs" / "x"
    assert run.uri_of(run.checkpoint(10).path) == "s3://bucket/runs/x/checkpoints/step-000010"


def test_markers_metrics_and_weights_come_from_the_store(store_run):
    origin, run = store_run
    assert run.pull_markers() == run.checkpoints
    assert run.config_path.read_text() == "name: x\n"
    assert [d.name for _, d in list_checkpoints(run.checkpoints)] == ["step-000020", "step-000010"]
    assert not run.checkpoint(20).weights.exists()  # markers only

    run.pull_metrics()
    assert run.metrics_path.read_text() == origin.metrics_path.read_text()
    origin.metrics_path.unlink()
    run.pull_metrics()  # the store has none: neither has the mirror
    assert not run.metrics_path.exists()

    assert run.pull_weights("step-000020") == run.checkpoint(20).path
    verify(run.checkpoint(20).path, only={CheckpointDir.WEIGHTS})
    assert not run.checkpoint(20).deepspeed.exists()  # DeepSpeed states stay remote

    got = run.pull_checkpoint("step-000010", run.restore_dir(0))
    assert got.path == run.restore_dir(0) and verify(got.path)["step"] == 10
    assert got.rank_state(0).is_file() and (got.deepspeed / "engine.pt").is_file()


def test_localize_fetches_the_weights_asked_for(store_run):
    origin, run = store_run
    origin.quality_metrics.parent.mkdir()
    origin.quality_metrics.write_text("{}")
    assert run.localize(weights=lambda ckpts: [ckpts / "step-000010"]) == run.path
    assert run.checkpoint(10).weights.is_file() and not run.checkpoint(20).weights.exists()
    assert run.quality_metrics.read_text() == "{}" and run.metrics_path.is_file()
    assert latest_valid(run.checkpoints, only={CheckpointDir.WEIGHTS}) == run.checkpoint(10).path

    # A checkpoint URI is localized as itself, with its weights.
    one = _mirror(origin.checkpoint(20).path)
    assert one.localize() == one.path and CheckpointDir(one.path).weights.is_file()


def test_logs_and_config_are_pushed_to_the_store(store_run):
    origin, run = store_run
    run.path.mkdir(parents=True)
    run.write_config("name: y\n")
    assert origin.config_path.read_text() == "name: y\n"
    run.metrics_path.write_text("{}\n")
    run.sample_grid(30).parent.mkdir()
    run.sample_grid(30).write_bytes(b"png")
    run.launch_counter("abc").parent.mkdir()
    run.launch_counter("abc").write_text("1")
    for folder in (origin.samples, origin.launches):  # object stores need none; file:// does
        folder.mkdir()
    assert run.push_logs() == 3
    assert run.push_logs() == 0  # nothing changed since
    assert origin.sample_grid(30).read_bytes() == b"png"
    assert origin.launch_counter("abc").read_text() == "1"
    assert origin.metrics_path.read_text() == "{}\n"


def test_a_missing_weights_file_names_the_checkpoint(store_run):
    origin, run = store_run
    origin.checkpoint(20).weights.unlink()
    run.pull_markers()
    with pytest.raises(StorageError, match=r"checkpoints/step-000020: has no weights.pt"):
        run.pull_weights("step-000020")


def test_a_registered_checkpoint_older_than_the_folder_does_not_win(tmp_path):
    """Ray Train's registry can lag the run folder (a node lost after step 20 was complete): the
    resume point is the newest checkpoint that verifies, wherever it is listed; a newer partial
    one is skipped."""
    run = RunDir(tmp_path / "run")
    old, new, partial = _checkpoint(run, 10), _checkpoint(run, 20), _checkpoint(run, 30)
    partial.rank_state(0).unlink()
    assert latest_valid(run.checkpoints, [old.path]) == new.path
    outside = RunDir(tmp_path / "elsewhere")  # a registered dir outside the folder joins by step
    assert (
        latest_valid(run.checkpoints, [_checkpoint(outside, 40).path])
        == outside.checkpoint(40).path
    )
    assert latest_valid(run.checkpoints, [tmp_path / "no-marker"]) == new.path

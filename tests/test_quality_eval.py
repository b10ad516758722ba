"""`ganforge eval` end to end on tiny checkpoints (written with write_weights_checkpoint, no
training) and tiny raw-pixel shards packed by `data pack`; bad input; `ganforge study` when
training is available."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ganforge.checkpoint import write_weights_checkpoint
from ganforge.cli import app
from ganforge.config import load_config, resolve_config_path
from ganforge.models import build_discriminator, build_generator
from tests.quality_helpers import CLASSES, pack_shards, train_tiny_classifier

runner = CliRunner()
TINY = {"model.width": 8, "model.z_dim": 16, "model.embed_dim": 8, "model.kernels": "torch"}


def make_run(root: Path, variant: str, steps: list[int], seed: int = 0) -> Path:
    """A run dir with one checkpoint per step (random weights: evaluation only needs a G)."""
    overrides = dict(TINY, **{"run_dir": str(root)})
    if variant.startswith("c"):
        overrides["model.num_classes"] = len(CLASSES)
    cfg = load_config(resolve_config_path(variant), overrides)
    for step in steps:
        torch.manual_seed(step + 1000 * seed)
        g, d = build_generator(cfg.model), build_discriminator(cfg.model)
        write_weights_checkpoint(
            root / "checkpoints" / f"checkpoint_{step:06d}", cfg, g, g, d, step, step * 64, CLASSES
        )
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality-eval")
    # Raw-pixel shards from the real packer (the encoding the README calls fastest): eval and
    # the study once failed on them while hand-written PNG shards passed.
    shards = pack_shards(root / "shards", {"train": 40, "test": 20}, "raw")
    train_tiny_classifier(shards, root / "clf.pt")
    runs = [make_run(root / "dcgan", "dcgan", [10, 20]), make_run(root / "cdcgan", "cdcgan", [20])]
    return root, shards, runs


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_end_to_end(setup):
    root, shards, runs = setup
    out = root / "report"
    res = invoke(
        "eval",
        *runs,
        "--data",
        shards,
        "--out",
        out,
        "--num-samples",
        60,
        "--checkpoint",
        "all",
        "--classifier",
        root / "clf.pt",
        "--class",
        "checks",
    )
    assert res.exit_code == 0, res.output
    # One progress bar over the 3 checkpoints of both runs, then the one-screen summary.
    assert "eval: 100%" in res.output and "3/3" in res.output, res.output
    assert "ganforge eval" in res.output and "report.md" in res.output
    for name in (
        "report.md",
        "report.html",
        "metrics.json",
        "grid-checks.png",
        "grid-random.png",
        "metrics-over-steps.png",
    ):
        assert (out / name).is_file(), name
    body = json.loads((out / "metrics.json").read_text())
    assert "CIFAR-style classifier clf.pt" in body["extractor"]
    assert body["settings"]["num_samples"] == 60 and body["real"]["num_images"] == 120
    dcgan, cdcgan = body["runs"]
    assert [c["step"] for c in dcgan["checkpoints"]] == [10, 20]
    m = cdcgan["latest"]
    for key in (
        "fid",
        "kid_mean",
        "kid_std",
        "precision",
        "recall",
        "classifier_score",
        "per_class_accuracy",
        "mean_class_accuracy",
        "intra_kid",
        "mean_intra_kid",
        "kid_se",
        "stats",
    ):
        assert key in m, key
    # 6 images per class are far too few for a per-class FID: skipped, with the reason.
    assert m["intra_fid"] is None and "per-class FID needs" in m["intra_fid_skipped"]
    assert set(m["intra_kid"]) == set(CLASSES)
    assert set(m["per_class_accuracy"]) == set(CLASSES)
    assert set(m["stats"]) == {"sharpness", "noise_sigma", "chroma_noise", "high_freq_share"}
    assert "per_class_accuracy" not in dcgan["latest"]  # unconditional: no intended class
    assert m["fid"] > 0 and 0 <= m["precision"] <= 1
    md = (out / "report.md").read_text()
    assert "not comparable with published" in md and "grid-checks.png" in md
    assert "<table>" in (out / "report.html").read_text()
    # each run also gets its own figures for the serving app
    per_run = json.loads((runs[1] / "quality" / "metrics.json").read_text())
    assert per_run["step"] == 20 and per_run["fid"] == pytest.approx(m["fid"])


def test_eval_bad_input(setup, tmp_path):
    root, shards, runs = setup
    common = ["--data", shards, "--out", tmp_path / "r", "--classifier", root / "clf.pt"]
    res = invoke("eval", tmp_path / "nope", *common)
    assert res.exit_code == 2 and "no such run directory" in res.output
    res = invoke("eval", runs[0], *common, "--class", "automobile")
    assert res.exit_code == 2 and "unknown class 'automobile'" in res.output
    assert "stripes" in res.output
    res = invoke("eval", runs[0], *common, "--checkpoint", "15")
    assert res.exit_code == 2 and "no checkpoint at step 15 (has: 10, 20)" in res.output
    res = invoke("eval", tmp_path, *common)
    assert res.exit_code == 2 and "no checkpoints" in res.output
    res = invoke("eval", runs[0], "--data", tmp_path, "--out", tmp_path / "r")
    assert res.exit_code == 2 and "dataset.json" in res.output
    res = invoke("eval", runs[0], *common[:4], "--classifier", tmp_path / "missing.pt")
    assert res.exit_code == 2 and "classifier weights not found" in res.output


def test_study_plan_budget(tmp_path):
    """Same real images through the critic: n_critic=5 variants get a fifth of the G steps."""
    from ganforge.quality.study import StudyOptions, plan

    opts = StudyOptions(steps=100, variants=("dcgan", "wgan-gp"), micro_batch=16)
    plans, configs = plan(tmp_path, "shards", opts)
    by = {p.variant: p for p in plans}
    assert by["dcgan"].max_steps == 100 and by["wgan-gp"].max_steps == 20
    assert configs[tmp_path / "runs" / "wgan-gp"].train.micro_batch == 16
    assert not by["dcgan"].finished
    opts = StudyOptions(steps=100, variants=("wgan-gp",), budget="g-steps")
    plans, _ = plan(tmp_path, "shards", opts)
    assert plans[0].max_steps == 100
    # --set applies to every variant alike
    opts = StudyOptions(steps=10, variants=("dcgan", "wgan"), overrides={"model.width": 16})
    _, configs = plan(tmp_path, "s", opts)
    assert {c.model.width for c in configs.values()} == {16}
    # one run per variant and seed, seed by seed; the first seed keeps the v1 folder
    opts = StudyOptions(steps=10, variants=("dcgan", "wgan"), seeds=(3, 4))
    plans, configs = plan(tmp_path, "s", opts)
    assert [(p.variant, p.seed, p.run_dir.name) for p in plans] == [
        ("dcgan", 3, "dcgan"),
        ("wgan", 3, "wgan"),
        ("dcgan", 4, "dcgan-seed4"),
        ("wgan", 4, "wgan-seed4"),
    ]
    assert [configs[p.run_dir].train.seed for p in plans] == [3, 3, 4, 4]


def test_study_report_over_seeds_from_trained_runs(setup, tmp_path):
    """The study's report stage on runs that exist (written here, no training): two variants x
    two seeds evaluated against the held-out split, summarised with intervals and verdicts,
    detectability measured; a second call reads every evaluation from the caches."""
    from ganforge.quality.study import StudyOptions, plan, report_study, study_settings
    from ganforge.quality.study_detect import DetectOptions

    root, shards, _ = setup
    opts = StudyOptions(steps=20, variants=("dcgan", "cdcgan"), seeds=(0, 1))
    out = tmp_path / "study"
    plans, configs = plan(out, str(shards), opts)
    for p in plans:
        make_run(p.run_dir, p.variant, [10, 20], seed=p.seed)
    s = study_settings(num_samples=40, classifier=str(root / "clf.pt"), fid_bootstrap=10)
    detect = DetectOptions(limit=40, eval_limit=20, epochs=1, spectrum_images=20, bootstrap=20)
    body = report_study(shards, out, opts, plans, configs, s, False, detect)
    summary = body["study"]["summary"]
    assert summary["seeds"] == {"dcgan": 2, "cdcgan": 2} and body["real"]["split"] == "test"
    fid = summary["estimates"]["fid"]["dcgan"]
    assert fid["n"] == 2 and fid["lo"] < fid["mean"] < fid["hi"]
    latest = body["runs"][0]["latest"]
    assert latest["fid_se"] > 0 and latest["kid_se"] > 0
    assert "fid_se" not in body["runs"][0]["checkpoints"][0]  # the bootstrap: latest only
    assert set(summary["curves"]["fid"]["cdcgan"][0]) >= {"step", "mean", "lo", "hi"}
    assert [c["claim"] for c in summary["claims"]] == [1, 2, 3, 4]
    det = body["study"]["detection"]
    assert set(det["own"]) == set(det["all"]) == {"dcgan", "cdcgan"}
    assert len(det["matrix"]["auc"]) == 2 and set(det["spectral_distance"]) == {"dcgan", "cdcgan"}
    report = out / "report"
    md = (report / "report.md").read_text()
    for heading in ("over seeds", "Rankings", "cross-generator matrix", "Verdicts"):
        assert heading in md, heading
    assert (report / "curves.png").is_file() and (report / "detection" / "spectrum.png").is_file()
    caches = sorted(out.glob("runs/*/quality/eval-*.json"))
    assert len(caches) == 4
    stamps = [c.stat().st_mtime_ns for c in caches]
    again = report_study(shards, out, opts, plans, configs, s, False, detect)
    assert [c.stat().st_mtime_ns for c in caches] == stamps  # read, not recomputed
    assert again["study"]["summary"]["estimates"] == summary["estimates"]


@pytest.mark.parametrize("part", ["2/2", "1", "a/b", "-1/2"])
def test_study_part_must_be_k_of_n(tmp_path, part):
    res = invoke("study", "--data", tmp_path, "--steps", 1, "--out", tmp_path, "--part", part)
    assert res.exit_code == 2 and "expected K/N with 0 <= K < N" in res.output, res.output


@pytest.mark.slow
def test_study_trains_then_reuses(setup, tmp_path):
    """Real Ray + DeepSpeed training of one tiny conditional variant, then the comparison."""
    try:
        import ganforge.cluster.launch  # noqa: F401
    except ImportError:
        pytest.skip("training not available")
    import ray

    root, shards, _ = setup
    args = [
        "study",
        "--data",
        shards,
        "--steps",
        2,
        "--out",
        tmp_path / "study",
        "--variants",
        "cdcgan",
        "--micro-batch",
        8,
        "--num-samples",
        30,
        "--classifier",
        root / "clf.pt",
        "--set",
        "model.width=8",
        "--seeds",
        1,
        "--no-detect",
    ]
    try:
        res = invoke(*args)
        assert res.exit_code == 0, res.output
        body = json.loads((tmp_path / "study" / "report" / "metrics.json").read_text())
        assert [r["name"] for r in body["runs"]] == ["cdcgan"]
        assert body["runs"][0]["latest"]["step"] == 2
        assert body["study"]["variants"]["cdcgan"]["max_steps"] == 2
        assert body["study"]["overrides"] == {"model.width": 8} and body["study"]["seeds"] == [0]
        assert body["study"]["detection"] is None  # --no-detect
        run_cfg = (tmp_path / "study" / "runs" / "cdcgan" / "config.yaml").read_text()
        assert "width: 8" in run_cfg
        res = invoke(*args)  # second time: nothing retrains, nothing is evaluated again
        assert res.exit_code == 0 and "cdcgan seed 0: reusing" in res.output, res.output
        assert "training" not in res.output.split("reusing")[0]
    finally:
        ray.shutdown()

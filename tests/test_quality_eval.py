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


def test_study_adds_inception_fid_and_kid_beside_the_classifier(setup, tmp_path, monkeypatch):
    """`--inception-weights` in the study: FID and KID on the Inception features too, from the
    same fakes, with intervals and rankings; the classifier's figures are unchanged. The real
    Inception weights cannot be downloaded here, so a small network of torch-fidelity's
    interface stands in (quality_helpers.StandInInception); the figures are checked against
    that network's own features."""
    from ganforge.data.memory import load_real
    from ganforge.models import load_model
    from ganforge.quality import metrics as M
    from ganforge.quality.evaluate import generate
    from ganforge.quality.features import extract
    from ganforge.quality.study import StudyOptions, plan, report_study, study_settings
    from tests.quality_helpers import StandInInception, install_stand_in_inception

    root, shards, _ = setup
    weights = install_stand_in_inception(monkeypatch, tmp_path / "pt_inception.pth")
    # One seed and two bootstrap replicates: a 2048-d FID takes seconds on CPU (the intervals
    # over seeds are the same code as the classifier's, tested above).
    opts = StudyOptions(steps=20, variants=("dcgan", "cdcgan"), seeds=(0,))
    out = tmp_path / "study"
    plans, configs = plan(out, str(shards), opts)
    for p in plans:
        make_run(p.run_dir, p.variant, [20], seed=p.seed)
    common = {"num_samples": 40, "classifier": str(root / "clf.pt"), "fid_bootstrap": 2}
    plain = report_study(shards, out, opts, plans, configs, study_settings(**common), False, None)
    s = study_settings(**common, also_inception=str(weights))
    body = report_study(shards, out, opts, plans, configs, s, False, None)
    assert "pt_inception.pth" in body["second_extractor"] and plain["second_extractor"] is None
    run, before = body["runs"][0], plain["runs"][0]
    latest = run["latest"]
    assert latest["fid"] == pytest.approx(before["latest"]["fid"])  # the classifier's: as before
    # Against the stand-in's own features of the same real split and the same fakes.
    net = StandInInception("inception-v3-compat", ["2048"], str(weights))
    real = load_real(shards, "test").images
    images, _ = generate(load_model(latest["checkpoint"]).generator, 40, s.seed)
    fid = M.fid(extract(lambda x: net(x)[0], real), extract(lambda x: net(x)[0], images))
    assert latest["inception_fid"] == pytest.approx(fid, rel=1e-6)
    assert latest["inception_fid"] != pytest.approx(latest["fid"])
    assert latest["inception_fid_se"] > 0 and latest["inception_kid_se"] > 0
    summary = body["study"]["summary"]
    e = summary["estimates"]["inception_fid"]["dcgan"]
    assert e["n"] == 1 and e["lo"] < e["mean"] < e["hi"]  # the bootstrap's interval
    assert "inception_kid_mean" in summary["rankings"]
    assert "inception_fid" not in plain["study"]["summary"]["estimates"]
    claim1 = next(c for c in summary["claims"] if c["claim"] == 1)
    assert any(line.startswith("Inception FID:") for line in claim1["evidence"])
    md = (out / "report" / "report.md").read_text()
    assert "FID (Inception)" in md and "Second feature extractor" in md
    assert "out of sample too" in body["study"]["reference_note"]
    # Separate caches: with and without the second network, the run was evaluated twice.
    assert len(list(out.glob("runs/dcgan/quality/eval-*.json"))) == 2


def test_study_refuses_missing_inception_weights_before_training(tmp_path, monkeypatch):
    import sys

    from tests.quality_helpers import install_stand_in_inception

    common = ["study", "--data", tmp_path, "--steps", 1, "--out", tmp_path / "s"]
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # not installed
    res = invoke(*common, "--inception-weights", tmp_path / "none.pth")
    assert res.exit_code == 2 and "pip install torch-fidelity" in res.output, res.output
    install_stand_in_inception(monkeypatch, tmp_path / "w.pth")
    res = invoke(*common, "--inception-weights", tmp_path / "none.pth")
    assert res.exit_code == 2 and "Inception weights file not found" in res.output, res.output
    assert not (tmp_path / "s" / "runs").exists()


def test_study_with_the_single_process_trainer(setup, tmp_path):
    """`--trainer single --jobs 2`: two runs trained side by side in their own processes (no Ray,
    no DeepSpeed), checkpoints in the usual format, the report over them; a second call reuses."""
    from ganforge.checkpoint import list_checkpoints, read_marker

    root, shards, _ = setup
    out = tmp_path / "study"
    args = ["study", "--data", shards, "--out", out, "--trainer", "single", "--jobs", 2]
    args += ["--variants", "cdcgan", "--variants", "wgan-gp", "--budget", "g-steps"]
    args += ["--steps", 3, "--micro-batch", 8, "--set", "model.width=8", "--seeds", 1]
    args += ["--num-samples", 30, "--classifier", root / "clf.pt", "--no-detect"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    body = json.loads((out / "report" / "metrics.json").read_text())
    assert body["study"]["trainer"] == "single"
    for run, n_critic in zip(body["runs"], (1, 5), strict=True):
        assert run["latest"]["step"] == 3 and run["latest"]["images_seen"] == 3 * n_critic * 8
        ckpts = list_checkpoints(out / "runs" / run["name"] / "checkpoints")
        assert [s for s, _ in ckpts] == [3, 2, 1]
        marker = read_marker(ckpts[0][1])
        assert marker["trainer"] == "single-process" and marker["classes"] == body["classes"]
        logged = (out / "runs" / run["name"] / "metrics.jsonl").read_text().splitlines()
        assert json.loads(logged[-1])["step"] == 3
    # Evaluated two runs at a time too (processes writing the caches): the figures are those of
    # an evaluation in this process.
    from ganforge.quality.compare import evaluate_runs
    from ganforge.quality.study import study_settings

    s = study_settings(num_samples=30, classifier=str(root / "clf.pt"))
    again = evaluate_runs(
        [out / "runs" / r["name"] for r in body["runs"]], shards, tmp_path, s, False
    )
    for a, b in zip(body["runs"], again["runs"], strict=True):
        assert a["latest"]["fid"] == pytest.approx(b["latest"]["fid"], rel=1e-4)
        assert a["latest"]["kid_mean"] == pytest.approx(b["latest"]["kid_mean"], rel=1e-3, abs=1e-6)
    caches = sorted(out.glob("runs/*/quality/eval-*.json"))
    stamps = [c.stat().st_mtime_ns for c in caches]
    res = invoke(*args)
    assert res.exit_code == 0 and "reusing" in res.output and "trained " not in res.output
    assert len(caches) == 2 and [c.stat().st_mtime_ns for c in caches] == stamps


def test_the_single_process_trainer_needs_no_ray_or_deepspeed(setup, tmp_path):
    """In a Python where `import ray` and `import deepspeed` fail (the GPU image has neither)."""
    import subprocess
    import sys

    _, shards, _ = setup
    code = f"""
import sys
sys.modules["ray"] = sys.modules["deepspeed"] = None  # importing either now fails
from ganforge.cluster.single_process import train_single
from ganforge.config import load_config, resolve_config_path
cfg = load_config(resolve_config_path("cwgan-gp"), {{
    "data.urls": {str(shards)!r}, "run_dir": {str(tmp_path / "run")!r}, "train.max_steps": 2,
    "train.micro_batch": 8, "model.width": 8, "train.checkpoint_every": 2}})
print(train_single(cfg))
assert "ray" not in sys.modules or sys.modules["ray"] is None
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    from ganforge.models import load_model

    model = load_model(tmp_path / "run")
    assert model.meta["step"] == 2 and model.conditional and set(model.classes) == set(CLASSES)


def test_the_single_process_trainer_refuses_a_distributed_run(setup, tmp_path):
    """It cannot resume a Ray/DeepSpeed run (nor its own: it restarts those); nothing is lost."""
    from ganforge.cluster.single_process import train_single
    from ganforge.config import ConfigError

    _, shards, _ = setup
    run = make_run(tmp_path / "run", "dcgan", [1])
    overrides = dict(TINY, **{"run_dir": str(run), "data.urls": str(shards)})
    cfg = load_config(resolve_config_path("dcgan"), overrides | {"train.max_steps": 2})
    with pytest.raises(ConfigError, match="distributed trainer"):
        train_single(cfg)
    assert (run / "checkpoints" / "checkpoint_000001").is_dir()


def test_study_status_says_how_far_it_got(setup, tmp_path):
    """`--status`: each run's steps, and only variants with every seed finished are complete."""
    from ganforge.quality.study import StudyOptions, plan

    _, shards, _ = setup
    out = tmp_path / "study"
    opts = StudyOptions(steps=20, variants=("dcgan", "cdcgan"), seeds=(0, 1))
    runs = {p.run_dir.name: p for p in plan(out, str(shards), opts)[0]}
    make_run(runs["dcgan"].run_dir, "dcgan", [10, 20])
    make_run(runs["dcgan-seed1"].run_dir, "dcgan", [10, 20], seed=1)
    make_run(runs["cdcgan"].run_dir, "cdcgan", [10])
    args = ["study", "--data", shards, "--steps", 20, "--out", out, "--status", "--seeds", 2]
    res = invoke(*args, "--variants", "dcgan", "--variants", "cdcgan")
    assert res.exit_code == 0, res.output
    body = json.loads((out / "status.json").read_text())
    assert body["complete_variants"] == ["dcgan"] and body["incomplete_variants"] == ["cdcgan"]
    steps = {r["run"]: (r["steps"], r["finished"]) for r in body["runs"]}
    assert steps == {
        "dcgan": (20, True),
        "cdcgan": (10, False),
        "dcgan-seed1": (20, True),
        "cdcgan-seed1": (0, False),
    }
    assert "partial" in res.output and "not started" in res.output
    assert not (out / "report").exists()  # nothing trained or evaluated


@pytest.mark.parametrize("part", ["2/2", "1", "a/b", "-1/2"])
def test_study_part_must_be_k_of_n(tmp_path, part):
    res = invoke("study", "--data", tmp_path, "--steps", 1, "--out", tmp_path, "--part", part)
    assert res.exit_code == 2 and "expected K/N with 0 <= K < N" in res.output, res.output


@pytest.mark.e2e  # CI trains studies with the single-process trainer (above) for time
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


def test_cache_key_follows_the_reference_inputs_not_its_feature_bits(tmp_path):
    """A study folder moved to another machine keeps its evaluation caches: the key names the
    real images, labels and feature weights, so features that differ in their last bits (other
    threads, kernels, CPU) give the same key, while other images or other weights do not."""
    from ganforge.data.memory import RealImages
    from ganforge.quality.compare import cache_key, reference_identity
    from ganforge.quality.evaluate import EvalSettings, RealReference

    weights = tmp_path / "clf.pt"
    weights.write_bytes(b"weights v1")
    s = EvalSettings(classifier=str(weights))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=gen)
    labels = torch.arange(6) % 2

    def key(images=images, labels=labels, features=None) -> str:
        data = RealImages(images, labels, ["a", "b"], 4, 3)
        feats = torch.ones(6, 5, dtype=torch.float64) if features is None else features
        ref = RealReference(data, feats, None, {})
        return cache_key([], s, "net", reference_identity(ref, s))

    base = key()
    assert key(features=torch.ones(6, 5, dtype=torch.float64) + 1e-12) == base
    other = images.clone()
    other[0, 0, 0, 0] ^= 1
    assert key(images=other) != base
    assert key(labels=1 - labels) != base
    weights.write_bytes(b"weights v2")
    assert key() != base

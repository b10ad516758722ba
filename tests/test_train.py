"""`ganforge train` end to end on a real local Ray cluster with real DeepSpeed engines."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ganforge.checkpoint import list_checkpoints, verify
from ganforge.cluster.launch import run_training
from ganforge.config import ConfigError
from ganforge.models import VARIANTS, load_model
from tests.train_helpers import pack, tiny_config


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return pack(tmp_path_factory.mktemp("data"))


# In CI: one of each family and loss (BCE, WGAN-GP + conditioning, StyleGAN2's lazy R1); the
# others, which share their engines and loop, in the e2e tier (CI's time budget).
CI_VARIANTS = {"dcgan", "cwgan-gp", "stylegan2"}


@pytest.mark.parametrize(
    "variant",
    [v if v in CI_VARIANTS else pytest.param(v, marks=pytest.mark.e2e) for v in sorted(VARIANTS)],
)
def test_variant_trains_and_writes_the_run_dir(variant, shards, tmp_path, ray_cluster):
    run = run_training(tiny_config(variant, shards, tmp_path / "run"), show_progress=False)
    assert (run / "config.yaml").is_file()
    ckpts = list_checkpoints(run / "checkpoints")
    assert [s for s, _ in ckpts] == [3, 2]
    meta = verify(ckpts[0][1])
    cfg = load_model(run).config
    assert meta["images_seen"] == 3 * cfg.loss.n_critic * cfg.train.micro_batch
    # cluster.cpus_per_worker auto: the fixture's 2 CPUs for the one worker, its torch threads.
    assert meta["torch_threads"] == meta["config"]["cluster"]["cpus_per_worker"] == 2
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [
        "step-000002.png",
        "step-000003.png",
    ]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("images_seen", "loss_d", "loss_g", "images_per_s", "input_wait_frac", "lr_g"):
        assert key in records[-1], key
    # A lazy penalty (StyleGAN2's R1, every 16 critic steps) is logged on the steps it ran.
    assert any("gp" in r for r in records) == VARIANTS[variant].has_penalty
    assert all(torch.isfinite(torch.tensor(r["loss_d"])) for r in records)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # TensorBoard: each sample grid as an image beside the scalars, the same pixels as the PNG.
    tb = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    tb.Reload()
    assert [s.step for s in tb.Scalars("train/loss_d")] == [1, 2, 3]
    grids = tb.Images("samples")
    assert [g.step for g in grids] == [2, 3]
    shown = Image.open(io.BytesIO(grids[-1].encoded_image_string)).convert("RGB")
    saved = Image.open(run / "samples" / "step-000003.png").convert("RGB")
    assert np.array_equal(np.asarray(shown), np.asarray(saved))
    loaded = load_model(run)
    if VARIANTS[variant].conditional:
        assert loaded.classes == ["class0", "class1", "class2", "class3"]


def test_resume_is_bitwise_identical(shards, tmp_path, ray_cluster):
    straight = run_training(
        tiny_config("cwgan-gp", shards, tmp_path / "a", **{"train.max_steps": 4}),
        show_progress=False,
    )
    half = tiny_config("cwgan-gp", shards, tmp_path / "b", **{"train.max_steps": 2})
    run_training(half, show_progress=False)
    resumed = run_training(
        tiny_config("cwgan-gp", shards, tmp_path / "b", **{"train.max_steps": 4}),
        resume=True,
        show_progress=False,
    )
    a = torch.load(
        list_checkpoints(straight / "checkpoints")[0][1] / "weights.pt", weights_only=True
    )
    b = torch.load(
        list_checkpoints(resumed / "checkpoints")[0][1] / "weights.pt", weights_only=True
    )
    for part in ("generator", "generator_ema", "discriminator"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"


def test_errors_are_raised_before_workers_start(shards, tmp_path):
    with pytest.raises(ConfigError, match="registered variants"):
        run_training(tiny_config("dcgan", shards, tmp_path / "r", **{"model.variant": "xgan"}))
    with pytest.raises(ConfigError, match="64|resolution|size"):
        run_training(tiny_config("dcgan", shards, tmp_path / "r", **{"model.resolution": 64}))
    with pytest.raises(ConfigError, match="channels"):
        run_training(tiny_config("dcgan", shards, tmp_path / "r", **{"model.channels": 1}))
    with pytest.raises(ConfigError):
        run_training(tiny_config("dcgan", tmp_path / "nowhere", tmp_path / "r"))


def test_run_dir_of_another_config_is_refused(shards, tmp_path):
    """Refused before any worker starts. The run folder stands in for a trained one: its
    config.yaml as a launch writes it (`prepare_run`) and a checkpoint of that config."""
    from ganforge.checkpoint import write_weights_checkpoint
    from ganforge.cluster.launch import prepare_run
    from ganforge.models import build_discriminator, build_generator

    first = prepare_run(tiny_config("dcgan", shards, tmp_path / "r", **{"train.max_steps": 1}))
    cfg = first.config
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    write_weights_checkpoint(first.run.checkpoint(1).path, cfg, g, g, d, 1, 8, first.classes)
    with pytest.raises(ConfigError, match="different config.*model.variant"):
        run_training(tiny_config("wgan-gp", shards, tmp_path / "r"))
    with pytest.raises(ConfigError, match="--resume"):
        run_training(tiny_config("dcgan", shards, tmp_path / "r"), resume=False)


def test_demo_runs_and_a_second_run_shows_the_finished_result(tmp_path, ray_cluster):
    """`ganforge demo` (the README's first command) end to end on the embedded data, cut to 2
    steps; running it again must not fail on the finished run dir (a second `make demo`)."""
    from typer.testing import CliRunner

    from ganforge.cli import app

    args = ["demo", "--out", str(tmp_path / "demo"), "--max-steps", "2"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "Demo finished" in first.output and "serve it:" in first.output
    assert list_checkpoints(tmp_path / "demo" / "checkpoints")[0][0] == 2
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already holds the finished demo" in again.output


def test_relaunching_a_finished_run_is_a_no_op(shards, tmp_path, capsys):
    """A relaunch of a run already at max_steps (a driver that died after its last checkpoint,
    a RayJob retry) returns at once with exit 0 semantics: no error, no Ray, nothing written."""
    import ray

    from ganforge.checkpoint import write_weights_checkpoint
    from ganforge.cluster.launch import prepare_run
    from ganforge.models import build_discriminator, build_generator

    run = tmp_path / "run"
    cfg = tiny_config("dcgan", shards, run, **{"train.max_steps": 4})
    prepare_run(cfg.model_copy(deep=True))  # config.yaml, as the first launch wrote it
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    write_weights_checkpoint(
        run / "checkpoints" / "step-000004", cfg, g, g, d, 4, 32, extra_meta={"world_size": 1}
    )
    was_up = ray.is_initialized()
    assert run_training(cfg, show_progress=False) == run.resolve()
    assert "already at step 4 (train.max_steps=4): nothing to train" in capsys.readouterr().out
    assert ray.is_initialized() is was_up
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4]

"""Serving without HTTP: argument validation, checkpoint refusal at build time, the model pool,
the Serve config file and the CLI's argument parsing. No Ray cluster is started."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import typer
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import CLASSES, make_checkpoint  # noqa: E402

from ganforge.checkpoint import CheckpointError, write_weights_checkpoint  # noqa: E402
from ganforge.config import GanforgeConfig  # noqa: E402
from ganforge.models import build_discriminator, build_generator  # noqa: E402
from ganforge.serve.app import build_app, parse_args  # noqa: E402
from ganforge.serve.model_pool import ModelPool, sample_latents  # noqa: E402
from ganforge.serve.schemas import ApiError, AppArgs, GenerateRequest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cd_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cd")
    make_checkpoint(run, "cdcgan", classes=CLASSES)
    return run


def test_build_app_refuses_corrupt_checkpoint(tmp_path):
    ckpt = make_checkpoint(tmp_path / "bad", "dcgan")
    data = bytearray((ckpt / "weights.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ckpt / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model 'bad'.*(sha256|no valid)"):
        build_app({"models": {"bad": str(ckpt)}})


def test_build_app_refuses_weights_that_do_not_match_config(tmp_path):
    small = GanforgeConfig.model_validate({"model": {"variant": "dcgan", "width": 8}})
    claims = GanforgeConfig.model_validate({"model": {"variant": "dcgan", "width": 16}})
    g, d = build_generator(small.model), build_discriminator(small.model)
    root = write_weights_checkpoint(tmp_path / "ck", claims, g, g, d, 1, 1)
    with pytest.raises(CheckpointError, match="weights do not match the config"):
        build_app({"models": {"m": str(root)}})


def test_build_app_refuses_missing_path():
    with pytest.raises(CheckpointError, match="model 'x'.*no such file"):
        build_app({"models": {"x": "/nonexistent/run"}})


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({}, "models: Field required"),
        ({"models": {}}, "models"),
        ({"models": {"a b": "x"}}, "model name 'a b'"),
        ({"models": {"a": "x"}, "max_batch_size": 0}, "max_batch_size"),
        ({"models": {"a": "x"}, "replicas": 2}, "replicas: Extra inputs are not permitted"),
        ({"models": {"a": "x"}, "gpu": "maybe"}, "gpu"),
        ({"models": {"a": "x"}, "max_ongoing_requests": 4}, "batches could never fill"),
        (
            {"models": {"a": "x"}, "autoscaling": {"min_replicas": 3, "max_replicas": 2}},
            "min_replicas must be <= autoscaling.max_replicas",
        ),
    ],
)
def test_bad_app_args(args, needle):
    with pytest.raises(ValueError, match="invalid ganforge serve arguments") as err:
        build_app(args)
    assert needle in str(err.value)


def test_deployment_options_follow_args(cd_run):
    app = build_app(
        {
            "models": {"cd": str(cd_run)},
            "max_batch_size": 16,
            "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8},
            "max_queued_requests": 10,
            "validate_on_build": False,
        }
    )
    cfg = app._bound_deployment._deployment_config
    assert cfg.max_ongoing_requests == 256  # default max(256, 2 x max_batch_size)
    assert cfg.max_queued_requests == 10
    assert cfg.autoscaling_config.max_replicas == 3
    assert cfg.backpressure_config.status_code == 503


def test_serve_yaml_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((ROOT / "configs/serve.yaml").read_text())
    cfg = ServeDeploySchema.model_validate(raw)
    (app,) = cfg.applications
    assert app.import_path == "ganforge.serve.app:build_app"
    args = parse_args(app.args)  # the args themselves pass our own validation
    assert args.max_batch_size == 32 and args.ongoing_requests >= args.max_batch_size


def test_model_pool_plan_is_deterministic_and_validated(cd_run):
    pool = ModelPool({"cd": str(cd_run)})
    req = GenerateRequest.model_validate({"model": "cd", "labels": ["frog", 0], "seed": 7})
    a, b = pool.plan(req, 64), pool.plan(req, 64)
    assert torch.equal(a.z, b.z) and a.labels == [2, 0]
    labels = torch.tensor(a.labels)
    imgs = pool.generate("cd", a.z, labels)
    assert imgs.shape == (2, 3, 32, 32) and imgs.abs().max() <= 1
    # Generating one image alone or inside a bigger batch gives the same pixels.
    alone = pool.generate("cd", a.z[:1], labels[:1])
    assert torch.allclose(alone, imgs[:1], atol=1e-5)
    with pytest.raises(ApiError, match="limit is 1"):
        pool.plan(req, 1)
    with pytest.raises(ApiError, match="unknown model"):
        pool.get("nope")


def test_truncated_latents_stay_in_bounds():
    z = sample_latents(256, 64, torch.Generator().manual_seed(0), 0.7)
    assert z.abs().max() <= 0.7 and z.std() > 0.2


def test_cli_model_parsing():
    from ganforge.serve.commands import parse_models

    assert parse_models(["a=/x/y", "/runs/demo"]) == {"a": "/x/y", "demo": "/runs/demo"}
    with pytest.raises(typer.BadParameter, match="given twice"):
        parse_models(["a=/x", "a=/y"])
    with pytest.raises(typer.BadParameter, match="NAME=PATH"):
        parse_models(["=/x"])


def test_cli_refuses_bad_checkpoint_before_starting_ray(tmp_path):
    from typer.testing import CliRunner

    from ganforge.cli import app

    r = CliRunner().invoke(app, ["serve", "--model", f"m={tmp_path / 'missing'}"])
    assert r.exit_code == 2
    assert "model 'm'" in r.output and "no such file" in r.output


def test_cli_refuses_a_bad_detector_before_starting_ray(tmp_path, cd_run):
    """A detector that is not one (garbage weights, a record of another format) stops
    `ganforge serve` with `error:` and exit 2, before Ray starts."""
    from typer.testing import CliRunner

    from ganforge.cli import app

    bad = tmp_path / "det.pt"
    bad.write_bytes(b"not a torch file")
    (tmp_path / "det.json").write_text(json.dumps({"format": "something-else"}))
    cmd = ["serve", "--model", f"m={cd_run}", "--detector"]
    r = CliRunner().invoke(app, [*cmd, str(bad)])
    assert (
        r.exit_code == 2 and "error: " in r.output and "not a ganforge detector record" in r.output
    )
    r = CliRunner().invoke(app, [*cmd, str(tmp_path / "missing.pt")])
    assert r.exit_code == 2 and "not found" in r.output and "Traceback" not in r.output


def test_cli_defaults_are_the_app_defaults():
    """`ganforge serve` takes its options' defaults and bounds from AppArgs' fields
    (`serve.commands.app_option`), and its --help shows them."""
    import click

    from ganforge.cli import app

    serve_cmd = typer.main.get_command(app).commands["serve"]
    cli = {p.name: p.default for p in serve_cmd.params}
    field = {"replicas": "num_replicas", "batch_wait_s": "batch_wait_timeout_s"}
    names = ["replicas", "gpu", "max_batch_size", "batch_wait_s", "max_images_per_request"]
    names += ["max_upload_bytes", "max_ongoing_requests", "max_queued_requests", "num_cpus"]
    names += ["api_token_file", "detector"]
    for name in names:
        assert cli[name] == AppArgs.model_fields[field.get(name, name)].default, name
    # What --help prints for each option: the field's default and its lower bound.
    ctx = click.Context(serve_cmd, info_name="serve")
    shown = {p.name: p.get_help_record(ctx)[1] for p in serve_cmd.params}
    for name in names:
        info = AppArgs.model_fields[field.get(name, name)]
        if info.default is not None and not isinstance(info.default, bool):
            assert f"[default: {info.default};" in shown[name], (name, shown[name])
        lower = [m.ge for m in info.metadata if getattr(m, "ge", None) is not None]
        if lower:
            assert f"{lower[0]}<=x" in shown[name] or f"x>={lower[0]}" in shown[name], name


def test_cli_passes_max_ongoing_requests_to_the_app_checks(tmp_path):
    """The flag reaches AppArgs: a limit below one batch is refused, in plain words."""
    from typer.testing import CliRunner

    from ganforge.cli import app

    cmd = ["serve", "--model", f"m={tmp_path}", "--max-batch-size", "64"]
    r = CliRunner().invoke(app, [*cmd, "--max-ongoing-requests", "32"])
    assert r.exit_code == 2
    assert "invalid ganforge serve arguments: max_ongoing_requests=32 is below 64" in r.output
    assert "body:" not in r.output and "Value error" not in r.output


def test_probe_tells_a_broken_model_from_a_working_one(cd_run):
    pool = ModelPool({"cd": str(cd_run)})
    pool.probe()  # loaded models pass
    first = pool.models["cd"].generator.net[0]
    weight = first.weight.data
    first.weight.data = weight.new_full(weight.shape, float("nan"))
    with pytest.raises(RuntimeError, match="model 'cd' produces non-finite images"):
        pool.probe()
    first.weight.data = weight[:1]  # a persistent fault: the layer lost most of its weights
    with pytest.raises(RuntimeError, match="model 'cd' cannot run a 1-image forward pass"):
        pool.probe()
    first.weight.data = weight
    pool.probe()


@pytest.mark.parametrize("channels", [1, 3])
def test_png_codec_matches_the_reference_conversion_and_decodes_exactly(channels):
    import io

    import numpy as np
    from PIL import Image

    from ganforge.images import to_uint8
    from ganforge.serve import codecs

    x = torch.rand(4, channels, 32, 17, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2
    x[0, 0, 0, :5] = torch.tensor([-1.0, 1.0, 0.0, 1 / 255 - 1, 3 / 255 - 1])  # edges, halves
    arr = to_uint8(x)
    reference = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert np.array_equal(arr, reference.numpy())
    mode = "L" if channels == 1 else "RGB"
    for a in arr:
        img = Image.open(io.BytesIO(codecs.png(a)))
        assert (img.format, img.mode, img.size) == ("PNG", mode, (17, 32))
        assert np.array_equal(np.asarray(img).reshape(a.shape), a)


def test_a_seed_keeps_its_latents():
    """Seeds handed out by earlier versions must still give the same images: the latents of
    `sample_latents` are those of `empty().normal_(generator)`, the original draw."""
    expected = torch.empty(5, 64).normal_(generator=torch.Generator().manual_seed(11))
    got = sample_latents(5, 64, torch.Generator().manual_seed(11), None)
    assert torch.equal(got, expected)


def test_query_numbers_are_the_request_number_fields():
    """`GET /v1/generate` turns these query parameters into numbers; the table restates the
    request model's numeric fields, and this pins it to them."""
    from ganforge.serve.schemas import _QUERY_NUMBERS

    kinds = {"integer": int, "number": float}
    numbers = {}
    for name, prop in GenerateRequest.model_json_schema(by_alias=True)["properties"].items():
        types = {t.get("type") for t in prop.get("anyOf", [prop])} - {"null"}
        if len(types) == 1 and types <= kinds.keys():
            numbers[name] = kinds[types.pop()]
    assert numbers == _QUERY_NUMBERS

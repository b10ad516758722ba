"""StyleGAN2 and conditional StyleGAN2: the networks, the mean-w truncation, lazy R1 on reals,
the EMA measured in images, and serving's truncation hook (fast, in process); then both variants
trained through `ganforge train`, resumed bitwise, and served with truncation over real HTTP
(slow, one Ray session for the module).

The lazy schedule of R1 through the DeepSpeed engines is also tested fast in test_engines.py
(that module owns the one process group a pytest session may have).
"""

from __future__ import annotations

import base64
import io
import json
import math
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import serve_helpers  # noqa: E402
from serve_helpers import CLASSES, free_port, make_checkpoint  # noqa: E402

from ganforge import kernels  # noqa: E402
from ganforge.cluster.ema import GeneratorEMA  # noqa: E402
from ganforge.config import ConfigError, LossConfig, ModelConfig, load_config  # noqa: E402
from ganforge.models import VARIANTS, build_discriminator, build_generator, check_recipe  # noqa: E402
from ganforge.models.regularisers import CriticBatch, R1Penalty  # noqa: E402
from ganforge.models.stylegan_generator import stylegan_channels  # noqa: E402
from ganforge.models.stylegan_layers import MappingNetwork  # noqa: E402
from ganforge.serve.model_pool import ModelPool  # noqa: E402
from ganforge.serve.schemas import ApiError, GenerateRequest  # noqa: E402

VARIANT_NAMES = ("stylegan2", "cstylegan2")


def _model(variant: str, resolution: int = 32, channels: int = 3, **kw) -> ModelConfig:
    base = dict(width=8, z_dim=16, embed_dim=8, num_classes=5, kernels="torch")
    return ModelConfig(variant=variant, resolution=resolution, channels=channels, **base | kw)


def _expected_params(m: ModelConfig, conditional: bool) -> tuple[int, int]:
    """(G, D) parameter counts written out from the architecture the modules document."""
    octaves = [2**i for i in range(2, int(math.log2(m.resolution)) + 1)]  # 4 .. resolution
    ch = {r: stylegan_channels(m.resolution, m.width, r) for r in octaves}
    w, k, c = m.z_dim, m.num_classes, m.channels

    def fc(i, o):
        return i * o + o

    mapping = fc(m.z_dim + (m.embed_dim if conditional else 0), w) + fc(w, w)
    mapping += fc(k, m.embed_dim) if conditional else 0
    g = mapping
    for r in octaves:
        o = ch[r]
        if r == 4:
            g += o * 16  # the constant input
        else:  # conv0: affine, 3x3 weight, bias, noise strength
            g += fc(w, ch[r // 2]) + o * ch[r // 2] * 9 + o + 1
        g += fc(w, o) + o * o * 9 + o + 1  # conv1
        g += fc(w, o) + c * o + c  # toRGB
    c4 = ch[4]
    d = c * ch[m.resolution] + ch[m.resolution]  # fromRGB
    for r in octaves[:0:-1]:  # resolution .. 8
        d += ch[r] * ch[r] * 9 + ch[r] + ch[r] * ch[r // 2] * 9 + ch[r // 2]
    d += (c4 + 1) * c4 * 9 + c4 + fc(16 * c4, c4)  # epilogue: conv on [h, stddev], fc
    d += fc(c4, c4 if conditional else 1)
    d += fc(k, c4) + 2 * fc(c4, c4) if conditional else 0  # the label mapping (cmap)
    return g, d


# --- networks --------------------------------------------------------------------------------


def test_channels_follow_width_with_a_cap():
    assert [stylegan_channels(32, 8, r) for r in (4, 8, 16, 32)] == [32, 32, 16, 8]
    assert [stylegan_channels(64, 8, r) for r in (4, 8, 16, 32, 64)] == [64, 64, 32, 16, 8]


@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("resolution,channels", [(32, 3), (32, 1), (64, 3), (64, 1)])
def test_shapes_and_parameter_counts(variant, resolution, channels):
    m = _model(variant, resolution, channels)
    conditional = VARIANTS[variant].conditional
    g, d = build_generator(m), build_discriminator(m)
    labels = torch.randint(0, 5, (4,)) if conditional else None
    x = g(torch.randn(4, 16), labels)
    assert x.shape == (4, channels, resolution, resolution)
    assert d(x, labels).shape == (4,)
    n_g = sum(p.numel() for p in g.parameters())
    n_d = sum(p.numel() for p in d.parameters())
    assert (n_g, n_d) == _expected_params(m, conditional)
    # Equalised learning rate: weights are stored at unit scale, the gain applied at run time.
    assert 0.8 < g.blocks[-1].conv1.weight.std() < 1.2
    assert 0.8 < d.blocks[0].conv0.weight.std() < 1.2


def test_models_call_the_kernels_modulated_conv_with_the_configured_backend(monkeypatch):
    calls = []
    real = kernels.modulated_conv2d

    def spy(*args, **kwargs):
        calls.append((kwargs.get("up", 1), kwargs["demodulate"], kwargs["backend"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "modulated_conv2d", spy)
    g = build_generator(_model("stylegan2", kernels="torch"))
    g(torch.randn(2, 16))
    # 4 octaves: 4 toRGB (no demodulation), 4 + 3 convs, 3 of them upsampling.
    assert sorted(calls) == sorted(
        [(1, False, "torch")] * 4 + [(1, True, "torch")] * 4 + [(2, True, "torch")] * 3
    )


def test_conditional_variant_depends_on_the_label():
    m = _model("cstylegan2")
    g, d = build_generator(m).eval(), build_discriminator(m).eval()
    z = torch.randn(3, 16)
    a, b = g(z, torch.tensor([0, 0, 0])), g(z, torch.tensor([4, 4, 4]))
    assert (a - b).abs().mean() > 1e-3
    assert not torch.allclose(d(a, torch.tensor([0, 0, 0])), d(a, torch.tensor([4, 4, 4])))
    with pytest.raises(ValueError, match="conditional"):
        g(z)
    with pytest.raises(ValueError, match="conditional"):
        d(a)


def test_noise_is_random_in_training_and_fixed_in_eval():
    g = build_generator(_model("stylegan2"))
    for layer in (g.blocks[1].conv0, g.blocks[-1].conv1):
        torch.nn.init.ones_(layer.noise_strength)
    z = torch.randn(2, 16)
    assert not torch.equal(g(z), g(z))  # fresh noise per training forward
    g.eval()
    assert torch.equal(g(z), g(z))  # the fixed noise buffers: deterministic sampling/serving


def test_minibatch_stddev_couples_training_batches_but_not_eval_scores():
    d = build_discriminator(_model("stylegan2"))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    other = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        first = d(x)[0]
        mixed = d(torch.cat([x[:1], other[1:]]))[0]
        assert not torch.allclose(first, mixed)  # the group's stddev is a feature
        d.eval()  # the tracked mean of that feature: an image's score is its own
        alone, batched = d(x[:1]), d(torch.cat([x[:1], other]))
    torch.testing.assert_close(alone, batched[:1], atol=1e-5, rtol=1e-5)
    assert d.mbstd.std_updates == 2 and d.mbstd.std_avg > 0


def test_minibatch_stddev_of_identical_fp16_samples_has_a_finite_gradient():
    """A group of identical images has zero variance: in fp16 the 1e-8 under the sqrt used to
    underflow, and sqrt's gradient at 0 is inf. The statistic is computed in fp32."""
    from ganforge.models.stylegan_discriminator import MinibatchStdDev

    layer = MinibatchStdDev(group_size=4)
    x = torch.rand(1, 8, 4, 4).repeat(4, 1, 1, 1).half().requires_grad_()
    y = layer(x)
    assert y.dtype == torch.float16 and y.shape == (4, 9, 4, 4)
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()


# --- truncation toward the tracked mean w ----------------------------------------------------


def test_mapping_tracks_the_mean_w_and_truncates_toward_it():
    torch.manual_seed(0)
    m = MappingNetwork(16, 12, w_avg_beta=0.5)
    z = torch.randn(32, 16)
    w = m(z)  # training mode: the first update moves w_avg from 0 halfway to the batch mean
    torch.testing.assert_close(m.w_avg, 0.5 * w.mean(0).detach())
    for _ in range(40):
        m(z)
    torch.testing.assert_close(m.w_avg, w.mean(0).detach())
    m.eval()
    w_avg = m.w_avg.clone()
    w = m(z)
    assert torch.equal(m.w_avg, w_avg)  # eval forwards leave the mean alone
    torch.testing.assert_close(m(z, truncation=0.0), w_avg.expand(32, -1))
    assert torch.equal(m(z, truncation=1.0), w)
    torch.testing.assert_close(m(z, truncation=0.25), w_avg + 0.25 * (w - w_avg))
    psi = torch.linspace(0, 1, 32)  # one per sample, as serving batches them
    torch.testing.assert_close(m(z, truncation=psi), w_avg + psi[:, None] * (w - w_avg))


def test_conditional_mapping_truncates_toward_each_class_mean():
    torch.manual_seed(0)
    m = MappingNetwork(16, 12, num_classes=3, embed_dim=4, w_avg_beta=0.5)
    z, labels = torch.randn(30, 16), torch.arange(30) % 3
    for _ in range(40):
        w = m(z, labels).detach()
    means = torch.stack([w[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(m.w_avg_class, means)
    torch.testing.assert_close(m.w_avg, w.mean(0))
    m.eval()
    torch.testing.assert_close(m(z, labels, truncation=0.0), means[labels])
    torch.testing.assert_close(
        m(z, labels, truncation=0.5), means[labels] + 0.5 * (w - means[labels])
    )


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_generator_truncation_collapses_to_the_mean_image(variant):
    conditional = VARIANTS[variant].conditional
    g = build_generator(_model(variant))
    labels = torch.tensor([1, 1, 1, 1]) if conditional else None
    for _ in range(3):
        g(torch.randn(10, 16), torch.arange(10) % 5 if conditional else None)
    assert g.mapping.w_avg.abs().sum() > 0
    g.eval()
    z = torch.randn(4, 16)
    full = g(z, labels)
    assert torch.equal(g(z, labels, truncation=1.0), full)
    spread = [g(z, labels, truncation=psi).std(dim=0).mean() for psi in (1.0, 0.5, 0.0)]
    assert spread[0] > spread[1] > spread[2] and spread[2] < 1e-5  # psi=0: every z -> the mean
    if conditional:  # toward each class's mean w: psi=0 still tells the classes apart
        per_class = g(z, torch.tensor([0, 1, 2, 3]), truncation=0.0)
        assert (per_class[0] - per_class[1]).abs().mean() > 1e-3
    assert type(g).truncation_space == "w"


# --- lazy R1 on reals ------------------------------------------------------------------------


def test_r1_is_half_gamma_times_the_interval_on_reals_only():
    m = _model("stylegan2")
    d = build_discriminator(m)
    reg = R1Penalty.from_config(LossConfig(r1_gamma=0.1, r1_every=4), m)
    assert (reg.weight, reg.every) == (0.05, 4)
    assert R1Penalty.from_config(LossConfig(r1_gamma=0.0), m) is None
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    # Fakes and interpolation weights that would poison any term computed from them.
    nan = torch.full_like(real, float("nan"))
    batch = CriticBatch(lambda x: d(x).float(), real, nan, torch.full((4,), float("nan")))
    out = reg.penalty(batch, reg.weight * reg.every)
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x).sum(), x)
    expected = 0.05 * 4 * grad.square().sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(out.value, expected)
    torch.testing.assert_close(out.grad_norm, grad.flatten(1).norm(dim=1).mean())
    out.value.backward()  # the penalty's double backward reaches D's weights
    assert d.fromrgb.weight.grad is not None and d.fromrgb.weight.grad.abs().sum() > 0


def test_recipe_needs_r1_and_other_variants_refuse_it():
    sg = load_config(None, VARIANTS["stylegan2"].recipe())
    assert (sg.loss.r1_gamma, sg.loss.r1_every) == (0.01, 16)
    sg.loss.r1_gamma = 0.0
    with pytest.raises(ValueError, match="r1_gamma must be > 0"):
        check_recipe(sg.model, sg.loss)
    dc = load_config(None, VARIANTS["dcgan"].recipe() | {"loss.r1_gamma": 0.01})
    with pytest.raises(ValueError, match="r1_gamma must be 0"):
        check_recipe(dc.model, dc.loss)
    with pytest.raises(ConfigError, match="ema_rampup needs model.ema_kimg"):
        load_config(None, {"model.ema_rampup": 0.05})


def test_the_study_compares_all_seven_by_default(tmp_path):
    import inspect

    from ganforge.quality.commands import study_cmd
    from ganforge.quality.study import DEFAULT_VARIANTS, StudyOptions, plan

    assert set(DEFAULT_VARIANTS) == set(VARIANTS) and len(DEFAULT_VARIANTS) == 7
    cli_default = inspect.signature(study_cmd).parameters["variants"].default.default
    assert tuple(cli_default) == DEFAULT_VARIANTS
    plans, configs = plan(tmp_path, "shards", StudyOptions(steps=40))
    by = {p.variant: p for p in plans}
    assert by["cstylegan2"].max_steps == 40 and by["wgan-gp"].max_steps == 8
    assert configs[by["stylegan2"].run_dir].loss.r1_gamma == 0.01


# --- the G EMA measured in images ------------------------------------------------------------


def test_ema_half_life_is_measured_in_images():
    g = torch.nn.Linear(2, 2)
    ema = GeneratorEMA(g, 0.999, half_life_images=1000.0, batch=10)
    assert ema.current_decay() == 0.5 ** (10 / 1000)
    twice = GeneratorEMA(g, 0.999, half_life_images=1000.0, batch=20)
    assert math.isclose(twice.current_decay(), ema.current_decay() ** 2)  # per image, not step
    ramped = GeneratorEMA(g, 0.999, half_life_images=1000.0, rampup=0.05, batch=10)
    assert ramped.current_decay() == 0.0  # nothing seen yet: the first update copies
    ramped.updates = 100  # 1000 images seen: half-life capped at 0.05 x 1000 = 50 images
    assert math.isclose(ramped.current_decay(), 0.5 ** (10 / 50))
    ramped.updates = 10_000  # 0.05 x 100k images > 1000: the configured half-life
    assert ramped.current_decay() == ema.current_decay()
    assert GeneratorEMA(g, 0.9).current_decay() == 0.9  # without a half-life: ema_decay


# --- serving's truncation hook (no HTTP) -----------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> ModelPool:
    root = tmp_path_factory.mktemp("pool")
    runs = {
        "sg": make_checkpoint(root / "sg", "cstylegan2", classes=CLASSES),
        "dc": make_checkpoint(root / "dc", "dcgan"),
    }
    return ModelPool({k: str(v) for k, v in runs.items()})


def test_pool_truncates_stylegan_in_w_and_others_in_z(pool):
    sg = pool.get("sg")
    assert sg.truncates_in_w and not pool.get("dc").truncates_in_w
    body = {"model": "sg", "class": "cat", "count": 4, "seed": 5}
    plain = pool.plan(GenerateRequest.model_validate(body), 64)
    trunc = pool.plan(GenerateRequest.model_validate(body | {"truncation": 0.001}), 64)
    assert torch.equal(plain.z, trunc.z)  # z is drawn untruncated; psi travels with the plan
    assert (plain.truncation, trunc.truncation) == (None, 0.001)
    labels = torch.tensor(trunc.labels)
    full = pool.generate("sg", trunc.z, labels)
    near_mean = pool.generate("sg", trunc.z, labels, torch.full((4,), 0.001))
    assert near_mean.std(dim=0).mean() < 0.01 * full.std(dim=0).mean()
    # psi=1 in a mixed batch leaves an image exactly as untruncated.
    mixed = pool.generate("sg", trunc.z, labels, torch.tensor([1.0, 0.001, 1.0, 0.001]))
    assert torch.equal(mixed[0], full[0]) and torch.equal(mixed[1], near_mean[1])
    with pytest.raises(ApiError, match=r"psi in \(0, 1\]") as err:
        pool.plan(GenerateRequest.model_validate(body | {"truncation": 2.0}), 64)
    assert err.value.status == 422
    dc = pool.plan(
        GenerateRequest.model_validate({"model": "dc", "count": 64, "truncation": 0.5}), 64
    )
    assert dc.truncation is None and dc.z.abs().max() <= 0.5


# --- trained through `ganforge train`, resumed, served (slow) --------------------------------

TINY = {
    "data.num_workers": 0,
    "data.shuffle_buffer": 16,
    "model.width": 8,
    "model.z_dim": 16,
    "model.embed_dim": 8,
    "model.kernels": "torch",
    "train.micro_batch": 8,
    "train.log_every": 1,
    "train.sample_every": 2,
    "train.checkpoint_every": 2,
    "cluster.cpus_per_worker": 1,
    "loss.r1_every": 2,  # lazy R1 on critic steps 0, 2, ...: visible in four steps
}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="ERROR")
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def _train(variant: str, shards: Path, run: Path, steps: int, resume: bool = False) -> None:
    from typer.testing import CliRunner

    from ganforge.cli import app

    args = ["train", "--config", variant, "--data", str(shards), "--run-dir", str(run)]
    args += ["--max-steps", str(steps), "--no-progress", "--resume" if resume else "--no-resume"]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per variant: a straight 4-step run, and 2 steps + a resume to 4, through the CLI."""
    from tests.train_helpers import pack

    root = tmp_path_factory.mktemp("stylegan-runs")
    shards = pack(root)
    runs = {}
    for variant in VARIANT_NAMES:
        straight, resumed = root / f"{variant}-a", root / f"{variant}-b"
        _train(variant, shards, straight, 4)
        _train(variant, shards, resumed, 2)
        _train(variant, shards, resumed, 4, resume=True)
        runs[variant] = (straight, resumed)
    return runs


def _weights(run: Path) -> dict:
    from ganforge.checkpoint import list_checkpoints

    step, ckpt = list_checkpoints(run / "checkpoints")[0]
    assert step == 4
    return torch.load(ckpt / "weights.pt", weights_only=True)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_trains_through_ganforge_train_and_resumes_bitwise(trained, variant):
    straight, resumed = trained[variant]
    a, b = _weights(straight), _weights(resumed)
    for part in ("generator", "generator_ema", "discriminator"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:  # parameters and buffers: mean w, noise, the stddev statistic
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert "mapping.w_avg" in a["generator_ema"] and a["generator_ema"]["mapping.w_avg"].any()
    records = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # One critic step per generator step, R1 every 2nd: on steps 1 and 3 only.
    assert ["gp" in r for r in records] == [True, False, True, False]
    assert all(math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"]) for r in records)
    assert sorted(p.name for p in (straight / "samples").glob("*.png")) == [
        "step-000002.png",
        "step-000004.png",
    ]


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.int16)


@pytest.mark.e2e
@pytest.mark.slow
def test_serves_both_with_truncation_over_http(trained, ray_session):
    """Both trained models in one Serve app on loopback: generate with and without truncation,
    a psi near 0 collapses every seed to the mean-w image, psi > 1 is a 422, score works."""
    from ray import serve

    from ganforge.serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    models = {v: str(runs[0]) for v, runs in trained.items()}
    serve.run(build_app({"models": models, "num_cpus": 0.5}), name="sg", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    serve_helpers.wait_ready(url + "/healthz")
    with httpx.Client(base_url=url, timeout=60) as c:
        listed = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert set(listed) == set(VARIANT_NAMES) and listed["cstylegan2"]["conditional"]
        for variant in VARIANT_NAMES:
            body = {"model": variant, "count": 3, "seed": 11}
            if variant == "cstylegan2":
                body["class"] = "class1"
            plain = c.post("/v1/generate", json=body)
            assert plain.status_code == 200, plain.text
            images = [_decode(s) for s in plain.json()["images"]]
            near_mean = []
            for seed in (11, 12):
                r = c.post("/v1/generate", json=body | {"seed": seed, "truncation": 1e-4})
                assert r.status_code == 200, r.text
                near_mean += [_decode(s) for s in r.json()["images"]]
            # Every image at psi ~ 0 is the mean-w image (up to PNG rounding), unlike plain ones.
            assert max(np.abs(x - near_mean[0]).max() for x in near_mean) <= 1
            assert max(np.abs(x - images[0]).max() for x in images[1:]) > 1
            again = c.post("/v1/generate", json=body | {"truncation": 0.7})
            assert again.status_code == 200 and again.json()["images"] != plain.json()["images"]
            bad = c.post("/v1/generate", json=body | {"truncation": 1.5})
            assert bad.status_code == 422 and "psi in (0, 1]" in bad.json()["detail"]
            png = base64.b64decode(plain.json()["images"][0])
            r = c.post("/v1/score", data={"model": variant}, files=[("files", ("a.png", png))])
            assert r.status_code == 200, r.text
            assert r.json()["score_kind"] == "logit"
            assert math.isfinite(r.json()["scores"][0]["score"])
    serve.delete("sg")

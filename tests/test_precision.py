"""Mixed precision (bf16, fp16) on CPU: what DeepSpeed 0.19's CPU accelerator allows, and that
ganforge's engines train in it. Real DeepSpeed engines on a one-rank gloo group throughout.

What was found on this stack (each fact is checked below):
- bf16: the CPU accelerator supports it (`is_bf16_supported()`), and every variant trains in real
  bf16 engines on CPU; only WGAN's weight clipping refuses it (fp32 master weights undo a clamp).
- fp16: the CPU accelerator accepts it only where oneDNN has fp16 kernels for the CPU
  (`torch.ops.mkldnn._is_mkldnn_fp16_supported()`, e.g. AMX-FP16); elsewhere DeepSpeed raises
  "Type fp16 is not supported on your device", and the config refuses fp16 without a GPU. The
  closest path tested here: the accelerator's capability answer is patched to True (the only mock,
  a hardware capability), and DeepSpeed's real fp16 optimizer and dynamic loss scaler then run the
  engines on torch's CPU fp16 kernels.
- fp16 at ZeRO stage 0: DeepSpeed never multiplies the loss by the loss scale but still divides
  the gradients by it; the config refuses it, and a tripwire test says when DeepSpeed fixes it.
- fp16 and the penalty's double backward: GroupNorm's create_graph backward overflowed in fp16
  (NaN penalty before any loss scaling) until the critic's norms computed in fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ganforge.cluster.engines import GANEngines
from ganforge.config import ConfigError, GanforgeConfig, load_config
from ganforge.models import get_variant, list_variants
from ganforge.models.regularisers import CriticBatch, WeightClipping

pytestmark = pytest.mark.usefixtures("deepspeed_group")  # the session's gloo group (conftest)

CPU = torch.device("cpu")
TINY = {"model.width": 8, "model.z_dim": 16, "model.kernels": "torch", "train.micro_batch": 4}
PENALISED = [v for v in list_variants() if get_variant(v).has_penalty]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# The penalty of a low-precision critic against fp32 on the same (bf16-representable) weights and
# inputs, one row per dtype: (penalty rtol, per-sample gradient-norm rtol, relative L2 error of
# the penalty's gradient with respect to D's parameters, i.e. the second-order backward).
# Worst seen over seeds 0-2 for wgan-gp, cwgan-gp, stylegan2 and cstylegan2 (batch 8):
# bf16 1.5e-2, 4.3e-3, 7.6e-2; fp16 6.3e-3, 1.7e-3, 4.3e-2. The limits leave about 3x.
PENALTY_TOLERANCE = {
    # 8-bit mantissa (unit roundoff 2^-9); the penalty (|grad| - 1)^2 amplifies norm errors
    # when the norm is near 1, so its rtol is looser than the norm's.
    "bf16": (5e-2, 1.5e-2, 0.2),
    # 11-bit mantissa but a range that ends at 65504: fine once the critic's norms compute in
    # fp32 and the outer backward is loss-scaled (see the test).
    "fp16": (2e-2, 5e-3, 0.15),
}


def _config(variant: str, **overrides) -> GanforgeConfig:
    """The variant's published recipe at a tiny size (registry-driven: new variants included)."""
    spec = get_variant(variant)
    tree = spec.recipe() | TINY | {"model.num_classes": 3 if spec.conditional else 0}
    return load_config(None, tree | overrides)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1, torch.tensor([0, 1, 2, 0])


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def _cast_params(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """What DeepSpeed 0.19's bf16/fp16 engines do to a module: parameters only, buffers stay."""
    for p in module.parameters():
        p.data = p.data.to(dtype)
    return module


@pytest.fixture
def fp16_capable(monkeypatch):
    """Let DeepSpeed's CPU accelerator say yes to fp16 (it asks oneDNN whether this CPU has fp16
    kernels; torch's own CPU fp16 kernels work either way). The only mock in this module."""
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: True)


def _fp16_config(variant: str, zero_stage: int = 1) -> GanforgeConfig:
    """fp16 as a GPU run's config holds it; set after validation, which refuses fp16 on CPU."""
    cfg = _config(variant, **{"train.zero_stage": zero_stage})
    cfg.train.precision = "fp16"
    return cfg


# -- what the config and DeepSpeed's CPU accelerator allow ---------------------------------------
def test_config_allows_bf16_on_cpu_and_refuses_fp16_with_the_reason():
    assert load_config(None, {"train.precision": "bf16"}).train.precision == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a GPU.*oneDNN fp16 kernels.*bf16"):
        load_config(None, {"train.precision": "fp16"})
    gpu_fp16 = {"train.precision": "fp16", "cluster.gpu": True}
    with pytest.raises(ConfigError, match=r"zero_stage >= 1.*PR 8393"):
        load_config(None, gpu_fp16)
    assert load_config(None, gpu_fp16 | {"train.zero_stage": 1}).train.zero_stage == 1
    for variant in list_variants():
        if WeightClipping in get_variant(variant).regularisers:
            with pytest.raises(ConfigError, match="clip_value.*fp32 master weights"):
                _config(variant, **{"train.precision": "bf16"})


def test_deepspeed_cpu_accelerator_supports_bf16_and_fp16_only_with_onednn_fp16():
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    from ganforge.cluster.deepspeed_config import engine_config

    acc = get_accelerator()
    if acc.device_name() != "cpu":
        pytest.skip(f"DeepSpeed picked the {acc.device_name()} accelerator, not the CPU one")
    assert acc.is_bf16_supported()
    onednn_fp16 = torch.ops.mkldnn._is_mkldnn_fp16_supported()
    assert bool(acc.is_fp16_supported()) == onednn_fp16
    if onednn_fp16:
        pytest.skip("this CPU has oneDNN fp16 kernels: DeepSpeed accepts fp16 here")
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="Type fp16 is not supported on your device"):
        deepspeed.initialize(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            config=engine_config(_fp16_config("wgan-gp").train, 1),
            dist_init_required=False,
        )


# -- the critic's norms under bf16/fp16 ---------------------------------------------------------
def test_fp32_norms_match_torch_in_fp32_and_survive_fp16_double_backward():
    """FP32BatchNorm2d / FP32GroupNorm are torch's layers, bitwise, for fp32; with DeepSpeed's
    cast (bf16/fp16 parameters, fp32 buffers) they run where torch's BatchNorm refuses, and
    GroupNorm's create_graph backward stays finite in fp16 where torch's overflows."""
    from ganforge.models.layers import FP32BatchNorm2d, FP32GroupNorm

    torch.manual_seed(0)
    x = torch.randn(4, 6, 8, 8) * 0.02  # a DCGAN-initialised critic's activations are this small
    for ours, theirs in (
        (FP32BatchNorm2d(6), torch.nn.BatchNorm2d(6)),
        (FP32GroupNorm(1, 6), torch.nn.GroupNorm(1, 6)),
    ):
        theirs.load_state_dict(ours.state_dict())
        for train in (True, False):
            ours.train(train), theirs.train(train)
            assert torch.equal(ours(x), theirs(x))
        assert all(torch.equal(a, b) for a, b in zip(ours.buffers(), theirs.buffers(), strict=True))

    bn = _cast_params(FP32BatchNorm2d(6), torch.bfloat16)
    with pytest.raises(RuntimeError, match="expected scalar type"):
        _cast_params(torch.nn.BatchNorm2d(6), torch.bfloat16)(x.bfloat16())
    assert bn(x.bfloat16()).dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32

    def input_grad(norm: torch.nn.Module) -> torch.Tensor:
        h = x.half().requires_grad_(True)
        weights = torch.randn(4, 6, 8, 8, generator=torch.Generator().manual_seed(1))
        return torch.autograd.grad((norm(h).float() * weights).sum(), h, create_graph=True)[0]

    assert not torch.isfinite(input_grad(torch.nn.GroupNorm(1, 6).half())).all()
    assert torch.isfinite(input_grad(_cast_params(FP32GroupNorm(1, 6), torch.float16))).all()


# -- bf16 training -----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list_variants())
def test_a_short_bf16_run_trains_every_variant(variant):
    """Two critic + generator rounds in real bf16 engines: finite losses and penalties, bf16
    weights that moved and stayed finite, an fp32 EMA."""
    spec = get_variant(variant)
    if WeightClipping in spec.regularisers:
        pytest.skip("weight clipping refuses bf16 (see the config test above)")
    gan = GANEngines(_config(variant, **{"train.precision": "bf16"}), CPU, rank=0, world_size=1)
    assert {p.dtype for p in gan.g.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in gan.d.parameters()} == {torch.bfloat16}
    g0, d0 = _params(gan.g), _params(gan.d)
    real, labels = _batch()
    for _ in range(2):
        stats = gan.critic_step(real, labels)
        loss_g = gan.generator_step()
        assert torch.isfinite(stats.loss_d) and torch.isfinite(loss_g)
        if stats.gp is not None:
            assert torch.isfinite(stats.gp) and stats.gp >= 0
    if spec.has_penalty:
        assert gan.regularisers and gan.critic_steps == 2
    for module, before in ((gan.g, g0), (gan.d, d0)):
        assert _finite(module)
        assert any(not torch.equal(a, b) for a, b in zip(before, _params(module), strict=True))
    assert {p.dtype for p in gan.ema.module.parameters()} == {torch.float32}
    assert _finite(gan.ema.module)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("variant", PENALISED)
def test_low_precision_penalty_tracks_fp32(variant, dtype):
    """The variant's penalty (value, gradient norm, and its second-order gradient for D's
    parameters) in bf16/fp16 against fp32 on the same weights and inputs, through the same
    CriticBatch the engines build, D cast as DeepSpeed casts it. Weights and inputs are rounded
    to bf16 first so that only the arithmetic differs (bf16 values are exact in fp16 here).

    The outer backward is loss-scaled as the engines scale it: bf16 not at all (DeepSpeed's bf16
    scale is 1), fp16 by the largest power of two <= 2^16 whose gradients stay finite (where
    DeepSpeed's dynamic scaler settles). Unscaled, fp16 loses R1's small second-order gradients
    to underflow (20% off for stylegan2): that is what the scaler is for."""
    spec = get_variant(variant)
    cfg = _config(variant)
    torch.manual_seed(0)
    g, d = spec.build_generator(cfg.model), spec.build_discriminator(cfg.model)
    reg = next(r for r in spec.build_regularisers(cfg.loss, cfg.model) if r.adds_penalty)
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    labels = torch.randint(0, 3, (8,)) if spec.conditional else None
    with torch.no_grad():
        fake = g(torch.randn(8, cfg.model.z_dim), labels)
    eps = torch.rand(8)
    _cast_params(d, torch.bfloat16)

    def run(dt: torch.dtype, scale: float = 1.0):
        critic = _cast_params(copy.deepcopy(d), dt)
        x = [t.to(torch.bfloat16).to(dt) for t in (real, fake, eps)]
        out = reg.penalty(CriticBatch(lambda t: critic(t, labels).float(), *x), reg.weight)
        (out.value * scale).backward()
        grads = [p.grad.float().flatten() for p in critic.parameters() if p.grad is not None]
        return out, torch.cat(grads) / scale

    ref, ref_grad = run(torch.float32)
    scale = 2.0**16 if dtype == "fp16" else 1.0
    low, low_grad = run(DTYPES[dtype], scale)
    while not torch.isfinite(low_grad).all() and scale > 1:
        scale /= 2
        low, low_grad = run(DTYPES[dtype], scale)
    pen_rtol, norm_rtol, grad_err = PENALTY_TOLERANCE[dtype]
    assert torch.isfinite(low.value) and torch.isfinite(low_grad).all(), f"scale {scale}"
    torch.testing.assert_close(low.value, ref.value, rtol=pen_rtol, atol=0)
    if ref.grad_norm is not None:
        torch.testing.assert_close(low.grad_norm, ref.grad_norm, rtol=norm_rtol, atol=0)
    err = float((low_grad - ref_grad).norm() / ref_grad.norm())
    assert err <= grad_err, f"{dtype} penalty gradient off by {err:.3g} (limit {grad_err})"


# -- fp16: the dynamic loss scaler and the penalty's double backward ----------------------------
@pytest.mark.parametrize("variant", PENALISED)
def test_fp16_loss_scaler_skips_overflowing_penalty_steps(variant, fp16_capable):
    """fp16 engines (ZeRO-1, DeepSpeed's DynamicLossScaler) with the loss scale forced to 2^24,
    which no penalty gradient survives in fp16 (max 65504): the critic steps that overflow are
    skipped with D untouched, the scaler halves the scale until steps apply, and nothing in G or
    D ever turns NaN/inf."""
    gan = GANEngines(_fp16_config(variant), CPU, rank=0, world_size=1)
    opt = gan.engine_d.optimizer
    assert {p.dtype for p in gan.d.parameters()} == {torch.float16}
    assert gan.engine_d.dynamic_loss_scale()
    opt.loss_scale = 2.0**24
    real, labels = _batch()
    skipped = applied = 0
    for _ in range(24):
        before, skips = _params(gan.d), gan.engine_d.skipped_steps
        stats = gan.critic_step(real, labels)
        assert torch.isfinite(stats.loss_d), "the penalty itself must be finite in fp16"
        assert _finite(gan.d)
        unchanged = all(torch.equal(a, b) for a, b in zip(before, _params(gan.d), strict=True))
        if gan.engine_d.skipped_steps > skips:
            assert unchanged, "an overflowing step changed D"
            skipped += 1
        else:
            assert not unchanged, "a step without overflow left D unchanged"
            applied += 1
            if applied == 2:
                break
    assert skipped >= 1 and applied == 2, (skipped, applied, opt.loss_scale)
    assert opt.loss_scale < 2.0**24
    assert torch.isfinite(gan.generator_step()) and _finite(gan.g)


def test_deepspeed_fp16_at_zero_stage_0_still_skips_the_loss_scale(fp16_capable):
    """Tripwire for the config's fp16 + zero_stage=0 refusal: DeepSpeed 0.19 at ZeRO stage 0
    leaves the loss unscaled in engine.backward, yet FP16_UnfusedOptimizer.step divides the
    gradients by the scale (deepspeedai/DeepSpeed PR 8393). Once this fails, DeepSpeed scales
    the loss there: lift the refusal in `GanforgeConfig._check_precision`."""
    import deepspeed

    from ganforge.cluster.deepspeed_config import engine_config

    torch.manual_seed(0)
    model, x = torch.nn.Linear(4, 1), torch.randn(8, 4)
    grad = torch.autograd.grad(model(x).pow(2).mean(), model.weight)[0]
    w0 = model.weight.detach().clone().half().float()
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        config=engine_config(_fp16_config("wgan-gp", zero_stage=0).train, 1),
        dist_init_required=False,
    )
    scale = engine.optimizer.loss_scale
    assert scale == 2.0**16
    engine.backward(engine(x.half()).float().pow(2).mean())
    torch.testing.assert_close(engine.module.weight.grad.float(), grad, rtol=1e-2, atol=1e-3)
    engine.step()
    step = engine.module.weight.detach().float() - w0
    # SGD with lr 1 should move the weights by -grad; they move by -grad / scale (to fp16 rounding).
    assert step.abs().max() < grad.abs().max() * 1e-3, "DeepSpeed now scales the loss at ZeRO 0"


# -- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize(("precision", "zero_stage"), [("bf16", 0), ("bf16", 1), ("fp16", 1)])
def test_mixed_precision_checkpoints_resume_exactly_under_weights_only_loading(
    tmp_path, precision, zero_stage, fp16_capable
):
    """Save after 2 rounds, train 2 more; a fresh pair of engines loads the checkpoint (every
    DeepSpeed file through torch's weights-only unpickler, loss-scaler state included) and its 2
    rounds give bitwise the same G, D, EMA and loss scale."""
    from ganforge.cluster.safe_state import (
        UnsafeCheckpoint,
        deepspeed_safe_globals,
        load_weights_only,
    )

    if precision == "fp16":
        cfg = _fp16_config("wgan-gp", zero_stage)
    else:
        cfg = _config("wgan-gp", **{"train.precision": precision, "train.zero_stage": zero_stage})
    real, labels = _batch()

    def rounds(gan: GANEngines, n: int = 2) -> None:
        for _ in range(n):
            gan.critic_step(real, labels)
            gan.generator_step()

    a = GANEngines(cfg, CPU, 0, 1)
    rounds(a)
    if precision == "fp16":  # the penalty overflowed: the scaler's state is not its initial one
        assert a.engine_d.optimizer.loss_scale < 2.0**16
    a.save_engines(str(tmp_path / "ds"))
    state, ema = a.rank_state(), copy.deepcopy(a.ema.module.state_dict())
    rounds(a)

    files = sorted((tmp_path / "ds").rglob("*.pt"))
    assert files
    for f in files:  # what load_engines reads, loadable without running any pickled code
        load_weights_only(f, extra_globals=deepspeed_safe_globals())
    if precision == "fp16":  # the ZeRO optimizer state holds the scaler object, admitted by name
        with pytest.raises(UnsafeCheckpoint, match="DynamicLossScaler"):
            load_weights_only(next(f for f in files if "optim_states" in f.name))
    b = GANEngines(cfg, CPU, 0, 1)
    b.load_engines(str(tmp_path / "ds"))
    b.ema.module.load_state_dict(ema)
    b.load_rank_state(state)
    rounds(b)
    for x, y in ((a.g, b.g), (a.d, b.d), (a.ema.module, b.ema.module)):
        for p, q in zip(x.parameters(), y.parameters(), strict=True):
            assert p.dtype == q.dtype and torch.equal(p, q)
    assert a.engine_d.optimizer.loss_scale == b.engine_d.optimizer.loss_scale

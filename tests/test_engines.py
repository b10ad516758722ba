"""The per-worker GAN engines (real DeepSpeed on gloo, one process): every variant steps, the
generator step leaves D untouched, the critic step leaves G untouched, EMA and state round-trip,
and a variant registered from outside (a toy hinge-loss one) trains with the engines untouched.

One process group per test session: DeepSpeed keeps references to the groups it saw, so a second
group in the same process breaks it. Modules that build engines in the pytest process (this one,
tests/test_precision.py) share the session's group through the `deepspeed_group` fixture.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ganforge.cluster.engines import GANEngines
from ganforge.config import (
    GanforgeConfig,
    LossConfig,
    ModelConfig,
    load_config,
    resolve_config_path,
)
from ganforge.models import VARIANTS, VariantSpec, check_recipe, get_variant, register_variant
from ganforge.models.losses import GANLoss
from ganforge.models.regularisers import CriticBatch, Penalty, Regulariser, WeightClipping


@pytest.fixture(scope="module", autouse=True)
def process_group(deepspeed_group):
    """The session's one gloo group (tests/conftest.py), shared with tests/test_precision.py."""
    yield


def _cfg(variant: str, **train) -> GanforgeConfig:
    cfg = load_config(
        resolve_config_path(variant), {"model.width": 8, "model.z_dim": 16, "train.micro_batch": 4}
    )
    cfg.model.num_classes = 3 if VARIANTS[variant].conditional else 0
    cfg.model.kernels = "torch"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _batch():
    return torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_steps_and_isolates_gradients(variant):
    gan = GANEngines(_cfg(variant), torch.device("cpu"), rank=0, world_size=1)
    real, labels = _batch()

    g_before, d_before = _params(gan.g), _params(gan.d)
    stats = gan.critic_step(real, labels)
    assert torch.isfinite(torch.tensor(stats.loss_d))
    assert all(torch.equal(a, b) for a, b in zip(g_before, _params(gan.g), strict=True)), (
        "critic step changed G"
    )
    assert any(not torch.equal(a, b) for a, b in zip(d_before, _params(gan.d), strict=True))
    if VARIANTS[variant].has_penalty:
        assert stats.gp is not None and stats.gp >= 0
    if WeightClipping in VARIANTS[variant].regularisers:
        assert max(p.abs().max() for p in gan.d.parameters()) <= gan.cfg.loss.clip_value + 1e-7

    d_before = _params(gan.d)
    g_before = _params(gan.g)
    gan.generator_step()
    assert all(torch.equal(a, b) for a, b in zip(d_before, _params(gan.d), strict=True)), (
        "generator step changed D"
    )
    assert all(p.grad is None or not p.grad.any() for p in gan.d.parameters()), (
        "generator step leaked gradients into D"
    )
    assert all(p.requires_grad for p in gan.d.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, _params(gan.g), strict=True))


def test_lazy_r1_runs_every_k_critic_steps():
    """StyleGAN2's lazy R1 through the engines: on critic steps 0, k, 2k, ... only."""
    cfg = _cfg("stylegan2")
    cfg.loss.r1_every = 3
    gan = GANEngines(cfg, torch.device("cpu"), rank=0, world_size=1)
    real, labels = _batch()
    due = [gan.critic_step(real, labels).gp is not None for _ in range(7)]
    assert due == [True, False, False, True, False, False, True]


def test_ema_tracks_generator():
    cfg = _cfg("dcgan")
    cfg.model.ema_decay = 0.5
    gan = GANEngines(cfg, torch.device("cpu"), 0, 1)
    real, labels = _batch()
    gan.critic_step(real, labels)
    gan.generator_step()  # first update copies
    assert all(
        torch.equal(e, p)
        for e, p in zip(gan.ema.module.parameters(), gan.g.parameters(), strict=True)
    )
    before = _params(gan.ema.module)
    gan.critic_step(real, labels)
    gan.generator_step()
    for e, old, live in zip(gan.ema.module.parameters(), before, gan.g.parameters(), strict=True):
        torch.testing.assert_close(e, 0.5 * old + 0.5 * live.detach())


def test_engines_save_and_load_restore_training_exactly(tmp_path):
    cfg = _cfg("wgan-gp")
    real, labels = _batch()
    a = GANEngines(cfg, torch.device("cpu"), 0, 1)
    for _ in range(2):
        a.critic_step(real, labels)
        a.generator_step()
    a.save_engines(str(tmp_path / "ds"))
    state = a.rank_state()
    ema = {k: v.clone() for k, v in a.ema.module.state_dict().items()}
    for _ in range(2):
        a.critic_step(real, labels)
        a.generator_step()

    b = GANEngines(cfg, torch.device("cpu"), 0, 1)
    b.load_engines(str(tmp_path / "ds"))
    b.ema.module.load_state_dict(ema)
    b.load_rank_state(state)
    for _ in range(2):
        b.critic_step(real, labels)
        b.generator_step()
    for x, y in zip(a.g.parameters(), b.g.parameters(), strict=True):
        assert torch.equal(x, y)
    for x, y in zip(a.ema.module.parameters(), b.ema.module.parameters(), strict=True):
        assert torch.equal(x, y)


class _Touch:
    """Unpickling this creates a file: the proof that loading a checkpoint ran its code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.path,))


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_planted_deepspeed_files_are_refused_unloaded(tmp_path, zero_stage):
    """Anyone who can write to a shared run folder could plant a pickle: a resume refuses it
    (DeepSpeed's own loader would run it), while the engine's real files still load."""
    from ganforge.cluster.safe_state import UnsafeCheckpoint

    cfg = _cfg("wgan-gp", zero_stage=zero_stage)
    gan = GANEngines(cfg, torch.device("cpu"), rank=0, world_size=1)
    gan.critic_step(*_batch())
    gan.save_engines(str(tmp_path / "ds"))
    gan.load_engines(str(tmp_path / "ds"))  # ZeRO states included: DeepSpeed's own classes
    victim = sorted((tmp_path / "ds" / "discriminator").glob("*.pt"))[-1]
    marker = tmp_path / "pwned"
    torch.save({"module": _Touch(marker)}, victim)
    with pytest.raises(UnsafeCheckpoint, match=f"{victim.name}: refused to load"):
        gan.load_engines(str(tmp_path / "ds"))
    assert not marker.exists()


def test_a_planted_rank_file_is_refused_on_resume(tmp_path):
    from ganforge.cluster.checkpointing import restore
    from ganforge.cluster.safe_state import UnsafeCheckpoint
    from ganforge.rundir import CheckpointDir

    gan = GANEngines(_cfg("dcgan"), torch.device("cpu"), rank=0, world_size=1)
    marker = tmp_path / "pwned"
    ckpt = CheckpointDir(tmp_path / "step-000001")
    ckpt.path.mkdir()
    torch.save({"step": 1, "world_size": 1, "rng": _Touch(marker)}, ckpt.rank_state(0))
    with pytest.raises(UnsafeCheckpoint, match="rank-0.pt: refused to load"):
        restore(gan, ckpt.path)
    assert not marker.exists()


def test_rank_state_holds_only_tensors_and_plain_data(tmp_path):
    """The rank file loads weights-only and brings back every RNG exactly."""
    import random

    import numpy as np

    from ganforge.cluster.safe_state import load_weights_only

    gan = GANEngines(_cfg("dcgan"), torch.device("cpu"), rank=0, world_size=1)
    torch.save(gan.rank_state(), tmp_path / "rank-0.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    gan.load_rank_state(load_weights_only(tmp_path / "rank-0.pt"))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


# A gloo group of one, then ganforge's DeepSpeed comm set-up, behind a lock file left by a killed
# build of DeepSpeed's shm_comm op (torch's FileBaton: DeepSpeed would wait on it forever).
_COMM_SETUP = """
import os, socket
from pathlib import Path
import torch, torch.distributed as dist
from torch.utils.cpp_extension import _get_build_directory
lock = Path(_get_build_directory("deepspeed_shm_comm", verbose=False)) / "lock"
lock.parent.mkdir(parents=True, exist_ok=True)
lock.touch()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
from ganforge.cluster.engines import init_deepspeed_comm
init_deepspeed_comm(gpu=False)
import deepspeed.comm
x = torch.ones(3)
deepspeed.comm.all_reduce(x)
print("reduced", x.tolist())
"""


def test_cpu_comm_setup_neither_builds_nor_waits_for_deepspeeds_shm_op(tmp_path):
    """DeepSpeed JIT-builds its shm_comm op on a machine's first CPU start (1-2 minutes), and a
    build killed mid-way leaves a lock on which every later start hangs. ganforge's set-up needs
    neither: with a stale lock planted in a fresh extensions folder it finishes, builds nothing,
    and the all-reduce works."""
    import os
    import subprocess
    import sys

    env = os.environ | {"TORCH_EXTENSIONS_DIR": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-c", _COMM_SETUP], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "reduced [1.0, 1.0, 1.0]" in res.stdout
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["lock"]  # nothing built


# -- a variant registered from outside: what a new models/variant_<family>.py holds ----------------
# (defined here and registered only while a test needs it, so the registry is left as it was)
calls: Counter[str] = Counter()


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    calls["d_loss"] += 1
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    calls["g_loss"] += 1
    return -fake_scores.mean()


HINGE = GANLoss("hinge", hinge_d_loss, hinge_g_loss)


class DriftPenalty(Regulariser):
    """ProGAN's drift term, weight * E[D(x)^2] on reals, lazily every 2nd critic step."""

    adds_penalty = True

    def __init__(self):
        self.weight, self.every = 0.1, 2
        self.weights_seen: list[float] = []
        self.stepped: list[nn.Module] = []

    @classmethod
    def from_config(cls, loss: LossConfig, model: ModelConfig) -> DriftPenalty:
        return cls()

    def penalty(self, batch: CriticBatch, weight: float) -> Penalty:
        self.weights_seen.append(weight)
        return Penalty(weight * batch.critic(batch.real).pow(2).mean())

    def after_step(self, d: nn.Module) -> None:
        self.stepped.append(d)


class TinyGenerator(nn.Module):
    def __init__(self, model: ModelConfig):
        super().__init__()
        self.num_classes, self.shape = 0, (model.channels, model.resolution, model.resolution)
        self.fc = nn.Linear(model.z_dim, model.channels * model.resolution**2)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.fc(z)).view(-1, *self.shape)


class TinyCritic(nn.Module):
    def __init__(self, model: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(model.channels * model.resolution**2, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(x.flatten(1)).squeeze(1)


TOY = VariantSpec(
    name="toy-hinge",
    build_generator=TinyGenerator,
    build_discriminator=TinyCritic,
    loss=HINGE,
    regularisers=(DriftPenalty,),
    description="a linear G and critic with the hinge loss and a drift penalty",
)
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def toy():
    saved = dict(VARIANTS)
    spec = register_variant(TOY)
    yield spec
    VARIANTS.clear()
    VARIANTS.update(saved)


def _toy_config():
    small = {"model.width": 8, "model.z_dim": 16, "model.kernels": "torch", "train.micro_batch": 4}
    return load_config(None, TOY.recipe() | small)


def test_a_registered_variant_trains_through_the_engines(toy):
    assert get_variant("toy-hinge") is toy
    cfg = _toy_config()
    check_recipe(cfg.model, cfg.loss)
    gan = GANEngines(cfg, torch.device("cpu"), rank=0, world_size=1)
    assert isinstance(gan.g, TinyGenerator) and isinstance(gan.d, TinyCritic)
    (drift,) = gan.regularisers
    real, labels = torch.rand(4, 3, 32, 32) * 2 - 1, torch.zeros(4, dtype=torch.long)
    g_before, d_before = _params(gan.g), _params(gan.d)
    calls.clear()

    stats = []
    for _ in range(2):
        stats.append(gan.critic_step(real, labels))
        gan.generator_step()

    assert calls == {"d_loss": 2, "g_loss": 2}
    assert drift.weights_seen == [pytest.approx(0.2)]  # lazy: step 0 of 2, weighted by every=2
    assert stats[0].gp is not None and stats[0].gp > 0 and stats[1].gp is None
    assert len(drift.stepped) == 2 and all(d is gan.d for d in drift.stepped)
    assert any(not torch.equal(a, b) for a, b in zip(g_before, _params(gan.g), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, _params(gan.d), strict=True))


def test_recipe_checks_apply_to_a_registered_variant(toy):
    cfg = _toy_config()
    cfg.loss.kind = "wasserstein"
    with pytest.raises(ValueError, match="loss.kind must be 'hinge'"):
        check_recipe(cfg.model, cfg.loss)
    cfg = _toy_config()
    cfg.loss.gp_lambda = 10.0  # the registered gradient penalty is not part of this variant
    with pytest.raises(ValueError, match="gp_lambda must be 0"):
        check_recipe(cfg.model, cfg.loss)
    cfg.model.variant = "nope"
    with pytest.raises(ValueError, match="registered variants: .*toy-hinge"):
        check_recipe(cfg.model, cfg.loss)


def test_a_name_registers_once(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_variant(TOY)

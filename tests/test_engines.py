"""The per-worker GAN engines (real DeepSpeed on gloo, one process): every variant steps, the
generator step leaves D untouched, the critic step leaves G untouched, EMA and state round-trip."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from ganforge.cluster.engines import GANEngines
from ganforge.config import GanforgeConfig, load_config, resolve_config_path
from ganforge.models import VARIANTS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def process_group():
    import os

    import deepspeed

    # What Ray Train's TorchConfig sets on its workers; DeepSpeed reads LOCAL_RANK.
    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    deepspeed.init_distributed(
        dist_backend="gloo", auto_mpi_discovery=False, dist_init_required=False
    )
    yield
    dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


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
    if VARIANTS[variant].needs_gp:
        assert stats.gp is not None and stats.gp >= 0
    if VARIANTS[variant].needs_clip:
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


def test_a_stale_deepspeed_build_lock_is_reported(tmp_path, monkeypatch, caplog):
    """A build killed mid-way leaves torch's FileBaton lock; later starts would hang silently."""
    import os
    import time

    import torch.utils.cpp_extension as ext

    from ganforge.cluster.engines import STALE_BUILD_LOCK_S, warn_stale_build_lock

    monkeypatch.setattr(ext, "_get_build_directory", lambda name, verbose: str(tmp_path / name))
    assert warn_stale_build_lock() is None  # no lock: nothing to say
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.touch()
    assert warn_stale_build_lock() is None  # a build in progress
    old = time.time() - STALE_BUILD_LOCK_S - 60
    os.utime(lock, (old, old))
    with caplog.at_level("WARNING", logger="ganforge.train"):
        assert warn_stale_build_lock() == lock
    assert f"delete {lock.parent}" in caplog.text

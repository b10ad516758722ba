"""Tiny servable checkpoints for the serving tests (no training), and a generator that fails on
chosen seeds, to test how the app survives a failing batch."""

from __future__ import annotations

import socket
from pathlib import Path

import torch

from ganforge.checkpoint import write_weights_checkpoint
from ganforge.config import GanforgeConfig
from ganforge.models import build_discriminator, build_generator

CLASSES = ["cat", "dog", "frog"]


def make_checkpoint(
    run_dir: Path,
    variant: str,
    *,
    width: int = 8,
    classes: list[str] | None = None,
    z_dim: int = 16,
    seed: int = 0,
    extra_meta: dict | None = None,
) -> Path:
    """A run dir `run_dir/checkpoints/step-000010` with random weights of the given variant."""
    torch.manual_seed(seed)
    wasserstein = variant.startswith(("wgan", "cwgan"))
    cfg = GanforgeConfig.model_validate(
        {
            "name": run_dir.name,
            "model": {
                "variant": variant,
                "width": width,
                "z_dim": z_dim,
                "embed_dim": 8,
                "num_classes": len(classes or []),
            },
            "loss": {"kind": "wasserstein" if wasserstein else "bce"},
        }
    )
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    g_ema = build_generator(cfg.model)
    g_ema.load_state_dict(g.state_dict())
    (run_dir / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    root = run_dir / "checkpoints" / "step-000010"
    write_weights_checkpoint(root, cfg, g, g_ema, d, 10, 640, classes, extra_meta)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Requests with these seeds make `poison_generators`' forward pass raise.
FAIL_SEED = 666_001  # RuntimeError: one bad batch, the model itself is fine
OOM_SEED = 666_002  # torch.OutOfMemoryError


def poison_generators() -> None:
    """A Ray `worker_process_setup_hook`: in every worker of the test's Ray job (Serve replicas
    included), the generator's forward pass raises when its batch holds the first latent of
    FAIL_SEED or OOM_SEED (drawn as the app draws them). Every other batch runs unchanged."""
    from ganforge.models.generator import Generator
    from ganforge.serve.model_pool import sample_latents

    forward = Generator.forward
    markers: dict[int, dict[int, torch.Tensor]] = {}

    def poisoned(self, z, labels=None):
        by_seed = markers.setdefault(
            z.shape[1],
            {
                s: sample_latents(1, z.shape[1], torch.Generator().manual_seed(s), None)[0]
                for s in (FAIL_SEED, OOM_SEED)
            },
        )
        for seed, row in by_seed.items():
            if (z.detach().cpu() == row).all(dim=1).any():
                if seed == OOM_SEED:
                    raise torch.OutOfMemoryError("poisoned batch: pretend the device is full")
                raise RuntimeError(f"poisoned batch (seed {seed})")
        return forward(self, z, labels)

    Generator.forward = poisoned

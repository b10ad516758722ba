"""Tiny servable checkpoints for the serving tests and the serving benchmark (no training)."""

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

"""Load a trained checkpoint's networks for inference (serving, evaluation, benchmarks).

The checkpoint format itself (markers, hashes, `weights.pt`) lives in `ganforge.checkpoint`; this
module adds what needs the model zoo: rebuilding G and D from the checkpoint's own config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ganforge.checkpoint import CheckpointError, resolve_checkpoint, verify
from ganforge.config import GanforgeConfig
from ganforge.models.registry import build_discriminator, build_generator
from ganforge.rundir import CheckpointDir


@dataclass
class LoadedModel:
    """A trained generator (EMA weights) and its critic, ready for inference on CPU."""

    config: GanforgeConfig
    meta: dict[str, Any]
    generator: torch.nn.Module
    discriminator: torch.nn.Module
    path: Path

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    @property
    def conditional(self) -> bool:
        return getattr(self.generator, "num_classes", 0) > 0


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load the EMA generator and discriminator of a checkpoint, validated against its config.

    Uses `torch.load(weights_only=True)`; a corrupt file or a state dict that does not match the
    architecture in the checkpoint's own config raises `CheckpointError` with the reason.
    """
    root = resolve_checkpoint(path)
    weights = CheckpointDir(root).weights
    meta = verify(root, only={CheckpointDir.WEIGHTS})
    cfg = GanforgeConfig.model_validate(meta["config"])
    cfg.model.kernels = "auto"
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
    except Exception as e:  # torch raises several types for truncated/garbled files
        raise CheckpointError(f"{weights}: cannot be read ({e})") from None
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    for name, module, key in (
        ("generator", g, "generator_ema"),
        ("discriminator", d, "discriminator"),
    ):
        try:
            module.load_state_dict(state[key])
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(f"{root}: {name} weights do not match the config ({e})") from None
    g.to(device).eval()
    d.to(device).eval()
    return LoadedModel(cfg, meta, g, d, root)

"""DeepSpeed engine configs and client optimizers derived from ganforge's config.

G and D get separate engines (and separate config dicts) because they step at different rates
(n_critic) and may use different optimizers (RMSprop for WGAN). We build the torch optimizer
ourselves and hand it to DeepSpeed: DeepSpeed's own "RMSprop" entry does not exist, and a client
optimizer keeps CPU (gloo) and GPU runs on the same code path.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ganforge.config import OptimizerConfig, TrainConfig


def scaled_lr(lr: float, rule: str, world_size: int) -> float:
    """Learning rate for `world_size` ranks: none (keep), linear (x N) or sqrt (x sqrt N)."""
    if rule == "linear":
        return lr * world_size
    if rule == "sqrt":
        return lr * math.sqrt(world_size)
    return lr


def build_optimizer(
    params, cfg: OptimizerConfig, train: TrainConfig, world_size: int
) -> torch.optim.Optimizer:
    lr = scaled_lr(cfg.lr, train.lr_scaling, world_size)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def engine_config(train: TrainConfig, world_size: int) -> dict[str, Any]:
    """One engine's DeepSpeed config: micro batch, ZeRO stage, precision, clipping."""
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": train.micro_batch * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        # Our client optimizers (Adam/RMSprop from torch) are not on DeepSpeed's ZeRO allow-list.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # ganforge logs metrics itself
        "wall_clock_breakdown": False,
    }
    if train.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif train.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 16, "loss_scale_window": 200}
    return cfg

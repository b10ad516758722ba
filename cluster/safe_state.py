"""Checkpoint state that loads without running code: RNG states as tensors, DeepSpeed's files
through torch's weights-only unpickler.

A checkpoint's sha256 marker proves integrity, not authorship: whoever can write to the run
folder or its bucket can rewrite the marker too. So nothing a resume reads may be a general
pickle. `torch.load(weights_only=True)` admits tensors and plain containers (plus the few
DeepSpeed classes listed below); anything else is refused before it is constructed.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """torch, numpy and Python global RNG states, as tensors and plain numbers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))


class UnsafeCheckpoint(ValueError):
    """A checkpoint file holds something other than tensors and plain data: refused unloaded."""


def load_weights_only(path: str | Path, map_location: Any = "cpu", extra_globals=()) -> Any:
    """`torch.load(weights_only=True)`, with `extra_globals` admitted; UnsafeCheckpoint names
    the file and what it tried to construct when it holds anything else."""
    try:
        with torch.serialization.safe_globals(list(extra_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), str(e))
        raise UnsafeCheckpoint(f"{path}: refused to load ({why})") from None


def deepspeed_safe_globals() -> list[type]:
    """What DeepSpeed 0.19 pickles into ZeRO optimizer states besides tensors (found by loading
    its checkpoints weights-only): a loss-scaler object, the ZeRO stage enum and fragment
    addresses. Plain data classes: rebuilding them runs none of the file's code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_deepspeed_weights_only(engine) -> None:
    """Make `engine` read its checkpoints with the weights-only unpickler. DeepSpeed's torch
    checkpoint engine calls `torch.load(weights_only=False)`; every load of an engine (model,
    optimizer and ZeRO partitions) goes through `engine.checkpoint_engine.load`."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    ckpt_engine = engine.checkpoint_engine
    if type(ckpt_engine) is not TorchCheckpointEngine:  # a DeepSpeed change: fail, never guess
        raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(ckpt_engine).__name__}")
    allowed = deepspeed_safe_globals()

    def load(path: str, map_location=None):
        return load_weights_only(path, map_location, allowed)

    ckpt_engine.load = load  # this instance only; saving is unchanged

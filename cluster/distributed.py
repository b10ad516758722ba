"""The few cross-rank reductions the loop needs outside DeepSpeed (log steps, end of data)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_multi_rank() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_over_ranks(values: dict[str, float | None]) -> dict[str, float | None]:
    """Collective: every rank passes the same keys; None (not computed) stays None."""
    keys = list(values)
    t = torch.tensor(
        [float("nan") if values[k] is None else values[k] for k in keys], dtype=torch.float64
    )
    if is_multi_rank():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return {k: None if torch.isnan(t[i]) else float(t[i]) for i, k in enumerate(keys)}


def all_gather_object(obj) -> list:
    if not is_multi_rank():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_multi_rank():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ranks(flag: bool, device: torch.device) -> bool:
    """Collective: True only if `flag` is True on every rank (NCCL needs the tensor on the GPU)."""
    if not is_multi_rank():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())

"""BatchNorm with statistics over all ranks, on CPU (gloo) and GPU.

torch's `nn.SyncBatchNorm` refuses CPU tensors, and ganforge's data-parallel runs must behave the
same on CPU as on GPU (tests compare a 2-rank run with a 1-rank run of twice the batch). So on CPU
we reduce the per-channel sums with the differentiable `torch.distributed.nn.all_reduce`; on GPU
we use torch's fused `nn.SyncBatchNorm`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from torch import nn

from ganforge.models.layers import FP32BatchNorm2d


class CrossRankBatchNorm2d(FP32BatchNorm2d):
    """BatchNorm2d whose training statistics are the mean/variance over every rank's batch
    (computed in fp32 with fp32 running statistics, like `FP32BatchNorm2d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        if dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        local = torch.cat(
            [
                xf.sum(dim=(0, 2, 3)),
                (xf * xf).sum(dim=(0, 2, 3)),
                torch.full((1,), float(x.numel() // c), device=x.device),
            ]
        )
        total = dist_nn.all_reduce(local)
        count = total[-1]
        mean = total[:c] / count
        var = (total[c : 2 * c] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(unbiased.detach(), m)
                self.num_batches_tracked.add_(1)
        inv = torch.rsqrt(var + self.eps)
        y = (xf - mean[None, :, None, None]) * inv[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by its cross-rank version (state dicts keep the same keys)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm2d, FP32BatchNorm2d):
            new = CrossRankBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module

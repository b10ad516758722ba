"""StyleGAN2's discriminator (Karras et al. 2020) in the 'orig' layout StyleGAN2-ADA's CIFAR-10
config uses (the paper's high-resolution configs add residual skips): fromRGB at full
resolution, blocks of two 3x3 convs with 2x FIR downsampling, then an epilogue at 4x4 with the
minibatch standard deviation, a conv and two FC layers.
Conditional: projection of a label mapping (StyleGAN2-ADA's `cmap`), score = <h, cmap(y)>/sqrt(d).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ganforge.models.stylegan_generator import stylegan_channels
from ganforge.models.stylegan_layers import EqualConv2d, EqualLinear, MappingNetwork


def _group_size(batch: int, group: int) -> int:
    """The largest divisor of `batch` that is at most `group` (every group the same size)."""
    return max(g for g in range(1, min(group, batch) + 1) if batch % g == 0)


class MinibatchStdDev(nn.Module):
    """Appends one channel: the standard deviation of features across a group of samples,
    averaged over channels and pixels (lets D see a lack of variety in a batch).

    Training: computed per group of `group_size` samples. Eval (serving's `/v1/score`,
    evaluation): the tracked mean of that statistic, so an image's score does not depend on the
    images scored with it. The buffer follows training like BatchNorm's running statistics.
    """

    def __init__(self, group_size: int, momentum: float = 0.01):
        super().__init__()
        self.group_size, self.momentum = group_size, momentum
        self.register_buffer("std_avg", torch.zeros([]))
        self.register_buffer("std_updates", torch.zeros([], dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.training:
            g = _group_size(n, self.group_size)
            # In fp32 whatever the input: in fp16 the 1e-8 underflows to 0, and the sqrt's
            # gradient at a zero variance is inf (NaN after the scaler). A no-op for fp32 inputs.
            y = x.float().reshape(g, -1, c, h, w)  # group k holds samples k, k + n/g, ...
            y = (y - y.mean(dim=0)).square().mean(dim=0)
            y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [n/g]
            y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w).to(x.dtype)
            with torch.no_grad():  # first updates average, then an EMA
                weight = max(self.momentum, 1.0 / float(self.std_updates + 1))
                self.std_avg.lerp_(y.detach().mean().to(self.std_avg.dtype), weight)
                self.std_updates += 1
        else:
            y = self.std_avg.to(x.dtype).expand(n, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Sequential):
    """Two 3x3 convs with LeakyReLU, the second downsampling 2x (blur, then stride 2)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3, down=2)


class StyleGAN2Discriminator(nn.Module):
    """images [B, C, res, res] (+ labels [B]) -> logits [B] (the non-saturating logistic loss)."""

    def __init__(
        self,
        channels: int,
        resolution: int,
        width: int,
        num_classes: int = 0,
        mapping_layers: int = 2,
        mbstd_group: int = 4,
    ):
        super().__init__()
        self.num_classes = num_classes

        def ch(res: int) -> int:
            return stylegan_channels(resolution, width, res)

        self.fromrgb = EqualConv2d(channels, ch(resolution), 1)
        blocks, res = [], resolution
        while res > 4:
            blocks.append(DiscriminatorBlock(ch(res), ch(res // 2)))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        c4 = ch(4)
        self.mbstd = MinibatchStdDev(mbstd_group)
        self.conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        # Conditional: the last layer outputs a c4-dim vector, projected on the label mapping.
        self.cmap_dim = c4 if num_classes > 0 else 0
        self.out = EqualLinear(c4, self.cmap_dim or 1)
        self.cmap = (
            MappingNetwork(0, c4, num_classes, c4, mapping_layers, w_avg_beta=None)
            if num_classes > 0
            else None
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.blocks(self.fromrgb(x))
        h = self.conv(self.mbstd(h))
        out = self.out(self.fc(h.flatten(1)))
        if self.cmap is None:
            return out.squeeze(1)
        if labels is None:
            raise ValueError("this discriminator is conditional: pass labels [B] (int64)")
        return (out * self.cmap(None, labels)).sum(dim=1) / math.sqrt(self.cmap_dim)

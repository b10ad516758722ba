"""DCGAN-style discriminator / critic, optionally conditioned by projection (Miyato & Koyama)."""

from __future__ import annotations

import torch
from torch import nn

from ganforge.models.generator import num_blocks
from ganforge.models.layers import dcgan_init, make_norm


class Discriminator(nn.Module):
    """images [B, C, res, res] (+ labels [B]) -> scores [B] (BCE logits or WGAN critic values).

    Stride-2 k4 p1 convs with LeakyReLU(0.2) down to 4x4 (no norm on the first layer), then a
    linear head. Conditional: projection, score = w.h + <embed(y), h>. Projection is chosen over
    label channels because it keeps the input unchanged (so the same critic scores uploaded
    images for serving) and is the better-conditioned of the two in Miyato & Koyama's results.
    """

    def __init__(
        self, channels: int, resolution: int, width: int, num_classes: int = 0, norm: str = "batch"
    ):
        super().__init__()
        n = num_blocks(resolution)
        ch = width
        layers: list[nn.Module] = [nn.Conv2d(channels, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for _ in range(n - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm == "none"),
                make_norm(norm, ch * 2),
                nn.LeakyReLU(0.2, True),
            ]
            ch *= 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        feat_dim = ch * 4 * 4
        self.head = nn.Linear(feat_dim, 1)
        self.embed = nn.Embedding(num_classes, feat_dim) if num_classes > 0 else None
        dcgan_init(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is conditional: pass labels [B] (int64)")
            out = out + (self.embed(labels) * h).sum(dim=1)
        return out

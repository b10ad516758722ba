"""The CIFAR-style domain classifier: feature extractor for FID/KID/precision-recall and the
judge for the classifier score and per-class accuracy.

A small ResNet-ish net (conv-BN-GELU blocks with max-pool downsampling and residual convs, in the
spirit of the fast CIFAR-10 recipes), sized so that ~25 minutes on two CPU cores trains it. The
penultimate layer (global-pooled, `feature_dim` wide) gives the features.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Per-channel statistics of CIFAR-10 train; used for any RGB dataset (the net learns the rest).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
LOGIT_SCALE = 0.125


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()
    )


class _Block(nn.Module):
    """conv -> 2x max-pool -> BN-GELU, then a residual conv-BN-GELU at the lower resolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.res = _conv_bn(c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn(F.max_pool2d(self.conv(x), 2)))
        return x + self.res(x)


class CifarClassifier(nn.Module):
    """Images uint8 [B, C, H, W] (0..255) or float in [-1, 1] -> logits [B, num_classes].

    `features(x)` returns the penultimate activations [B, feature_dim] (float32).
    """

    def __init__(
        self, num_classes: int = 10, channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256)
    ) -> None:
        super().__init__()
        self.num_classes, self.channels, self.widths = num_classes, channels, tuple(widths)
        self.stem = _conv_bn(channels, widths[0])
        self.blocks = nn.Sequential(
            *(_Block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        )
        self.head = nn.Linear(widths[-1], num_classes)
        mean = torch.tensor(MEAN if channels == 3 else (0.5,)).view(1, -1, 1, 1)
        std = torch.tensor(STD if channels == 3 else (0.25,)).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 or float [-1, 1] -> standardised float."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else (x.float() + 1) / 2
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(self.normalize(x)))
        return torch.amax(h, dim=(2, 3))  # global max-pool: what fast CIFAR nets use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Fixed 1/8 logit scale (as in the airbench CIFAR recipes): max-pooled residual features
        # are large, and unscaled logits blow up in the first SGD steps.
        return self.head(self.features(x)) * LOGIT_SCALE

    def arch(self) -> dict:
        """What `load_classifier` needs to rebuild the module (stored in the sidecar)."""
        return {
            "num_classes": self.num_classes,
            "channels": self.channels,
            "widths": list(self.widths),
        }


def load_classifier(path, device: str | torch.device = "cpu") -> CifarClassifier:
    """Rebuild the classifier from its state dict (`torch.load(weights_only=True)`) + sidecar."""
    import json
    from pathlib import Path

    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: classifier weights not found")
    arch = json.loads(sidecar.read_text())["arch"] if sidecar.is_file() else {}
    model = CifarClassifier(**arch)
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model.to(device).eval()

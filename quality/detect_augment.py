"""Training augmentations of the deepfake detector, applied alike to real and fake images.

They take away cues that say little about the generator and do not survive the way images
travel: position (random crop after reflect padding), orientation (horizontal flip), slight
softness (light Gaussian blur) and re-compression (JPEG at a random quality), as Wang et al.,
"CNN-generated images are surprisingly easy to spot... for now" (CVPR 2020) do. They do not take
away the file encoding of the real data (a first JPEG compression survives a second one): that is
`detect_encoding`'s job. With `jpeg_prob=1`, every inference input is re-encoded as well, at the
middle of the training range (`canonical_quality`, kept in the detector's record).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ganforge.models.detector import jpeg_roundtrip
from ganforge.quality.classifier_training import augment as crop_and_flip

BLUR_RADIUS = 2  # 5-tap kernels: enough for sigma <= 1


@dataclass(frozen=True)
class Augment:
    """Which augmentations, and how strong; recorded in the detector's record."""

    jpeg_prob: float = 0.5  # share of training images re-encoded
    jpeg_quality: tuple[int, int] = (70, 95)  # random quality, both ends included
    blur_prob: float = 0.25
    blur_sigma: tuple[float, float] = (0.2, 1.0)
    crop_pad: int = 4  # random crop after reflect padding by this many pixels + random h-flip

    @property
    def canonical_quality(self) -> int | None:
        """JPEG quality applied to every image at inference: the middle of the training range
        when training re-encoded every image, else none (the detector has seen raw inputs)."""
        return round(sum(self.jpeg_quality) / 2) if self.jpeg_prob >= 1.0 else None


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur each float image [N, C, H, W] with its own sigma [N] (separable, reflect borders)."""
    n, c, h, w = images.shape
    taps = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=torch.float32)
    k = torch.exp(-(taps[None] ** 2) / (2 * sigmas[:, None].float() ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [N*C, taps]: one per plane
    x = F.pad(images.reshape(1, n * c, h, w).float(), (BLUR_RADIUS,) * 4, mode="reflect")
    x = F.conv2d(x, k[:, None, None, :], groups=n * c)  # along rows
    x = F.conv2d(x, k[:, None, :, None], groups=n * c)  # along columns
    return x.reshape(n, c, h, w)


def augment(images: torch.Tensor, gen: torch.Generator, a: Augment) -> torch.Tensor:
    """uint8 [N, C, H, W] -> augmented uint8 [N, C, H, W]: crop/flip, blur, then JPEG last (as
    an image is re-encoded last on its way to a viewer, and as inference re-encodes it)."""
    x = crop_and_flip(images, gen, pad=a.crop_pad) if a.crop_pad > 0 else images
    blur = torch.rand(len(x), generator=gen) < a.blur_prob
    if blur.any():
        lo, hi = a.blur_sigma
        sig = lo + (hi - lo) * torch.rand(int(blur.sum()), generator=gen)
        x = x.clone()
        x[blur] = gaussian_blur(x[blur], sig).round().clamp(0, 255).to(torch.uint8)
    jpeg = (torch.rand(len(x), generator=gen) < a.jpeg_prob).nonzero().flatten()
    if len(jpeg):
        lo, hi = a.jpeg_quality
        q = torch.randint(lo, hi + 1, (len(jpeg),), generator=gen).tolist()
        x = x.clone()
        x[jpeg] = jpeg_roundtrip(x[jpeg], q)
    return x

"""StyleGAN2's generator (Karras et al. 2020) in the 'skip' layout of its small-resolution configs:
mapping network z (+ label) -> w, then a synthesis network from a learned constant 4x4 input
through modulated/demodulated 3x3 convolutions with per-pixel noise, one upsampling block per
octave, and a toRGB output per block summed into the upsampled image.

The modulated convolution itself is `ganforge.kernels.modulated_conv2d` (so `model.kernels`
switches it between the PyTorch reference and Triton); the FIR filtering, noise, bias and
activation around it stay here. At 32x32 there is no style mixing and no path-length
regularisation (StyleGAN2-ADA's CIFAR-10 configuration), so every layer gets the same w.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ganforge import kernels
from ganforge.models.stylegan_layers import (
    EqualLinear,
    MappingNetwork,
    fir_filter2d,
    fir_upsample2d,
    lrelu,
)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up, then the FIR filter), + noise, + bias, LeakyReLU.

    Noise: fresh N(0, 1) per pixel while training; in eval mode the fixed buffer `noise_const`,
    so sampling and serving are deterministic and draw nothing from the global RNG.
    """

    def __init__(
        self, in_ch: int, out_ch: int, w_dim: int, resolution: int, up: int = 1, backend="auto"
    ):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        # Shape [1], not 0-d: DeepSpeed broadcasts parameters as bytes, which a 0-d tensor refuses.
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.up, self.resolution, self.backend = up, resolution, backend

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        # The equalised-lr gain is left off: demodulation normalises the weight anyway.
        x = kernels.modulated_conv2d(
            x, self.weight.to(x.dtype), styles, demodulate=True, up=self.up, backend=self.backend
        )
        if self.up == 2:
            # The transposed conv's output, low-pass filtered (gain 4 = the zeros it inserted);
            # padding (2, 1) keeps 2H x 2W.
            x = fir_filter2d(x, (2, 1), gain=4.0)
        if self.training:
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device)
        else:
            noise = self.noise_const
        x = x + noise.to(x.dtype) * self.noise_strength
        return lrelu(x + self.bias.view(1, -1, 1, 1))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation, + bias (no activation)."""

    def __init__(self, in_ch: int, channels: int, w_dim: int, backend="auto"):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(channels, in_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_gain, self.backend = 1.0 / math.sqrt(in_ch), backend

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        y = kernels.modulated_conv2d(
            x, self.weight.to(x.dtype), styles, demodulate=False, backend=self.backend
        )
        return y + self.bias.view(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """One octave: (2x up conv unless first) + conv, and its toRGB added to the upsampled image.
    The first block (4x4) starts from a learned constant instead of an upsampling conv."""

    def __init__(self, in_ch, out_ch, resolution, channels, w_dim, backend="auto"):
        super().__init__()
        self.first = resolution == 4
        if self.first:
            self.const = nn.Parameter(torch.randn(out_ch, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_ch, out_ch, w_dim, resolution, up=2, backend=backend)
        self.conv1 = SynthesisLayer(out_ch, out_ch, w_dim, resolution, backend=backend)
        self.torgb = ToRGB(out_ch, channels, w_dim, backend=backend)

    def forward(self, x, img, w):
        if self.first:
            x = self.const.to(w.dtype).expand(w.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, w)
        x = self.conv1(x, w)
        y = self.torgb(x, w)
        return x, (y if img is None else fir_upsample2d(img) + y)


def stylegan_channels(resolution: int, width: int, res: int) -> int:
    """Channels at octave `res` of a `resolution` network: width x resolution / res, capped at
    width x 2**(blocks - 1), ganforge's widest layer (StyleGAN2's channel_base / channel_max:
    constant channels at the coarse octaves, halving at each finer one)."""
    blocks = int(math.log2(resolution)) - 2
    return min(width * resolution // res, width * 2 ** (blocks - 1))


class StyleGAN2Generator(nn.Module):
    """z [B, z_dim] (+ labels [B]) -> images [B, channels, res, res].

    `truncation` (psi, a number or one per sample [B]) moves w toward the tracked mean w (the
    label's class mean when conditional): w = w_avg + psi (w - w_avg). `truncation_space = "w"`
    tells serving that this generator truncates itself (others get truncated z). Training output
    is linear, as in StyleGAN2; in eval mode (sampling, evaluation, serving) images are clamped
    to [-1, 1]."""

    truncation_space = "w"

    def __init__(
        self,
        z_dim: int,
        channels: int,
        resolution: int,
        width: int,
        num_classes: int = 0,
        embed_dim: int = 0,
        mapping_layers: int = 2,
        backend: str = "auto",
    ):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        w_dim = z_dim  # StyleGAN2 uses w_dim = z_dim (512); one setting here
        self.mapping = MappingNetwork(z_dim, w_dim, num_classes, embed_dim, mapping_layers)
        blocks, prev, res = [], 0, 4
        while res <= resolution:
            ch = stylegan_channels(resolution, width, res)
            blocks.append(SynthesisBlock(prev, ch, res, channels, w_dim, backend=backend))
            prev, res = ch, res * 2
        self.blocks = nn.ModuleList(blocks)

    def forward(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None = None,
        truncation: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.num_classes > 0 and labels is None:
            raise ValueError("this generator is conditional: pass labels [B] (int64)")
        w = self.mapping(z, labels if self.num_classes > 0 else None, truncation)
        x = img = None
        for block in self.blocks:
            x, img = block(x, img, w)
        return img if self.training else img.clamp(-1.0, 1.0)

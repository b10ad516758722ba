"""StyleGAN2's building blocks shared by G and D: equalised-learning-rate layers, FIR resampling
and the mapping network (Karras et al. 2020; the layout of StyleGAN2-ADA's `networks.py`).

Equalised learning rate: parameters are stored at unit scale (N(0, 1) weights) and scaled by the
He constant 1/sqrt(fan_in) at run time, so Adam's per-parameter step is the same relative change
for every layer whatever its fan-in (Karras et al. 2018, section 4.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)
_FIR = (1.0, 3.0, 3.0, 1.0)  # StyleGAN2's resampling filter (binomial, a bilinear kernel)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU(0.2) times sqrt(2), which keeps the activations' second moment at 1."""
    return F.leaky_relu(x, 0.2) * SQRT2


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x [B, D] scaled to unit mean square per row (StyleGAN's pixel norm on z and embeddings)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def _fir_kernel(x: torch.Tensor, gain: float) -> torch.Tensor:
    """The separable 4x4 filter outer(f, f), normalised to sum `gain`, one per channel of x."""
    f = torch.tensor(_FIR, dtype=x.dtype, device=x.device)
    k = torch.outer(f, f)
    return (k * (gain / k.sum())).expand(x.shape[1], 1, 4, 4)


def fir_upsample2d(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, 2H, 2W]: zero insertion then the FIR filter (gain 4), as
    `upfirdn2d.upsample2d`; equal to bilinear upsampling with zero padding at the border."""
    return F.conv_transpose2d(x, _fir_kernel(x, 4.0), stride=2, padding=1, groups=x.shape[1])


def fir_filter2d(
    x: torch.Tensor, pad: tuple[int, int], gain: float = 1.0, stride: int = 1
) -> torch.Tensor:
    """The FIR filter with `pad` = (before, after) zeros on each spatial axis, at `stride`:
    [H] -> [(H + before + after - 4) // stride + 1]. Depthwise; differentiable twice."""
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    return F.conv2d(x, _fir_kernel(x, gain), stride=stride, groups=x.shape[1])


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate: y = x (W g)^T + b m, g = m/sqrt(in).

    `lr_mul` (m) slows a layer's effective learning rate (the mapping network uses 0.01);
    `bias_init` sets the initial bias (1 for the style affines, so styles start near 1).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_dim], float(bias_init)))
        self.weight_gain, self.bias_gain = lr_mul / math.sqrt(in_dim), lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return lrelu(y) if self.activation else y


class EqualConv2d(nn.Module):
    """Conv (kernel 1 or 3, 'same' padding) with equalised learning rate; `down=2` (3x3 only)
    downsamples as StyleGAN2-ADA's conv2d_resample: the FIR filter to H+1, then a stride-2 conv
    without padding -> H/2."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        bias: bool = True,
        activation: bool = True,
        down: int = 1,
    ):
        super().__init__()
        if (kernel, down) not in ((1, 1), (3, 1), (3, 2)):
            raise ValueError(
                f"EqualConv2d: kernel 1 or 3, down=2 only with 3 (got {kernel}, {down})"
            )
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.kernel, self.down, self.activation = kernel, down, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        if self.down == 1:
            y = F.conv2d(x, w, self.bias, padding=self.kernel // 2)
        else:
            y = F.conv2d(fir_filter2d(x, (2, 2)), w, self.bias, stride=2)
        return lrelu(y) if self.activation else y


class MappingNetwork(nn.Module):
    """z [B, z_dim] (+ labels [B]) -> w [B, w_dim]; tracks the mean w for the truncation trick.

    As StyleGAN2-ADA: z and the label embedding are each normalised to unit second moment and
    concatenated, then `num_layers` equalised FC layers (lr x0.01, LeakyReLU). With `w_avg_beta`,
    every training forward moves the buffer `w_avg` toward the batch mean of w (an EMA), and a
    conditional network also each class's row of `w_avg_class` toward that class's batch mean.
    D's label mapping (`cmap`) is the same network with z_dim=0 and no tracking.
    """

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_classes: int = 0,
        embed_dim: int = 0,
        num_layers: int = 2,
        lr_mul: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ):
        super().__init__()
        if z_dim == 0 and num_classes == 0:
            raise ValueError("a mapping network needs z_dim > 0 or num_classes > 0")
        self.z_dim, self.num_classes, self.w_avg_beta = z_dim, num_classes, w_avg_beta
        # An equalised FC layer on one-hot labels: StyleGAN2-ADA's embedding of c.
        self.embed = EqualLinear(num_classes, embed_dim) if num_classes > 0 else None
        dims = [z_dim + (embed_dim if num_classes > 0 else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualLinear(a, b, lr_mul=lr_mul, activation=True)
            for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))
            if num_classes > 0:
                self.register_buffer("w_avg_class", torch.zeros(num_classes, w_dim))

    def forward(
        self,
        z: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        truncation: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = [normalize_2nd_moment(z)] if self.z_dim > 0 else []
        if self.embed is not None:
            if labels is None:
                raise ValueError("this network is conditional: pass labels [B] (int64)")
            onehot = F.one_hot(labels, self.num_classes).to(self.embed.weight.dtype)
            parts.append(normalize_2nd_moment(self.embed(onehot)))
        x = torch.cat(parts, dim=1)
        for layer in self.layers:
            x = layer(x)
        if self.w_avg_beta is not None and self.training:
            self._track(x.detach().float(), labels)  # fp32: engines cast parameters, not buffers
        if truncation is not None:
            x = self.truncate(x, truncation, labels)
        return x

    @torch.no_grad()
    def _track(self, w: torch.Tensor, labels: torch.Tensor | None) -> None:
        beta = self.w_avg_beta
        self.w_avg.copy_(w.mean(dim=0).lerp(self.w_avg, beta))
        if self.num_classes > 0 and labels is not None:
            sums = torch.zeros_like(self.w_avg_class).index_add_(0, labels, w)
            counts = torch.bincount(labels, minlength=self.num_classes)
            seen = counts > 0
            means = sums[seen] / counts[seen, None].to(w.dtype)
            self.w_avg_class[seen] = means.lerp(self.w_avg_class[seen], beta)

    def truncate(
        self, w: torch.Tensor, psi: float | torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """center + psi (w - center); psi a number or one per sample [B] (1 leaves w unchanged).
        The center is the tracked mean w, or for a conditional network each label's class mean
        (ADA truncates toward the global mean, which at psi -> 0 erases the class)."""
        if self.w_avg_beta is None:
            raise ValueError("this mapping network does not track a mean w")
        psi = torch.as_tensor(psi, dtype=w.dtype, device=w.device).reshape(-1, 1)
        center = self.w_avg if self.num_classes == 0 else self.w_avg_class[labels]
        return center.to(w.dtype).lerp(w, psi)

"""Per-image quality statistics that match what people see in fakes: blur, noise, colour noise
and the high-frequency (upsampling-artefact) share of the spectrum.

Written with numpy/scipy by hand: each is a few lines of well-known maths (Laplacian variance,
Donoho's wavelet MAD, an FFT energy ratio), and scikit-image + PyWavelets would be two heavy
dependencies for them. All statistics use the 0..255 intensity scale.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

# Donoho & Johnstone: for Gaussian noise, median(|HH|) / 0.6745 estimates sigma.
MAD_TO_SIGMA = 0.6745
# Spatial frequencies above this (cycles/pixel; Nyquist = 0.5) count as high frequency.
HIGH_FREQ_CUTOFF = 0.25


def _ycbcr(images: torch.Tensor) -> np.ndarray:
    """uint8 [N, C, H, W] -> float64 [N, 3, H, W] Y, Cb, Cr (ITU-R BT.601, full range)."""
    x = images.double().numpy()
    if x.shape[1] == 1:
        zeros = np.zeros_like(x[:, 0])
        return np.stack([x[:, 0], zeros, zeros], 1)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], 1)


def laplacian_variance(plane: np.ndarray) -> np.ndarray:
    """Sharpness: variance of the Laplacian of each [N, H, W] plane (borders excluded)."""
    lap = ndimage.laplace(plane, mode="reflect", axes=(1, 2))[:, 1:-1, 1:-1]
    return lap.reshape(len(plane), -1).var(1)


def wavelet_noise_sigma(plane: np.ndarray) -> np.ndarray:
    """Noise sigma of each [N, H, W] plane from the finest diagonal Haar band (Donoho's MAD)."""
    h, w = plane.shape[1] // 2 * 2, plane.shape[2] // 2 * 2
    p = plane[:, :h, :w]
    # Orthonormal Haar HH coefficient of each 2x2 block: (a - b - c + d) / 2.
    hh = (p[:, 0::2, 0::2] - p[:, 0::2, 1::2] - p[:, 1::2, 0::2] + p[:, 1::2, 1::2]) / 2
    return np.median(np.abs(hh).reshape(len(p), -1), axis=1) / MAD_TO_SIGMA


def high_frequency_share(plane: np.ndarray, cutoff: float = HIGH_FREQ_CUTOFF) -> np.ndarray:
    """Share of spectral energy (DC removed) above `cutoff` cycles/pixel, per [N, H, W] plane."""
    p = plane - plane.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(p)) ** 2
    fy = np.fft.fftfreq(p.shape[1])[:, None]
    fx = np.fft.fftfreq(p.shape[2])[None, :]
    high = np.sqrt(fx**2 + fy**2) > cutoff
    total = power.reshape(len(p), -1).sum(1)
    return power[:, high].sum(1) / np.maximum(total, 1e-12)


def image_stats(images: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean of each statistic over uint8 images [N, C, H, W].

    sharpness: Laplacian variance of luminance (higher = sharper); noise_sigma: wavelet noise
    estimate on luminance; chroma_noise: mean of the estimates on Cb and Cr (0 for grey images);
    high_freq_share: spectral energy share above 0.25 cycles/pixel on luminance.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("image_stats expects uint8 images [N, C, H, W]")
    sums: dict[str, float] = {}
    for i in range(0, len(images), batch_size):
        ycc = _ycbcr(images[i : i + batch_size])
        y = ycc[:, 0]
        parts = {
            "sharpness": laplacian_variance(y),
            "noise_sigma": wavelet_noise_sigma(y),
            "chroma_noise": (wavelet_noise_sigma(ycc[:, 1]) + wavelet_noise_sigma(ycc[:, 2])) / 2,
            "high_freq_share": high_frequency_share(y),
        }
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
    return {k: v / len(images) for k, v in sums.items()}

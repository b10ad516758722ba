"""The spectral fingerprint of a generator (`ganforge detect spectrum`).

`spectrum_profile(images)` is the azimuthally averaged power spectrum of the images' luminance
(Durall et al., "Watch your up-convolution", CVPR 2020): the 2-D power spectrum (mean removed,
averaged over the images) averaged over rings of equal spatial frequency, out to the corners
(0.71 cycles/pixel), where the checkerboard of a stride-2 transposed convolution puts its
energy. Transposed convolutions and other upsamplers leave periodic peaks or a raised or
missing high-frequency tail there; real photographs fall off smoothly.
`spectral_distance(fake, real)` is the mean absolute difference of log10 power between two
profiles (DC excluded): 0 for identical spectra, 0.3 for a factor of two throughout.
`spectra(...)` measures a real set and each generator; `plot_spectra` draws them.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganforge.quality.detect_encoding import encode_like
from ganforge.quality.detect_sources import (
    EVALUATION_SEED,
    FakeInput,
    RealInput,
    as_sources,
    draw,
    real_images,
)
from ganforge.quality.image_stats import HIGH_FREQ_CUTOFF

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as image_stats uses
PEAK_PROMINENCE = 0.3  # decades (x2) above the mean of both neighbouring rings, in fake / real


def _luminance(images: torch.Tensor) -> np.ndarray:
    x = images.double().numpy()
    return x[:, 0] if x.shape[1] == 1 else np.tensordot(LUMA, x, axes=([0], [1]))


def spectrum_profile(images: torch.Tensor, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, C, H, W] (square) -> (frequencies [R] in cycles/pixel, mean power [R]).

    Ring k holds the frequencies whose radius rounds to k/H; R = round(H / sqrt(2)) + 1."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[2] != images.shape[3]:
        raise ValueError("spectrum_profile expects square uint8 images [N, C, H, H]")
    n, size = len(images), images.shape[2]
    power = np.zeros((size, size))
    for i in range(0, n, batch_size):
        y = _luminance(images[i : i + batch_size])
        y = y - y.mean(axis=(1, 2), keepdims=True)
        power += (np.abs(np.fft.fft2(y)) ** 2).sum(0) / size**2
    power /= n
    f = np.fft.fftfreq(size)
    ring = np.rint(np.hypot(f[:, None], f[None, :]) * size).astype(int)
    counts = np.bincount(ring.ravel())
    profile = np.bincount(ring.ravel(), weights=power.ravel()) / np.maximum(counts, 1)
    return np.arange(len(profile)) / size, profile


def spectral_distance(
    fake: np.ndarray, real: np.ndarray, freqs: np.ndarray | None = None, min_freq: float = 0.0
) -> float:
    """Mean |log10 fake - log10 real| over the rings of two power profiles of the same length,
    DC excluded; with `freqs` (the profiles' frequencies), only the rings at or above
    `min_freq` cycles/pixel."""
    fake, real = np.asarray(fake, float), np.asarray(real, float)
    if fake.shape != real.shape:
        raise ValueError(f"profiles differ in length ({len(fake)} vs {len(real)} rings)")
    keep = np.arange(len(real)) >= 1
    if freqs is not None:
        keep &= np.asarray(freqs) >= min_freq
    eps = 1e-12 * max(real.max(), 1e-12)  # an empty ring would otherwise give log10(0)
    return float(np.abs(np.log10(fake[keep] + eps) - np.log10(real[keep] + eps)).mean())


def ratio_peaks(fake: np.ndarray, real: np.ndarray, freqs: np.ndarray) -> list[dict[str, float]]:
    """Rings where log10(fake / real) stands more than PEAK_PROMINENCE above the mean of its two
    neighbours: the periodic artefacts of upsampling (a stride-2 layer that makes an S-pixel image
    from S/2 puts one at 0.5 and, from the layer before, 0.25 cycles/pixel). Strongest first."""
    lr = np.log10(np.maximum(fake[1:], 1e-12) / np.maximum(real[1:], 1e-12))
    lr = np.pad(lr, 1, mode="reflect")  # the outermost ring (the checkerboard's) has one neighbour
    prominence = lr[1:-1] - (lr[:-2] + lr[2:]) / 2
    found = [
        {"freq": float(freqs[k + 1]), "prominence": float(p)}
        for k, p in enumerate(prominence)
        if p > PEAK_PROMINENCE
    ]
    return sorted(found, key=lambda d: -d["prominence"])


def _compare(power: np.ndarray, real: np.ndarray, freqs: np.ndarray) -> dict[str, Any]:
    return {
        "power": power.tolist(),
        "distance": spectral_distance(power, real),
        "high_freq_distance": spectral_distance(power, real, freqs, HIGH_FREQ_CUTOFF),
        "peaks": ratio_peaks(power, real, freqs),
    }


def spectra(
    real: RealInput,
    fakes: FakeInput,
    split: str = "test",
    num_images: int = 2000,
    seed: int = 0,
    match_encoding: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Profiles of `num_images` real images (seeded subset of `split`) and as many fakes per
    generator, with each generator's distance to the real profile (all rings, and the rings at
    or above the high-frequency cutoff that `image_stats` uses). The fakes are compared as the
    reals are stored (`match_encoding`, when that is lossy); the profile of the fakes as generated
    is kept too (`as_generated`), since a JPEG hides part of a fingerprint."""
    started = time.time()
    sources = as_sources(fakes)
    loaded = real_images(real, split, num_images, seed, progress)
    reals, encoding = loaded.images, loaded.encoding if match_encoding else None
    freqs, real_power = spectrum_profile(reals)
    generators = {}
    for src in sources:
        raw = draw(src, len(reals), EVALUATION_SEED + seed, reals)
        entry = _compare(spectrum_profile(encode_like(raw, encoding))[1], real_power, freqs)
        if encoding is not None:
            entry["as_generated"] = _compare(spectrum_profile(raw)[1], real_power, freqs)
        generators[src.name] = {**entry, "origin": src.origin}
    return {
        "frequencies": freqs.tolist(),
        "real": {"power": real_power.tolist(), "data": loaded.origin, "num_images": len(reals)},
        "fake_encoding": encoding,
        "generators": generators,
        "high_freq_cutoff": HIGH_FREQ_CUTOFF,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def plot_spectra(body: dict[str, Any], path: str | Path) -> Path:
    """Left: log power per frequency ring (real in black); right: each generator's power over the
    real power, where peaks and missing high frequencies stand out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = np.asarray(body["frequencies"])[1:]
    real = np.asarray(body["real"]["power"])[1:]
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4))
    ax.semilogy(f, real, color="black", lw=2, label="real")
    ax_ratio.axhline(1.0, color="black", lw=1)
    for i, (name, g) in enumerate(body["generators"].items()):
        p, colour = np.asarray(g["power"])[1:], f"C{i}"
        ax.semilogy(f, p, color=colour, label=f"{name} (d={g['distance']:.2f})")
        ax_ratio.semilogy(f, p / np.maximum(real, 1e-12), color=colour, label=name)
        if "as_generated" in g:  # dashed: before the reals' JPEG encoding
            raw = np.asarray(g["as_generated"]["power"])[1:]
            ax_ratio.semilogy(f, raw / np.maximum(real, 1e-12), color=colour, ls="--", lw=0.8)
    for a, title in ((ax, "azimuthally averaged power"), (ax_ratio, "fake / real power")):
        a.axvline(body["high_freq_cutoff"], color="grey", ls=":", lw=1)
        a.set_xlabel("spatial frequency (cycles/pixel)")
        a.set_title(title)
        a.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_spectra(body: dict[str, Any], out: str | Path) -> Path:
    """`out/spectrum.json` and `out/spectrum.png` -> out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spectrum.json").write_text(json.dumps(body, indent=1))
    plot_spectra(body, out / "spectrum.png")
    return out

"""Store the fakes the way the real images are stored, so that the file encoding is no cue.

CIFAR-10 as distributed here is JPEG at quality 75 (4:2:0), while a generator's output is
lossless. A detector trained on those learns "JPEG artefacts = real", and random JPEG
re-compression of both classes does not stop it: re-compressing a JPEG does not erase the first
compression (tests/test_detect.py shows a pure encoding difference learnt through the default
augmentation; docs/detection.md has the figures). What removes the cue is giving the fakes the
same encoding:
`real_encoding` reads the first image of the real split and, when it is a JPEG, estimates its
quality from its quantisation tables; `encode_like` applies that JPEG to the fakes before
training, evaluation and the spectrum see them.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

from ganforge.data.codec import payload_ext
from ganforge.data.memory import shard_paths
from ganforge.models.detector import jpeg_roundtrip


@functools.cache
def _reference_tables() -> np.ndarray:
    """PIL's (libjpeg's) luminance quantisation table at each quality 1..100 -> [100, 64]."""
    rows = []
    for q in range(1, 101):
        buf = io.BytesIO()
        Image.new("L", (8, 8)).save(buf, format="JPEG", quality=q)
        rows.append(list(Image.open(buf).quantization[0]))
    return np.array(rows, dtype=np.int64)


def estimate_jpeg(data: bytes) -> dict[str, Any]:
    """{"format": "jpeg", "quality": q, "subsampling": s} of JPEG bytes: q is the libjpeg quality
    whose luminance table is nearest (exact for files written by libjpeg-based encoders), s is
    PIL's subsampling code (0: 4:4:4, 1: 4:2:2, 2: 4:2:0; -1 for grey images)."""
    img = Image.open(io.BytesIO(data), formats=("JPEG",))
    table = np.array(list(img.quantization[0]), dtype=np.int64)
    quality = int(np.abs(_reference_tables() - table).sum(1).argmin()) + 1
    sampling = JpegImagePlugin.get_sampling(img) if img.mode != "L" else -1
    return {"format": "jpeg", "quality": quality, "subsampling": int(sampling)}


def real_encoding(real: str | Path | torch.Tensor, split: str) -> dict[str, Any] | None:
    """How the first image of `real`'s `split` is stored, if lossy (see `estimate_jpeg`); None
    for lossless storage (png, raw pixels) and for in-memory images."""
    if isinstance(real, torch.Tensor):
        return None
    import webdataset as wds

    first = shard_paths(real, split)[0]
    sample = next(iter(wds.WebDataset([str(first)], shardshuffle=False, empty_check=False)), None)
    if sample is None or payload_ext(sample) != "jpg":
        return None
    return estimate_jpeg(sample["jpg"])


def encode_like(images: torch.Tensor, encoding: dict[str, Any] | None) -> torch.Tensor:
    """uint8 images [N, C, H, W] through `encoding` (from `real_encoding`; None: unchanged)."""
    if encoding is None:
        return images
    return jpeg_roundtrip(images, encoding["quality"], encoding.get("subsampling", -1))

"""Image encodings of the API: base64 PNGs, one PNG grid, .npy arrays, and decoded uploads."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ganforge.images import array_to_png, make_grid, to_uint8
from ganforge.serve.schemas import ApiError

UPLOAD_FORMATS = {"PNG", "JPEG"}
# A small compressed file can expand to gigabytes; refuse big pictures before decoding them.
MAX_UPLOAD_PIXELS = 4096 * 4096


def _png(arr: np.ndarray) -> bytes:
    # compress_level=1: ~40% less CPU than PIL's default for small images, barely larger files.
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()


def png_list(images: torch.Tensor) -> list[str]:
    """[N, C, H, W] in [-1, 1] -> N base64 strings of PNG files."""
    return [base64.b64encode(_png(a)).decode("ascii") for a in to_uint8(images)]


def grid_png(images: torch.Tensor, nrow: int | None) -> bytes:
    return array_to_png(make_grid(images, nrow))


def npy_bytes(images: torch.Tensor) -> bytes:
    """uint8 [N, H, W, C] as a .npy file (`np.load(io.BytesIO(body))` reads it)."""
    buf = io.BytesIO()
    np.save(buf, to_uint8(images), allow_pickle=False)
    return buf.getvalue()


def decode_upload(data: bytes, filename: str | None, resolution: int, channels: int):
    """A PNG/JPEG upload -> ([C, H, W] float in [-1, 1], resized?) at the model's shape.

    Refuses anything PIL does not identify as PNG or JPEG with a 415.
    """
    name = filename or "upload"
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        if img.size[0] * img.size[1] > MAX_UPLOAD_PIXELS:
            raise ApiError(413, f"{name}: {img.size[0]}x{img.size[1]} pixels is too large")
        img.load()  # decode now: a truncated file fails here, not later
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ApiError(415, f"{name}: not a readable PNG or JPEG image ({e})") from None
    if fmt not in UPLOAD_FORMATS:
        raise ApiError(415, f"{name}: {fmt} images are not accepted; upload PNG or JPEG")
    mode = "L" if channels == 1 else "RGB"
    resized = img.size != (resolution, resolution) or img.mode != mode
    img = img.convert(mode)
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8).reshape(resolution, resolution, channels)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    return x, resized

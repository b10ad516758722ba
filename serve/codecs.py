"""Image encodings of the API: base64 PNGs, one PNG grid, .npy arrays, and decoded uploads."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ganforge.images import array_to_png, tile
from ganforge.serve.schemas import ApiError

UPLOAD_FORMATS = {"PNG", "JPEG"}
# A small compressed file can expand to gigabytes; refuse big pictures before decoding them.
MAX_UPLOAD_PIXELS = 4096 * 4096


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(arr: np.ndarray) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) -> a PNG file: 8-bit grey or RGB, rows unfiltered, zlib
    level 1. Written directly rather than through PIL: 36 vs 153 us for a 32x32 RGB image
    (measured), the largest cost of a one-image JSON response; files stay about the same size."""
    h, w, c = arr.shape
    rows = np.zeros((h, w * c + 1), np.uint8)  # each row starts with its filter type: 0 = none
    rows[:, 1:] = arr.reshape(h, w * c)
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)),
            _chunk(b"IEND", b""),
        )
    )


def png_list(arr: np.ndarray) -> list[str]:
    """uint8 [N, H, W, C] -> N base64 strings of PNG files."""
    return [base64.b64encode(png(a)).decode("ascii") for a in arr]


def grid_png(arr: np.ndarray, nrow: int | None) -> bytes:
    return array_to_png(tile(arr, nrow))


def npy_bytes(arr: np.ndarray) -> bytes:
    """uint8 [N, H, W, C] as a .npy file (`np.load(io.BytesIO(body))` reads it)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
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

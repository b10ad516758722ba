"""Image encodings of the API: base64 PNGs, one PNG grid, .npy arrays, and decoded uploads."""

from __future__ import annotations

import base64
import io
import logging
import math
import struct
import zlib

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ganforge.data.codec import to_mode
from ganforge.images import array_to_png, tile
from ganforge.serve.schemas import ApiError

log = logging.getLogger("ganforge.serve")
# The only Pillow decoders an upload reaches (`Image.open(formats=...)`).
UPLOAD_FORMATS = ("PNG", "JPEG")
# Whatever the model's size: a small compressed file can expand to gigabytes.
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


def upload_pixel_cap(resolution: int) -> int:
    """Most pixels an upload to a model of `resolution` may have: (16 x resolution)^2, at most
    MAX_UPLOAD_PIXELS. Scoring shrinks every upload to the model's size, so a bigger picture
    only costs decode time; a file of a few KB can declare millions of pixels."""
    return min(MAX_UPLOAD_PIXELS, (16 * resolution) ** 2)


def _shown(filename: str | None) -> str:
    """The upload's name as said back in an error: the client's own, shortened."""
    name = filename or "upload"
    return name if len(name) <= 80 else name[:77] + "..."


# Other formats' leading bytes, only to name them in the refusal: no decoder of theirs runs.
_OTHER_FORMATS = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\0": "TIFF",
    b"MM\0*": "TIFF",
    b"\0\0\1\0": "ICO",
    b"8BPS": "PSD",
}


def _too_large(name: str, size: tuple[int, int] | None, cap: int) -> ApiError:
    side = math.isqrt(cap)
    what = "more pixels" if size is None else f"{size[0]}x{size[1]} pixels is more"
    return ApiError(
        413,
        f"{name}: {what} than this model accepts: at most {cap} pixels (e.g. {side}x{side}) "
        "per upload",
    )


def _refuse_format(data: bytes, name: str) -> ApiError:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind: str | None = "WEBP"
    else:
        kind = next((k for sig, k in _OTHER_FORMATS.items() if data.startswith(sig)), None)
    if kind is not None:
        return ApiError(415, f"{name}: {kind} images are not accepted; upload PNG or JPEG")
    return ApiError(415, f"{name}: not a readable PNG or JPEG image")


def decode_upload(data: bytes, filename: str | None, resolution: int, channels: int):
    """A PNG/JPEG upload -> ([C, H, W] float in [-1, 1], resized?) at the model's shape
    (`decode_upload_uint8`, scaled as the generators' outputs are)."""
    arr, resized = decode_upload_uint8(data, filename, resolution, channels)
    return arr.float() / 127.5 - 1.0, resized


def decode_upload_uint8(data: bytes, filename: str | None, resolution: int, channels: int):
    """A PNG/JPEG upload -> ([C, H, W] uint8, resized?) at the model's shape.

    Blocking (decode, convert, resize): call it off the event loop. Only Pillow's PNG and JPEG
    decoders ever run: anything else is a 415 before any decoding. A header declaring more than
    `upload_pixel_cap(resolution)` pixels is a 413 before the pixels are decoded. Colour modes
    go through `ganforge.data.codec.to_mode`, the conversion `ganforge data pack` applies to
    training images (16-bit and 32-bit grey are scaled to 8 bits, not clipped).
    """
    name = _shown(filename)
    cap = upload_pixel_cap(resolution)
    try:
        img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except UnidentifiedImageError:
        raise _refuse_format(data, name) from None
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        raise _too_large(name, None, cap) from None
    except Exception as e:  # a header Pillow cannot parse, whatever it raises
        log.info("upload %r: unreadable header: %s: %s", name, type(e).__name__, e)
        raise ApiError(415, f"{name}: not a readable PNG or JPEG image") from None
    width, height = img.size
    if width * height > cap:
        raise _too_large(name, (width, height), cap)
    mode = img.mode
    try:
        img.load()  # decode now: a truncated or corrupt file fails here, not later
        img = to_mode(img, channels)
        if img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    except Exception as e:  # Pillow raises many types on corrupt data (OSError, SyntaxError...)
        log.info("upload %r: cannot decode: %s: %s", name, type(e).__name__, e)
        raise ApiError(415, f"{name}: not a readable PNG or JPEG image") from None
    resized = (width, height) != (resolution, resolution) or mode != img.mode
    arr = np.asarray(img, dtype=np.uint8).reshape(resolution, resolution, channels)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1), resized

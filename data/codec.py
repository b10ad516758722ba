"""Image bytes <-> uint8 pixels, shared by `data pack`, `data inspect` and the streaming loader.

Sample payload extensions inside a shard:
  - `png` / `jpg`: an encoded image file (decoded with PIL).
  - `raw.npy`: an `.npy` file holding uint8 pixels of shape [H, W, C] (C = 1 or 3). No image
    decoding at train time: reading it is a header parse and a memory copy.
"""

from __future__ import annotations

import ast
import functools
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_EXTS = ("png", "jpg", "raw.npy")
ENCODINGS = ("keep", "png", "jpg", "raw")
JPEG_QUALITY = 95
_PIL_EXT = {"JPEG": "jpg", "PNG": "png"}
_PIL_FORMAT = {v: k for k, v in _PIL_EXT.items()}
# The decoders a source image may use: the formats of IMAGE_SUFFIXES in `sources`. Naming them
# keeps Pillow from trying its other plugins on hostile bytes (EPS, for one, runs Ghostscript).
SOURCE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
# Far beyond any image packing keeps (64x64 at most is trained; photos get resized): refusing at
# the header stops a decompression bomb before a pixel is decoded (Pillow's own limit is 89 Mpx).
MAX_SOURCE_PIXELS = 40_000_000


class ImageProblem(ValueError):
    """One input image cannot be used; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Encoded:
    ext: str  # one of IMAGE_EXTS
    data: bytes
    width: int  # original size, before any resize
    height: int
    mode: str  # original PIL mode
    converted: bool  # mode or size changed


def _open(payload: bytes | np.ndarray) -> tuple[Image.Image, str | None]:
    """-> (fully loaded image, 'jpg'/'png' when the payload is such a file, else None)."""
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8:
            raise ImageProblem(f"array dtype {payload.dtype}, expected uint8")
        arr = payload[..., 0] if payload.ndim == 3 and payload.shape[-1] == 1 else payload
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ImageProblem(f"array shape {payload.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
        return Image.fromarray(np.ascontiguousarray(arr)), None
    try:
        img = Image.open(io.BytesIO(payload), formats=SOURCE_FORMATS)
        if img.width * img.height > MAX_SOURCE_PIXELS:
            raise ImageProblem(
                f"{img.width}x{img.height} pixels, above the {MAX_SOURCE_PIXELS / 1e6:.0f} Mpx "
                "cap on one source image"
            )
        img.load()  # verify the whole file decodes, not just its header
    except ImageProblem:
        raise
    except Image.UnidentifiedImageError:
        raise ImageProblem(
            f"corrupt or not an image (readable formats: {', '.join(SOURCE_FORMATS)})"
        ) from None
    except Exception as e:  # PIL raises many types for broken files
        raise ImageProblem(f"corrupt or not an image ({type(e).__name__}: {e})") from None
    return img, _PIL_EXT.get(img.format or "")


def probe_size(payload: bytes | np.ndarray) -> tuple[int, int]:
    """(width, height) of a source image; ImageProblem when it cannot be decoded."""
    return _open(payload)[0].size


def fit(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic), then centre-crop to size x size."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """L/RGBA/P/CMYK/I;16 ... -> 'L' or 'RGB'. Alpha is dropped (the colour values are kept)."""
    target = "L" if channels == 1 else "RGB"
    if img.mode == target:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale down to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray((arr / peak * 255).round().astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert(target)


def encode_image(
    payload: bytes | np.ndarray, size: int, channels: int, encoding: str, resize: bool
) -> Encoded:
    """Validate one source image and produce the shard payload.

    `encoding=keep` stores the source file bytes unchanged when they already are JPEG/PNG at the
    right size and mode, else lossless PNG. Raises ImageProblem with a user-facing reason.
    """
    img, src_ext = _open(payload)
    width, height, mode = img.width, img.height, img.mode
    if (width, height) != (size, size):
        if not resize:
            raise ImageProblem(
                f"size {width}x{height} differs from {size}x{size} (pass --image-size to resize)"
            )
        img = fit(img, size)
    img = to_mode(img, channels)
    changed = (width, height, mode) != (img.width, img.height, img.mode)
    reusable = src_ext is not None and not changed and isinstance(payload, bytes)
    if encoding == "raw":
        ext, data = "raw.npy", npy_bytes(pixels(img))
    elif reusable and encoding in ("keep", src_ext):
        ext, data = src_ext, payload  # byte-identical copy of the source file
    elif encoding == "jpg":
        ext, data = "jpg", _save(img, "JPEG", quality=JPEG_QUALITY)
    else:
        ext, data = "png", _save(img, "PNG")
    return Encoded(ext, bytes(data), width, height, mode, changed)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pixels(img: Image.Image) -> np.ndarray:
    """PIL image -> uint8 [H, W, C] (C = 1 for 'L')."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[int, ...]:
    """Shape of a uint8 [H, W, C] .npy header (parsed once per distinct header: np.load's
    literal_eval of the header dominated the raw-pixel path)."""
    info = ast.literal_eval(header[10:].decode("latin1"))
    if info.get("descr") != "|u1" or info.get("fortran_order") or len(info.get("shape", ())) != 3:
        raise ValueError(f"raw.npy payload is not uint8 [H, W, C] ({info})")
    return tuple(info["shape"])


def npy_pixels(data: bytes) -> np.ndarray:
    """uint8 [H, W, C] from `.npy` bytes (version 1 header, as `npy_bytes` writes)."""
    if data[:6] != b"\x93NUMPY" or data[6] != 1:
        return _checked(np.load(io.BytesIO(data), allow_pickle=False))
    end = 10 + int.from_bytes(data[8:10], "little")
    shape = _npy_header(bytes(data[:end]))
    return np.frombuffer(data, np.uint8, count=math.prod(shape), offset=end).reshape(shape)


def _checked(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ValueError(f"raw.npy payload has dtype {arr.dtype} shape {arr.shape}")
    return arr


def decode_image(ext: str, data: bytes, channels: int, size: int | None = None) -> np.ndarray:
    """Shard payload -> uint8 [size, size, channels] (resized/cropped when size differs)."""
    if ext == "raw.npy":
        arr = npy_pixels(data)
        if arr.shape[-1] == channels and (size is None or arr.shape[:2] == (size, size)):
            return arr
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    else:  # naming the format skips PIL's probing of every plugin
        img = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT.get(ext, "PNG"), "PNG", "JPEG"])
    img = to_mode(img, channels)
    if size is not None:
        img = fit(img, size)
    return pixels(img)


def payload_ext(sample: dict) -> str | None:
    """Which image field a webdataset sample dict carries."""
    return next((e for e in IMAGE_EXTS if e in sample), None)

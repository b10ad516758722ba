"""`ganforge data inspect`: manifest summary, shard checksums, per-class sample grid."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ganforge.data.codec import IMAGE_EXTS, decode_image
from ganforge.storage import sha256_file


def verify_shards(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """-> one message per missing or altered shard (empty when all checksums match)."""
    problems = []
    for split, info in sorted(manifest["splits"].items()):
        for entry in info["shards"]:
            path = Path(directory) / entry["name"]
            if not path.is_file():
                problems.append(f"{split}: {entry['name']} is missing")
            elif sha256_file(path) != entry["sha256"]:
                problems.append(f"{split}: {entry['name']} sha256 mismatch (altered or truncated)")
    return problems


def iter_samples(shard: Path) -> Iterator[dict[str, bytes]]:
    """Samples of one local shard as {'__key__': ..., ext: bytes} (webdataset's grouping rule:
    the key is the file name up to its first dot)."""
    current: dict[str, Any] = {}
    with tarfile.open(shard) as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            f = tar.extractfile(m)
            current[ext] = f.read() if f else b""
    if current:
        yield current


def class_grid(
    directory: Path, manifest: dict[str, Any], split: str, per_class: int = 8, pad: int = 2
) -> np.ndarray:
    """uint8 [rows, cols, C] image: one row per class, up to `per_class` samples each (white
    where a class has fewer)."""
    size, channels, n_cls = manifest["image_size"], manifest["channels"], len(manifest["classes"])
    picked: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    for entry in manifest["splits"][split]["shards"]:
        for sample in iter_samples(Path(directory) / entry["name"]):
            label = int(sample["cls"])
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext and 0 <= label < n_cls and len(picked[label]) < per_class:
                picked[label].append(decode_image(ext, sample[ext], channels, size))
        if all(len(p) >= per_class for p in picked):
            break
    cell = size + pad
    grid = np.full((n_cls * cell + pad, per_class * cell + pad, channels), 255, np.uint8)
    for row, images in enumerate(picked):
        for col, img in enumerate(images):
            y, x = pad + row * cell, pad + col * cell
            grid[y : y + size, x : x + size] = img
    return grid


def save_png(arr: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path, format="PNG")
    return path

"""Read the real reference images of a shard directory into memory.

`ganforge eval` needs the real distribution as one tensor (CIFAR-size data fits in memory), so this
reads the WebDataset shards listed in `dataset.json` directly instead of going through the
training loader (which streams, shuffles, augments and never ends when resampling).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_KEYS = ("png", "jpg", "jpeg", "npy", "u8")


class DataError(ValueError):
    """The shard directory or its manifest is missing or does not describe the split."""


@dataclass
class RealImages:
    """uint8 images [N, C, H, W], int64 labels [N] and the manifest's class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    image_size: int
    channels: int


def read_manifest(shards_dir: str | Path) -> dict:
    """dataset.json of a shard directory (or the file itself) as a dict; clear error if absent."""
    p = Path(shards_dir)
    path = p if p.is_file() else p / "dataset.json"
    if not path.is_file():
        raise DataError(f"{shards_dir}: no dataset.json (expected a directory of packed shards)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    for key in ("classes", "image_size", "channels", "splits"):
        if key not in manifest:
            raise DataError(f"{path}: manifest lacks the key {key!r}")
    return manifest


def shard_paths(shards_dir: str | Path, split: str) -> list[Path]:
    root = Path(shards_dir)
    root = root.parent if root.is_file() else root
    manifest = read_manifest(root)
    splits = manifest["splits"]
    if split not in splits:
        raise DataError(f"{root}: no split {split!r} (has: {', '.join(sorted(splits))})")
    paths = [root / s["name"] for s in splits[split]["shards"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{root}: shard files missing: {', '.join(missing[:3])}")
    return paths


def _decode(sample: dict, size: int, channels: int) -> np.ndarray:
    """One sample's image as uint8 [H, W, C] at `size` with `channels` channels."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise DataError(f"sample {sample.get('__key__')!r} has no image ({', '.join(IMAGE_KEYS)})")
    data = sample[key]
    if key == "npy":
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    elif key == "u8":  # fixed layout: size x size x channels raw bytes
        arr = np.frombuffer(data, np.uint8).reshape(size, size, channels)
    else:
        img = Image.open(io.BytesIO(data))
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] != channels:  # npy stored with the other channel count
        arr = arr.mean(-1, keepdims=True) if channels == 1 else np.repeat(arr, 3, -1)
    return arr.astype(np.uint8)


def load_real(
    shards_dir: str | Path,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RealImages:
    """Read a split into memory; `limit` keeps a seeded random subset of that many images.

    Returns uint8 images [N, C, H, W] and int64 labels [N] (-1 when a sample has no `.cls`).
    """
    import webdataset as wds

    manifest = read_manifest(shards_dir)
    size, channels = int(manifest["image_size"]), int(manifest["channels"])
    paths = shard_paths(shards_dir, split)
    total = manifest["splits"][split].get("num_samples")
    keep = None
    if limit is not None and total and limit < total:
        # Choosing indices before decoding skips the decode cost of the dropped images.
        keep = set(np.random.default_rng(seed).choice(total, size=limit, replace=False).tolist())
    dataset = wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False)
    images, labels = [], []
    it = dataset
    if progress:
        from tqdm import tqdm

        it = tqdm(dataset, total=total, desc=f"reading {split}", unit="img", leave=False)
    for i, sample in enumerate(it):
        if keep is not None and i not in keep:
            continue
        images.append(_decode(sample, size, channels))
        cls = sample.get("cls")
        labels.append(int(cls.decode().strip()) if cls is not None else -1)
    if not images:
        raise DataError(f"{shards_dir}: split {split!r} holds no images")
    if limit is not None and len(images) > limit:  # num_samples unknown: subsample afterwards
        idx = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
        images, labels = [images[i] for i in idx], [labels[i] for i in idx]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return RealImages(
        x, torch.tensor(labels, dtype=torch.int64), list(manifest["classes"]), size, channels
    )

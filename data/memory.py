"""A whole split of a shard directory in memory: evaluation's real reference set.

`ganforge eval` needs the real distribution as one tensor (CIFAR-size data fits in memory), so this
reads the WebDataset shards listed in `dataset.json` directly instead of going through the
training loader (which streams, shuffles, augments and never ends when resampling). Samples are
decoded by the same codec as training (`codec.decode_image`), so every encoding `data pack`
writes (png, jpg, raw) reads here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ganforge.data import DataError
from ganforge.data.codec import IMAGE_EXTS, decode_image, payload_ext
from ganforge.data.manifest import MANIFEST_NAME, load_manifest, shard_entries


@dataclass
class RealImages:
    """uint8 images [N, C, H, W], int64 labels [N] and the manifest's class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    image_size: int
    channels: int


def _root(shards_dir: str | Path) -> Path:
    """The shard directory, given itself or its dataset.json."""
    p = Path(shards_dir)
    return p.parent if p.is_file() else p


def read_manifest(shards_dir: str | Path) -> dict:
    """dataset.json of a shard directory (or the file itself); DataError with the reason."""
    root = _root(shards_dir)
    if not (root / MANIFEST_NAME).is_file():
        raise DataError(f"{shards_dir}: no {MANIFEST_NAME} (expected a directory of packed shards)")
    return load_manifest(root)


def shard_paths(shards_dir: str | Path, split: str) -> list[Path]:
    root = _root(shards_dir)
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        have = ", ".join(sorted(manifest["splits"]))
        raise DataError(f"{root}: no split {split!r} (has: {have})")
    paths = [root / e["name"] for e in shard_entries(manifest, split)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{root}: shard files missing: {', '.join(missing[:3])}")
    return paths


def _decode(sample: dict, size: int, channels: int) -> np.ndarray:
    """One sample's image as uint8 [size, size, channels]."""
    ext = payload_ext(sample)
    if ext is None:
        raise DataError(f"sample {sample.get('__key__')!r} has no image ({', '.join(IMAGE_EXTS)})")
    try:
        return decode_image(ext, sample[ext], channels, size)
    except (OSError, ValueError) as e:  # PIL and the npy reader raise these for broken bytes
        raise DataError(f"sample {sample.get('__key__')!r}: cannot decode {ext} ({e})") from None


def _label(sample: dict, num_classes: int) -> int:
    """The sample's class index, -1 without a `.cls`; DataError outside the manifest's classes
    (a classifier's loss or a per-class metric would index past them)."""
    cls = sample.get("cls")
    if cls is None:
        return -1
    try:
        label = int(cls)
    except ValueError:
        key = sample.get("__key__")
        raise DataError(f"sample {key!r}: label {cls[:20]!r} is not a number") from None
    if not 0 <= label < num_classes:
        raise DataError(
            f"sample {sample.get('__key__')!r}: label {label} outside 0..{num_classes - 1} "
            f"(the manifest lists {num_classes} classes)"
        )
    return label


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
        labels.append(_label(sample, len(manifest["classes"])))
    if not images:
        raise DataError(f"{shards_dir}: split {split!r} holds no images")
    if limit is not None and len(images) > limit:  # num_samples unknown: subsample afterwards
        idx = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
        images, labels = [images[i] for i in idx], [labels[i] for i in idx]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return RealImages(
        x, torch.tensor(labels, dtype=torch.int64), list(manifest["classes"]), size, channels
    )

"""The demo datasets, by name: what `data.urls: demo:NAME` and `ganforge demo --data NAME` use.

    shapes          six classes of procedural shapes (`data.shapes`), drawn on first use;
                    the default of `ganforge demo`: a small GAN learns it in minutes on CPU
    cifar10-subset  the CIFAR-10 subset shipped in the package (`demo_archive()`); what
                    `data.urls: null` means

Each is packed once, as raw-pixel shards, into a cache folder keyed by its content
($GANFORGE_CACHE, default ~/.cache/ganforge), so an updated package never reuses stale shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganforge.data import DataError, demo_archive, ensure_demo_shards

if TYPE_CHECKING:
    from ganforge.data.pack import PackOptions

SCHEME = "demo:"
SHAPES = "shapes"
CIFAR10_SUBSET = "cifar10-subset"
NAMES = (SHAPES, CIFAR10_SUBSET)
# The shapes demo: 1,000 training and 200 test images per class (7,200 images, ~20 MB of raw
# shards, drawn and packed in a few seconds).
SHAPES_PER_CLASS = {"train": 1000, "test": 200}
SHAPES_SEED = 0


def cache_root() -> Path:
    return Path(os.environ.get("GANFORGE_CACHE", "~/.cache/ganforge")).expanduser()


def cifar10_cache_dir() -> Path:
    digest = hashlib.sha256(demo_archive().read_bytes()).hexdigest()[:12]
    return cache_root() / f"demo-shards-{digest}"


def shapes_cache_dir() -> Path:
    """Keyed by the renderer's source and the demo's counts: a change to either draws anew."""
    from ganforge.data import shapes

    key = Path(shapes.__file__).read_bytes() + json.dumps([SHAPES_PER_CLASS, SHAPES_SEED]).encode()
    return cache_root() / f"demo-shapes-{hashlib.sha256(key).hexdigest()[:12]}"


def write_shapes(
    out: Path, per_class: dict[str, int], seed: int, size: int = 32, opts: PackOptions | None = None
) -> dict[str, Any]:
    """Draw the shapes dataset and pack it at `out` (default: raw pixels, quiet); -> manifest."""
    from ganforge.data.pack import PackOptions, check_out_dir, pack_dataset
    from ganforge.data.shapes import shapes_dataset

    check_out_dir(Path(out))  # before drawing: a used OUT fails at once
    ds = shapes_dataset(per_class, seed=seed, size=size)
    opts = opts or PackOptions(encoding="raw", progress=False)
    return pack_dataset(ds, out, opts, source=f"ganforge data shapes --seed {seed}")


def demo_shards(name: str) -> Path:
    """The packed folder of demo dataset `name`, made on first use. DataError for another name.

    Safe when several processes race: the packer renames a finished temp folder into place, so
    the folder either holds a complete dataset.json + shards or does not exist."""
    from ganforge.data.manifest import MANIFEST_NAME

    if name == CIFAR10_SUBSET:
        return ensure_demo_shards(cifar10_cache_dir())
    if name != SHAPES:
        raise DataError(f"unknown demo dataset {name!r}; choose one of: {', '.join(NAMES)}")
    out = shapes_cache_dir()
    if not (out / MANIFEST_NAME).is_file():
        try:
            write_shapes(out, SHAPES_PER_CLASS, SHAPES_SEED)
        except (DataError, OSError):
            if not (out / MANIFEST_NAME).is_file():  # not a lost race: a real failure
                raise
    return out

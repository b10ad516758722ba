"""Small on-disk datasets for the data tests (helpers only; no tests in this module).

Images are random noise so that every image is unique and identifies its sample.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["bird", "cat", "dog"]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def noise(rng: np.random.Generator, size: int = 8, channels: int = 3) -> np.ndarray:
    shape = (size, size, channels) if channels > 1 else (size, size)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def image_tree(root: Path, per_class: int = 12, size: int = 8, seed: int = 0) -> dict[str, tuple]:
    """root/<class>/NNN.png RGB noise -> {relative path: (label, uint8 HWC pixels)}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for label, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = noise(rng, size)
            (root / cls / f"{i:03d}.png").write_bytes(_png(arr))
            truth[f"{cls}/{i:03d}.png"] = (label, arr)
    return truth


def add_bad_inputs(root: Path) -> None:
    """A corrupt PNG, a truncated JPEG, a grey image, an RGBA image, a text file."""
    rng = np.random.default_rng(1)
    (root / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    buf = io.BytesIO()
    Image.fromarray(noise(rng, 8)).save(buf, format="JPEG")
    (root / "dog" / "truncated.jpg").write_bytes(buf.getvalue()[:60])
    Image.fromarray(noise(rng, 8, 1), mode="L").save(root / "bird" / "grey.png")
    rgba = np.concatenate([noise(rng, 8), np.full((8, 8, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(root / "bird" / "alpha.png")
    (root / "cat" / "notes.txt").write_text("not an image")


def tar_of(root: Path, out: Path, arcname: str = "data") -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(root, arcname=arcname)
    return out


def cifar_pickles(root: Path, n: int = 10, seed: int = 0) -> np.ndarray:
    """Fake CIFAR-10 python batches (2 train batches + test); returns all images (N,32,32,3)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"class{i}".encode() for i in range(10)]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    images = []
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        (root / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(images)


def _idx(arr: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def mnist_idx(root: Path, n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """train-images-idx3-ubyte.gz + labels (gzip), t10k-* uncompressed; returns train arrays."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images, 8)))
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels, 8)))
    (root / "t10k-images-idx3-ubyte").write_bytes(_idx(images[:5], 8))
    (root / "t10k-labels-idx1-ubyte").write_bytes(_idx(labels[:5], 8))
    return images, labels

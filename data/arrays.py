"""The array formats: CIFAR-10 python pickles, MNIST IDX files and `.npz` archives.

Untrusted like every source: CIFAR pickles go through an unpickler that admits only CIFAR's own
content, gzip'd IDX files inflate only up to a cap, a lying IDX header is caught before use, and an
npz has only its three arrays read, each size-checked from the zip directory first.
"""

from __future__ import annotations

import io
import pickle
import zlib
from pathlib import Path

import numpy as np

from ganforge.data import DataError
from ganforge.data.dataset import Dataset, Files, Item, human_size
from ganforge.data.names import MAX_CLASSES, check_class_names

MAX_DECOMPRESSED_BYTES = 1 << 30  # one gzip'd IDX file, decompressed
MAX_ARRAY_BYTES = 4 << 30  # one .npz array, uncompressed


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10's python batches hold: dicts, lists, bytes, str, numbers, and
    numpy arrays rebuilt by numpy's own reconstruction functions. Any other global (the way a
    pickle runs code: `os.system`, `builtins.eval`, ...) is refused before it is looked up."""

    ALLOWED = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    } | {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles made by Python 3 spell bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: not part of a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(data: bytes, what: str) -> dict:
    try:
        out = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # a broken pickle raises nearly anything
        raise DataError(f"{what}: not a CIFAR-10 python pickle ({e})") from None
    if not isinstance(out, dict):
        raise DataError(f"{what}: not a CIFAR-10 python pickle (a {type(out).__name__})")
    return out


def _cifar_field(d: dict, key: bytes, what: str):
    if key not in d:
        raise DataError(f"{what}: CIFAR pickle lacks {key.decode()!r}")
    return d[key]


def _cifar_batch(batch: dict, what: str, n_classes: int) -> tuple[np.ndarray, list[int]]:
    """-> (uint8 images [N, 32, 32, 3], labels); DataError for any shape or label problem."""
    try:
        data = np.asarray(_cifar_field(batch, b"data", what), dtype=np.uint8)
        labels = [int(y) for y in _cifar_field(batch, b"labels", what)]
    except (TypeError, ValueError) as e:
        raise DataError(f"{what}: malformed CIFAR batch ({e})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{what}: data has shape {data.shape}, expected (N, 3072)")
    if len(labels) != len(data):
        raise DataError(f"{what}: {len(data)} images but {len(labels)} labels")
    bad = [y for y in labels if not 0 <= y < n_classes]
    if bad:
        raise DataError(f"{what}: label {bad[0]} outside 0..{n_classes - 1} ({len(bad)} such)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar(files: Files, display: str) -> Dataset:
    meta = _unpickle(files["batches.meta"](), display + "batches.meta")
    names = _cifar_field(meta, b"label_names", display + "batches.meta")
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        raise DataError(f"{display}batches.meta: label_names is not a list of names")
    classes = [n.decode(errors="replace") if isinstance(n, bytes) else n for n in names]
    check_class_names(classes, display + "batches.meta")
    groups = {"train": "data_batch_", "test": "test_batch"}
    splits: dict[str, list[Item]] = {}
    for split, stem in groups.items():
        for path in sorted(p for p in files if p.startswith(stem)):
            what = display + path
            images, labels = _cifar_batch(_unpickle(files[path](), what), what, len(classes))
            splits.setdefault(split, []).extend(
                Item(y, f"{what}#{i}", images[i]) for i, y in enumerate(labels)
            )
    if not splits:
        raise DataError(f"{display or 'source'}: batches.meta but no data_batch_*/test_batch")
    return Dataset("cifar10-pickle", classes, splits)


def _gunzip(data: bytes, what: str) -> bytes:
    """gzip -> bytes, refusing to inflate past MAX_DECOMPRESSED_BYTES (a gzip bomb)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_DECOMPRESSED_BYTES)
    except zlib.error as e:
        raise DataError(f"{what}: corrupt gzip data ({e})") from None
    if inflater.unconsumed_tail:
        raise DataError(
            f"{what}: decompresses to more than {human_size(MAX_DECOMPRESSED_BYTES)}; refused"
        )
    return out


def _idx(data: bytes, what: str) -> np.ndarray:
    """An IDX file of unsigned bytes; its header is checked against its length before use."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, what)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{what}: not an IDX file of unsigned bytes")
    ndim, offset = data[3], 4 + 4 * data[3]
    if ndim not in (1, 3):
        raise DataError(f"{what}: IDX header says {ndim} dimensions; expected 1 or 3")
    if len(data) < offset:
        raise DataError(f"{what}: IDX header cut short ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = 1
    for n in shape:
        expected *= n  # Python ints: a lying header cannot overflow the check
    if len(data) - offset != expected:
        raise DataError(
            f"{what}: the header's shape {shape} needs {expected} bytes, the file has "
            f"{len(data) - offset}"
        )
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def read_mnist(files: Files, display: str) -> Dataset:
    splits: dict[str, list[Item]] = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        img_path = next((p for p in files if p.startswith(f"{stem}-images")), None)
        if img_path is None:
            continue
        lbl_path = next((p for p in files if p.startswith(f"{stem}-labels")), None)
        if lbl_path is None:
            raise DataError(f"{display}{img_path}: no matching {stem}-labels-idx1-ubyte file")
        images = _idx(files[img_path](), display + img_path)
        labels = _idx(files[lbl_path](), display + lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{display}{img_path}: {images.shape} images do not match {labels.shape} labels"
            )
        splits[split] = [
            Item(int(y), f"{display}{img_path}#{i}", images[i]) for i, y in enumerate(labels)
        ]
    if not splits:
        raise DataError(f"{display or 'source'}: no train-images-idx / t10k-images-idx file")
    n_classes = 1 + max((it.label for items in splits.values() for it in items), default=-1)
    return Dataset("mnist-idx", [str(i) for i in range(n_classes)], splits)


def read_npz(src: Path, split: str) -> Dataset:
    try:
        with np.load(src, allow_pickle=False) as z:
            missing = {"images", "labels"} - set(z.files)
            if missing:
                raise DataError(f"{src}: missing array(s) {sorted(missing)}; found {z.files}")
            wanted = [k for k in ("images", "labels", "classes") if k in z.files]
            for k in wanted:  # sizes from the zip directory, before anything is inflated
                size = z.zip.getinfo(f"{k}.npy").file_size
                if size > MAX_ARRAY_BYTES:
                    raise DataError(
                        f"{src}: array {k!r} is {human_size(size)}, above the "
                        f"{human_size(MAX_ARRAY_BYTES)} cap"
                    )
            arrays = {k: z[k] for k in wanted}  # other arrays are never read
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{src}: cannot read the .npz ({e})") from None
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{src}: images must be uint8 (N,H,W[,C]); got {images.dtype} {images.shape}"
        )
    if (
        labels.ndim != 1
        or len(labels) != len(images)
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise DataError(f"{src}: labels must be ({len(images)},) integers; got {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{src}: negative label {labels.min()}")
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1:
            raise DataError(f"{src}: classes must be a 1-D array of names; got {names.shape}")
        classes = [c.decode(errors="replace") if isinstance(c, bytes) else str(c) for c in names]
        check_class_names(classes, f"{src}: classes")
        if len(labels) and labels.max() >= len(classes):
            raise DataError(f"{src}: label {labels.max()} but only {len(classes)} class names")
    elif len(labels) and int(labels.max()) >= MAX_CLASSES:
        raise DataError(
            f"{src}: label {int(labels.max())} without a `classes` array would make that many "
            f"classes (cap {MAX_CLASSES})"
        )
    else:
        classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    if not len(images):
        raise DataError(f"{src}: no images in the .npz")
    items = [Item(int(y), f"{src.name}#{i}", images[i]) for i, y in enumerate(labels)]
    return Dataset("npz", classes, {split: items})

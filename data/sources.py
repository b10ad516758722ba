"""Read image datasets from the formats `ganforge data pack` accepts.

Every source becomes a `Dataset`: class names in index order and, per split, an ordered list of
`Item`s whose payload is encoded file bytes, a path to read lazily, or a uint8 pixel array.
Order is deterministic (sorted paths, or the source's own order for array formats).

Formats:
  - a folder of class sub-folders (`SRC/<class>/**/*.jpg`), optionally under split folders
    (`SRC/train/<class>/...`, `SRC/test/<class>/...`);
  - a `.tar`, `.tar.gz` or `.tgz` archive of such a tree (read in memory, not extracted);
  - CIFAR-10 python pickles (`batches.meta`, `data_batch_*`, `test_batch`), as a folder or tar;
  - MNIST IDX files (`train-images-idx3-ubyte[.gz]` + `train-labels-idx1-ubyte[.gz]`, `t10k-*`);
  - `.npz` with `images` (N,H,W[,C] uint8), `labels` (N,) and optionally `classes` (names).
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ganforge.data import DataError

SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
IMAGE_SUFFIXES |= {".pgm", ".pbm"}


@dataclass(frozen=True)
class Item:
    label: int
    source: str  # shown to users and stored in `<key>.json`
    payload: bytes | np.ndarray | Path

    def load(self) -> bytes | np.ndarray:
        if isinstance(self.payload, Path):
            try:
                return self.payload.read_bytes()
            except OSError as e:
                from ganforge.data.codec import ImageProblem

                raise ImageProblem(f"unreadable ({e.strerror or e})") from None
        return self.payload


@dataclass
class Dataset:
    kind: str
    classes: list[str]
    splits: dict[str, list[Item]]
    problems: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}

    def limit_per_class(self, n: int | dict[str, int]) -> None:
        """Keep the first n items of every class in every split (n may be per split)."""
        for split, items in self.splits.items():
            cap = n.get(split) if isinstance(n, dict) else n
            if cap is None:
                continue
            seen: dict[int, int] = {}
            kept = []
            for it in items:
                if seen.get(it.label, 0) < cap:
                    seen[it.label] = seen.get(it.label, 0) + 1
                    kept.append(it)
            self.splits[split] = kept


# A "file system" of relative POSIX paths -> a reader, so folders and tar archives share code.
Files = dict[str, Callable[[], bytes]]


def _folder_files(root: Path) -> Files:
    files: Files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            files[rel + "/"] = bytes  # folder marker: empty class folders must be reported
        else:
            files[rel] = p.read_bytes
    return files


def _tar_files(path: Path) -> Files:
    files: Files = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:  # one sequential pass: random access into .tar.gz is slow
                name = PurePosixPath(m.name).as_posix().removeprefix("./")
                if m.isdir():
                    files[name.rstrip("/") + "/"] = bytes
                elif m.isfile():
                    f = tar.extractfile(m)
                    data = f.read() if f is not None else b""
                    files[name] = lambda d=data: d
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the archive ({e})") from None
    return dict(sorted(files.items()))


def _strip_wrappers(files: Files) -> tuple[Files, str]:
    """Descend single-folder wrappers (`cifar10/`) whose content is folders only; -> (files
    relative to the real top, the stripped prefix)."""
    prefix = ""
    while files:
        heads = {p.split("/", 1)[0] for p in files}
        if len(heads) != 1 or any("/" not in p for p in files):
            break
        head = heads.pop()
        inner = {p.split("/", 1)[1]: r for p, r in files.items() if p != head + "/"}
        if any("/" not in p for p in inner):  # head holds files: it is a class folder, keep it
            break
        prefix += head + "/"
        files = inner
    return files, prefix


def read_source(src: Path, split: str = "train") -> Dataset:
    """Open any supported source; `split` names the split of sources without split folders."""
    if not src.exists():
        raise DataError(f"{src}: no such file or directory")
    name = src.name.lower()
    if src.is_file() and name.endswith(".npz"):
        return _read_npz(src, split)
    if src.is_file() and name.endswith((".tar", ".tar.gz", ".tgz")):
        files = _tar_files(src)
        display = f"{src.name}:"
    elif src.is_dir():
        files = _folder_files(src)
        display = ""
    elif src.is_file() and "idx" in name and "ubyte" in name:
        files = {p.relative_to(src.parent).as_posix(): p.read_bytes for p in src.parent.iterdir()}
        display = ""
    else:
        raise DataError(
            f"{src}: unsupported source (expected a folder, .tar/.tar.gz, .npz, CIFAR-10 "
            "pickles or MNIST IDX files)"
        )
    files = {p: r for p, r in files.items() if not _hidden(p)}
    files, prefix = _strip_wrappers(files)
    display += prefix
    basenames = {p.rsplit("/", 1)[-1] for p in files}
    if "batches.meta" in basenames:
        return _read_cifar(files, display)
    if any(b.startswith(("train-images-idx", "t10k-images-idx")) for b in basenames):
        return _read_mnist(files, display)
    return _read_tree(files, display, split, src)


def _hidden(path: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))


def _read_tree(files: Files, display: str, default_split: str, src: Path) -> Dataset:
    tops = {p.split("/", 1)[0] for p in files if "/" in p}
    has_splits = bool(tops) and all(t.lower() in SPLIT_NAMES for t in tops)
    problems: list[dict[str, str]] = []
    by_split: dict[str, dict[str, list[str]]] = {}
    depth = 2 if has_splits else 1
    for path in files:  # sorted by both readers
        if path.endswith("/"):  # folder marker: registers (possibly empty) class folders
            parts = path[:-1].split("/")
            if len(parts) == depth:
                split = parts[0] if has_splits else default_split
                by_split.setdefault(split, {}).setdefault(parts[-1], [])
            continue
        parts = path.split("/")
        if len(parts) <= depth:
            problems.append({"path": display + path, "reason": "not inside a class folder"})
            continue
        split = parts[0] if has_splits else default_split
        cls = parts[depth - 1]
        folder = by_split.setdefault(split, {}).setdefault(cls, [])
        if PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES:
            folder.append(path)
        else:
            problems.append({"path": display + path, "reason": "not an image file (extension)"})
    nonempty = sorted({c for classes in by_split.values() for c, ps in classes.items() if ps})
    for split, classes in sorted(by_split.items()):
        for cls, paths in sorted(classes.items()):
            if not paths:
                where = f"{split}/{cls}" if has_splits else cls
                dropped = "" if cls in nonempty else " (no images in any split: class dropped)"
                problems.append(
                    {"path": f"{display}{where}/", "reason": "empty class folder" + dropped}
                )
    if not nonempty:
        raise DataError(
            f"{src}: no images found (expected <class>/<image> or <split>/<class>/<image>; "
            f"image extensions: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    index = {c: i for i, c in enumerate(nonempty)}
    splits: dict[str, list[Item]] = {}
    for split, classes in sorted(by_split.items()):
        paths = sorted(p for ps in classes.values() for p in ps)
        items = [
            Item(index[p.split("/")[1 if has_splits else 0]], display + p, _payload(files[p]))
            for p in paths
        ]
        if items:
            splits[split] = items
    return Dataset("image-folder", nonempty, splits, problems)


def _payload(reader: Callable[[], bytes]) -> bytes | Path:
    # Folder files are read lazily (in the encode workers); archive members are already bytes.
    owner = getattr(reader, "__self__", None)
    return owner if isinstance(owner, Path) else reader()


def _unpickle(data: bytes, what: str) -> dict:
    try:
        return pickle.loads(data, encoding="bytes")
    except Exception as e:
        raise DataError(f"{what}: not a CIFAR-10 python pickle ({e})") from None


def _read_cifar(files: Files, display: str) -> Dataset:
    meta_path = next(p for p in files if p.endswith("batches.meta"))
    meta = _unpickle(files[meta_path](), display + meta_path)
    classes = [n.decode() if isinstance(n, bytes) else n for n in meta[b"label_names"]]
    groups = {"train": "data_batch_", "test": "test_batch"}
    splits: dict[str, list[Item]] = {}
    for split, stem in groups.items():
        for path in sorted(p for p in files if p.rsplit("/", 1)[-1].startswith(stem)):
            batch = _unpickle(files[path](), display + path)
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            images = data.transpose(0, 2, 3, 1)
            labels = batch[b"labels"]
            splits.setdefault(split, []).extend(
                Item(int(y), f"{display}{path}#{i}", images[i]) for i, y in enumerate(labels)
            )
    if not splits:
        raise DataError(f"{display or 'source'}: batches.meta but no data_batch_*/test_batch")
    return Dataset("cifar10-pickle", classes, splits)


def _idx(data: bytes, what: str) -> np.ndarray:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{what}: not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{what}: truncated IDX file ({body.size} bytes for shape {shape})")
    return body.reshape(shape)


def _read_mnist(files: Files, display: str) -> Dataset:
    splits: dict[str, list[Item]] = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        img_path = next(
            (p for p in files if p.rsplit("/", 1)[-1].startswith(f"{stem}-images")), None
        )
        if img_path is None:
            continue
        lbl_path = next(
            (p for p in files if p.rsplit("/", 1)[-1].startswith(f"{stem}-labels")), None
        )
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
    n_classes = 1 + max(it.label for items in splits.values() for it in items)
    return Dataset("mnist-idx", [str(i) for i in range(n_classes)], splits)


def _read_npz(src: Path, split: str) -> Dataset:
    try:
        with np.load(src, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"{src}: cannot read the .npz ({e})") from None
    missing = {"images", "labels"} - arrays.keys()
    if missing:
        raise DataError(f"{src}: missing array(s) {sorted(missing)}; found {sorted(arrays)}")
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
        classes = [str(c) for c in arrays["classes"].tolist()]
        if len(labels) and labels.max() >= len(classes):
            raise DataError(f"{src}: label {labels.max()} but only {len(classes)} class names")
    else:
        classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    if not len(images):
        raise DataError(f"{src}: no images in the .npz")
    items = [Item(int(y), f"{src.name}#{i}", images[i]) for i, y in enumerate(labels)]
    return Dataset("npz", classes, {split: items})


def default_channels(ds: Dataset) -> int:
    """1 for grey formats (MNIST, 2-D npz arrays), else 3; `--channels` overrides."""
    first = next(iter(ds.splits.values()))[0].payload
    if isinstance(first, np.ndarray):
        return 1 if first.ndim == 2 or first.shape[-1] == 1 else 3
    return 3

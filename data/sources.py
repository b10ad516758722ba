"""Read image datasets from the formats `ganforge data pack` accepts.

Every source becomes a `Dataset`: class names in index order and, per split, an ordered list of
`Item`s whose payload is encoded file bytes, a path to read lazily, or a uint8 pixel array.
Order is deterministic (sorted paths, or the source's own order for array formats).

Every source is untrusted: pickles admit only what CIFAR batches hold, archive members and
decompressed files are size-capped, links, special files and archive paths that leave the
archive are never followed, class names are checked before they can become paths (`names`),
every label is checked against the class count, and every malformed input ends in `DataError`
(the whole source) or a skipped-input entry (one file).

Formats:
  - a folder of class sub-folders (`SRC/<class>/**/*.jpg`), optionally under split folders
    (`SRC/train/<class>/...`, `SRC/test/<class>/...`);
  - a `.tar`, `.tar.gz` or `.tgz` archive of such a tree (read in memory, not extracted);
  - CIFAR-10 python pickles (`batches.meta`, `data_batch_*`, `test_batch`) at the top of a folder
    or tar (or inside its one top-level folder), read with a restricted unpickler;
  - MNIST IDX files (`train-images-idx3-ubyte[.gz]` + `train-labels-idx1-ubyte[.gz]`, `t10k-*`);
  - `.npz` with `images` (N,H,W[,C] uint8), `labels` (N,) and optionally `classes` (names).
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ganforge.data import DataError
from ganforge.data.names import MAX_CLASSES, check_class_names, name_problem

SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
IMAGE_SUFFIXES |= {".pgm", ".pbm"}
# Caps on what one input may make us hold in memory. The largest legitimate inputs: a CIFAR-10
# batch is 31 MB, MNIST's training images 47 MB uncompressed, a 40 Mpx photo ~20 MB as a file.
MAX_MEMBER_BYTES = 256 << 20  # one archive member or folder file, from its header / stat
MAX_DECOMPRESSED_BYTES = 1 << 30  # one gzip'd IDX file, decompressed
MAX_ARRAY_BYTES = 4 << 30  # one .npz array, uncompressed


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


Problems = list[dict[str, str]]  # skipped inputs: {"path", "reason"}


def _human(n: int) -> str:
    """1536 -> '1.5 KiB' (sizes in messages)."""
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _too_big(size: int) -> str:
    return f"{_human(size)}, above the {_human(MAX_MEMBER_BYTES)} cap on one input file"


def _folder_files(root: Path) -> tuple[Files, Problems]:
    """Regular files and folders below `root`. Symlinks are not followed (one could point out of
    the tree or at /dev/zero) and special files are not read: both are listed as skipped."""
    files: Files = {}
    problems: Problems = []
    for p in sorted(root.rglob("*")):  # rglob does not descend into symlinked folders
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            problems.append({"path": rel, "reason": "symbolic link (not followed)"})
        elif p.is_dir():
            files[rel + "/"] = bytes  # folder marker: empty class folders must be reported
        elif not p.is_file():
            problems.append({"path": rel, "reason": "not a regular file"})
        elif (size := p.stat().st_size) > MAX_MEMBER_BYTES:
            problems.append({"path": rel, "reason": _too_big(size)})
        else:
            files[rel] = p.read_bytes
    return files, problems


def _tar_files(path: Path) -> tuple[Files, Problems]:
    """Every member's bytes (one sequential pass: random access into .tar.gz is slow). Links,
    devices and members above the cap (read from the header, before any byte) are skipped."""
    files: Files = {}
    problems: Problems = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                member = PurePosixPath(m.name)
                name = member.as_posix().removeprefix("./")
                if member.is_absolute() or ".." in member.parts:
                    problems.append({"path": name, "reason": "path leaves the archive (skipped)"})
                elif m.isdir():
                    files[name.rstrip("/") + "/"] = bytes
                elif m.issym() or m.islnk():
                    problems.append({"path": name, "reason": "link inside the archive (skipped)"})
                elif not m.isfile():
                    problems.append({"path": name, "reason": "not a regular file"})
                elif m.size > MAX_MEMBER_BYTES:
                    problems.append({"path": name, "reason": _too_big(m.size)})
                else:
                    f = tar.extractfile(m)
                    data = f.read() if f is not None else b""
                    files[name] = lambda d=data: d
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read the archive ({e})") from None
    return dict(sorted(files.items())), problems


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
        files, problems = _tar_files(src)
        display = f"{src.name}:"
        for p in problems:
            p["path"] = display + p["path"]
    elif src.is_dir():
        files, problems = _folder_files(src)
        display = ""
    elif src.is_file() and "idx" in name and "ubyte" in name:
        files, problems = _folder_files(src.parent)
        files = {p: r for p, r in files.items() if "/" not in p}  # the IDX files beside it
        display = ""
    else:
        raise DataError(
            f"{src}: unsupported source (expected a folder, .tar/.tar.gz, .npz, CIFAR-10 "
            "pickles or MNIST IDX files)"
        )
    files = {p: r for p, r in files.items() if not _hidden(p)}
    files, prefix = _strip_wrappers(files)
    display += prefix
    top, top_dir = _top_level(files)
    if "batches.meta" in top:
        ds = _read_cifar(top, display + top_dir)
    elif any(b.startswith(("train-images-idx", "t10k-images-idx")) for b in top):
        ds = _read_mnist(top, display + top_dir)
    else:
        ds = _read_tree(files, display, split, src)
    ds.problems = problems + ds.problems
    _check_labels(ds, str(src))
    return ds


def _check_labels(ds: Dataset, where: str) -> None:
    """Every reader's result, checked once more: class names usable as folder names and every
    label an index into them (a label past the end fails a conditional model's embedding)."""
    check_class_names(ds.classes, where)
    n = len(ds.classes)
    for items in ds.splits.values():
        bad = next((it for it in items if not 0 <= it.label < n), None)
        if bad is not None:
            raise DataError(f"{bad.source}: label {bad.label} outside 0..{n - 1} ({n} classes)")


def _top_level(files: Files) -> tuple[Files, str]:
    """The files at the top of the source, or inside its only top-level folder when that is all
    there is (`cifar-10-batches-py/`), keyed by base name; -> (files, that folder + '/' or '').

    The array formats are recognised only there: a `batches.meta` deeper in an image-folder tree
    is just a stray file, never a pickle to open."""
    heads = {p.split("/", 1)[0] for p in files}
    if len(heads) == 1 and all("/" in p for p in files):
        head = heads.pop()
        inner = {p[len(head) + 1 :]: r for p, r in files.items() if p != head + "/"}
        return {p: r for p, r in inner.items() if p and "/" not in p}, head + "/"
    return {p: r for p, r in files.items() if "/" not in p}, ""


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
            if len(parts) == depth and name_problem(parts[-1]) is None:
                split = parts[0] if has_splits else default_split
                by_split.setdefault(split, {}).setdefault(parts[-1], [])
            continue
        parts = path.split("/")
        if len(parts) <= depth:
            problems.append({"path": display + path, "reason": "not inside a class folder"})
            continue
        split = parts[0] if has_splits else default_split
        cls = parts[depth - 1]
        if (reason := name_problem(cls)) is not None:
            reason = f"unusable class folder name ({reason})"
            problems.append({"path": display + path, "reason": reason})
            continue
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


def _read_cifar(files: Files, display: str) -> Dataset:
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
            f"{what}: decompresses to more than {_human(MAX_DECOMPRESSED_BYTES)}; refused"
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


def _read_mnist(files: Files, display: str) -> Dataset:
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


def _read_npz(src: Path, split: str) -> Dataset:
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
                        f"{src}: array {k!r} is {_human(size)}, above the "
                        f"{_human(MAX_ARRAY_BYTES)} cap"
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


def default_channels(ds: Dataset) -> int:
    """1 for grey formats (MNIST, 2-D npz arrays), else 3; `--channels` overrides."""
    first = next(iter(ds.splits.values()))[0].payload
    if isinstance(first, np.ndarray):
        return 1 if first.ndim == 2 or first.shape[-1] == 1 else 3
    return 3

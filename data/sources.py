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
    or tar (or inside its one top-level folder), read with a restricted unpickler (`arrays`);
  - MNIST IDX files (`train-images-idx3-ubyte[.gz]` + `train-labels-idx1-ubyte[.gz]`, `t10k-*`);
  - `.npz` with `images` (N,H,W[,C] uint8), `labels` (N,) and optionally `classes` (names).
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from ganforge.data import DataError
from ganforge.data.arrays import read_cifar, read_mnist, read_npz
from ganforge.data.dataset import Dataset, Files, Item, Problems, human_size
from ganforge.data.names import check_class_names, name_problem

SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
IMAGE_SUFFIXES |= {".pgm", ".pbm"}
# Caps on what one input may make us hold in memory. The largest legitimate inputs: a CIFAR-10
# batch is 31 MB, MNIST's training images 47 MB uncompressed, a 40 Mpx photo ~20 MB as a file.
MAX_MEMBER_BYTES = 256 << 20  # one archive member or folder file, from its header / stat


def _too_big(size: int) -> str:
    return f"{human_size(size)}, above the {human_size(MAX_MEMBER_BYTES)} cap on one input file"


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
        return read_npz(src, split)
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
        ds = read_cifar(top, display + top_dir)
    elif any(b.startswith(("train-images-idx", "t10k-images-idx")) for b in top):
        ds = read_mnist(top, display + top_dir)
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


def default_channels(ds: Dataset) -> int:
    """1 for grey formats (MNIST, 2-D npz arrays), else 3; `--channels` overrides."""
    first = next(iter(ds.splits.values()))[0].payload
    if isinstance(first, np.ndarray):
        return 1 if first.ndim == 2 or first.shape[-1] == 1 else 3
    return 3

"""Names read from a dataset that become paths: class names (folders in `data subset`, entries
in `dataset.json`) and split names (shard file names, folders).

A name comes from the input (an npz's `classes`, CIFAR's `label_names`, an archive's folder
names), so it is checked before it is ever joined to a path: `../evil` must not write outside
OUT. `relative_path` joins checked parts; writers resolve the result again (belt and braces).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ganforge.data import DataError

# ImageNet-21k has ~22k classes; a label of 2**40 in an npz without `classes` must not become a
# list of 2**40 names.
MAX_CLASSES = 100_000
MAX_NAME_BYTES = 255  # one file name component on common file systems


def name_problem(name: str) -> str | None:
    """Why `name` cannot be one path component (a class or split folder), or None."""
    if not name:
        return "empty"
    if name in (".", ".."):
        return "a relative folder reference"
    bad = next((c for c in ("/", "\\", "\0") if c in name), None)
    if bad is not None:
        return f"contains {bad!r}"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def _shown(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:80] + "...")


def check_class_names(names: list[str], where: str) -> list[str]:
    """`names` unchanged when each is usable as a folder name and they are distinct; DataError
    naming the first bad one otherwise."""
    if len(names) > MAX_CLASSES:
        raise DataError(f"{where}: {len(names)} class names, above the cap of {MAX_CLASSES}")
    seen: set[str] = set()
    for name in names:
        reason = name_problem(name)
        if reason is not None:
            raise DataError(f"{where}: class name {_shown(name)} is unusable ({reason})")
        if name in seen:
            raise DataError(f"{where}: class name {_shown(name)} appears twice")
        seen.add(name)
    return names


def relative_path(*parts: str) -> str:
    """POSIX path of checked components: DataError for one that could leave its parent."""
    for part in parts:
        reason = name_problem(part)
        if reason is not None:
            raise DataError(f"refusing to write a path through {_shown(part)} ({reason})")
    return str(PurePosixPath(*parts))


def inside(root: Path, rel: str) -> Path:
    """root / rel, resolved; DataError unless it stays below root (links included)."""
    base = root.resolve()
    path = (base / rel).resolve()
    if path == base or not path.is_relative_to(base):
        raise DataError(f"refusing to write {rel!r}: it resolves outside {root}")
    return path

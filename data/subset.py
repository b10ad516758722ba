"""`ganforge data subset`: a small class-balanced copy of a dataset (used for the demo data).

Writes `<top>/<split>/<class>/<file>` either as a folder or as a `.tar.gz`/`.tgz`/`.tar`
archive. Image files are copied byte for byte (array sources become PNG files). The archive is
reproducible: sorted entries, fixed mtime/owner, gzip header without timestamp or name.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np

from ganforge.data import DataError
from ganforge.data.codec import ImageProblem, probe_size
from ganforge.data.names import inside, name_problem, relative_path
from ganforge.data.pack import check_out_dir
from ganforge.data.sources import Item, read_source

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def parse_per_class(spec: str) -> int | dict[str, int]:
    """'500' -> 500; 'train=500,test=100' -> {'train': 500, 'test': 100}."""
    try:
        if "=" not in spec:
            return int(spec)
        pairs = (part.split("=", 1) for part in spec.split(",") if part.strip())
        return {k.strip(): int(v) for k, v in pairs}
    except ValueError:
        raise DataError(f"per-class limit '{spec}': expected N or split=N,split=N") from None


def _file_bytes(item: Item) -> tuple[str, bytes]:
    payload = item.load()
    probe_size(payload)  # raises ImageProblem for corrupt files: never copy them
    if isinstance(payload, np.ndarray):
        from PIL import Image

        buf = io.BytesIO()
        arr = payload[..., 0] if payload.ndim == 3 and payload.shape[-1] == 1 else payload
        Image.fromarray(arr).save(buf, format="PNG")
        return ".png", buf.getvalue()
    return PurePosixPath(item.source).suffix.lower(), payload


def _stem(source: str) -> str:
    """File name without its suffix, as one path component; a stand-in for a name that is not
    one (a backslash in it) or too long to take a `-N` suffix and an extension."""
    stem = PurePosixPath(source).stem
    usable = name_problem(stem) is None and len(stem.encode(errors="surrogateescape")) < 200
    return stem if usable and not stem.startswith(".") else "image"


def subset(
    src: Path,
    out: Path,
    per_class: int | dict[str, int],
    splits: list[str] | None = None,
    split: str = "train",
) -> dict[str, object]:
    """Copy the first N images of every class (per split); returns a summary dict."""
    src, out = Path(src), Path(out)
    check_out_dir(out)
    ds = read_source(src, split)
    if splits:
        unknown = sorted(set(splits) - ds.splits.keys())
        if unknown:
            raise DataError(f"unknown split(s) {unknown}; the source has {sorted(ds.splits)}")
        ds.splits = {k: v for k, v in ds.splits.items() if k in splits}
    ds.limit_per_class(per_class)
    top = out.name
    for suffix in ARCHIVE_SUFFIXES:
        top = top.removesuffix(suffix)
    files: dict[str, bytes] = {}
    skipped = list(ds.problems)
    for split_name, items in ds.splits.items():
        for i, item in enumerate(items):
            try:
                ext, data = _file_bytes(item)
            except ImageProblem as e:
                skipped.append({"path": item.source, "reason": str(e)})
                continue
            # array items are `<file>#<index>`: their own index names them
            stem = f"{i:06d}" if isinstance(item.payload, np.ndarray) else _stem(item.source)
            folder = (top, split_name, ds.classes[item.label])
            name = relative_path(*folder, f"{stem}{ext}")
            if name in files:  # same file name in nested sub-folders of one class
                name = relative_path(*folder, f"{stem}-{i}{ext}")
            files[name] = data
    if not files:
        raise DataError(f"{src}: nothing to copy")
    if out.name.endswith(ARCHIVE_SUFFIXES):
        _write_archive(out, files)
    else:
        _write_folder(out, files)
    counts = {s: len(v) for s, v in ds.splits.items()}
    return {"out": str(out), "files": len(files), "per_split": counts, "skipped": skipped}


def _write_folder(out: Path, files: dict[str, bytes]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        for name, data in files.items():
            path = inside(tmp, name.split("/", 1)[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        tmp.chmod(0o755)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tarinfo(name: str, size: int | None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "ganforge", "ganforge"
    if size is None:
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    else:
        ti.size, ti.mode = size, 0o644
    return ti


def _write_archive(out: Path, files: dict[str, bytes]) -> None:
    for name in files:  # checked when built; checked again where it becomes a member name
        relative_path(*name.split("/"))
    dirs = sorted({str(p) for name in files for p in PurePosixPath(name).parents if str(p) != "."})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "wb") as raw:
            # gzip's header carries a timestamp and file name unless both are fixed
            gz = out.name.endswith((".gz", ".tgz"))
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for d in dirs:
                    tar.addfile(_tarinfo(d + "/", None))
                for name in sorted(files):
                    tar.addfile(_tarinfo(name, len(files[name])), io.BytesIO(files[name]))
            if gz:
                stream.close()
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

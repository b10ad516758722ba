"""`ganforge data pack`: images -> WebDataset tar shards + `dataset.json`.

Each sample in `OUT/<split>-NNNNNN.tar` is `<key>.<png|jpg|raw.npy>`, `<key>.cls` (class index as
ASCII) and `<key>.json` (source path, original size and mode). Shards are byte-identical for the
same input and options: sorted input order, ordered parallel encoding, fixed tar mtime/owner.
Everything is written into `OUT.tmp-XXXX` and renamed to OUT at the end; an error (a dead
encode worker included: see `_encoder`) removes it, so OUT is complete or absent.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ganforge.data import DataError
from ganforge.data.codec import ENCODINGS, Encoded, ImageProblem, encode_image, probe_size
from ganforge.data.manifest import FORMAT, write_manifest
from ganforge.data.names import name_problem
from ganforge.data.sources import Dataset, Item, default_channels, read_source
from ganforge.storage import sha256_file

TAR_MTIME = 0  # fixed: same input, same bytes (an int: a float adds a PAX header)
TAR_OWNER = "ganforge"


@dataclass(frozen=True)
class PackOptions:
    shard_size: int = 1000
    image_size: int | None = None  # None: keep the source size (must be square and uniform)
    channels: int | None = None  # None: 1 for grey formats (MNIST/2-D npz), else 3
    split: str = "train"  # split name of sources without split folders
    workers: int = 1
    strict: bool = False
    encoding: str = "keep"
    limit_per_class: int | dict[str, int] | None = None
    shuffle_seed: int | None = 0  # mix classes across shards (seeded); None keeps source order
    progress: bool = True


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not empty; choose a new output folder")


def _encode(item: Item, size: int, channels: int, encoding: str, resize: bool):
    """Runs in the pool: -> Encoded, or the reason the item was rejected."""
    try:
        return encode_image(item.load(), size, channels, encoding, resize)
    except ImageProblem as e:
        return str(e)


def _first_size(ds: Dataset) -> int:
    """Target size when --image-size is not given: the first readable image's (square) size."""
    for items in ds.splits.values():
        for item in items:
            try:
                w, h = probe_size(item.load())
            except ImageProblem:
                continue
            if w != h:
                raise DataError(
                    f"{item.source}: {w}x{h} is not square; pass --image-size to resize and "
                    "centre-crop"
                )
            return w
    raise DataError("no readable image in the source")


class _Shards:
    """ShardWriter for one split, opened lazily (it would create an empty shard otherwise)."""

    def __init__(self, tmp: Path, split: str, shard_size: int):
        self.pattern = str(tmp / f"{split}-%06d.tar")
        self.shard_size, self.writer = shard_size, None
        self.counts: list[int] = []

    def write(self, sample: dict[str, Any]) -> None:
        import webdataset as wds

        if self.writer is None:
            self.writer = wds.ShardWriter(
                self.pattern,
                maxcount=self.shard_size,
                maxsize=float("inf"),  # shards are cut by sample count only
                verbose=0,
                encoder=False,  # samples arrive already encoded (bytes)
                mtime=TAR_MTIME,
                user=TAR_OWNER,
                group=TAR_OWNER,
            )
        if not self.counts or self.counts[-1] == self.shard_size:
            self.counts.append(0)
        self.writer.write(sample)
        self.counts[-1] += 1

    def close(self) -> None:
        """Close the open shard (also when packing stops with an error)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def entries(self) -> list[dict[str, Any]]:
        """The manifest's shard entries of a closed split."""
        shards = []
        for i, n in enumerate(self.counts):
            path = Path(self.pattern % i)
            shards.append({"name": path.name, "num_samples": n, "sha256": sha256_file(path)})
        return shards


def _sample(key: str, item: Item, enc: Encoded) -> dict[str, Any]:
    meta = {"source": item.source, "width": enc.width, "height": enc.height, "mode": enc.mode}
    return {
        "__key__": key,
        enc.ext: enc.data,
        "cls": str(item.label).encode(),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }


@contextmanager
def _encoder(fn, workers: int) -> Iterator[Callable[[list[Item]], Iterator]]:
    """-> encode(items): fn over items, results in input order; in-process for one worker (no
    pickling cost), else in a pool of `workers` processes shared by every split.

    A ProcessPoolExecutor, not multiprocessing.Pool: when a worker dies (the OOM killer, a
    signal, a crash in a decoder) Pool starts a new one and waits forever for the lost results,
    while the executor marks itself broken and every pending result raises BrokenProcessPool,
    which ends the pack with an error (and `pack` removes the unfinished output)."""
    if workers <= 1:
        yield partial(map, fn)
        return
    ctx = get_context("fork" if os.name == "posix" else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)

    def encode(items: list[Item]) -> Iterator:
        chunk = max(1, min(64, len(items) // (4 * workers)))  # small inputs: use every worker
        return pool.map(fn, items, chunksize=chunk)

    try:
        yield encode
    except BrokenProcessPool:
        raise DataError(
            f"an encode worker process died (killed by the OOM killer or a signal?) while "
            f"packing with --workers {workers}; nothing was written. Retry with fewer workers "
            "or a smaller --image-size"
        ) from None
    finally:  # drop queued work, stop the workers (an error above must not wait for the rest)
        pool.shutdown(wait=True, cancel_futures=True)


def _progress(enabled: bool, total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    cols = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*cols, console=Console(stderr=True), disable=not enabled, transient=False)


def _check_request(out: Path, opts: PackOptions) -> None:
    if opts.encoding not in ENCODINGS:
        raise DataError(f"--encoding must be one of {', '.join(ENCODINGS)}")
    if opts.shard_size < 1:
        raise DataError("--shard-size must be >= 1")
    if (reason := name_problem(opts.split)) is not None:  # it names the shard files
        raise DataError(f"--split {opts.split!r}: not usable as a file name ({reason})")
    check_out_dir(out)


def pack(src: Path, out: Path, opts: PackOptions = PackOptions()) -> dict[str, Any]:
    """Pack SRC into shards at OUT; returns the manifest. DataError on unusable input."""
    src, out = Path(src), Path(out)
    _check_request(out, opts)  # before reading: a bad option or OUT fails at once
    return pack_dataset(read_source(src, opts.split), out, opts, src.name)


def pack_dataset(
    ds: Dataset, out: Path, opts: PackOptions = PackOptions(), source: str = ""
) -> dict[str, Any]:
    """Pack a Dataset already in memory (a read source, or one ganforge draws: `data.shapes`)
    into shards at OUT; `source` names it in the manifest. Returns the manifest."""
    out = Path(out)
    _check_request(out, opts)
    if opts.strict and ds.problems:
        p = ds.problems[0]
        raise DataError(f"--strict: {p['path']}: {p['reason']}")
    if opts.limit_per_class is not None:
        ds.limit_per_class(opts.limit_per_class)
    if opts.shuffle_seed is not None:  # sources are class-sorted; shards should mix classes
        for items in ds.splits.values():
            random.Random(opts.shuffle_seed).shuffle(items)
    channels = opts.channels or default_channels(ds)
    size = opts.image_size or _first_size(ds)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary shared folder
    try:
        manifest = _write_splits(ds, tmp, size, channels, opts)
        manifest["source"] = source
        write_manifest(tmp, manifest)
        if out.exists():
            out.rmdir()  # checked empty above; rename cannot replace it on every platform
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_splits(
    ds: Dataset, tmp: Path, size: int, channels: int, opts: PackOptions
) -> dict[str, Any]:
    from ganforge import __version__

    resize = opts.image_size is not None
    fn = partial(_encode, size=size, channels=channels, encoding=opts.encoding, resize=resize)
    skipped, converted, splits = list(ds.problems), 0, {}
    total = sum(len(v) for v in ds.splits.values())
    with _progress(opts.progress, total) as bar, _encoder(fn, opts.workers) as encode:
        for split, items in ds.splits.items():
            task = bar.add_task(f"pack {split}", total=len(items))
            shards = _Shards(tmp, split, opts.shard_size)
            advance = partial(bar.advance, task)
            converted += _write_split(items, encode(items), shards, opts.strict, skipped, advance)
            entries = shards.entries()
            if entries:
                n = sum(e["num_samples"] for e in entries)
                splits[split] = {"num_samples": n, "shards": entries}
    if not splits:
        reasons = "; ".join(f"{p['path']}: {p['reason']}" for p in skipped[:5])
        raise DataError(f"every input image was rejected ({reasons})")
    return {
        "format": FORMAT,
        "image_size": size,
        "channels": channels,
        "encoding": opts.encoding,
        "classes": ds.classes,
        "splits": splits,
        "skipped": skipped,
        "converted": converted,
        "source_kind": ds.kind,
        "created_by": f"ganforge {__version__}",
    }


def _write_split(
    items: list[Item],
    encoded: Iterable,
    shards: _Shards,
    strict: bool,
    skipped: list[dict[str, str]],
    advance: Callable[[], Any],
) -> int:
    """Write one split's encoded items in order; rejected ones are appended to `skipped` (or
    stop the pack with --strict). -> how many images were converted."""
    converted = 0
    try:
        for item, enc in zip(items, encoded, strict=True):
            advance()
            if isinstance(enc, str):
                if strict:
                    raise DataError(f"--strict: {item.source}: {enc}")
                skipped.append({"path": item.source, "reason": enc})
                continue
            converted += enc.converted
            shards.write(_sample(f"{sum(shards.counts):08d}", item, enc))
    finally:
        shards.close()  # also on an error: no open file in the folder `pack` removes
    return converted


def iter_problems(manifest: dict[str, Any]) -> Iterable[str]:
    for p in manifest.get("skipped", []):
        yield f"{p['path']}: {p['reason']}"

"""Worker-side stages of the streaming pipeline (run inside DataLoader worker processes).

Each stage is a picklable callable `stage(iterator) -> iterator`, used in a `wds.DataPipeline`.
Randomness is derived from (seed, rank, worker, counter) only, never from global RNG state, so
a stream is reproducible and a resumed loader can skip batches without decoding them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch

from ganforge.data.codec import decode_image, payload_ext


def worker_id() -> tuple[int, int]:
    """(worker index, worker count) of the current DataLoader worker; (0, 1) in-process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def mix_seed(*parts: int) -> int:
    """Stable 63-bit seed from integers (Python's hash() of str is salted per process)."""
    return int(
        np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1
    )


def stream_seed(seed: int, rank: int) -> int:
    """ResampledShards' worker_seed: one independent shard stream per (seed, rank, worker)."""
    return mix_seed(seed, rank, worker_id()[0], 1)


def split_by_rank(src: Iterator, rank: int, world_size: int) -> Iterator:
    """Explicit node splitter: rank r takes shards r, r+world, ... (webdataset's default raises
    for world_size > 1)."""
    return islice(src, rank, None, world_size)


_ZERO_BLOCK = bytes(512)


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    return int(field.strip(b"\0 ") or b"0", 8)


def tar_members(stream) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of a tar stream. A lean reader of ustar/GNU/PAX headers:
    Python's tarfile spends ~30 us per member, which capped the raw-pixel path at ~3k img/s.
    Header checksums are verified; a damaged stream raises ValueError."""
    long_name: bytes | None = None
    while True:
        header = stream.read(512)
        if not header or header == _ZERO_BLOCK:
            return
        if len(header) < 512:
            raise ValueError("tar stream truncated")
        try:
            valid = _octal(header[148:156]) == sum(header[:148]) + 256 + sum(header[156:])
        except ValueError:  # not even octal digits
            valid = False
        if not valid:
            raise ValueError("tar header checksum mismatch (damaged or not a tar file)")
        size, kind = _octal(header[124:136]), header[156:157]
        data = stream.read(size)
        if len(data) < size:
            raise ValueError("tar stream truncated")
        stream.read(-size % 512)
        if kind == b"L":  # GNU long name
            long_name = data.rstrip(b"\0")
        elif kind == b"x":  # PAX: only the path record matters here
            for rec in data.split(b"\n"):
                if b" path=" in rec:
                    long_name = rec.split(b" path=", 1)[1]
        elif kind in (b"0", b"\0", b"7"):
            name = header[:100].split(b"\0", 1)[0]
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if long_name is not None:
                name, long_name = long_name, None
            elif prefix:
                name = prefix + b"/" + name
            yield name.decode("utf-8", "replace"), data


@dataclass
class TarSamples:
    """{url} -> webdataset-style samples {'__key__', '__url__', ext: bytes}: the key is the
    member path up to the first dot of its file name (webdataset's rule). Streams are opened with
    webdataset's gopen (local, file://, http(s)://, pipe:)."""

    handler: ErrorCount
    keep: tuple[str, ...] = ("png", "jpg", "raw.npy", "cls")

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        from webdataset.tariterators import url_opener

        for opened in url_opener(src, handler=self.handler):
            stream, url = opened["stream"], opened["url"]
            sample: dict = {}
            try:
                for name, data in tar_members(stream):
                    slash = name.rfind("/") + 1
                    dot = name.find(".", slash)
                    if dot < 0:
                        continue
                    key, ext = name[:dot], name[dot + 1 :].lower()
                    if sample and sample["__key__"] != key:
                        yield sample
                        sample = {}
                    if not sample:
                        sample = {"__key__": key, "__url__": url}
                    if ext in self.keep:
                        sample[ext] = data
                if sample:
                    yield sample
            except Exception as e:
                e.args = (*e.args, url)
                self.handler(e)  # skip the rest of this shard, or raise
            finally:
                stream.close()


class ErrorCount:
    """Samples dropped in this worker (decode failures, broken tar members, labels outside the
    classes)."""

    def __init__(self, on_error: str):
        self.on_error, self.n = on_error, 0

    def __call__(self, exn: Exception) -> bool:  # webdataset handler: True = continue
        if self.on_error == "raise":
            raise exn
        self.n += 1
        return True


@dataclass
class SeededShuffle:
    bufsize: int
    seed: int
    rank: int

    def __call__(self, src: Iterator) -> Iterator:
        if self.bufsize <= 1:
            return src
        import webdataset as wds

        rng = random.Random(mix_seed(self.seed, self.rank, worker_id()[0], 2))
        return wds.filters._shuffle(src, self.bufsize, self.bufsize, rng=rng)


def skip_count(start_batch: int, round_robin: int, w: int, nw: int) -> int:
    """How many of worker w's first batches fall among the loader's first `start_batch`.

    The DataLoader takes batches from its workers in strict round robin while all of them are
    active, so global batch j comes from worker j % nw. `round_robin` is the length of the
    prefix where that is known to hold (resampled data: forever; one-pass data: until the first
    worker runs dry; 0 = unknown, then skipped batches are decoded and dropped by the loader)."""
    if nw == 1:
        return start_batch
    k = min(start_batch, round_robin)
    return max(0, (k - w + nw - 1) // nw)


@dataclass
class DecodeBatches:
    """Groups samples into batches and decodes them: -> (images, labels, dropped) with images
    float32 [B, C, S, S] in [-1, 1], labels int64 [B]. The first `skip` batches of each worker
    are placeholders (None, None, 0) built without decoding.

    A sample whose label is not an index into `num_classes` classes (when known) is handled
    like a corrupt one (`errors`): on the GPU it would fail inside a conditional model's
    `nn.Embedding` as a device-side assert, which a retry only repeats."""

    batch_size: int
    image_size: int
    channels: int
    hflip: bool
    seed: int
    rank: int
    start_batch: int
    round_robin: int
    errors: ErrorCount
    num_classes: int | None = None  # None: labels are not range-checked

    def __call__(self, src: Iterator[dict]) -> Iterator[tuple]:
        w, nw = worker_id()
        skip = skip_count(self.start_batch, self.round_robin, w, nw)
        reported, index = 0, 0
        while True:
            if index < skip:
                if len(list(islice(src, self.batch_size))) < self.batch_size:
                    return
                index += 1
                yield None, None, 0
                continue
            pixels, labels = self._fill(src)
            if len(labels) < self.batch_size:
                return  # drop the last partial batch: constant batch shapes
            yield (*self._to_tensors(pixels, labels, w, index), self.errors.n - reported)
            reported, index = self.errors.n, index + 1

    def _fill(self, src: Iterator[dict]) -> tuple[list[np.ndarray], list[int]]:
        pixels: list[np.ndarray] = []
        labels: list[int] = []
        while len(labels) < self.batch_size:
            sample = next(src, None)
            if sample is None:
                break
            try:
                ext = payload_ext(sample)
                if ext is None:
                    raise ValueError(f"no image field (fields: {sorted(sample)})")
                label = self._label(sample)
                arr = decode_image(ext, sample[ext], self.channels, self.image_size)
            except Exception as e:  # corrupt payloads raise all sorts of errors
                where = f"{sample.get('__url__')}:{sample.get('__key__')}"
                self.errors(ValueError(f"sample {where}: {e}"))
                continue
            pixels.append(arr)
            labels.append(label)
        return pixels, labels

    def _label(self, sample: dict) -> int:
        if "cls" not in sample:
            raise ValueError("no .cls label")
        try:
            label = int(sample["cls"])
        except ValueError:
            raise ValueError(f"label {sample['cls'][:20]!r} is not a number") from None
        n = self.num_classes
        if n is not None and not 0 <= label < n:
            raise ValueError(f"label {label} outside 0..{n - 1} (the dataset has {n} classes)")
        return label

    def _to_tensors(self, pixels, labels, w: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.stack(pixels))  # uint8 [B, S, S, C]
        if self.hflip:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, w, 3, index))
            flip = torch.rand(len(labels), generator=gen) < 0.5
            x[flip] = x[flip].flip(2)
        images = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()
        return images, torch.tensor(labels, dtype=torch.int64)

"""Streaming training data: resolve shard URLs, then a WebDataset pipeline per rank.

    urls, manifest = resolve_data(cfg.data)
    loader = build_loader(urls, cfg.data, batch_size=64, image_size=32, channels=3, rank=r,
                          world_size=w, seed=0, start_batch=0, pin_memory=False)
    for images, labels in loader:  # float32 [B,C,S,S] in [-1,1], int64 [B]

Two modes (`data.resample`):
  - True: every rank and worker draws shards with replacement from its own seeded stream
    (webdataset ResampledShards): infinite, so every rank has the same number of batches.
  - False: one pass. Shards are shuffled once with the seed (same order on every rank), rank r
    takes shards r, r+world, ...; worker w of that rank takes every nw-th of those. Every rank
    yields the same number of batches: the minimum over ranks (from the manifest's per-shard
    sample counts), so no rank waits in a collective for a peer that ran out.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ganforge.config import ConfigError, DataConfig, ModelConfig
from ganforge.data.manifest import MANIFEST_NAME, check_manifest, load_manifest, shard_entries


def demo_cache_dir() -> Path:
    """Where the embedded demo is unpacked: $GANFORGE_CACHE or ~/.cache/ganforge, keyed by the
    archive's content so an updated package never reuses stale shards."""
    from ganforge.data import demo_archive

    digest = hashlib.sha256(demo_archive().read_bytes()).hexdigest()[:12]
    base = Path(os.environ.get("GANFORGE_CACHE", "~/.cache/ganforge")).expanduser()
    return base / f"demo-shards-{digest}"


def resolve_data(data_cfg: DataConfig) -> tuple[list[str], dict[str, Any] | None]:
    """data.urls -> (shard URLs, manifest or None). ConfigError (a ValueError) when nothing
    usable is found or the split is unknown."""
    from ganforge.data import ensure_demo_shards

    spec = data_cfg.urls
    if spec is None:
        spec = str(ensure_demo_shards(demo_cache_dir()))
    urls: list[str] = []
    manifests: list[dict[str, Any]] = []
    for part in (p.strip() for p in spec.split("::")):
        if part:
            part_urls, manifest = _resolve_part(part, data_cfg.split)
            urls += part_urls
            manifests += [manifest] if manifest else []
    if not urls:
        raise ConfigError(f"data.urls={spec!r}: no shards found")
    for m in manifests[1:]:
        for key in ("image_size", "channels", "classes"):
            if m[key] != manifests[0][key]:
                raise ConfigError(f"data.urls mixes datasets with different {key}")
    return urls, (manifests[0] if manifests else None)


def _resolve_part(part: str, split: str) -> tuple[list[str], dict[str, Any] | None]:
    from webdataset.shardlists import expand_urls

    if part.startswith("pipe:"):
        return [part], None
    if part.startswith(("http://", "https://")):
        urls = expand_urls(part)
        return urls, _remote_manifest(urls[0].rsplit("/", 1)[0])
    if "://" in part and not part.startswith("file://"):
        raise ConfigError(
            f"data.urls: unsupported scheme in {part!r}; use http(s)://, file:// or "
            "pipe:CMD (e.g. 'pipe:aws s3 cp s3://bucket/train-000000.tar -')"
        )
    local = Path(part.removeprefix("file://")).expanduser()
    if local.is_dir():
        return _resolve_dir(local.resolve(), split)
    urls = [str(Path(u).expanduser().resolve()) for u in expand_urls(str(local))]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise ConfigError(f"data.urls: no such shard file {missing[0]} ({len(missing)} missing)")
    parent = Path(urls[0]).parent
    try:
        return urls, load_manifest(parent)
    except ValueError:
        return urls, None


def _resolve_dir(directory: Path, split: str) -> tuple[list[str], dict[str, Any] | None]:
    if (directory / MANIFEST_NAME).is_file():
        manifest = load_manifest(directory)
        try:
            entries = shard_entries(manifest, split)
        except ValueError as e:
            raise ConfigError(f"data.split: {e} in {directory}") from None
        return [str(directory / e["name"]) for e in entries], manifest
    tars = sorted(str(p) for p in directory.glob("*.tar"))
    if not tars:
        raise ConfigError(f"data.urls: {directory} holds no {MANIFEST_NAME} and no .tar shards")
    return tars, None


def _remote_manifest(base_url: str) -> dict[str, Any] | None:
    """BASE/dataset.json when the server has it; None otherwise (the data may still stream)."""
    try:
        with urllib.request.urlopen(f"{base_url}/{MANIFEST_NAME}", timeout=10) as resp:
            return check_manifest(json.loads(resp.read()), base_url)
    except (OSError, ValueError):
        return None


def check_compatible(manifest: dict[str, Any], model_cfg: ModelConfig) -> None:
    """ValueError when the shards cannot feed this model (size, channels, class count)."""
    from ganforge.models import get_variant

    problems = []
    if manifest["image_size"] != model_cfg.resolution:
        problems.append(
            f"images are {manifest['image_size']}x{manifest['image_size']} but "
            f"model.resolution={model_cfg.resolution} (repack with --image-size "
            f"{model_cfg.resolution})"
        )
    if manifest["channels"] != model_cfg.channels:
        problems.append(
            f"images have {manifest['channels']} channel(s) but model.channels="
            f"{model_cfg.channels} (repack with --channels {model_cfg.channels})"
        )
    n = len(manifest["classes"])
    if get_variant(model_cfg.variant).conditional and model_cfg.num_classes not in (0, n):
        problems.append(f"model.num_classes={model_cfg.num_classes} but the data has {n} classes")
    if problems:
        raise ValueError("data and model disagree: " + "; ".join(problems))


def _manifest_at(base: str) -> dict[str, Any] | None:
    if base.startswith(("http://", "https://")):
        return _remote_manifest(base)
    try:
        return load_manifest(Path(base.removeprefix("file://")))
    except ValueError:
        return None


def shard_sizes(urls: list[str]) -> list[int] | None:
    """Samples per shard from the manifests next to the shards; None when one is unknown."""
    known: dict[str, dict[str, int]] = {}  # folder/base URL -> {shard name: samples}
    sizes = []
    for url in urls:
        if url.startswith("pipe:"):
            return None
        base, name = url.rsplit("/", 1)
        if base not in known:
            splits = (_manifest_at(base) or {}).get("splits", {}).values()
            known[base] = {e["name"]: e["num_samples"] for s in splits for e in s["shards"]}
        if name not in known[base]:
            return None
        sizes.append(known[base][name])
    return sizes


def one_pass_plan(sizes: list[int], order: list[int], world: int, nw: int, batch: int):
    """-> (batches every rank yields, round-robin prefix length for rank-local skipping) given
    per-shard sizes, the shuffled shard order, and the rank/worker slicing of that order."""
    per_rank, min_worker = [], sys.maxsize
    for r in range(world):
        mine = order[r::world]
        workers = [sum(sizes[i] for i in mine[w::nw]) // batch for w in range(nw)]
        per_rank.append(sum(workers))
        min_worker = min(min_worker, *workers)
    return min(per_rank), nw * min_worker


class StreamingLoader:
    """Iterable of (images, labels) batches with input-wait accounting and a resumable start."""

    def __init__(self, make_loader, start_batch: int, num_batches: int | None):
        self._make_loader = make_loader
        self.start_batch = start_batch
        self.num_batches = num_batches  # None: resampled (infinite) or of unknown length
        self.wait_seconds = 0.0  # cumulative time the consumer spent inside __next__
        self.batches_yielded = start_batch  # position in the stream, skipped batches included
        self.dropped_samples = 0  # corrupt samples skipped (on_error=skip)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("resampled/unsized stream has no length")
        return max(0, self.num_batches - self.start_batch)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        self.batches_yielded = self.start_batch
        it = iter(self._make_loader())
        position = 0
        while self.num_batches is None or self.batches_yielded < self.num_batches:
            t0 = time.perf_counter()
            try:
                while True:
                    images, labels, dropped = next(it)
                    self.dropped_samples += dropped
                    position += 1
                    if position > self.start_batch:
                        break
            except StopIteration:
                return
            finally:
                self.wait_seconds += time.perf_counter() - t0
            self.batches_yielded += 1
            yield images, labels


def build_loader(
    urls: list[str], data_cfg: DataConfig, batch_size: int, image_size: int, channels: int,
    rank: int = 0, world_size: int = 1, seed: int = 0, start_batch: int = 0,
    pin_memory: bool = False,
) -> StreamingLoader:  # fmt: skip
    """One rank's loader over `urls` (see the module docstring for the two modes).

    `start_batch=k` yields exactly batches k, k+1, ... of a fresh loader with the same arguments
    (augmentation included); skipped batches are not decoded where the order is known.
    `pin_memory` pins batches when CUDA is available (on CPU pinning is a no-op and is skipped).
    """
    import torch
    import webdataset as wds

    from ganforge.data import stages

    if not urls:
        raise ValueError("build_loader: no shard URLs")
    nw = max(1, data_cfg.num_workers)
    errors = stages.ErrorCount(data_cfg.on_error)
    if data_cfg.resample:
        source = [wds.ResampledShards(
            urls, seed=seed, worker_seed=partial(stages.stream_seed, seed, rank),
            deterministic=True,
        )]  # fmt: skip
        num_batches, round_robin = None, sys.maxsize
    else:
        order = list(range(len(urls)))
        sizes = shard_sizes(urls)
        random.Random(stages.mix_seed(seed, 4)).shuffle(order)  # shardshuffle: same on all ranks
        ordered = [urls[i] for i in order]
        source = [
            wds.SimpleShardList(ordered),
            partial(stages.split_by_rank, rank=rank, world_size=world_size),  # nodesplitter
            wds.split_by_worker,  # workersplitter
        ]
        if sizes is None:
            if world_size > 1:
                raise ValueError(
                    "data.resample=false with several ranks needs per-shard sample counts "
                    f"({MANIFEST_NAME} next to the shards) to give every rank the same number "
                    "of batches; use data.resample=true or shards from `ganforge data pack`"
                )
            num_batches, round_robin = None, 0
        else:
            num_batches, round_robin = one_pass_plan(sizes, order, world_size, nw, batch_size)
            if num_batches == 0:
                raise ValueError(
                    f"data.resample=false: some rank gets fewer than one batch of {batch_size} "
                    f"({len(urls)} shards over {world_size} rank(s) x {nw} worker(s)); repack "
                    "with a smaller --shard-size or use data.resample=true"
                )
    decode = stages.DecodeBatches(
        batch_size, image_size, channels, data_cfg.hflip, seed, rank, start_batch,
        round_robin, errors,
    )  # fmt: skip

    def make_loader():
        pipeline = wds.DataPipeline(
            *source,
            stages.TarSamples(errors),  # lean tar reader: see stages.tar_members
            stages.SeededShuffle(data_cfg.shuffle_buffer, seed, rank),
            decode,
        )
        return torch.utils.data.DataLoader(
            pipeline, batch_size=None, num_workers=data_cfg.num_workers,
            pin_memory=pin_memory and torch.cuda.is_available(),
            prefetch_factor=4 if data_cfg.num_workers else None,
            # own generator: never draw the workers' base seed from the trainer's global RNG
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    return StreamingLoader(make_loader, start_batch, num_batches)

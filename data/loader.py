"""Streaming training data: resolve shard URLs, then a WebDataset pipeline per rank.

    urls, manifest = resolve_data(cfg.data)          # ganforge.data.resolve
    opts = LoaderOptions(batch_size=64, image_size=32, channels=3, rank=r, world_size=w)
    loader = build_loader(urls, cfg.data, opts)
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

import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from ganforge.config import DataConfig
from ganforge.data import stages
from ganforge.data.manifest import MANIFEST_NAME
from ganforge.data.resolve import shard_sizes


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

    def __init__(
        self,
        make_loader,
        start_batch: int,
        num_batches: int | None,
        shards: list[list[str]] | None = None,
    ):
        self._make_loader = make_loader
        self.start_batch = start_batch
        self.num_batches = num_batches  # None: resampled (infinite) or of unknown length
        # One pass: the shard URLs each DataLoader worker of this rank reads (what operators and
        # the node-failure test check for overlap); None: resampled, every worker draws from all.
        self.shards = shards
        self.wait_seconds = 0.0  # cumulative time the consumer spent inside __next__
        self.batches_yielded = start_batch  # position in the stream, skipped batches included
        self.dropped_samples = 0  # corrupt or mislabelled samples skipped (on_error=skip)

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


@dataclass(frozen=True)
class LoaderOptions:
    """One rank's view of the stream: batch shape, its slice of the shards, where it starts."""

    batch_size: int
    image_size: int  # S of the [B, C, S, S] batches
    channels: int  # C
    rank: int = 0
    world_size: int = 1
    seed: int = 0  # shard order, shuffle buffer and augmentation
    start_batch: int = 0  # resume point: the first batch yielded is batch `start_batch`
    pin_memory: bool = False  # pin batches; only where CUDA is available (a no-op on CPU)
    # classes in the manifest: a sample labelled outside 0..num_classes-1 is dropped and counted
    # (data.on_error=skip) or stops the stream (raise); None: labels are not checked
    num_classes: int | None = None


class _ShardPlan(NamedTuple):
    source: list  # the pipeline's first stages: shard list, rank and worker splitting
    num_batches: int | None  # batches every rank yields; None: resampled or unknown length
    round_robin: int  # batches skippable without decoding (stages.DecodeBatches `skip`)
    shards: list[list[str]] | None = None  # one pass: each worker's shard URLs, as split below


def build_loader(urls: list[str], data_cfg: DataConfig, opts: LoaderOptions) -> StreamingLoader:
    """One rank's loader over `urls` (see the module docstring for the two modes).

    `opts.start_batch=k` yields exactly batches k, k+1, ... of a fresh loader with the same
    arguments (augmentation included); skipped batches are not decoded where the order is known.
    """
    import torch
    import webdataset as wds

    if not urls:
        raise ValueError("build_loader: no shard URLs")
    errors = stages.ErrorCount(data_cfg.on_error)
    shards = _resampled(urls, opts) if data_cfg.resample else _one_pass(urls, data_cfg, opts)
    decode = stages.DecodeBatches(
        batch_size=opts.batch_size,
        image_size=opts.image_size,
        channels=opts.channels,
        hflip=data_cfg.hflip,
        seed=opts.seed,
        rank=opts.rank,
        start_batch=opts.start_batch,
        round_robin=shards.round_robin,
        errors=errors,
        num_classes=opts.num_classes,
    )

    def make_loader():
        pipeline = wds.DataPipeline(
            *shards.source,
            stages.TarSamples(errors),  # lean tar reader: see stages.tar_members
            stages.SeededShuffle(data_cfg.shuffle_buffer, opts.seed, opts.rank),
            decode,
        )
        return torch.utils.data.DataLoader(
            pipeline,
            batch_size=None,  # DecodeBatches yields whole batches
            num_workers=data_cfg.num_workers,
            pin_memory=opts.pin_memory and torch.cuda.is_available(),
            prefetch_factor=4 if data_cfg.num_workers else None,
            # own generator: never draw the workers' base seed from the trainer's global RNG
            generator=torch.Generator().manual_seed(opts.seed),
        )

    return StreamingLoader(make_loader, opts.start_batch, shards.num_batches, shards.shards)


def _resampled(urls: list[str], opts: LoaderOptions) -> _ShardPlan:
    """data.resample=true: shards drawn with replacement from a per-rank, per-worker stream."""
    import webdataset as wds

    worker_seed = partial(stages.stream_seed, opts.seed, opts.rank)
    shards = wds.ResampledShards(urls, seed=opts.seed, worker_seed=worker_seed, deterministic=True)
    return _ShardPlan([shards], None, sys.maxsize)


def _one_pass(urls: list[str], data_cfg: DataConfig, opts: LoaderOptions) -> _ShardPlan:
    """data.resample=false: one seeded shard order, rank r takes shards r, r+world, ..."""
    import webdataset as wds

    nw = max(1, data_cfg.num_workers)
    order = list(range(len(urls)))
    sizes = shard_sizes(urls)
    random.Random(stages.mix_seed(opts.seed, 4)).shuffle(order)  # shardshuffle: same on all ranks
    ordered = [urls[i] for i in order]
    # The same two splits as the stages below: this rank's slice, then wds.split_by_worker's.
    mine = list(stages.split_by_rank(iter(ordered), opts.rank, opts.world_size))
    per_worker = [mine[w::nw] for w in range(nw)]
    source = [
        wds.SimpleShardList(ordered),
        partial(stages.split_by_rank, rank=opts.rank, world_size=opts.world_size),  # nodesplitter
        wds.split_by_worker,  # workersplitter
    ]
    if sizes is None:
        if opts.world_size > 1:
            raise ValueError(
                "data.resample=false with several ranks needs per-shard sample counts "
                f"({MANIFEST_NAME} next to the shards) to give every rank the same number "
                "of batches; use data.resample=true or shards from `ganforge data pack`"
            )
        return _ShardPlan(source, None, 0, per_worker)
    num_batches, round_robin = one_pass_plan(sizes, order, opts.world_size, nw, opts.batch_size)
    if num_batches == 0:
        raise ValueError(
            f"data.resample=false: some rank gets fewer than one batch of {opts.batch_size} "
            f"({len(urls)} shards over {opts.world_size} rank(s) x {nw} worker(s)); repack "
            "with a smaller --shard-size or use data.resample=true"
        )
    return _ShardPlan(source, num_batches, round_robin, per_worker)

"""Streaming training data: resolve shard URLs, then a WebDataset pipeline per rank.

    urls, manifest = resolve_data(cfg.data)          # ganforge.data.resolve
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

import random
import sys
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

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

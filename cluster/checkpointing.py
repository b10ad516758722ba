"""Distributed checkpoints through Ray Train: save (all ranks), pick and restore (all ranks).

Every rank writes its part into a private temp dir (DeepSpeed engine files, its rank file; rank 0
also weights.pt); the file hashes are gathered and rank 0 writes the ganforge.json marker over the
union; then every rank calls `ray.train.report(checkpoint=...)`, and Ray Train merges the rank
dirs into RUN_DIR/checkpoints/step-XXXXXX. A checkpoint whose marker is missing or whose files
do not match it (a kill during upload) is skipped on restore with a warning.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ganforge.checkpoint import (
    CheckpointError,
    checkpoint_meta,
    hash_tree,
    latest_valid,
    list_checkpoints,
    verify,
    write_marker,
    write_weights,
)
from ganforge.cluster.distributed import all_gather_object, broadcast_object
from ganforge.cluster.engines import GANEngines
from ganforge.cluster.safe_state import load_weights_only
from ganforge.config import GanforgeConfig
from ganforge.kernels import auto_choices
from ganforge.rundir import CheckpointDir, RunDir

log = logging.getLogger("ganforge.train")


def save_and_report(
    gan: GANEngines, step: int, images_seen: int, classes: list[str], metrics: dict
) -> float:
    """Collective. Returns the seconds the save took (reported in the next metrics)."""
    import ray.train

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"ganforge-ckpt-{step:06d}-r{gan.rank}-"))
    part = CheckpointDir(tmp)
    try:
        gan.save_engines(str(part.deepspeed))
        torch.save(
            {"step": step, "images_seen": images_seen, "world_size": gan.world, **gan.rank_state()},
            part.rank_state(gan.rank),
        )
        if gan.rank == 0:
            write_weights(tmp, gan.g, gan.ema.module, gan.d)
        files: dict[str, str] = {}
        for part in all_gather_object(hash_tree(tmp)):
            files.update(part)
        if gan.rank == 0:
            write_marker(tmp, files, marker_meta(gan.cfg, step, images_seen, classes, gan.world))
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
            checkpoint_dir_name=CheckpointDir.dir_name(step),
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


def marker_meta(
    cfg: GanforgeConfig, step: int, images_seen: int, classes: list[str], world: int
) -> dict:
    """The marker's fields. The last checkpoint's marker is the run's summary, so it also lists
    what `kernels: auto` chose on rank 0 so far (`ganforge.kernels.auto_choices`) and the torch
    threads rank 0 trains on (called on its training thread, whose count the loop set)."""
    meta = checkpoint_meta(cfg, step, images_seen, classes, world_size=world)
    return meta | {"kernel_choices": auto_choices(), "torch_threads": torch.get_num_threads()}


def find_resume_point(run: RunDir, rank: int) -> Path | None:
    """Rank 0 picks the newest checkpoint that verifies (Ray's registered one among the run's,
    by step: the same rule as the no-capacity error's message); all ranks agree."""
    import ray.train

    if run.store is not None:
        return _download_resume_point(run, rank)
    choice = None
    if rank == 0:
        candidates = []
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None and Path(ckpt.path).is_dir():
            candidates.append(Path(ckpt.path))
        found = latest_valid(run.checkpoints, candidates)
        choice = str(found) if found else None
    choice = broadcast_object(choice)
    return Path(choice) if choice else None


def _download_resume_point(run: RunDir, rank: int) -> Path | None:
    """Object-store run: rank 0 downloads checkpoints newest first until one verifies, then every
    other rank downloads that one into its own folder (ranks may share a node)."""
    names = [d.name for _, d in list_checkpoints(run.pull_markers())] if rank == 0 else []
    dest = run.restore_dir(rank)
    choice = None
    for name in names:
        local = run.pull_checkpoint(name, dest)
        try:
            verify(local.path)
            choice = name
            break
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", run.uri_of(run.checkpoint(name).path), e)
    choice = broadcast_object(choice)
    if choice is None:
        return None
    if rank != 0:
        run.pull_checkpoint(choice, dest)
    return dest


def restore(gan: GANEngines, ckpt: Path) -> tuple[int, int]:
    """Load engines, EMA, RNG and noise state; returns (step, images_seen)."""
    files = CheckpointDir(ckpt)
    rank_file = files.rank_state(gan.rank)
    if not rank_file.is_file():
        raise RuntimeError(
            f"{ckpt} has no {rank_file.name}: it was written by a run with a different number "
            "of workers; resume with the same --num-workers"
        )
    # Tensors and plain numbers only: a planted file in a shared run folder cannot run code.
    state = load_weights_only(rank_file)
    if state["world_size"] != gan.world:
        raise RuntimeError(
            f"{ckpt} was written by {state['world_size']} workers, this run has {gan.world}"
        )
    gan.load_engines(str(files.deepspeed))
    weights = load_weights_only(files.weights)
    gan.ema.module.load_state_dict(weights["generator_ema"])
    gan.load_rank_state(state)
    return int(state["step"]), int(state["images_seen"])

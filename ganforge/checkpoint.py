"""Checkpoint format and I/O without Ray or DeepSpeed (training writes it; serve/eval read it).

A checkpoint directory holds:
  weights.pt        plain state dicts {generator, generator_ema, discriminator}: tensors only, so
                    `torch.load(weights_only=True)` reads it (serving never unpickles code)
  deepspeed/        both engines' DeepSpeed checkpoints (optimizer states, ZeRO partitions)
  rank-<r>.pt       per-rank RNG states and data position
  ganforge.json     written last: step, images_seen, the resolved config, and the sha256 of every
                    other file. A checkpoint without it, or whose files do not match it, is
                    incomplete or corrupt and is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ganforge.config import GanforgeConfig
from ganforge.rundir import CheckpointDir, RunDir
from ganforge.storage import StorageError, is_uri, sha256_file

FORMAT = "ganforge-checkpoint/1"
log = logging.getLogger("ganforge.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not match its config."""


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file below `root` (relative posix paths), the marker excluded."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != CheckpointDir.MARKER
    }


def write_marker(root: Path, files: dict[str, str], meta: dict[str, Any]) -> None:
    """Write ganforge.json atomically (temp file + rename): its presence means complete."""
    body = {"format": FORMAT, **meta, "files": files}
    marker = CheckpointDir(root).marker
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
    os.replace(tmp, marker)


def read_marker(root: Path) -> dict[str, Any]:
    path = CheckpointDir(root).marker
    if not path.is_file():
        raise CheckpointError(
            f"{root}: no {path.name}; the checkpoint is incomplete or not ganforge's"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {meta.get('format')!r}, expected {FORMAT}")
    return meta


def verify(root: Path, deep: bool = True, only: set[str] | None = None) -> dict[str, Any]:
    """Return the marker if every listed file exists (and, if deep, has its sha256); else raise.
    `only` limits the check to those files (serving needs weights.pt, not the DeepSpeed states)."""
    root = Path(root)
    meta = read_marker(root)
    files = meta.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{root}: its {CheckpointDir.MARKER} lists no files")
    unlisted = sorted((only or set()) - set(files))
    if unlisted:  # a file the marker does not vouch for is as good as missing
        raise CheckpointError(f"{root}: {', '.join(unlisted)} not listed in its marker")
    for rel, digest in files.items():
        if only is not None and rel not in only:
            continue
        p = root / rel
        if not p.is_file():
            raise CheckpointError(f"{root}: missing file {rel} (partial checkpoint)")
        if deep and sha256_file(p) != digest:
            raise CheckpointError(f"{root}: {rel} does not match its sha256 (corrupt checkpoint)")
    return meta


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Checkpoint dirs below `ckpt_root` that carry a marker, newest step first (no hashing)."""
    found = []
    for d in Path(ckpt_root).glob("*/"):
        try:
            found.append((int(read_marker(d)["step"]), d))
        except (CheckpointError, KeyError, ValueError):
            continue
    return sorted(found, key=lambda t: (t[0], t[1].name), reverse=True)


def _marker_step(d: Path) -> int:
    """The step a checkpoint dir's marker names; -1 (tried last) when it has none."""
    try:
        return int(read_marker(d)["step"])
    except (CheckpointError, KeyError, ValueError, TypeError):
        return -1


def latest_valid(
    ckpt_root: Path,
    candidates: list[Path] | None = None,
    only: set[str] | None = None,
    fetch: Callable[[Path], None] | None = None,
) -> Path | None:
    """The newest checkpoint (by the step in its marker) that verifies; corrupt or partial ones
    are skipped with a warning. `candidates` (Ray Train's registered checkpoint) join the dirs
    below `ckpt_root` in that same step order: Ray's registry can lag the folder (a node lost
    after a newer checkpoint was complete), and a resume must start where the error said it would.
    `fetch(dir)` runs before each verification (downloads from an object store, newest first,
    so the older checkpoints are fetched only when the newer ones fail)."""
    listed = list_checkpoints(ckpt_root)
    extra = [Path(p) for p in (candidates or []) if p is not None]
    extra = [p for p in extra if all(p != d for _, d in listed)]
    ordered = [
        d
        for _, d in sorted(
            listed + [(_marker_step(p), p) for p in extra], key=lambda t: t[0], reverse=True
        )
    ]
    for d in ordered:
        try:
            if fetch is not None:
                fetch(d)
            verify(d, only=only)
            return d
        except (CheckpointError, StorageError) as e:
            log.warning("skipping checkpoint: %s", e)
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """The newest servable checkpoint (its weights.pt verified) of a run dir, a checkpoints/ dir,
    a checkpoint dir or its weights.pt file; any of these may be an object-store URI."""
    remote = None
    try:
        if is_uri(path):  # markers only: the weights are fetched newest first, below
            remote = RunDir.open(str(path))
            p = remote.localize(weights=False)
        else:
            p = Path(path)
    except StorageError as e:
        raise CheckpointError(str(e)) from None
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if p.is_file():
        p = p.parent
    if CheckpointDir(p).is_marked():
        return p
    for root in (RunDir(p).checkpoints, p):
        if root.is_dir():
            fetch = None if remote is None else (lambda d: remote.pull_weights(d.name))
            best = latest_valid(root, only={CheckpointDir.WEIGHTS}, fetch=fetch)
            if best is not None:
                return best
    raise CheckpointError(f"{path}: no valid ganforge checkpoint found (looked in {p})")


def write_weights(
    root: str | Path,
    generator: torch.nn.Module,
    generator_ema: torch.nn.Module,
    discriminator: torch.nn.Module,
) -> Path:
    """weights.pt: plain tensors only (loadable with `torch.load(weights_only=True)`)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    state = {
        name: {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        for name, module in (
            ("generator", generator),
            ("generator_ema", generator_ema),
            ("discriminator", discriminator),
        )
    }
    path = CheckpointDir(root).weights
    torch.save(state, path)
    return path


def checkpoint_meta(
    config: GanforgeConfig, step: int, images_seen: int, classes: list[str] | None, **extra: Any
) -> dict[str, Any]:
    return {
        "step": int(step),
        "images_seen": int(images_seen),
        "config": config.model_dump(mode="json"),
        "classes": list(classes or []),
        **extra,
    }


def write_weights_checkpoint(
    root: str | Path,
    config: GanforgeConfig,
    generator: torch.nn.Module,
    generator_ema: torch.nn.Module,
    discriminator: torch.nn.Module,
    step: int,
    images_seen: int,
    classes: list[str] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """A complete single-process checkpoint (weights + marker) in `root`. Training writes the
    distributed variant itself; tests and tools use this to make servable checkpoints."""
    root = Path(root)
    write_weights(root, generator, generator_ema, discriminator)
    meta = checkpoint_meta(config, step, images_seen, classes, **(extra_meta or {}))
    write_marker(root, hash_tree(root), meta)
    return root

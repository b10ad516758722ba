"""Where the detector's images come from: real shards, and fakes drawn on demand.

A `FakeSource` is a name and a function `(n, seed) -> uint8 images [n, C, H, W]`: a trained
ganforge generator (`from_path`: a run directory, a checkpoint directory or an object-store URI,
its latest checkpoint's EMA generator, classes balanced for conditional ones) or any callable
(tests use real images blurred or noised as a deliberately poor "generator"), or images drawn
before (a uint8 tensor: the first n, whatever the seed; the matrix scores every detector on the
same fakes this way). Drawing with a new seed gives fresh fakes, so training sees new ones every
epoch and evaluation ones never trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ganforge.checkpoint import CheckpointError
from ganforge.data.memory import load_real, read_manifest
from ganforge.models import load_model
from ganforge.quality.detect_encoding import encode_like, real_encoding
from ganforge.quality.evaluate import EvalError, generate, select_checkpoints
from ganforge.rundir import CheckpointDir

MAX_IMAGES = 200_000  # per set: 32x32 RGB uint8 is 3 KB an image, 600 MB at this cap
# Seed offsets keep the fakes of training epochs, validation and evaluation apart.
VALIDATION_SEED, EVALUATION_SEED = 1_000_003, 2_000_003


class DetectError(ValueError):
    """Bad input to detector training or evaluation; the message says which and why."""


Sampler = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True)
class FakeSource:
    name: str
    sample: Sampler  # (n, seed) -> uint8 [n, C, H, W]
    origin: str = "callable"  # the run or checkpoint it was loaded from


def from_path(path: str | Path) -> FakeSource:
    """The EMA generator of the latest checkpoint of a run dir (or of a checkpoint dir)."""
    try:
        (_, ckpt), *_ = select_checkpoints(path, "latest")
        model = load_model(ckpt)
    except (EvalError, CheckpointError) as e:
        raise DetectError(str(e)) from None
    root = Path(str(path).rstrip("/"))
    name = root.parent.parent.name if CheckpointDir(root).is_marked() else root.name
    g = model.generator

    def sample(n: int, seed: int) -> torch.Tensor:
        return generate(g, n, seed)[0]

    return FakeSource(name or model.config.model.variant, sample, str(ckpt))


FakeInput = Iterable[str | Path | FakeSource] | Mapping[str, Sampler | torch.Tensor]


def _drawn(name: str, images: torch.Tensor) -> FakeSource:
    """Fakes drawn before: `sample(n, seed)` gives the first n of them."""

    def sample(n: int, seed: int) -> torch.Tensor:
        if n > len(images):
            raise DetectError(f"{name}: {n} fakes asked, {len(images)} were drawn")
        return images[:n]

    return FakeSource(name, sample, "images drawn before")


def as_sources(fakes: FakeInput) -> list[FakeSource]:
    """Paths, FakeSources or {name: sampler or uint8 images} -> FakeSources with distinct names
    (`a`, `a-2`)."""
    items = (
        [
            _drawn(k, v) if isinstance(v, torch.Tensor) else FakeSource(k, v)
            for k, v in fakes.items()
        ]
        if isinstance(fakes, Mapping)
        else [f if isinstance(f, FakeSource) else from_path(f) for f in fakes]
    )
    if not items:
        raise DetectError("no fake source given (--fake RUN_DIR_OR_CHECKPOINT)")
    seen: dict[str, int] = {}
    out = []
    for src in items:
        seen[src.name] = seen.get(src.name, 0) + 1
        n = seen[src.name]
        out.append(src if n == 1 else FakeSource(f"{src.name}-{n}", src.sample, src.origin))
    return out


def draw(
    src: FakeSource, n: int, seed: int, like: torch.Tensor, encoding: dict | None = None
) -> torch.Tensor:
    """n fakes from `src`, checked to have the shape of the real images `like` [N, C, H, W], and
    stored as `encoding` says (`detect_encoding.encode_like`; None: as generated)."""
    if n > MAX_IMAGES:
        raise DetectError(f"{n} images asked from {src.name}: over the {MAX_IMAGES} limit")
    x = src.sample(n, seed)
    if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != tuple(like.shape[1:]):
        raise DetectError(
            f"{src.name}: makes {x.dtype} images {list(x.shape[1:])}, the real images are uint8 "
            f"{list(like.shape[1:])} (train and test the detector at the data's resolution)"
        )
    return encode_like(x, encoding)


@dataclass(frozen=True)
class Reals:
    """Real images in memory, and how their source stores them."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    encoding: dict | None  # lossy storage to give the fakes too (detect_encoding), else None
    origin: str  # "<shard dir> (split <name>)" or "in-memory images"


RealInput = str | Path | torch.Tensor | Reals


def real_images(real: RealInput, split: str, limit: int | None, seed: int, progress: bool) -> Reals:
    """A shard directory's split (seeded subset of `limit` images) with its storage encoding;
    uint8 images [N, C, H, W] or `Reals` as given (subset to `limit`)."""
    if isinstance(real, Reals):
        x, encoding, origin = real.images, real.encoding, real.origin
    elif isinstance(real, torch.Tensor):
        x, encoding, origin = real, None, "in-memory images"
    else:
        total = (read_manifest(real)["splits"].get(split) or {}).get("num_samples") or 0
        if min(total, limit or total) > MAX_IMAGES:  # refused before reading them all in
            raise DetectError(
                f"{real}: split {split} has {total} images, over the {MAX_IMAGES} "
                "limit (use --limit)"
            )
        x = load_real(real, split, limit=limit, seed=seed, progress=progress).images
        encoding, origin = real_encoding(real, split), f"{real} (split {split})"
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise DetectError(f"real images must be uint8 [N, C, H, W], got {x.dtype} {list(x.shape)}")
    if limit is not None and len(x) > limit:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:limit]]
    if len(x) > MAX_IMAGES:
        raise DetectError(f"{len(x)} real images: over the {MAX_IMAGES} limit (use --limit)")
    return Reals(x, encoding, origin)

"""What a source becomes: a `Dataset` of `Item`s, whatever format it came in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Item:
    label: int
    source: str  # shown to users and stored in `<key>.json`
    payload: bytes | np.ndarray | Path

    def load(self) -> bytes | np.ndarray:
        if isinstance(self.payload, Path):
            try:
                return self.payload.read_bytes()
            except OSError as e:
                from ganforge.data.codec import ImageProblem

                raise ImageProblem(f"unreadable ({e.strerror or e})") from None
        return self.payload


@dataclass
class Dataset:
    kind: str
    classes: list[str]
    splits: dict[str, list[Item]]
    problems: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}

    def limit_per_class(self, n: int | dict[str, int]) -> None:
        """Keep the first n items of every class in every split (n may be per split)."""
        for split, items in self.splits.items():
            cap = n.get(split) if isinstance(n, dict) else n
            if cap is None:
                continue
            seen: dict[int, int] = {}
            kept = []
            for it in items:
                if seen.get(it.label, 0) < cap:
                    seen[it.label] = seen.get(it.label, 0) + 1
                    kept.append(it)
            self.splits[split] = kept


# A "file system" of relative POSIX paths -> a reader, so folders and tar archives share code.
Files = dict[str, Callable[[], bytes]]


Problems = list[dict[str, str]]  # skipped inputs: {"path", "reason"}


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB' (sizes in messages)."""
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"

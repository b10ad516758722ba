"""`dataset.json`: the manifest written next to the shards by `ganforge data pack`.

Schema (format "ganforge-shards/1"):
    {"format": "ganforge-shards/1", "image_size": 32, "channels": 3, "encoding": "keep",
     "classes": ["airplane", ...],            # index order: sample `.cls` values index this list
     "splits": {"train": {"num_samples": 5000,
                          "shards": [{"name": "train-000000.tar", "num_samples": 1000,
                                      "sha256": "..."}, ...]}},
     "skipped": [{"path": "...", "reason": "..."}],
     "converted": 0,                          # images whose size or mode was changed
     "source": "cifar10-demo.tar.gz", "source_kind": "image-folder",
     "created_by": "ganforge 0.1.0"}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ganforge.data import DataError

FORMAT = "ganforge-shards/1"
MANIFEST_NAME = "dataset.json"


def load_manifest(directory: Path) -> dict[str, Any]:
    """Read and sanity-check DIR/dataset.json; DataError with the reason otherwise."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{directory}: no {MANIFEST_NAME} (not a `ganforge data pack` output)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable manifest ({e})") from None
    return check_manifest(manifest, str(path))


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{where}: not a {FORMAT} manifest")
    for key in ("image_size", "channels", "classes", "splits"):
        if key not in manifest:
            raise DataError(f"{where}: manifest lacks '{key}'")
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def split_names(manifest: dict[str, Any]) -> list[str]:
    return sorted(manifest["splits"])


def shard_entries(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    if split not in manifest["splits"]:
        known = ", ".join(split_names(manifest)) or "none"
        raise DataError(f"unknown split '{split}' (this dataset has: {known})")
    return list(manifest["splits"][split]["shards"])

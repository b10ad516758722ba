"""Where training data comes from: `data.urls` -> shard URLs (+ the manifest when there is one).

    urls, manifest = resolve_data(cfg.data)

Accepts a packed folder (its `dataset.json` picks the split), local paths and brace patterns,
`file://`, `http(s)://` (the manifest is fetched from the same base when the server has it) and
`pipe:CMD`; `demo:NAME` is a demo dataset (`data.demos`: `demo:shapes`, `demo:cifar10-subset`),
packed once into a content-keyed cache, and `data.urls=None` is `demo:cifar10-subset`.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from ganforge.config import ConfigError, DataConfig
from ganforge.data import DataError, demos
from ganforge.data.manifest import MANIFEST_NAME, check_manifest, load_manifest, shard_entries


def demo_cache_dir() -> Path:
    """Where the embedded CIFAR-10 subset is unpacked (`data.demos`)."""
    return demos.cifar10_cache_dir()


def resolve_data(data_cfg: DataConfig) -> tuple[list[str], dict[str, Any] | None]:
    """data.urls -> (shard URLs, manifest or None). ConfigError (a ValueError) when nothing
    usable is found or the split is unknown."""
    spec = data_cfg.urls
    if spec is None:
        spec = demos.SCHEME + demos.CIFAR10_SUBSET
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
    if part.startswith(demos.SCHEME):
        try:
            return _resolve_dir(demos.demo_shards(part.removeprefix(demos.SCHEME)), split)
        except DataError as e:
            raise ConfigError(f"data.urls={part!r}: {e}") from None
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

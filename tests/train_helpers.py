"""Fixtures shared by the training tests: tiny packed shards and tiny configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ganforge.config import GanforgeConfig, load_config, resolve_config_path


def make_npz(
    path: Path, classes: int = 4, per_class: int = 16, size: int = 32, seed: int = 0
) -> Path:
    """Smooth class-dependent colour blobs (PNG-compressible, distinguishable per class)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, labels = [], []
    for c in range(classes):
        for _ in range(per_class):
            cx, cy = rng.uniform(0.2, 0.8, 2)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * 20)
            colour = np.array([(c * 67) % 256, (c * 131 + 40) % 256, (c * 29 + 90) % 256])
            img = blob[..., None] * colour + rng.normal(0, 4, (size, size, 3))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    np.savez(
        path,
        images=np.stack(images),
        labels=np.array(labels),
        classes=np.array([f"class{c}" for c in range(classes)]),
    )
    return path


def pack(tmp: Path, shard_size: int = 16, **kw) -> Path:
    from typer.testing import CliRunner

    from ganforge.cli import app

    npz = make_npz(tmp / "src.npz", **kw)
    out = tmp / "shards"
    res = CliRunner().invoke(
        app, ["data", "pack", str(npz), str(out), "--shard-size", str(shard_size)]
    )
    assert res.exit_code == 0, res.output
    assert (out / "dataset.json").is_file()
    return out


def tiny_config(variant: str, shards: Path, run_dir: Path, **overrides) -> GanforgeConfig:
    base = {
        "data.urls": str(shards),
        "data.num_workers": 0,
        "data.shuffle_buffer": 16,
        "model.width": 8,
        "model.z_dim": 16,
        "model.embed_dim": 8,
        "model.kernels": "torch",
        "train.micro_batch": 8,
        "train.max_steps": 3,
        "train.log_every": 1,
        "train.sample_every": 2,
        "train.checkpoint_every": 2,
        "run_dir": str(run_dir),
    }
    return load_config(resolve_config_path(variant), base | overrides)

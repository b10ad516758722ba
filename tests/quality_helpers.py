"""Tiny real-image shards and a tiny classifier for the quality tests (no external data)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["stripes", "checks", "blob"]


def synthetic_image(c: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A textured 32x32 RGB image whose pattern and colour depend on class c."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 0.9)
    if c == 0:
        pattern = np.sin(yy * freq + phase)
    elif c == 1:
        pattern = np.sign(np.sin(yy * freq + phase) * np.sin(xx * freq + phase))
    else:
        cx, cy = rng.uniform(8, 24, 2)
        pattern = 2 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 40) - 1
    colour = np.eye(3)[c] * 0.7 + 0.3
    img = 128 + 100 * pattern[..., None] * colour + rng.normal(0, 3, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_shards(root: Path, per_class: dict[str, int], seed: int = 0, shard_size: int = 50):
    """WebDataset shards (`<split>-NNNNNN.tar`, PNG + cls) and dataset.json, like `data pack`."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in per_class.items():
        samples = [(c, synthetic_image(c, rng)) for c in range(len(CLASSES)) for _ in range(n)]
        order = rng.permutation(len(samples))
        shards = []
        for s in range(0, len(samples), shard_size):
            name = f"{split}-{s // shard_size:06d}.tar"
            with wds.TarWriter(str(root / name)) as w:
                for i in order[s : s + shard_size]:
                    c, img = samples[i]
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG")
                    w.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "cls": str(c).encode()})
            shards.append({"name": name, "num_samples": len(order[s : s + shard_size])})
        splits[split] = {"num_samples": len(samples), "shards": shards}
    manifest = {
        "format": "ganforge-shards/1",
        "image_size": 32,
        "channels": 3,
        "encoding": "png",
        "classes": CLASSES,
        "splits": splits,
    }
    (root / "dataset.json").write_text(json.dumps(manifest))
    return root


def pack_shards(root: Path, per_class: dict[str, int], encoding: str, seed: int = 0) -> Path:
    """The synthetic images as class folders (`SRC/<split>/<class>/*.png`), packed by the real
    `ganforge data pack` code with `encoding` (raw, png, jpg or keep) into `root`."""
    from ganforge.data.pack import PackOptions, pack

    src = root.parent / f"{root.name}-source"
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            folder = src / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(synthetic_image(c, rng)).save(folder / f"{i:04d}.png")
    pack(src, root, PackOptions(shard_size=50, encoding=encoding, progress=False))
    return root


def train_tiny_classifier(shards: Path, out: Path) -> dict:
    from ganforge.quality.classifier_training import ClassifierTraining, train_classifier

    recipe = ClassifierTraining(epochs=6, batch_size=32, lr=0.1, widths=(8, 16, 32))
    return train_classifier(shards, out, recipe, progress=False)


class StandInInception:
    """Stands in for torch-fidelity's `FeatureExtractorInceptionV3`, whose ImageNet weights
    (about 100 MB) cannot be downloaded here: the same constructor (name, feature list, weights
    file), weights read from that file with `weights_only=True`, and the same output (a tuple
    holding [B, 2048] features of uint8 images), from a network small enough for a unit test."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str):
        import torch

        assert name == "inception-v3-compat" and features_list == ["2048"]
        self.net = stand_in_network()
        state = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()

    def eval(self):
        return self

    def __call__(self, x):
        assert x.dtype.is_floating_point is False, "torch-fidelity takes uint8 images"
        return (self.net(x.float() / 127.5 - 1),)


def stand_in_network():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(16 * 16, 2048),
    )


def install_stand_in_inception(monkeypatch, path: Path) -> Path:
    """Write the stand-in's weights to `path` and make `torch_fidelity`'s extractor module
    resolve to it (for this test only)."""
    import sys
    import types

    import torch

    torch.manual_seed(0)
    torch.save(stand_in_network().state_dict(), path)
    package = types.ModuleType("torch_fidelity")
    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = StandInInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", package)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    return path

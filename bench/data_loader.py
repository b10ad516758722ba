"""Input pipeline throughput: WebDataset shards (jpg, raw) vs a PIL + ImageFolder baseline.

Same images, batch 256, 32x32 float output in [-1, 1] with random horizontal flips, 1 and 2
DataLoader worker processes. Images/s over one pass, excluding the first batch (worker start-up).
Prints JSON; `--out` also writes it.

    python bench/data_loader.py --per-class 1000 --out bench/results/data_loader-cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import environment

DEFAULT_ARCHIVE = "/work/shared/datasets/cifar10-jpg.tar.gz"


class ImageFolderBaseline(torch.utils.data.Dataset):
    """What a plain PyTorch user writes: one file open + PIL decode per __getitem__."""

    def __init__(self, root: Path, size: int = 32):
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.items = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir())]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        img = Image.open(path).convert("RGB")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8)).permute(2, 0, 1)
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.float().div_(127.5).sub_(1.0), label


def timed_pass(batches) -> tuple[float, int]:
    """-> (images/s after the first batch, batches)."""
    it = iter(batches)
    next(it)
    t0, n, count = time.perf_counter(), 0, 1
    for images, _ in it:
        n += images.shape[0]
        count += 1
    return n / (time.perf_counter() - t0), count


def baseline(root: Path, workers: int, batch: int) -> float:
    loader = torch.utils.data.DataLoader(
        ImageFolderBaseline(root),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    return timed_pass(loader)[0]


def shards(out: Path, workers: int, batch: int) -> float:
    from ganforge.config import DataConfig
    from ganforge.data.loader import LoaderOptions, build_loader
    from ganforge.data.resolve import resolve_data

    cfg = DataConfig(urls=str(out), resample=False, num_workers=workers, shuffle_buffer=1000)
    urls, _ = resolve_data(cfg)
    shape = LoaderOptions(batch_size=batch, image_size=32, channels=3)
    return timed_pass(build_loader(urls, cfg, shape))[0]


def prepare(archive: Path, per_class: int, tmp: Path) -> tuple[Path, dict[str, Path]]:
    """Extract a class-balanced subset (files, for the baseline) and pack it twice."""
    from ganforge.data.pack import PackOptions, pack
    from ganforge.data.subset import subset

    subset(archive, tmp / "images", {"train": per_class}, splits=["train"])
    root = tmp / "images" / "train"
    packed = {}
    for encoding in ("keep", "raw"):
        packed[encoding] = tmp / f"shards-{encoding}"
        pack(root, packed[encoding], PackOptions(encoding=encoding, progress=False))
    return root, packed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", default=DEFAULT_ARCHIVE, help="CIFAR-10 JPEG tree archive")
    ap.add_argument("--per-class", type=int, default=1000, help="train images per class")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3, help="passes per setting; best is kept")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-") as tmp:
        root, packed = prepare(Path(args.archive), args.per_class, Path(tmp))
        n_images = sum(1 for _ in root.rglob("*.jpg"))
        runs = {
            "imagefolder_pil": lambda w: baseline(root, w, args.batch),
            "webdataset_jpg": lambda w: shards(packed["keep"], w, args.batch),
            "webdataset_raw": lambda w: shards(packed["raw"], w, args.batch),
        }
        for workers in args.workers:
            row = {"workers": workers}
            for name, run in runs.items():
                row[f"{name}_img_s"] = round(max(run(workers) for _ in range(args.repeats)), 1)
            base = row["imagefolder_pil_img_s"]
            row["jpg_speedup"] = round(row["webdataset_jpg_img_s"] / base, 2)
            row["raw_speedup"] = round(row["webdataset_raw_img_s"] / base, 2)
            print(json.dumps(row), flush=True)
            results.append(row)
    out = {
        "benchmark": "data_loader",
        **environment(),
        "images": n_images,
        "batch": args.batch,
        "command": " ".join(["python -m bench.data_loader", *sys.argv[1:]]),
        "image_size": 32,
        "results": results,
        "goal": "shard pipeline >= 3x the ImageFolder baseline per worker",
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

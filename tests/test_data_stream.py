"""`ganforge.data.resolve` + `ganforge.data.loader`: URL resolution and the WebDataset loader.

Real DataLoader worker processes, a real HTTP server and a real `pipe:` command; ranks are
simulated by building one loader per rank (what each Ray Train worker does).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from ganforge.cluster.launch import check_compatible
from ganforge.config import DataConfig, ModelConfig
from ganforge.data.loader import LoaderOptions, build_loader
from ganforge.data.pack import PackOptions, pack
from ganforge.data.resolve import resolve_data


def make_shards(root: Path, n: int, shard_size: int, encoding: str = "raw") -> Path:
    """n unique 8x8 noise images, labels i % 4, packed into shards of shard_size."""
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    np.savez(root / f"src{n}.npz", images=images, labels=np.arange(n) % 4)
    out = root / f"shards{n}-{encoding}"
    opts = PackOptions(shard_size=shard_size, encoding=encoding, progress=False)
    pack(root / f"src{n}.npz", out, opts)
    return out


@pytest.fixture(scope="module")
def even(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("even"), 80, 10)  # 8 shards of 10


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("uneven"), 75, 10, "png")  # 7 x 10 + 5


def cfg(urls, **kw) -> DataConfig:
    base = {"shuffle_buffer": 16, "num_workers": 0, "hflip": False, "resample": False}
    return DataConfig(urls=str(urls), **(base | kw))


def loader(data: DataConfig, rank=0, world=1, seed=0, start=0, batch=5):
    urls, _ = resolve_data(data)
    opts = LoaderOptions(batch, 8, 3, rank=rank, world_size=world, seed=seed, start_batch=start)
    return build_loader(urls, data, opts)


def fingerprints(batches) -> list[str]:
    out = []
    for images, _ in batches:
        pixels = ((images + 1) * 127.5).round().to(torch.uint8)
        out += [hashlib.sha1(p.numpy().tobytes()).hexdigest() for p in pixels]
    return out


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


def test_batches_are_normalised_tensors(even):
    load = loader(cfg(even))
    images, labels = next(iter(load))
    assert images.shape == (5, 3, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2, 3}
    assert images.min() >= -1 and images.max() <= 1 and images.is_contiguous()
    assert load.batches_yielded == 1 and load.wait_seconds > 0


def test_two_ranks_two_workers_disjoint_and_covering(even):
    data = cfg(even, num_workers=2)
    seen = [fingerprints(loader(data, rank=r, world=2)) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 40
    assert not set(seen[0]) & set(seen[1])
    everything = fingerprints(loader(cfg(even, shuffle_buffer=0)))
    assert len(set(everything)) == 80 and set(seen[0]) | set(seen[1]) == set(everything)


@pytest.mark.parametrize("world,workers", [(2, 2), (3, 0), (2, 1)])
def test_ranks_get_equal_batch_counts(uneven, world, workers):
    data = cfg(uneven, num_workers=workers)
    loaders = [loader(data, rank=r, world=world, batch=4) for r in range(world)]
    counts = [len(list(x)) for x in loaders]
    assert len(set(counts)) == 1 and counts[0] == len(loaders[0]) > 0
    assert loaders[0].dropped_samples == 0


@pytest.mark.parametrize("resample,workers", [(True, 0), (True, 2), (False, 0), (False, 2)])
def test_resume_is_exact_including_flips(even, resample, workers):
    data = cfg(even, resample=resample, num_workers=workers, hflip=True)
    n = 14 if resample else None  # one pass: 16 batches of 5
    fresh = list(islice(loader(data, seed=3), n))
    resumed_loader = loader(data, seed=3, start=5)
    resumed = list(islice(resumed_loader, None if n is None else n - 5))
    assert same(fresh[5:], resumed)
    assert resumed_loader.batches_yielded == len(fresh)


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches(even, workers):
    data = cfg(even, num_workers=workers, hflip=True, resample=True)
    a, b = (list(islice(loader(data, seed=1), 6)) for _ in range(2))
    assert same(a, b)
    c = list(islice(loader(data, seed=2), 6))
    assert not same(a, c)
    other_rank = list(islice(loader(data, seed=1, rank=1, world=2), 6))
    assert not same(a, other_rank)


def test_resampled_stream_is_infinite(even):
    batches = list(islice(loader(cfg(even, resample=True, num_workers=2), world=2), 40))
    assert len(batches) == 40  # 200 samples from a rank's view of an 80-sample dataset
    assert len(set(fingerprints(batches))) <= 80


def test_hflip_flips_some_images(even):
    plain = list(loader(cfg(even)))
    flipped = list(loader(cfg(even, hflip=True)))
    n_flipped = n_same = 0
    for (x, _), (y, _) in zip(plain, flipped, strict=True):
        for a, b in zip(x, y, strict=True):
            n_same += torch.equal(a, b)
            n_flipped += torch.equal(a.flip(-1), b)
    assert n_flipped + n_same == 80 and 20 < n_flipped < 60


def test_resolve_forms_and_errors(even, tmp_path):
    urls, manifest = resolve_data(cfg(even))
    assert len(urls) == 8 and manifest["classes"] == ["0", "1", "2", "3"]
    brace, m2 = resolve_data(cfg(f"{even}/train-{{000000..000003}}.tar"))
    assert brace == urls[:4] and m2 == manifest
    joined, _ = resolve_data(cfg(f"file://{even}/train-000000.tar::{even}/train-000007.tar"))
    assert joined == [urls[0], urls[7]]
    with pytest.raises(ValueError, match=r"unknown split 'val' \(this dataset has: train\)"):
        resolve_data(cfg(even).model_copy(update={"split": "val"}))
    with pytest.raises(ValueError, match="no such shard file"):
        resolve_data(cfg(f"{even}/train-{{000000..000009}}.tar"))
    with pytest.raises(ValueError, match="no dataset.json and no .tar"):
        resolve_data(cfg(tmp_path))
    with pytest.raises(ValueError, match="pipe:"):
        resolve_data(cfg("s3://bucket/train-000000.tar"))


def test_pipe_urls_stream(even):
    spec = "::".join(f"pipe:cat {even}/train-00000{i}.tar" for i in range(4))
    urls, manifest = resolve_data(cfg(spec))
    assert manifest is None and len(urls) == 4
    assert len(fingerprints(loader(cfg(spec)))) == 40
    with pytest.raises(ValueError, match="per-shard sample counts"):
        loader(cfg(spec), world=2)


@pytest.fixture
def http_server(even):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(even))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_urls_stream_with_remote_manifest(http_server, even):
    spec = http_server + "/train-{000000..000007}.tar"
    urls, manifest = resolve_data(cfg(spec))
    assert len(urls) == 8 and manifest["splits"]["train"]["num_samples"] == 80
    seen = [fingerprints(loader(cfg(spec, num_workers=2), rank=r, world=2)) for r in range(2)]
    local = fingerprints(loader(cfg(even, shuffle_buffer=0)))
    assert set(seen[0]) | set(seen[1]) == set(local) and not set(seen[0]) & set(seen[1])


def test_corrupt_samples_skip_or_raise(tmp_path):
    import webdataset as wds

    from ganforge.data.codec import npy_bytes

    bad = tmp_path / "bad"
    bad.mkdir()
    with wds.TarWriter(str(bad / "x-000000.tar"), encoder=False) as w:
        for i in range(6):
            good = {"raw.npy": npy_bytes(np.full((8, 8, 3), i, np.uint8))}
            image = {"png": b"\x89PNG garbage"} if i == 2 else good
            w.write({"__key__": f"{i:04d}", "cls": b"1", **image})
    load = loader(cfg(bad, on_error="skip"))
    batches = list(load)
    assert len(batches) == 1 and load.dropped_samples == 1  # 5 good samples: one batch of 5
    with pytest.raises(ValueError, match="0002"):
        list(loader(cfg(bad, on_error="raise")))


def test_check_compatible():
    manifest = {"image_size": 32, "channels": 3, "classes": ["a", "b"]}
    check_compatible(manifest, ModelConfig(resolution=32, channels=3, variant="cdcgan"))
    with pytest.raises(ValueError, match="model.resolution=64"):
        check_compatible(manifest, ModelConfig(resolution=64))
    with pytest.raises(ValueError, match="model.channels=1"):
        check_compatible(manifest, ModelConfig(channels=1))
    with pytest.raises(ValueError, match="num_classes=3 but the data has 2"):
        check_compatible(manifest, ModelConfig(variant="cdcgan", num_classes=3))
    check_compatible(manifest, ModelConfig(variant="dcgan", num_classes=3))  # unconditional


def test_default_urls_use_the_embedded_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path))
    urls, manifest = resolve_data(DataConfig())
    assert len(manifest["classes"]) == 10 and len(urls) == 5
    assert all(Path(u).parent.parent == tmp_path for u in urls)
    images, labels = next(iter(build_loader(urls, DataConfig(), LoaderOptions(16, 32, 3))))
    assert images.shape == (16, 3, 32, 32)
    assert resolve_data(DataConfig())[0] == urls  # cached: not packed again


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_lean_tar_reader_matches_tarfile(tmp_path, fmt):
    from ganforge.data.stages import tar_members

    names = ["a.cls", "dir/b.png", "x" * 120 + "/long.raw.npy", "ü-name.json"]
    if fmt == tarfile.USTAR_FORMAT:
        names[2] = "p" * 120 + "/ok.png"  # ustar: long paths go into the prefix field
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)  # a non-file member is skipped
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = 700 * i, 1.5  # float mtime: a PAX header in PAX format
            tar.addfile(info, io.BytesIO(bytes([i]) * info.size))
    with open(path, "rb") as f:
        got = list(tar_members(f))
    assert [n for n, _ in got] == names
    assert [d for _, d in got] == [bytes([i]) * 700 * i for i in range(len(names))]
    data = path.read_bytes()
    with pytest.raises(ValueError, match="truncated"):
        list(tar_members(io.BytesIO(data[: 512 * 3 + 100])))
    with pytest.raises(ValueError, match="checksum"):
        list(tar_members(io.BytesIO(b"x" * 1024)))


def test_pin_memory_is_a_no_op_without_cuda(even):
    urls, _ = resolve_data(cfg(even))
    load = build_loader(urls, cfg(even), LoaderOptions(5, 8, 3, pin_memory=True))
    images, _ = next(iter(load))
    assert images.is_pinned() == torch.cuda.is_available()


def _labelled_shard(folder: Path, labels: list[bytes | None]) -> Path:
    """One hand-written shard: sample i is 8x8 pixels of value i with `.cls` labels[i] (None:
    no `.cls`), next to a manifest listing 4 classes."""
    import json

    import webdataset as wds

    from ganforge.data.codec import npy_bytes
    from ganforge.data.manifest import FORMAT

    folder.mkdir()
    with wds.TarWriter(str(folder / "train-000000.tar"), encoder=False) as w:
        for i, cls in enumerate(labels):
            sample = {"__key__": f"{i:04d}", "raw.npy": npy_bytes(np.full((8, 8, 3), i, np.uint8))}
            w.write(sample | ({"cls": cls} if cls is not None else {}))
    shard = {"name": "train-000000.tar", "num_samples": len(labels), "sha256": ""}
    manifest = {"format": FORMAT, "image_size": 8, "channels": 3, "classes": list("abcd")}
    manifest["splits"] = {"train": {"num_samples": len(labels), "shards": [shard]}}
    (folder / "dataset.json").write_text(json.dumps(manifest))
    return folder


BAD_LABELS = [b"0", b"1", b"4", b"2", b"-1", b"3", b"99999999999999999999999", b"x", None, b"0"]


@pytest.mark.parametrize("workers", [0, 2])
def test_labels_outside_the_classes_are_dropped_and_counted(tmp_path, workers):
    """A `.cls` outside 0..3 would fail a conditional model's nn.Embedding (on CUDA a
    device-side assert that a retry repeats): the loader drops it like a corrupt sample."""
    data = cfg(_labelled_shard(tmp_path / "bad", BAD_LABELS), num_workers=workers)
    urls, manifest = resolve_data(data)
    opts = LoaderOptions(5, 8, 3, num_classes=len(manifest["classes"]))
    load = build_loader(urls, data, opts)
    batches = list(load)
    assert len(batches) == 1 and load.dropped_samples == 5  # 4, -1, huge, x, missing
    images, labels = batches[0]
    assert sorted(labels.tolist()) == [0, 0, 1, 2, 3]
    assert sorted(((images[:, 0, 0, 0] + 1) * 127.5).round().int().tolist()) == [0, 1, 3, 5, 9]


def test_label_outside_the_classes_raises_with_on_error_raise(tmp_path):
    data = cfg(_labelled_shard(tmp_path / "bad", BAD_LABELS), on_error="raise", shuffle_buffer=0)
    urls, _ = resolve_data(data)
    with pytest.raises(ValueError, match=r"0002: label 4 outside 0\.\.3 \(the dataset has 4"):
        list(build_loader(urls, data, LoaderOptions(5, 8, 3, num_classes=4)))


def test_labels_are_not_range_checked_without_a_class_count(tmp_path):
    data = cfg(_labelled_shard(tmp_path / "ok", [b"0", b"7", b"1", b"3"]))
    urls, _ = resolve_data(data)
    load = build_loader(urls, data, LoaderOptions(4, 8, 3))  # num_classes=None
    assert sorted(next(iter(load))[1].tolist()) == [0, 1, 3, 7] and load.dropped_samples == 0


def test_in_memory_reader_refuses_labels_outside_the_classes(tmp_path):
    """Evaluation's reader (`data.memory`) indexes per-class metrics with the labels."""
    from ganforge.data import DataError
    from ganforge.data.memory import load_real

    real = load_real(_labelled_shard(tmp_path / "ok", [b"0", b"3", None]))
    assert real.labels.tolist() == [0, 3, -1]  # -1: no .cls
    with pytest.raises(DataError, match=r"'0001': label 4 outside 0\.\.3"):
        load_real(_labelled_shard(tmp_path / "bad", [b"0", b"4"]))
    with pytest.raises(DataError, match=r"'0001': label b'x' is not a number"):
        load_real(_labelled_shard(tmp_path / "nan", [b"0", b"x"]))

"""`ganforge data pack | inspect | subset`: real files, real shards, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ganforge.cli import app
from ganforge.data.codec import decode_image
from ganforge.data.inspection import iter_samples
from ganforge.data.manifest import load_manifest
from ganforge.data.pack import PackOptions, pack
from ganforge.data.sources import DataError
from ganforge.storage import sha256_file
from tests.test_data_fixtures import (
    CLASSES,
    add_bad_inputs,
    cifar_pickles,
    image_tree,
    mnist_idx,
    tar_of,
)

runner = CliRunner()
QUIET = {"progress": False}


def packed(out: Path, split: str = "train") -> list[dict]:
    """Every sample of a split, decoded: {'source', 'label', 'pixels', 'ext'}."""
    manifest = load_manifest(out)
    rows = []
    for entry in manifest["splits"][split]["shards"]:
        for s in iter_samples(out / entry["name"]):
            ext = next(e for e in ("png", "jpg", "raw.npy") if e in s)
            row = {
                "source": json.loads(s["json"])["source"],
                "label": int(s["cls"]),
                "pixels": decode_image(ext, s[ext], manifest["channels"]),
                "ext": ext,
                "data": s[ext],
            }
            rows.append(row)
    return rows


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_round_trip_is_exact(tmp_path, encoding):
    truth = image_tree(tmp_path / "src")
    manifest = pack(
        tmp_path / "src", tmp_path / "out", PackOptions(encoding=encoding, shard_size=7, **QUIET)
    )
    assert manifest["classes"] == CLASSES
    assert manifest["image_size"] == 8 and manifest["channels"] == 3
    rows = packed(tmp_path / "out")
    assert len(rows) == len(truth) == manifest["splits"]["train"]["num_samples"]
    assert {r["ext"] for r in rows} == {"png" if encoding == "png" else "raw.npy"}
    for r in rows:
        label, pixels = truth[r["source"]]
        assert r["label"] == label
        np.testing.assert_array_equal(r["pixels"], pixels, err_msg=r["source"])
    shards = manifest["splits"]["train"]["shards"]
    assert [s["num_samples"] for s in shards] == [7, 7, 7, 7, 7, 1]
    assert all(sha256_file(tmp_path / "out" / s["name"]) == s["sha256"] for s in shards)
    labels = [r["label"] for r in rows[:7]]
    assert len(set(labels)) > 1, "samples are shuffled across classes before sharding"


def test_keep_encoding_copies_jpeg_bytes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    (tmp_path / "src" / "a").mkdir(parents=True)
    src = tmp_path / "src" / "a" / "x.jpg"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src, quality=80)
    pack(tmp_path / "src", tmp_path / "out", PackOptions(**QUIET))
    (row,) = packed(tmp_path / "out")
    assert row["ext"] == "jpg" and row["data"] == src.read_bytes()


def test_repack_is_byte_identical_and_workers_preserve_order(tmp_path):
    image_tree(tmp_path / "src", per_class=20)
    add_bad_inputs(tmp_path / "src")
    outs = []
    for i, workers in enumerate((1, 1, 2)):
        out = tmp_path / f"out{i}"
        pack(tmp_path / "src", out, PackOptions(shard_size=16, workers=workers, **QUIET))
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert "train-000000.tar" in files and "dataset.json" in files
    for other in outs[1:]:
        assert sorted(p.name for p in other.iterdir()) == files
        for name in files:
            assert (other / name).read_bytes() == (outs[0] / name).read_bytes(), name
    pack(tmp_path / "src", tmp_path / "seed1", PackOptions(shard_size=16, shuffle_seed=1, **QUIET))
    assert (tmp_path / "seed1/train-000000.tar").read_bytes() != (
        outs[0] / "train-000000.tar"
    ).read_bytes()


def test_bad_inputs_are_skipped_listed_and_converted(tmp_path):
    truth = image_tree(tmp_path / "src")
    add_bad_inputs(tmp_path / "src")
    (tmp_path / "src" / "empty").mkdir()
    manifest = pack(tmp_path / "src", tmp_path / "out", PackOptions(**QUIET))
    reasons = {p["path"]: p["reason"] for p in manifest["skipped"]}
    assert "corrupt" in reasons["cat/corrupt.png"]
    assert "corrupt" in reasons["dog/truncated.jpg"]
    assert "not an image" in reasons["cat/notes.txt"]
    assert "empty class folder" in reasons["empty/"]
    assert manifest["classes"] == CLASSES  # the empty class is reported and dropped
    assert manifest["converted"] == 2  # grey and RGBA -> RGB
    rows = {r["source"]: r for r in packed(tmp_path / "out")}
    assert len(rows) == len(truth) + 2
    grey = rows["bird/grey.png"]["pixels"]
    assert grey.shape == (8, 8, 3) and (grey[..., 0] == grey[..., 1]).all()


def test_strict_stops_and_leaves_nothing(tmp_path):
    image_tree(tmp_path / "src")
    add_bad_inputs(tmp_path / "src")
    with pytest.raises(DataError, match="--strict: .*(corrupt|notes.txt)"):
        pack(tmp_path / "src", tmp_path / "out", PackOptions(strict=True, **QUIET))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no OUT, no OUT.tmp-*


def test_refuses_non_empty_out_and_empty_sources(tmp_path):
    image_tree(tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        pack(tmp_path / "src", tmp_path / "out", PackOptions(**QUIET))
    (tmp_path / "nothing" / "cls").mkdir(parents=True)
    (tmp_path / "nothing" / "cls" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        pack(tmp_path / "nothing", tmp_path / "out2", PackOptions(**QUIET))
    with pytest.raises(DataError, match="no such file"):
        pack(tmp_path / "missing", tmp_path / "out3", PackOptions(**QUIET))


def test_sizes_resize_and_mismatch(tmp_path):
    from PIL import Image

    image_tree(tmp_path / "src")
    Image.new("RGB", (12, 10), "red").save(tmp_path / "src" / "cat" / "big.png")
    m = pack(tmp_path / "src", tmp_path / "keep", PackOptions(shuffle_seed=None, **QUIET))
    assert m["image_size"] == 8
    assert "differs from 8x8" in {p["path"]: p["reason"] for p in m["skipped"]}["cat/big.png"]
    m = pack(tmp_path / "src", tmp_path / "resized", PackOptions(image_size=4, **QUIET))
    rows = packed(tmp_path / "resized")
    assert m["image_size"] == 4 and not m["skipped"]
    assert all(r["pixels"].shape == (4, 4, 3) for r in rows)
    big = next(r for r in rows if r["source"] == "cat/big.png")["pixels"]
    assert (big == [255, 0, 0]).all()


def test_tar_with_splits_and_limit_per_class(tmp_path):
    image_tree(tmp_path / "tree" / "train", per_class=6, seed=1)
    image_tree(tmp_path / "tree" / "test", per_class=3, seed=2)
    archive = tar_of(tmp_path / "tree", tmp_path / "ds.tar.gz", arcname="mydata")
    m = pack(archive, tmp_path / "out", PackOptions(limit_per_class={"train": 4}, **QUIET))
    assert m["splits"]["train"]["num_samples"] == 12 and m["splits"]["test"]["num_samples"] == 9
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"dataset.json", "train-000000.tar", "test-000000.tar"}
    sources = {r["source"] for r in packed(tmp_path / "out", "test")}
    assert "ds.tar.gz:mydata/test/cat/002.png" in sources


def test_cifar_mnist_npz_sources(tmp_path):
    images = cifar_pickles(tmp_path / "cifar", n=10)
    m = pack(tmp_path / "cifar", tmp_path / "c_out", PackOptions(encoding="raw", **QUIET))
    assert m["classes"][0] == "class0" and m["splits"]["train"]["num_samples"] == 20
    got = {r["source"].rsplit("/", 1)[-1]: r["pixels"] for r in packed(tmp_path / "c_out")}
    np.testing.assert_array_equal(got["data_batch_2#3"], images[13])

    mimg, mlbl = mnist_idx(tmp_path / "mnist")
    m = pack(tmp_path / "mnist", tmp_path / "m_out", PackOptions(image_size=32, **QUIET))
    assert m["channels"] == 1 and m["image_size"] == 32 and len(m["classes"]) == mlbl.max() + 1
    assert m["splits"]["test"]["num_samples"] == 5
    rows = packed(tmp_path / "m_out")
    assert rows[0]["pixels"].shape == (32, 32, 1)
    idx = int(rows[0]["source"].rsplit("#", 1)[1])
    assert rows[0]["label"] == mlbl[idx]

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    labels, classes = np.array([0, 1, 0, 1, 0, 1]), np.array(["x", "y"])
    np.savez(tmp_path / "d.npz", images=arr, labels=labels, classes=classes)
    m = pack(tmp_path / "d.npz", tmp_path / "n_out", PackOptions(split="val", **QUIET))
    assert m["classes"] == ["x", "y"] and list(m["splits"]) == ["val"]
    for r in packed(tmp_path / "n_out", "val"):
        i = int(r["source"].rsplit("#", 1)[1])
        np.testing.assert_array_equal(r["pixels"], arr[i])
    np.savez(tmp_path / "bad.npz", images=arr.astype(np.float32), labels=np.zeros(6, int))
    with pytest.raises(DataError, match="uint8"):
        pack(tmp_path / "bad.npz", tmp_path / "b_out", PackOptions(**QUIET))


def test_cli_pack_inspect_detects_tampering(tmp_path):
    image_tree(tmp_path / "src")
    add_bad_inputs(tmp_path / "src")
    src, out = str(tmp_path / "src"), tmp_path / "out"
    pack_args = ["data", "pack", src, str(out), "--shard-size", "10", "--encoding", "raw", "-q"]
    r = runner.invoke(app, pack_args)
    assert r.exit_code == 0, r.output
    assert "skipped: cat/corrupt.png" in r.output and "train: 38 samples" in r.output
    r = runner.invoke(app, ["data", "inspect", str(out), "--grid", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    assert "verified: 4 shard checksum(s) match" in r.output
    from PIL import Image

    grid = Image.open(tmp_path / "g.png")
    assert grid.size == (8 * 10 + 2, 3 * 10 + 2)  # 8 per class x 3 classes, 8px + 2px pad

    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = runner.invoke(app, ["data", "inspect", str(out)])
    assert r.exit_code == 1 and "train-000001.tar sha256 mismatch" in r.output
    r = runner.invoke(app, ["data", "inspect", str(out), "--no-verify"])
    assert r.exit_code == 0
    r = runner.invoke(app, ["data", "pack", src, str(out)])
    assert r.exit_code == 2 and "not empty" in r.output
    r = runner.invoke(app, ["data", "pack", src, str(tmp_path / "o2"), "--encoding", "webp"])
    assert r.exit_code == 2 and "--encoding" in r.output


def test_cli_subset_archive_is_reproducible_and_packs(tmp_path):
    image_tree(tmp_path / "tree" / "train", per_class=6)
    image_tree(tmp_path / "tree" / "test", per_class=4, seed=5)
    add_bad_inputs(tmp_path / "tree" / "train")
    src = str(tmp_path / "tree")
    for name in ("a/demo.tar.gz", "b/demo.tar.gz"):  # the file name is the archive's top folder
        dest = str(tmp_path / name)
        r = runner.invoke(app, ["data", "subset", src, dest, "--per-class", "train=3,test=2"])
        assert r.exit_code == 0, r.output
    archive = tmp_path / "a/demo.tar.gz"
    assert archive.read_bytes() == (tmp_path / "b/demo.tar.gz").read_bytes()
    m = pack(archive, tmp_path / "out", PackOptions(**QUIET))
    assert m["splits"]["train"]["num_samples"] == 9 and m["splits"]["test"]["num_samples"] == 6
    assert not [p for p in m["skipped"] if "corrupt" in p["reason"]]  # never copied


def test_demo_archive_ships_and_packs(tmp_path):
    from ganforge.data import demo_archive, ensure_demo_shards

    assert demo_archive().stat().st_size < 5_000_000
    out = ensure_demo_shards(tmp_path / "demo")
    m = load_manifest(out)
    assert m["encoding"] == "raw" and len(m["classes"]) == 10
    assert m["splits"]["train"]["num_samples"] == 5000 and m["splits"]["test"]["num_samples"] > 0
    before = (out / "dataset.json").stat().st_mtime_ns
    assert ensure_demo_shards(out) == out and (out / "dataset.json").stat().st_mtime_ns == before

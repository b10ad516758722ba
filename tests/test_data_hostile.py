"""`ganforge data pack` against hostile input: each test feeds the bad input itself.

A planted pickle that would run code, links out of the tree, lying headers, decompression bombs
and oversized images must end in a skipped-input entry or `error: FILE: reason` (exit 2): never
code execution, a traceback, a hang or unbounded memory.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ganforge.cli import app
from ganforge.data import DataError
from ganforge.data import sources as S
from ganforge.data.pack import PackOptions, pack
from tests.test_data_fixtures import _idx, cifar_pickles, image_tree, mnist_idx, tar_of

runner = CliRunner()
QUIET = PackOptions(progress=False)


class _Touch:
    """Unpickling this creates a file: the proof that a pickle ran code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def planted_pickle(marker: Path) -> bytes:
    return pickle.dumps({b"label_names": [b"a", b"b"], b"x": _Touch(marker)})


def pack_cli(*args) -> tuple[int, str]:
    res = runner.invoke(app, ["data", "pack", *[str(a) for a in args], "-q"])
    return res.exit_code, res.output


def test_planted_batches_meta_in_an_image_folder_is_a_stray_file(tmp_path):
    """`dog/batches.meta` inside an image-folder tarball is not CIFAR: never unpickled."""
    image_tree(tmp_path / "src", per_class=2)
    marker = tmp_path / "pwned"
    (tmp_path / "src" / "dog" / "batches.meta").write_bytes(planted_pickle(marker))
    tarball = tar_of(tmp_path / "src", tmp_path / "images.tar.gz")
    manifest = pack(tarball, tmp_path / "out", QUIET)
    assert not marker.exists()
    assert manifest["source_kind"] == "image-folder" and manifest["splits"]["train"]
    assert any(s["path"].endswith("dog/batches.meta") for s in manifest["skipped"])


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    src = tmp_path / "cifar"
    cifar_pickles(src, n=4)
    marker = tmp_path / "pwned"
    (src / "batches.meta").write_bytes(planted_pickle(marker))
    code, out = pack_cli(src, tmp_path / "out")
    assert code == 2 and out.startswith("error:") and "Traceback" not in out
    assert "batches.meta" in out and "refused" in out and "touch" in out
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_real_cifar_layout_still_packs(tmp_path, protocol):
    """The restricted unpickler admits CIFAR's own content (protocol 2 is how the original
    batches were written), inside the archive's one top-level folder as CIFAR ships it."""
    src = tmp_path / "cifar-10-batches-py"
    images = cifar_pickles(src, n=6)
    for f in src.iterdir():
        f.write_bytes(pickle.dumps(pickle.loads(f.read_bytes()), protocol=protocol))
    manifest = pack(
        tar_of(src, tmp_path / "c.tar.gz", "cifar-10-batches-py"), tmp_path / "o", QUIET
    )
    assert manifest["source_kind"] == "cifar10-pickle"
    assert sum(s["num_samples"] for s in manifest["splits"].values()) == len(images)


@pytest.mark.parametrize(
    "batch, reason",
    [
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, "3 images but 2 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, "label 12 outside 0..9"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "expected (N, 3072)"),
        ({b"labels": [0]}, "lacks 'data'"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["x"]}, "malformed CIFAR batch"),
    ],
)
def test_malformed_cifar_batch_is_an_error_line(tmp_path, batch, reason):
    src = tmp_path / "cifar"
    cifar_pickles(src, n=2)
    (src / "data_batch_1").write_bytes(pickle.dumps(batch))
    code, out = pack_cli(src, tmp_path / "out")
    assert code == 2 and out.startswith("error:") and reason in out, out
    assert "data_batch_1" in out and "Traceback" not in out


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda b: b[:4] + (10**6).to_bytes(4, "big") + b[8:], "needs"),  # lying count
        (lambda b: b[:3] + bytes([9]) + b[4:], "9 dimensions"),
        (lambda b: b[:6], "IDX header cut short"),
    ],
)
def test_lying_idx_header_is_an_error_line(tmp_path, mangle, reason):
    src = tmp_path / "mnist"
    mnist_idx(src, n=4)
    f = src / "t10k-images-idx3-ubyte"
    f.write_bytes(mangle(f.read_bytes()))
    code, out = pack_cli(src, tmp_path / "out")
    assert code == 2 and out.startswith("error:") and "t10k-images" in out, out
    assert reason in out and "Traceback" not in out


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path, monkeypatch):
    """The cap is lowered to 1 MiB so that the bomb stays small in the test; the real cap is
    MAX_DECOMPRESSED_BYTES."""
    monkeypatch.setattr(S, "MAX_DECOMPRESSED_BYTES", 1 << 20)
    src = tmp_path / "mnist"
    mnist_idx(src, n=4)
    header = _idx(np.zeros((1, 1, 1), np.uint8), 8)[:16]
    (src / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(4 << 20)))
    code, out = pack_cli(src, tmp_path / "out")
    assert code == 2 and "decompresses to more than 1.0 MiB; refused" in out, out


def test_links_and_special_files_are_skipped_and_listed(tmp_path):
    image_tree(tmp_path / "src", per_class=2)
    os.symlink("/dev/zero", tmp_path / "src" / "cat" / "forever.png")  # would read forever
    os.symlink("/etc", tmp_path / "src" / "dog" / "outside")  # a folder out of the tree
    manifest = pack(tmp_path / "src", tmp_path / "out", QUIET)
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["cat/forever.png"] == "symbolic link (not followed)"
    assert reasons["dog/outside"] == "symbolic link (not followed)"
    assert manifest["splits"]["train"]["num_samples"] == 6

    tarball = tmp_path / "links.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(tmp_path / "src" / "bird", arcname="bird")
        for name, kind in (("bird/sym.png", tarfile.SYMTYPE), ("bird/hard.png", tarfile.LNKTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "bird/000.png"
            tar.addfile(info)
    manifest = pack(tarball, tmp_path / "out2", QUIET)
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert skipped["links.tar:bird/sym.png"] == skipped["links.tar:bird/hard.png"]
    assert "link inside the archive" in skipped["links.tar:bird/sym.png"]


def test_oversized_archive_member_is_skipped_from_its_header(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "MAX_MEMBER_BYTES", 1000)
    image_tree(tmp_path / "src", per_class=2)
    big = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "src" / "cat" / "big.png")
    manifest = pack(tar_of(tmp_path / "src", tmp_path / "a.tar.gz"), tmp_path / "out", QUIET)
    reason = {s["path"]: s["reason"] for s in manifest["skipped"]}["a.tar.gz:data/cat/big.png"]
    assert "cap on one input file" in reason


def test_decompression_bomb_image_is_refused_at_its_header(tmp_path):
    """64 Mpx of one-bit pixels is a few kB as a PNG and 192 MB once decoded to RGB."""
    image_tree(tmp_path / "src", per_class=2, size=8)
    Image.new("1", (8000, 8000)).save(tmp_path / "src" / "cat" / "bomb.png")
    manifest = pack(tmp_path / "src", tmp_path / "out", PackOptions(image_size=8, progress=False))
    reason = {s["path"]: s["reason"] for s in manifest["skipped"]}["cat/bomb.png"]
    assert "8000x8000 pixels, above the 40 Mpx cap" in reason


def test_only_the_named_image_formats_are_decoded(tmp_path):
    """An EPS file named .png would make Pillow start Ghostscript; it is not even tried."""
    image_tree(tmp_path / "src", per_class=2)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    (tmp_path / "src" / "cat" / "x.png").write_bytes(eps)
    manifest = pack(tmp_path / "src", tmp_path / "out", QUIET)
    reason = {s["path"]: s["reason"] for s in manifest["skipped"]}["cat/x.png"]
    assert reason.startswith("corrupt or not an image (readable formats: JPEG, PNG")


def test_npz_reads_only_its_three_arrays_and_caps_them(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=np.array([0, 1, 0, 1]), junk=np.zeros(10_000))
    (tmp_path / "d.npz").write_bytes(buf.getvalue())
    assert pack(tmp_path / "d.npz", tmp_path / "o1", QUIET)["splits"]["train"]["num_samples"] == 4
    monkeypatch.setattr(S, "MAX_ARRAY_BYTES", 100)
    with pytest.raises(DataError, match="array 'images' is 896 bytes, above the 100 bytes cap"):
        S.read_source(tmp_path / "d.npz")

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
import signal
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ganforge.cli import app
from ganforge.data import DataError
from ganforge.data import arrays as A
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
    monkeypatch.setattr(A, "MAX_DECOMPRESSED_BYTES", 1 << 20)
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
    monkeypatch.setattr(A, "MAX_ARRAY_BYTES", 100)
    with pytest.raises(DataError, match="array 'images' is 896 bytes, above the 100 bytes cap"):
        S.read_source(tmp_path / "d.npz")


# --- labels: every source's labels index its classes; lengths must agree -----------------------


def _npz(path: Path, labels, classes=None, n: int | None = None) -> Path:
    n = len(labels) if n is None else n
    arrays = {"images": np.zeros((n, 4, 4, 3), np.uint8), "labels": np.asarray(labels)}
    if classes is not None:
        arrays["classes"] = np.asarray(classes)
    np.savez(path, **arrays)
    return path


def test_labels_and_images_of_different_lengths_are_errors(tmp_path):
    src = tmp_path / "mnist"
    images, labels = mnist_idx(src, n=6)
    (src / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels[:5], 8)))
    code, out = pack_cli(src, tmp_path / "o1")
    assert code == 2 and "(6, 28, 28) images do not match (5,) labels" in out, out
    code, out = pack_cli(_npz(tmp_path / "d.npz", [0, 1, 0], n=4), tmp_path / "o2")
    assert code == 2 and "labels must be (4,) integers; got (3,)" in out, out
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize(
    "labels, classes, reason",
    [
        ([0, 2], ["a", "b"], "label 2 but only 2 class names"),
        ([0, -1], None, "negative label -1"),
        ([0, 2**40], None, f"label {2**40} without a `classes` array"),  # no 2**40 names
    ],
)
def test_npz_label_outside_the_classes_is_an_error(tmp_path, labels, classes, reason):
    with pytest.raises(DataError, match=reason.replace("(", r"\(")):
        S.read_source(_npz(tmp_path / "d.npz", labels, classes))


def test_any_reader_s_label_past_the_classes_is_caught_once_more(tmp_path, monkeypatch):
    """read_source checks every reader's result: a reader that lets a label through (here the
    MNIST one, made to drop its last class) still ends in DataError, never in a shard."""
    real = S.read_mnist

    def fewer_classes(files, display):
        ds = real(files, display)
        ds.classes = ds.classes[:-1]
        return ds

    monkeypatch.setattr(S, "read_mnist", fewer_classes)
    mnist_idx(tmp_path / "mnist", n=20)
    with pytest.raises(DataError, match=r"label 9 outside 0\.\.8 \(9 classes\)"):
        S.read_source(tmp_path / "mnist")


# --- class names become paths: refused when read, and never joined outside OUT ------------------


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("../evil", "contains '/'"),
        ("..", "a relative folder reference"),
        (".", "a relative folder reference"),
        ("", "empty"),
        ("a\\b", r"contains '\\\\'"),
        ("a\0b", r"contains '\\x00'"),
        ("x" * 300, "longer than 255 bytes"),
        ("ok", "appears twice"),
    ],
)
def test_unusable_npz_class_names_are_refused(tmp_path, bad, reason):
    path = _npz(tmp_path / "d.npz", [0, 1, 1], ["ok", bad])
    with pytest.raises(DataError, match=reason) as e:
        S.read_source(path)
    assert "class name" in str(e.value) and "d.npz" in str(e.value)


def test_unusable_cifar_label_names_are_refused(tmp_path):
    src = tmp_path / "cifar"
    cifar_pickles(src, n=2)
    names = [b"../../evil"] + [f"class{i}".encode() for i in range(1, 10)]
    (src / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    code, out = pack_cli(src, tmp_path / "out")
    assert code == 2 and "batches.meta: class name '../../evil' is unusable" in out, out


def _outside(tmp_path: Path, out: Path) -> set[Path]:
    """Every path below tmp_path that is not OUT or below it."""
    return {p for p in tmp_path.rglob("*") if p != out and out not in p.parents}


@pytest.mark.parametrize("out_name", ["small", "small.tar.gz"])
def test_subset_with_a_class_named_dot_dot_writes_nothing(tmp_path, out_name):
    src = _npz(tmp_path / "d.npz", [0, 1, 1], ["ok", "../evil"])
    before = _outside(tmp_path, tmp_path / out_name)
    res = runner.invoke(
        app, ["data", "subset", str(src), str(tmp_path / out_name), "--per-class", "2"]
    )
    assert res.exit_code == 2 and "class name '../evil' is unusable" in res.output, res.output
    assert _outside(tmp_path, tmp_path / out_name) == before
    assert not (tmp_path / out_name).exists()


@pytest.mark.parametrize("out_name", ["small", "small.tar"])
def test_subset_refuses_an_escaping_name_even_when_a_reader_let_it_through(
    tmp_path, monkeypatch, out_name
):
    """Belt and braces: with the readers' check switched off, the writer refuses on its own."""
    for module in (S, A):  # read_source's check and the array readers' own
        monkeypatch.setattr(module, "check_class_names", lambda names, where: names)
    src = _npz(tmp_path / "d.npz", [0, 1, 1], ["ok", "../../evil"])
    before = _outside(tmp_path, tmp_path / out_name)
    res = runner.invoke(
        app, ["data", "subset", str(src), str(tmp_path / out_name), "--per-class", "2"]
    )
    assert res.exit_code == 2 and "refusing to write a path through '../../evil'" in res.output, (
        res.output
    )
    assert _outside(tmp_path, tmp_path / out_name) == before


def test_written_paths_are_resolved_below_their_root(tmp_path):
    from ganforge.data.names import inside

    (tmp_path / "root").mkdir()
    os.symlink(tmp_path, tmp_path / "root" / "up")  # a link planted inside the output
    assert inside(tmp_path / "root", "a/b.png") == (tmp_path / "root" / "a" / "b.png").resolve()
    for rel in ("up/x.png", "../x.png", "/etc/passwd", "."):
        with pytest.raises(DataError, match="resolves outside"):
            inside(tmp_path / "root", rel)


def test_archive_paths_that_leave_the_archive_are_skipped(tmp_path):
    image_tree(tmp_path / "src", per_class=2)
    tarball = tmp_path / "escape.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(tmp_path / "src", arcname="data")
        for name in ("../evil/x.png", "/abs/x.png", "data/../../up.png"):
            info = tarfile.TarInfo(name)
            data = (tmp_path / "src" / "cat" / "000.png").read_bytes()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    manifest = pack(tarball, tmp_path / "out", QUIET)
    assert manifest["classes"] == ["bird", "cat", "dog"]
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    for name in ("../evil/x.png", "/abs/x.png", "data/../../up.png"):
        assert skipped[f"escape.tar:{name}"] == "path leaves the archive (skipped)"


def test_split_name_that_would_leave_out_is_refused(tmp_path):
    image_tree(tmp_path / "src", per_class=2)
    code, out = pack_cli(tmp_path / "src", tmp_path / "out", "--split", "../evil")
    assert code == 2 and "--split '../evil': not usable as a file name" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# --- a dead encode worker ends the pack instead of hanging it -----------------------------------


def _encode_or_die(item, **kw):
    """Replaces pack._encode in the forked workers: the worker that meets 'cat/003.png' is
    killed the way the OOM killer kills (SIGKILL: no cleanup, no exception)."""
    from ganforge.data import pack as P

    if item.source == "cat/003.png":
        os.kill(os.getpid(), signal.SIGKILL)
    return P.encode_image(item.load(), kw["size"], kw["channels"], kw["encoding"], kw["resize"])


@pytest.mark.timeout(120)
def test_a_killed_encode_worker_fails_the_pack_promptly(tmp_path, monkeypatch):
    from ganforge.data import pack as P

    image_tree(tmp_path / "src", per_class=8)
    monkeypatch.setattr(P, "_encode", _encode_or_die)
    t0 = time.monotonic()
    code, out = pack_cli(tmp_path / "src", tmp_path / "out", "--workers", "2")
    assert code == 2 and out.startswith("error: an encode worker process died"), out
    assert "Traceback" not in out and time.monotonic() - t0 < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no OUT, no OUT.tmp-*
    monkeypatch.undo()  # the same input packs with workers once none is killed
    manifest = pack(tmp_path / "src", tmp_path / "out", PackOptions(workers=2, progress=False))
    assert manifest["splits"]["train"]["num_samples"] == 24

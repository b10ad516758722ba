"""`ganforge data pack` / `data subset` on generated input (hypothesis).

Random trees of files (valid PNG/JPEG of odd sizes and modes, truncated images, garbage, empty
files; unicode, dotted and split-like names; nested folders; links, a FIFO), packed as a folder,
a .tar or a .tar.gz (with link, `../` and absolute members added), with random options. Whatever
the input, the result is a manifest that describes its shards or a DataError: never another
exception, never a hang (each example runs under an alarm), never a file outside OUT, never a
half-written OUT. Examples are derandomized (the same ones every run) and bounded in number.
"""

from __future__ import annotations

import io
import os
import signal
import tarfile
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ganforge.data import DataError
from ganforge.data.codec import ENCODINGS
from ganforge.data.inspection import iter_samples
from ganforge.data.manifest import load_manifest
from ganforge.data.names import name_problem
from ganforge.data.pack import PackOptions, pack
from ganforge.data.subset import subset

EXAMPLE_SECONDS = 20  # one example; the largest takes well under a second
FUZZ = settings(
    max_examples=60,
    deadline=None,  # timing on a shared 2-core machine varies; the alarm bounds a hang instead
    derandomize=True,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: int):
    def alarm(signum, frame):
        raise Hang(f"no result within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- strategies --------------------------------------------------------------------------------

_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0")
NAMES = st.one_of(
    st.text(_CHARS, min_size=1, max_size=10).filter(lambda s: s not in (".", "..")),
    st.sampled_from(
        [
            "train",
            "test",
            "val",
            "cat",
            "dog",
            ".hidden",
            "__MACOSX",
            "a.b",
            "...",
            " ",
            "ü",
            "batches.meta",
            "data_batch_1",
            "train-images-idx3-ubyte",
            "x\\y",
            "#1",
            "a:b",
        ]
    ),
)
SUFFIXES = st.sampled_from([".png", ".png", ".jpg", ".JPEG", ".gif", ".bmp", ".txt", "", ".a.png"])


@st.composite
def images(draw) -> bytes:
    w = draw(st.sampled_from([4, 4, 4, 8])) if draw(st.booleans()) else draw(st.integers(1, 12))
    h = w if draw(st.integers(0, 3)) else draw(st.integers(1, 12))  # mostly square: packable
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1", "LA"]))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]))
    if fmt == "JPEG" and mode not in ("L", "RGB"):
        mode = "RGB"
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except OSError:  # a mode the format cannot store (I;16 as BMP, ...)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    data = buf.getvalue()
    if draw(st.integers(0, 9)) == 0:  # now and then truncated
        data = data[: draw(st.integers(0, len(data)))]
    return data


CONTENTS = st.one_of(images(), images(), images(), st.binary(max_size=64), st.just(b""))
FOLDERS = st.one_of(  # mostly <class>/ or <split>/<class>/, so that many examples pack
    st.lists(st.sampled_from(["cat", "dog", "ü ü"]), min_size=1, max_size=1),
    st.tuples(st.sampled_from(["train", "test"]), st.sampled_from(["cat", "dog"])).map(list),
    st.lists(NAMES, min_size=0, max_size=3),
)
FILES = st.lists(st.tuples(FOLDERS, NAMES, SUFFIXES, CONTENTS), max_size=14)
LINKS = st.lists(
    st.tuples(
        st.lists(NAMES, min_size=0, max_size=2),
        st.sampled_from(["outside", "outside-dir", "/dev/zero", "dangling", "sibling", "fifo"]),
    ),
    max_size=3,
)
OPTIONS = st.builds(
    PackOptions,
    shard_size=st.integers(1, 4),
    image_size=st.one_of(st.none(), st.integers(1, 9)),
    channels=st.sampled_from([None, 1, 3]),
    split=st.sampled_from(["train", "val"]),
    workers=st.sampled_from([1, 1, 1, 2]),
    strict=st.sampled_from([False, False, False, True]),
    encoding=st.sampled_from(ENCODINGS),
    limit_per_class=st.one_of(st.none(), st.integers(1, 3)),
    shuffle_seed=st.one_of(st.none(), st.integers(0, 3)),
    progress=st.just(False),
)
FORMS = st.sampled_from(["folder", "tar", "tar.gz"])
TAR_EXTRAS = st.lists(
    st.sampled_from(["symlink", "hardlink", "dotdot", "absolute", "fifo", "dir", "dup"]),
    max_size=3,
)


# --- building the input ------------------------------------------------------------------------


def write_tree(root: Path, files, links, outside: Path) -> None:
    root.mkdir()
    for folders, stem, suffix, data in files:
        path = root.joinpath(*folders, stem + suffix)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError:  # a name already taken by a file or a folder: leave it out
            pass
    for i, (folders, kind) in enumerate(links):
        path = root.joinpath(*folders, f"link{i}.png")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "fifo":
                os.mkfifo(path)  # reading it would block forever
                continue
            target = {
                "outside": outside / "secret.png",
                "outside-dir": outside,
                "/dev/zero": Path("/dev/zero"),
                "dangling": root / "nothing-here.png",
                "sibling": next(root.rglob("*.png"), root / "x.png"),
            }[kind]
            os.symlink(target, path)
        except OSError:
            pass


def tar_tree(root: Path, out: Path, extras, outside: Path) -> Path:
    mode = "w:gz" if out.name.endswith(".gz") else "w"
    with tarfile.open(out, mode, format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname="data")  # links and the FIFO go in as link / FIFO members
        secret = (outside / "secret.png").read_bytes()
        for i, kind in enumerate(extras):
            info = tarfile.TarInfo(f"data/cat/extra{i}.png")
            data = b""
            if kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = "../../outside/secret.png"
            elif kind == "dotdot":
                info.name, data = "data/../../escaped.png", secret
            elif kind == "absolute":
                info.name, data = str(outside / "absolute.png"), secret
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "dir":
                info.name, info.type = "data/new-class", tarfile.DIRTYPE
            else:  # the same member name twice
                info.name, data = "data/cat/dup.png", secret
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path below folder (links not followed) -> file bytes (None for the rest)."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            regular = p.is_file() and not p.is_symlink()
            seen[str(p.relative_to(folder))] = p.read_bytes() if regular else None
    return seen


def changed_outside(before: dict, after: dict, out: str) -> list[str]:
    """Paths created, removed or changed that are not OUT or below it."""
    keys = set(before) | set(after)
    diff = [k for k in keys if before.get(k, 0) != after.get(k, 0)]
    return sorted(k for k in diff if k != out and not k.startswith(out + "/"))


def check_manifest(out: Path, manifest: dict) -> None:
    assert load_manifest(out) == manifest
    classes = manifest["classes"]
    assert all(name_problem(c) is None for c in classes) and len(set(classes)) == len(classes)
    for info in manifest["splits"].values():
        n = 0
        for entry in info["shards"]:
            for sample in iter_samples(out / entry["name"]):
                assert 0 <= int(sample["cls"]) < len(classes)
                n += 1
            assert entry["num_samples"] > 0
        assert n == info["num_samples"]


# --- properties --------------------------------------------------------------------------------


@FUZZ
@given(
    files=FILES,
    links=LINKS,
    form=FORMS,
    extras=TAR_EXTRAS,
    opts=OPTIONS,
    per_class=st.integers(1, 3),
    archive_out=st.booleans(),
)
def test_pack_and_subset_never_crash_hang_or_write_outside_out(
    files, links, form, extras, opts, per_class, archive_out
):
    with tempfile.TemporaryDirectory(prefix="ganforge-fuzz-") as tmp:
        work = Path(tmp)
        outside = work / "outside"
        outside.mkdir()
        (outside / "secret.png").write_bytes(Image.new("RGB", (4, 4)).tobytes())
        write_tree(work / "src", files, links, outside)
        src = work / "src"
        if form != "folder":
            src = tar_tree(work / "src", work / f"src.{form}", extras, outside)

        before = snapshot(work)
        with time_limit(EXAMPLE_SECONDS):
            try:
                manifest = pack(src, work / "out", opts)
            except DataError:
                manifest = None
        assert changed_outside(before, snapshot(work), "out") == []
        if manifest is None:
            assert not (work / "out").exists()
        else:
            check_manifest(work / "out", manifest)

        name = "sub.tar.gz" if archive_out else "sub"
        before = snapshot(work)
        with time_limit(EXAMPLE_SECONDS):
            try:
                subset(src, work / name, per_class)
            except DataError:
                assert not (work / name).exists()
        assert changed_outside(before, snapshot(work), name) == []


CLASS_NAMES = st.one_of(
    NAMES,
    st.sampled_from(["", ".", "..", "../evil", "a/b", "/abs", "a\0b", "x" * 300, "ok"]),
)


@FUZZ
@given(
    labels=st.lists(st.integers(-3, 2**40), min_size=0, max_size=6),
    classes=st.one_of(st.none(), st.lists(CLASS_NAMES, max_size=5)),
    extra=st.integers(-1, 1),
    archive_out=st.booleans(),
)
def test_npz_labels_and_class_names_end_in_shards_or_a_data_error(
    labels, classes, extra, archive_out
):
    """Labels out of range, lengths that disagree, class names that are paths: a manifest whose
    labels all index its usable classes, or DataError; `data subset` writes only below OUT."""
    with tempfile.TemporaryDirectory(prefix="ganforge-fuzz-") as tmp:
        work = Path(tmp)
        n = max(0, len(labels) + extra)
        arrays = {"images": np.zeros((n, 2, 2), np.uint8), "labels": np.array(labels, np.int64)}
        if classes is not None:
            arrays["classes"] = np.array(classes, dtype=str)
        np.savez(work / "d.npz", **arrays)
        before = snapshot(work)
        with time_limit(EXAMPLE_SECONDS):
            try:
                manifest = pack(work / "d.npz", work / "out", PackOptions(progress=False))
            except DataError:
                manifest = None
        assert changed_outside(before, snapshot(work), "out") == []
        if manifest is not None:
            check_manifest(work / "out", manifest)
        name = "sub.tar" if archive_out else "sub"
        before = snapshot(work)
        with time_limit(EXAMPLE_SECONDS), suppress(DataError):
            subset(work / "d.npz", work / name, 2)
        assert changed_outside(before, snapshot(work), name) == []


@pytest.mark.parametrize("name", ["../evil", "..", "a/../../b"])
def test_fuzz_helpers_see_an_escape(name):
    """The property's own check would notice a write outside OUT."""
    before = {"src/x.png": b"x"}
    assert changed_outside(before, before | {name: b"y"}, "out") == [name]
    assert changed_outside(before, before | {"out/a.png": b"y"}, "out") == []

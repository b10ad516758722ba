"""Run directories in an object store (`s3://`, `gs://`, `abfs://`, `hdfs://`), via pyarrow.fs.

ganforge code reads and writes a run dir as a local folder. A run dir given as a URI is backed by a
local *mirror* (`$GANFORGE_CACHE/runs/<scheme>/<bucket>/<path>`, default `~/.cache/ganforge`) that
`RemoteRun` keeps in step with the store:

- checkpoints go to the store directly: the URI is Ray Train's `storage_path`;
- the driver pulls `config.yaml` and the checkpoint markers (`ganforge.json`) to validate and plan,
  and pushes `config.yaml`;
- rank 0 writes metrics, samples and TensorBoard events into the mirror and pushes what changed
  after every checkpoint, so the store never holds metrics from beyond its newest checkpoint;
- resuming ranks download the chosen checkpoint; serving and evaluation download `weights.pt` and
  the markers only (`localize`).

Credentials and endpoints come from the usual environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL for
MinIO/S3-compatible stores, GOOGLE_APPLICATION_CREDENTIALS, ...), as pyarrow reads them. pyarrow
rather than fsspec because Ray Train already resolves `storage_path` with it: one client, one set
of credentials for ganforge and Ray.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

# A checkpoint's marker and weights files. Defined here, the lower layer, and imported by
# ganforge.checkpoint: storage mirrors exactly these without importing the checkpoint code.
MARKER = "ganforge.json"
WEIGHTS = "weights.pt"
log = logging.getLogger("ganforge.storage")


class StorageError(OSError):
    """An object-store run dir cannot be reached or read."""


def is_uri(path: str | os.PathLike | None) -> bool:
    """True for `scheme://...` other than `file://` (local paths stay plain paths)."""
    if path is None or isinstance(path, Path):
        return False
    scheme = urlsplit(str(path)).scheme
    return "://" in str(path) and len(scheme) > 1 and scheme != "file"


def cache_root() -> Path:
    return Path(os.environ.get("GANFORGE_CACHE", "~/.cache/ganforge")).expanduser()


def mirror_path(uri: str) -> Path:
    """The local folder that mirrors `uri` (query string dropped, same on every node)."""
    parts = urlsplit(uri)
    return cache_root() / "runs" / parts.scheme / parts.netloc / parts.path.strip("/")


class RemoteRun:
    """A run dir in an object store and its local mirror."""

    def __init__(self, uri: str):
        import pyarrow.fs

        self.uri = uri.rstrip("/")
        try:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.uri)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for unknown schemes
            raise StorageError(f"{uri}: not a storage URI pyarrow can open ({e})") from None
        self.root = self.root.rstrip("/")
        self.local = mirror_path(self.uri)
        self._pushed: dict[str, tuple[int, int]] = {}

    # -- reading ---------------------------------------------------------------------------
    def _remote(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _info(self, rel: str):
        try:
            return self.fs.get_file_info(self._remote(rel))
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot reach the store ({e})") from None

    def exists(self, rel: str) -> bool:
        import pyarrow.fs

        return self._info(rel).type != pyarrow.fs.FileType.NotFound

    def list_dir(self, rel: str) -> list[str]:
        """Names of the directories directly below `rel` (empty when it does not exist)."""
        import pyarrow.fs

        sel = pyarrow.fs.FileSelector(self._remote(rel), allow_not_found=True)
        try:
            infos = self.fs.get_file_info(sel)
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot list {rel or '/'} ({e})") from None
        return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)

    def pull_file(self, rel: str, dest: Path | None = None) -> bool:
        """Download one file (to the mirror by default); False when the store has none."""
        if not self.exists(rel):
            return False
        dest = dest or self.local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with self.fs.open_input_stream(self._remote(rel)) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dest)
        return True

    def pull_tree(self, rel: str, dest: Path) -> Path:
        """Download everything below `rel` into `dest` (replacing it)."""
        import pyarrow.fs

        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        pyarrow.fs.copy_files(
            self._remote(rel),
            str(dest),
            source_filesystem=self.fs,
            destination_filesystem=pyarrow.fs.LocalFileSystem(),
        )
        return dest

    def pull_markers(self) -> Path:
        """Mirror `config.yaml` and every checkpoint's marker; drop mirrored checkpoints the store
        no longer has (Ray Train keeps only the last K). Returns the mirror's checkpoints dir."""
        self.pull_file("config.yaml")
        names = self.list_dir("checkpoints")
        ckpts = self.local / "checkpoints"
        if ckpts.is_dir():
            for stale in ckpts.iterdir():
                if stale.is_dir() and stale.name not in names:
                    shutil.rmtree(stale, ignore_errors=True)
        for name in names:
            if not (ckpts / name / MARKER).is_file():
                self.pull_file(f"checkpoints/{name}/{MARKER}")
        return ckpts

    def pull_metrics(self) -> None:
        """metrics.jsonl as the store has it (ending at its newest checkpoint); none there means
        none in the mirror, so a stale local copy never outlives the store's."""
        if not self.pull_file("metrics.jsonl"):
            (self.local / "metrics.jsonl").unlink(missing_ok=True)

    def pull_weights(self, ckpt: str) -> Path:
        """`weights.pt` + marker of checkpoint `ckpt` (a name under checkpoints/, or '' when the
        URI is a checkpoint itself) into the mirror: what serving and evaluation need."""
        rel = f"checkpoints/{ckpt}" if ckpt else ""
        for name in (MARKER, WEIGHTS):
            dest = self.local / rel / name
            remote = f"{rel}/{name}".lstrip("/")
            cached = name == WEIGHTS and dest.is_file()
            if cached and self._info(remote).size == dest.stat().st_size:
                continue  # checkpoints are immutable once their marker exists
            if not self.pull_file(remote, dest):
                raise StorageError(f"{self.uri}/{rel}: has no {name}")
        return self.local / rel

    # -- writing ---------------------------------------------------------------------------
    def push(self, *rels: str) -> int:
        """Upload the mirror's files below `rels` that changed since the last push; returns the
        number of files uploaded. Missing paths are skipped."""
        n = 0
        for rel in rels:
            base = self.local / rel
            files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
            for p in files:
                st = p.stat()
                key = p.relative_to(self.local).as_posix()
                if self._pushed.get(key) == (st.st_size, st.st_mtime_ns):
                    continue
                try:
                    with open(p, "rb") as src, self.fs.open_output_stream(self._remote(key)) as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                except OSError as e:
                    raise StorageError(f"{self.uri}: cannot write {key} ({e})") from None
                self._pushed[key] = (st.st_size, st.st_mtime_ns)
                n += 1
        return n

    def localize(self, weights: bool | Callable[[Path], Iterable[Path]] = True) -> Path:
        """The mirror of this run dir or checkpoint, with what serving and evaluation read.

        The mirror gets the markers of every checkpoint and the weights of those `weights`
        names: True = all, False = none (the caller pulls what it needs with `pull_weights`:
        serving fetches only the newest checkpoint that verifies), or a function of the mirror's
        checkpoints dir, markers in place, that returns the checkpoint dirs to fetch
        (`ganforge eval --checkpoint latest` fetches one). DeepSpeed states and rank files stay
        remote. A checkpoint URI always gets its weights.
        """
        if self.exists(MARKER):  # the URI is a checkpoint
            return self.pull_weights("")
        ckpts = self.pull_markers()
        names = self.list_dir("checkpoints")
        if not names:
            raise StorageError(
                f"{self.uri}: no checkpoints (expected {self.uri}/checkpoints/<name>/)"
            )
        if callable(weights):
            chosen = {Path(d).name for d in weights(ckpts)}
            names = [n for n in names if n in chosen]
        for name in names if weights else ():
            if not (ckpts / name / MARKER).is_file():
                continue  # no marker: still uploading, or a killed upload
            try:
                self.pull_weights(name)
            except StorageError as e:  # the local verify then skips it too, with a warning
                log.warning("checkpoint %s/checkpoints/%s: %s", self.uri, name, e)
        self.pull_file("metrics.jsonl")
        self.pull_file("quality/metrics.json")  # shown by the server's /v1/models
        return ckpts.parent

    def write_text(self, rel: str, text: str) -> None:
        """Write a small file to the mirror and the store."""
        dest = self.local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        self.push(rel)

"""Folders in an object store (`s3://`, `gs://`, `abfs://`, `hdfs://`), via pyarrow.fs.

ganforge code reads and writes a run dir as a local folder. A run dir given as a URI is backed by a
local *mirror* (`$GANFORGE_CACHE/runs/<scheme>/<bucket>/<path>`, default `~/.cache/ganforge`) that
`RemoteRun` copies files into and out of, by their path relative to the URI. Which files move when
is the run folder's business: `ganforge.rundir.RunDir`.

Credentials and endpoints come from the usual environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL for
MinIO/S3-compatible stores, GOOGLE_APPLICATION_CREDENTIALS, ...), as pyarrow reads them. pyarrow
rather than fsspec because Ray Train already resolves `storage_path` with it: one client, one set
of credentials for ganforge and Ray.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoint markers and shard manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    """A folder in an object store (a run dir or a checkpoint) and its local mirror."""

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

    def size(self, rel: str) -> int:
        """Size in bytes of the file `rel` in the store."""
        return self._info(rel).size

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

    def write_text(self, rel: str, text: str) -> None:
        """Write a small file to the mirror and the store."""
        dest = self.local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        self.push(rel)

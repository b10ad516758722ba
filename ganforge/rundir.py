"""A run folder's layout: the one module that names the files and folders ganforge keeps in it.

    RUN_DIR/
      config.yaml                the resolved config; a relaunch must match it
      checkpoints/step-XXXXXX/   one `CheckpointDir` per checkpoint (Ray Train writes them)
      samples/step-XXXXXX.png    fixed-noise sample grids
      metrics.jsonl              rank 0's metric records, one JSON object a line
      tensorboard/               TensorBoard events
      quality/metrics.json       the latest `ganforge eval` figures (shown by the server)
      quality/eval-<key>.json    cached evaluations (`ganforge study`), keyed by what decides them
      .launches/<launch id>      how often a launch's worker group has started (restarts)
      pids/rank-<r>              worker pids, for operators and the kill tests
      placement/rank-<r>.jsonl   where rank r ran, one line per start: node, pid, shard slices
      .restore/rank-<r>/         object-store runs: the checkpoint a rank downloaded to resume

    RUN_DIR/checkpoints/<name>/  (the format itself: `ganforge.checkpoint`)
      weights.pt                 plain state dicts, what serving and evaluation load
      deepspeed/                 both engines' DeepSpeed checkpoints
      rank-<r>.pt                one rank's RNG states and data position
      ganforge.json              the marker, written last

A run folder in an object store (`RunDir.open("s3://...")`) is a RunDir over its local mirror plus
the `RemoteRun` that copies files between the two. What moves when:

- checkpoints go to the store directly (the URI is Ray Train's `storage_path`);
- the driver pulls `config.yaml` and the checkpoint markers to validate and plan (`pull_markers`),
  and pushes `config.yaml` (`write_config`);
- rank 0 writes metrics, samples and TensorBoard events into the mirror and pushes what changed
  after every checkpoint (`push_logs`), so the store never holds metrics from beyond its newest
  checkpoint;
- resuming ranks download the chosen checkpoint (`pull_checkpoint`); serving and evaluation
  download `weights.pt` and the markers only (`localize`, `pull_weights`).

For a local run folder the pulls and pushes are no-ops: it is its own copy.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from ganforge.storage import RemoteRun, StorageError, is_uri

log = logging.getLogger("ganforge.storage")


class CheckpointDir:
    """One checkpoint folder: `RUN_DIR/checkpoints/<name>/`, a copy of one, or one being written."""

    MARKER = "ganforge.json"
    WEIGHTS = "weights.pt"
    DEEPSPEED = "deepspeed"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CheckpointDir({str(self.path)!r})"

    @staticmethod
    def dir_name(step: int) -> str:
        """The folder name of the checkpoint of `step` (what Ray Train is told to call it)."""
        return f"step-{step:06d}"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def marker(self) -> Path:
        """ganforge.json: step, config and file hashes; its presence means complete."""
        return self.path / self.MARKER

    @property
    def weights(self) -> Path:
        """weights.pt: {generator, generator_ema, discriminator} state dicts, tensors only."""
        return self.path / self.WEIGHTS

    @property
    def deepspeed(self) -> Path:
        """The folder of both engines' DeepSpeed checkpoints."""
        return self.path / self.DEEPSPEED

    def rank_state(self, rank: int) -> Path:
        """rank-<r>.pt: rank `rank`'s RNG states and data position."""
        return self.path / f"rank-{rank}.pt"

    def is_marked(self) -> bool:
        """True when the marker exists (complete unless its hashes say otherwise)."""
        return self.marker.is_file()


class RunDir:
    """A run folder: local, or the local mirror of one in an object store (`store` set)."""

    CONFIG = "config.yaml"
    CHECKPOINTS = "checkpoints"
    SAMPLES = "samples"
    METRICS = "metrics.jsonl"
    TENSORBOARD = "tensorboard"
    QUALITY = "quality"
    LAUNCHES = ".launches"
    PIDS = "pids"
    PLACEMENT = "placement"
    RESTORE = ".restore"

    def __init__(self, path: str | os.PathLike, store: RemoteRun | None = None):
        self.path = Path(path)
        self.store = store

    @classmethod
    def open(cls, run_dir: str | os.PathLike) -> RunDir:
        """A local path as is; an object-store URI as its mirror + store (nothing pulled yet).
        Raises StorageError when the URI cannot be opened."""
        if is_uri(run_dir):
            store = RemoteRun(str(run_dir))
            return cls(store.local, store)
        return cls(Path(run_dir))

    @classmethod
    def of_checkpoint(cls, ckpt: str | os.PathLike) -> RunDir | None:
        """The run folder a checkpoint dir belongs to; None when it is not in a checkpoints/."""
        path = Path(ckpt)
        return cls(path.parent.parent) if path.parent.name == cls.CHECKPOINTS else None

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    @property
    def uri(self) -> str:
        """Where the run lives: its object-store URI, else its local path."""
        return self.store.uri if self.store else str(self.path)

    def uri_of(self, path: Path) -> str:
        """Where `path` (inside the run folder) lives: in the store, else locally."""
        return f"{self.store.uri}/{self._rel(path)}" if self.store else str(path)

    # -- layout ----------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def checkpoints(self) -> Path:
        """The folder of checkpoint dirs (Ray Train's run name below `storage_path`)."""
        return self.path / self.CHECKPOINTS

    def checkpoint(self, step_or_name: int | str) -> CheckpointDir:
        """The checkpoint dir of a step (`step-XXXXXX`) or of a folder name."""
        if isinstance(step_or_name, int):
            step_or_name = CheckpointDir.dir_name(step_or_name)
        return CheckpointDir(self.checkpoints / step_or_name)

    @property
    def samples(self) -> Path:
        return self.path / self.SAMPLES

    def sample_grid(self, step: int) -> Path:
        """The sample grid (PNG) of generator step `step`."""
        return self.samples / f"{CheckpointDir.dir_name(step)}.png"

    def sample_grids(self) -> list[Path]:
        """Every sample grid, oldest step first."""
        return sorted(self.samples.glob("step-*.png"))

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def quality_metrics(self) -> Path:
        """The latest `ganforge eval` figures of this run (JSON)."""
        return self.path / self.QUALITY / "metrics.json"

    def eval_cache(self, key: str) -> Path:
        """A cached evaluation of this run's checkpoints; `key` hashes everything that decides
        its numbers (settings, features, reference, the checkpoints' markers)."""
        return self.path / self.QUALITY / f"eval-{key}.json"

    @property
    def launches(self) -> Path:
        return self.path / self.LAUNCHES

    def launch_counter(self, launch_id: str) -> Path:
        """How many times launch `launch_id`'s worker group has started (a number, as text)."""
        return self.launches / launch_id

    def pid_file(self, rank: int) -> Path:
        return self.path / self.PIDS / f"rank-{rank}"

    def placement_log(self, rank: int) -> Path:
        """One JSON line per start of rank `rank`: launch, Ray node, pid, start step, and the
        shard URLs of each of its loader workers (None: resampled data)."""
        return self.path / self.PLACEMENT / f"rank-{rank}.jsonl"

    def restore_dir(self, rank: int) -> Path:
        """Object-store runs: where rank `rank` downloads the checkpoint it resumes from."""
        return self.path / self.RESTORE / f"rank-{rank}"

    @property
    def logs(self) -> tuple[Path, ...]:
        """What rank 0 writes while training (an object-store run pushes it after checkpoints)."""
        return self.metrics_path, self.samples, self.tensorboard, self.launches

    # -- object store: no-ops for a local run ----------------------------------------------
    def _rel(self, path: Path) -> str:
        """`path` (inside the run folder) as the store's relative key; '' for the folder."""
        rel = Path(path).relative_to(self.path).as_posix()
        return "" if rel == "." else rel

    def _remote(self) -> RemoteRun:
        if self.store is None:
            raise StorageError(f"{self.path}: a local run dir has no object store to sync with")
        return self.store

    def pull(self, path: Path) -> bool:
        """Download one file into the mirror; False when the store has none (or no store)."""
        return self.store.pull_file(self._rel(path)) if self.store else False

    def push(self, *paths: Path) -> int:
        """Upload what changed below `paths` since the last push; the number of files sent."""
        return self.store.push(*(self._rel(p) for p in paths)) if self.store else 0

    def push_logs(self) -> int:
        """Upload the metrics, samples, events and launch counters written since the last push."""
        return self.push(*self.logs)

    def write_config(self, text: str) -> None:
        """Write config.yaml (to the store too)."""
        if self.store:
            self.store.write_text(self._rel(self.config_path), text)
        else:
            self.config_path.write_text(text)

    def pull_markers(self) -> Path:
        """Mirror `config.yaml` and every checkpoint's marker; drop mirrored checkpoints the store
        no longer has (Ray Train keeps only the last K). Returns the mirror's checkpoints dir."""
        store = self._remote()
        self.pull(self.config_path)
        names = store.list_dir(self._rel(self.checkpoints))
        if self.checkpoints.is_dir():
            for stale in self.checkpoints.iterdir():
                if stale.is_dir() and stale.name not in names:
                    shutil.rmtree(stale, ignore_errors=True)
        for name in names:
            marker = self.checkpoint(name).marker
            if not marker.is_file():
                self.pull(marker)
        return self.checkpoints

    def pull_metrics(self) -> None:
        """metrics.jsonl as the store has it (ending at its newest checkpoint); none there means
        none in the mirror, so a stale local copy never outlives the store's."""
        if self.store and not self.pull(self.metrics_path):
            self.metrics_path.unlink(missing_ok=True)

    def pull_checkpoint(self, name: str, dest: Path) -> CheckpointDir:
        """Download all of checkpoint `name` (DeepSpeed states included) into `dest`."""
        store = self._remote()
        return CheckpointDir(store.pull_tree(self._rel(self.checkpoint(name).path), dest))

    def pull_weights(self, name: str) -> Path:
        """`weights.pt` + marker of checkpoint `name` (a name under checkpoints/, or '' when the
        URI is a checkpoint itself) into the mirror: what serving and evaluation need."""
        store = self._remote()
        ckpt = self.checkpoint(name) if name else CheckpointDir(self.path)
        for dest in (ckpt.marker, ckpt.weights):
            remote = self._rel(dest)
            cached = dest == ckpt.weights and dest.is_file()
            if cached and store.size(remote) == dest.stat().st_size:
                continue  # checkpoints are immutable once their marker exists
            if not store.pull_file(remote, dest):
                raise StorageError(f"{self.uri_of(ckpt.path)}: has no {dest.name}")
        return ckpt.path

    def localize(self, weights: bool | Callable[[Path], Iterable[Path]] = True) -> Path:
        """The mirror of this run dir or checkpoint, with what serving and evaluation read.

        The mirror gets the markers of every checkpoint and the weights of those `weights`
        names: True = all, False = none (the caller pulls what it needs with `pull_weights`:
        serving fetches only the newest checkpoint that verifies), or a function of the mirror's
        checkpoints dir, markers in place, that returns the checkpoint dirs to fetch
        (`ganforge eval --checkpoint latest` fetches one). DeepSpeed states and rank files stay
        remote. A checkpoint URI always gets its weights.
        """
        store = self._remote()
        if store.exists(self._rel(CheckpointDir(self.path).marker)):  # the URI is a checkpoint
            return self.pull_weights("")
        ckpts = self.pull_markers()
        names = store.list_dir(self._rel(self.checkpoints))
        if not names:
            where = f"{store.uri}/{self.CHECKPOINTS}/<name>/"
            raise StorageError(f"{store.uri}: no checkpoints (expected {where})")
        if callable(weights):
            chosen = {Path(d).name for d in weights(ckpts)}
            names = [n for n in names if n in chosen]
        for name in names if weights else ():
            if not self.checkpoint(name).is_marked():
                continue  # no marker: still uploading, or a killed upload
            try:
                self.pull_weights(name)
            except StorageError as e:  # the local verify then skips it too, with a warning
                log.warning("checkpoint %s: %s", self.uri_of(self.checkpoint(name).path), e)
        self.pull(self.metrics_path)
        self.pull(self.quality_metrics)  # shown by the server's /v1/models
        return self.path

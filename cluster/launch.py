"""Driver side of `ganforge train`: validate everything, then run Ray Train's TorchTrainer.

All user errors (bad config, shards that do not fit the model, a run dir of another config) are
raised here as `ConfigError` before any worker starts.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ganforge.checkpoint import CheckpointError, list_checkpoints, read_marker
from ganforge.config import ConfigError, GanforgeConfig, ModelConfig
from ganforge.models import check_recipe, get_variant
from ganforge.rundir import RunDir
from ganforge.shutdown import init_ray
from ganforge.storage import StorageError, is_uri


@dataclass
class PreparedRun:
    config: GanforgeConfig
    run: RunDir  # a local folder, or the mirror of one in an object store
    urls: list[str]
    classes: list[str]
    resume_from: Path | None
    start_step: int

    @property
    def run_dir(self) -> Path:
        """The local folder (the mirror when the run lives in an object store)."""
        return self.run.path

    @property
    def storage_path(self) -> str:
        """Where Ray Train puts checkpoints: the object-store URI or the local run dir."""
        return self.run.uri


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v
    return out


def _check_run_dir(cfg: GanforgeConfig, run: RunDir) -> None:
    saved = run.config_path
    if not saved.is_file():
        return
    try:
        old = GanforgeConfig.model_validate(yaml.safe_load(saved.read_text()))
    except Exception as e:
        raise ConfigError(f"{saved}: cannot be read as a ganforge config ({e})") from None
    new_fp, old_fp = _flatten(cfg.training_fingerprint()), _flatten(old.training_fingerprint())
    diff = sorted(k for k in new_fp.keys() | old_fp.keys() if new_fp.get(k) != old_fp.get(k))
    if diff:
        raise ConfigError(
            f"run dir {cfg.run_dir} belongs to a different config (differs in: {', '.join(diff)}); "
            "pick a new --run-dir or use the original config"
        )


def check_compatible(manifest: dict[str, Any], model_cfg: ModelConfig) -> None:
    """ValueError when the shards cannot feed this model (size, channels, class count)."""
    problems = []
    if manifest["image_size"] != model_cfg.resolution:
        problems.append(
            f"images are {manifest['image_size']}x{manifest['image_size']} but "
            f"model.resolution={model_cfg.resolution} (repack with --image-size "
            f"{model_cfg.resolution})"
        )
    if manifest["channels"] != model_cfg.channels:
        problems.append(
            f"images have {manifest['channels']} channel(s) but model.channels="
            f"{model_cfg.channels} (repack with --channels {model_cfg.channels})"
        )
    n = len(manifest["classes"])
    if get_variant(model_cfg.variant).conditional and model_cfg.num_classes not in (0, n):
        problems.append(f"model.num_classes={model_cfg.num_classes} but the data has {n} classes")
    if problems:
        raise ValueError("data and model disagree: " + "; ".join(problems))


def prepare_run(cfg: GanforgeConfig, resume: bool | None = None) -> PreparedRun:
    """Resolve data and classes, check model/data/run-dir compatibility, write config.yaml."""
    from ganforge.data.resolve import resolve_data

    try:
        spec = get_variant(cfg.model.variant)
        urls, manifest = resolve_data(cfg.data)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    classes = list((manifest or {}).get("classes") or [])
    if spec.conditional and cfg.model.num_classes == 0:
        if not classes:
            raise ConfigError(
                f"model.variant={cfg.model.variant} is conditional: set model.num_classes or use "
                "shards with a dataset.json that lists the classes"
            )
        cfg.model.num_classes = len(classes)
    try:
        if manifest is not None:
            check_compatible(manifest, cfg.model)
        check_recipe(cfg.model, cfg.loss)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not classes and cfg.model.num_classes:
        classes = [str(i) for i in range(cfg.model.num_classes)]

    if is_uri(cfg.run_dir):
        try:
            run = RunDir.open(cfg.run_dir)
            run.pull_markers()  # config.yaml + checkpoint markers, to check and plan below
            run.pull_metrics()  # what rank 0 continues, so the progress bar starts there
        except StorageError as e:
            raise ConfigError(str(e)) from None
    else:
        run = RunDir(cfg.resolved_run_dir().expanduser().resolve())
    cfg.run_dir = run.uri
    _check_run_dir(cfg, run)
    existing = list_checkpoints(run.checkpoints)
    if resume is True and not existing:
        raise ConfigError(f"--resume: no checkpoint in {run.uri_of(run.checkpoints)}")
    if resume is False and existing:
        raise ConfigError(
            f"{cfg.run_dir} already holds checkpoints (latest step {existing[0][0]}); "
            "pass --resume to continue it or choose another --run-dir"
        )
    if existing:
        _check_world_size(existing[0][1], cfg.cluster.num_workers, cfg.run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    try:
        run.write_config(cfg.to_yaml())
    except StorageError as e:
        raise ConfigError(str(e)) from None
    start = existing[0][0] if existing else 0
    resume_from = existing[0][1] if existing else None
    return PreparedRun(cfg, run, urls, classes, resume_from, start)


def _check_world_size(ckpt: Path, num_workers: int, run: str) -> None:
    """Refuse, before any worker starts, to resume with another worker count: each rank restores
    its own engine and data-position files, so the checkpoint only fits the world that wrote it."""
    try:
        saved = read_marker(ckpt).get("world_size")
    except CheckpointError:
        return  # incomplete newest checkpoint: the workers skip it and pick an older one
    if saved is not None and int(saved) != num_workers:
        raise ConfigError(
            f"{run} was trained with --num-workers {saved}; resume it with "
            f"--num-workers {saved} (this launch asks for {num_workers}), or start a new --run-dir"
        )


class ProgressTail:
    """Driver-side progress bar fed by rank 0's metrics.jsonl (works for local clusters)."""

    def __init__(self, path: Path, total: int, start: int, enabled: bool = True):
        self.path, self.total, self.start, self.enabled = path, total, start, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProgressTail:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from tqdm import tqdm

        offset = self.path.stat().st_size if self.path.exists() else 0
        with tqdm(total=self.total, initial=self.start, unit="step", dynamic_ncols=True) as bar:
            while not self._stop.is_set():
                if self.path.exists():
                    with open(self.path) as f:
                        f.seek(offset)
                        chunk = f.read()
                    if chunk.endswith("\n"):
                        offset += len(chunk.encode())
                        for line in chunk.splitlines():
                            self._update(bar, json.loads(line))
                time.sleep(0.5)

    @staticmethod
    def _update(bar: Any, rec: dict[str, Any]) -> None:
        bar.n = rec["step"]
        post = {k: f"{rec[k]:.3f}" for k in ("loss_d", "loss_g", "gp") if k in rec}
        post["img/s"] = f"{rec.get('images_per_s', 0):.0f}"
        bar.set_postfix(post, refresh=False)
        bar.refresh()


def run_training(
    cfg: GanforgeConfig, resume: bool | None = None, show_progress: bool = True
) -> Path:
    """Train `cfg` on Ray (local cluster unless RAY_ADDRESS is set); returns the run dir.

    resume: None = continue when the run dir has checkpoints, True = require one, False = refuse.
    """
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ganforge.cluster import capacity
    from ganforge.cluster.loop import WorkerPlan, train_func
    from ganforge.cluster.worker_cpus import local_node_cpus, resolve_worker_cpus

    prep = prepare_run(cfg, resume)
    cfg = prep.config
    if prep.start_step >= cfg.train.max_steps:
        # Relaunching a finished run is a no-op, not an error: a driver that died after the last
        # checkpoint (or a RayJob retry) must not turn a finished run into a failed job.
        print(
            f"[ganforge] {prep.storage_path} is already at step {prep.start_step} "
            f"(train.max_steps={cfg.train.max_steps}): nothing to train; raise --max-steps to "
            "train further",
            flush=True,
        )
        return prep.run_dir
    if not ray.is_initialized():
        # The caller shuts it down: `ganforge train` with shutdown_ray(), others at exit.
        init_ray(logging_level="WARNING", log_to_driver=True)
    cpus = resolve_worker_cpus(
        cfg.cluster.cpus_per_worker, cfg.cluster.num_workers, local_node_cpus()
    )
    # The workers get the number (their torch threads); config.yaml keeps what was asked.
    worker_cfg = cfg.model_copy(deep=True)
    worker_cfg.cluster.cpus_per_worker = cpus.per_worker
    resources = {"CPU": cpus.per_worker} | ({"GPU": 1} if cfg.cluster.gpu else {})
    trainer = TorchTrainer(
        train_func,
        train_loop_config={
            "plan": WorkerPlan(
                config=worker_cfg,
                urls=prep.urls,
                classes=prep.classes,
                run=prep.run.uri if prep.run.store else str(prep.run_dir),
                launch_id=uuid.uuid4().hex[:12],
            )
        },
        torch_config=TorchConfig(backend="nccl" if cfg.cluster.gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.cluster.num_workers,
            use_gpu=cfg.cluster.gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=RunDir.CHECKPOINTS,
            storage_path=prep.storage_path,
            failure_config=capacity.failure_config(cfg.cluster),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )
    if prep.resume_from is not None:
        print(f"[ganforge] resuming {prep.storage_path} from step {prep.start_step}", flush=True)
    print(
        f"[ganforge] training {cfg.name} to step {cfg.train.max_steps}: "
        f"{cpus.banner(cfg.cluster.num_workers, cfg.cluster.gpu)}",
        flush=True,
    )
    tail = ProgressTail(prep.run.metrics_path, cfg.train.max_steps, prep.start_step, show_progress)
    with tail, capacity.bounded_wait(cfg.cluster, resources, prep.run):
        _fit(trainer)
    return prep.run_dir


def _fit(trainer: Any) -> None:
    """`trainer.fit()`, on a helper thread when called on the main one, which then only waits.

    On the main thread, Ray Train's fit() replaces the SIGINT handler with its own (abort the run,
    then `sys.exit(0)`: an interrupted run would end like a finished one). Off it, SIGINT and
    SIGTERM stay with ganforge's handlers (ganforge.shutdown), whose `Stop` interrupts the wait
    below; the caller's shutdown_ray() then ends the run with the cluster.
    """
    if threading.current_thread() is not threading.main_thread():
        trainer.fit()
        return
    failure: list[BaseException] = []
    done = threading.Event()

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # handed to the main thread, which raises it
            failure.append(e)
        finally:
            done.set()

    threading.Thread(target=fit, name="ray-train-fit", daemon=True).start()
    # A signal handler's exception interrupts this wait. (Not Thread.join(): interrupted, it
    # marks the thread as stopped while it still runs.)
    done.wait()
    if failure:
        raise failure[0]

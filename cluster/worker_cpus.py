"""How many CPUs, and so torch threads, each Ray Train worker gets (`cluster.cpus_per_worker`).

An explicit value is what each worker reserves from Ray and its torch thread count. None (`auto`):
- on a Ray node this process started (`ganforge train` without RAY_ADDRESS, or a caller's own
  `ray.init()`): the node's free CPUs divided among the workers, so one worker on a 2-core
  machine trains on both cores (a fixed default of 1 left half of it idle);
- on a cluster this process joined (RAY_ADDRESS, `ray job submit`, a local `ray start`): 1 per
  worker, Ray Train's default, since the driver cannot tell which node each worker lands on; set
  the value for bigger nodes (the Helm chart does, from train.cpusPerWorker).
The driver resolves it once, after ray.init(), prints it in the start banner and hands the number
to the workers; rank 0 records its torch thread count in the checkpoint markers, from which the
run's summary states it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ganforge.config import ConfigError


@dataclass(frozen=True)
class WorkerCPUs:
    per_worker: int
    """CPUs each worker reserves from Ray, and its torch thread count."""
    how: str
    """Where the number comes from, for the banner."""

    def banner(self, num_workers: int, gpu: bool) -> str:
        workers = f"{num_workers} worker{'s' if num_workers > 1 else ''}"
        device = "1 GPU + " if gpu else ""
        return f"{workers} x {device}{self.per_worker} CPU torch threads ({self.how})"


def resolve_worker_cpus(
    requested: int | None, num_workers: int, local_cpus: float | None
) -> WorkerCPUs:
    """`cluster.cpus_per_worker` -> what each worker gets. `local_cpus`: the CPUs of the Ray node
    this process started, None when it joined a cluster (`local_node_cpus()`)."""
    if requested is not None:
        return WorkerCPUs(requested, "cluster.cpus_per_worker")
    if local_cpus is None:
        return WorkerCPUs(1, "auto on a joined Ray cluster: 1 per worker; set --cpus-per-worker")
    if num_workers > local_cpus:
        # Each worker needs at least one CPU: Ray would wait forever to place the last ones.
        raise ConfigError(
            f"--num-workers {num_workers} needs at least one CPU per worker, but the local Ray "
            f"node has {local_cpus:g} free; use at most {int(local_cpus)} workers"
        )
    per_worker = int(local_cpus) // num_workers
    return WorkerCPUs(per_worker, f"auto: {local_cpus:g} free local CPUs / {num_workers}")


def local_node_cpus() -> float | None:
    """The free CPUs of the Ray node this process started (None when it joined a cluster or Ray
    is not initialised). Free, not total: a process that also runs other Ray work (a Serve app,
    a caller's actors) must not ask for CPUs those hold, or the workers would wait forever."""
    import ray

    # No public API tells a node this process started from one it connected to (as in
    # ganforge.shutdown.owns_cluster); a joined cluster's node object is not the head.
    node = ray._private.worker._global_node
    if not ray.is_initialized() or node is None or not node.is_head():
        return None
    return ray.available_resources().get("CPU", 0.0)


def worker_threads_row(marker: dict[str, Any], requested: Any) -> tuple[str, str] | None:
    """The run summary's row from the newest checkpoint marker (None before the first one, or
    for checkpoints written before the markers recorded the thread count). `requested`: the
    run's config.yaml value of cluster.cpus_per_worker (None = auto)."""
    threads = marker.get("torch_threads")
    if threads is None:
        return None
    world = int(marker.get("world_size") or 1)
    source = "auto" if requested is None else "cluster.cpus_per_worker"
    workers = f"{world} worker{'s' if world > 1 else ''}"
    return ("threads", f"{workers} x {threads} torch threads ({source})")

"""How long a run waits for its workers' resources, and what it says when they never come.

A lost node takes its worker with it: Ray Train counts one worker-group failure (against
`cluster.max_failures`) and restarts the whole group from the latest checkpoint, which first
needs `num_workers` x the per-worker resources again. Ray Train v2 waits for them in tries of
RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s); each timeout is a controller failure, and
`FailureConfig.controller_failure_limit` (-1 by default) retries it forever, so a run whose
capacity never returns waits forever. `cluster.start_timeout_s` bounds that: one try of that
length, then the run stops with `NoCapacityError`, which names the checkpoint to resume from.

Not elastic training (`ScalingConfig(num_workers=(min, max))`): a checkpoint holds one file per
rank (engine states, data position) and the global batch follows the worker count, so a run keeps
its worker count and waits, bounded, instead of shrinking.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ganforge.config import ClusterConfig
from ganforge.rundir import RunDir
from ganforge.storage import StorageError

# Read by Ray Train v2's worker group inside the controller actor; the driver's value reaches the
# controller because Ray Train propagates it (ray.train.v2._internal.constants).
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


class NoCapacityError(RuntimeError):
    """The worker group could not get its resources within `cluster.start_timeout_s`."""


def failure_config(cluster: ClusterConfig) -> Any:
    """Ray Train's FailureConfig: worker-group restarts, and start retries bounded or not."""
    from ray.train import FailureConfig

    if cluster.start_timeout_s is None:
        return FailureConfig(max_failures=cluster.max_failures)
    # A start timeout is a controller failure: with no retries the first one ends the run.
    return FailureConfig(max_failures=cluster.max_failures, controller_failure_limit=0)


@contextlib.contextmanager
def bounded_wait(
    cluster: ClusterConfig, resources: dict[str, float], run: RunDir
) -> Iterator[None]:
    """Around `trainer.fit()`: Ray Train's start timeout set from the config (restored after), and
    its timeout error turned into a NoCapacityError. `resources`: one worker's request."""
    before = os.environ.get(START_TIMEOUT_ENV)
    if cluster.start_timeout_s is not None:
        os.environ[START_TIMEOUT_ENV] = str(cluster.start_timeout_s)
    try:
        yield
    except Exception as e:
        no_capacity = explain(e, cluster, resources, run)
        if no_capacity is None:
            raise
        raise no_capacity from None
    finally:
        if before is None:
            os.environ.pop(START_TIMEOUT_ENV, None)
        else:
            os.environ[START_TIMEOUT_ENV] = before


def explain(
    error: BaseException, cluster: ClusterConfig, resources: dict[str, float], run: RunDir
) -> NoCapacityError | None:
    """A NoCapacityError for Ray Train's start timeout (None for any other failure);
    `resources` is what each worker asks for (the ScalingConfig's resources_per_worker)."""
    from ray.train import ControllerError

    from ganforge.checkpoint import latest_valid, list_checkpoints, read_marker

    if cluster.start_timeout_s is None or not isinstance(error, ControllerError):
        return None  # unbounded, Ray retries the start: its timeout never ends the run
    # Ray Train v2's WorkerGroupStartupTimeoutError lives in a private module: match its name.
    if type(error.controller_failure).__name__ != "WorkerGroupStartupTimeoutError":
        return None
    # The step a resume will start from: locally the newest checkpoint that verifies (a node
    # lost mid-upload can leave a newer, partial one); in a store, the newest marker.
    step = None
    try:
        if run.store:
            step = next((s for s, _ in list_checkpoints(run.pull_markers())), None)
        elif (best := latest_valid(run.checkpoints)) is not None:
            step = read_marker(best)["step"]
    except StorageError:
        pass
    if step is None:
        kept = f"no checkpoint in {run.uri} yet"
    else:
        kept = f"the latest checkpoint is step {step} in {run.uri}"
    return NoCapacityError(
        f"the Ray cluster did not have {cluster.num_workers} x {resources} free for the worker "
        f"group within cluster.start_timeout_s={cluster.start_timeout_s:g} s (a lost node that "
        f"did not come back, or too few nodes); training stopped, {kept}. When the capacity is "
        "back, run the same command with --resume to continue from it"
    )

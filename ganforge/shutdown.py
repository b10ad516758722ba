"""Clean stops for the commands that start Ray (`ganforge serve`, `ganforge train`).

They run an embedded Ray cluster (`ray.init()` without RAY_ADDRESS) and are stopped with SIGTERM
(Kubernetes, systemd) or Ctrl-C. Left to Ray, SIGTERM meets the handler `ray.init()` installs
(kill the node's processes, `sys.exit(1)`) behind a native one that prints a stack dump first; the
command's own clean-up then runs against a dead cluster (it once aborted, status 134), Serve
replicas lose the requests they hold, and the raylet's agents (DashboardAgent, RuntimeEnvAgent,
which ignore SIGTERM) outlive it. Used as

    with stop_on_signals():       # SIGTERM / SIGINT -> `Stop`, raised in the main thread
        try:
            init_ray()            # ray.init(), keeping ganforge's handlers
            ...                   # the work; `except Stop` drains or cancels it
        finally:
            shutdown_ray()        # ray.shutdown(); no process of a cluster started here survives

a stop drains or cancels the work, shuts the cluster down in order, and leaves no process of it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)

# After ray.shutdown() (which gives each process it started SIGTERM and 1 s, then SIGKILL), how
# long the rest of the cluster (workers, agents, dashboard modules) gets to exit on its own.
REAP_GRACE_S = 5.0


class Stop(BaseException):
    """SIGTERM or SIGINT arrived; raised in the main thread wherever it was running.

    A BaseException, like KeyboardInterrupt, so that `except Exception` in library code does not
    swallow it. `repeated`: an earlier signal is already being handled (a drain in progress).
    """

    def __init__(self, signum: int, repeated: bool = False):
        self.signum, self.repeated = signum, repeated
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's status for a command a signal ended: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class _Handler:
    """Raise `Stop` for each signal, except while `shutdown_ray` tears the cluster down: cutting
    ray.shutdown() in half is what leaves processes behind, so a signal then is only noted."""

    def __init__(self) -> None:
        self.received = 0
        self.shielded = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.shielded:
            # os.write, not print: a handler can run in the middle of another print.
            os.write(2, f"{name} ignored: already shutting Ray down\n".encode())
            return
        raise Stop(signum, repeated=self.received > 1)


_handler: _Handler | None = None
_started: bool = False  # init_ray() called ray.init() in this process and no shutdown_ray() since


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into `Stop` inside the block; the previous handlers come back after.

    Only the main thread can own signal handlers: elsewhere (a test running a command on a
    thread) this does nothing.
    """
    global _handler
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _handler = _Handler()
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        _handler = None
        for s, h in previous.items():
            if h is not None:  # None: set outside Python, cannot be put back
                signal.signal(s, h)


def _rearm() -> None:
    """Install ganforge's handler again, if `stop_on_signals` is active on this thread."""
    if _handler is not None and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handler)


def init_ray(**kwargs: Any) -> None:
    """`ray.init(**kwargs)` (an embedded cluster unless RAY_ADDRESS names one), keeping the
    handlers of `stop_on_signals`.

    ray.init() replaces the SIGTERM handler with the node's (kill its processes, exit 1) and the
    core worker adds a native one that prints a stack dump; `signal.signal` sets the process's
    action again, which removes both. A SIGTERM during ray.init() itself still meets Ray's.
    """
    global _started
    import ray

    _started = True  # before: an interrupted ray.init() may have started processes already
    try:
        ray.init(**kwargs)
    finally:
        _rearm()


def owns_cluster() -> bool:
    """Whether `init_ray` started a local cluster (rather than connecting to one): then
    `shutdown_ray` ends everything running on it."""
    import ray

    node = ray._private.worker._global_node  # no public API tells a started node from a joined one
    return _started and node is not None and node.is_head()


def shutdown_ray() -> None:
    """`ray.shutdown()` if `init_ray` connected this process; when that started a local cluster,
    make sure none of its processes outlives this call. A no-op otherwise, so that a command run
    inside a process that brought its own Ray (a test's cluster) leaves that cluster alone.

    Why the extra step: ray.shutdown() stops the processes ray.init() started (GCS, raylet,
    dashboard, ...) but not the raylet's own children (workers, agents); those exit when the
    raylet does, but after a raylet killed out of order (Ray's own SIGTERM handler) its agents
    were seen to live on as orphans that ignore SIGTERM. So the tree under each
    process of the node is listed before ray.shutdown() and what is left of it afterwards gets
    SIGKILL. Only processes of a node this process started as head are touched: connected to an
    external cluster (RAY_ADDRESS), the node's process list is empty and ray.shutdown() only
    disconnects.
    """
    global _started
    if not _started:
        return
    import ray

    if _handler is not None:
        _handler.shielded = True
    try:
        tree = _cluster_processes()
        ray.shutdown()
        _reap(tree)
    finally:
        _started = False
        if _handler is not None:
            _handler.shielded = False


def _cluster_processes() -> list[Any]:
    """Every live process of the local Ray node this process started, with all descendants."""
    import psutil
    import ray

    if not owns_cluster():
        return []
    node = ray._private.worker._global_node  # no public API lists a node's processes
    found: dict[int, psutil.Process] = {}
    for infos in node.all_processes.values():
        for info in infos:
            try:
                root = psutil.Process(info.process.pid)
                for p in [root, *root.children(recursive=True)]:
                    found[p.pid] = p
            except psutil.NoSuchProcess:
                continue
    return list(found.values())


def _alive(p: Any) -> bool:
    import psutil

    try:
        # A zombie is dead: in a container its new parent may never reap it.
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reap(procs: list[Any], grace_s: float = REAP_GRACE_S) -> None:
    """Wait up to `grace_s` for `procs` to exit, then SIGKILL the rest (psutil checks that each
    pid still names the process listed, so a reused pid is never hit)."""
    import psutil

    deadline = time.monotonic() + grace_s
    while (left := [p for p in procs if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=2)

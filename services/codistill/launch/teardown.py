"""Leave no process behind: the Ray a run started goes when the run does, with everything it started.

ray.shutdown() stops the processes ray.init started (GCS, raylet, log monitor, ...), but
not always those the raylet started in turn: its dashboard and runtime-env agents ignore
SIGTERM and were found orphaned, still running, after a quickstart was stopped. So the
process tree is noted before the shutdown, while all of it still descends from this
process, and whatever of it outlives the shutdown is killed. A cluster the run only
joined is never touched: its processes descend from its own `ray start`, not from the run.
"""

from __future__ import annotations

import sys

import psutil


def ray_initialized() -> bool:
    """Whether this process is connected to a Ray (one it started, or a cluster it joined); without importing Ray."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def descendants() -> list[psutil.Process]:
    """Every live process started by this one, directly or not (a local Ray's, its workers among them)."""
    try:
        return [p for p in psutil.Process().children(recursive=True) if _alive(p)]
    except psutil.Error:
        return []


def shut_down_ray() -> list[int]:
    """Disconnect from Ray (stopping a local one), then kill every process this one had started that outlived it.

    Returns the pids that had to be killed. A KeyboardInterrupt (a second stop signal) cuts Ray's shutdown
    short; the processes are still killed before it goes on.
    """
    tree = descendants()
    try:
        if ray_initialized():
            sys.modules["ray"].shutdown()
    finally:
        left = [p for p in tree if _alive(p)]
        for proc in left:  # Ray had its chance to stop them gracefully; what is left ignores SIGTERM
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=5)
    return [p.pid for p in left]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

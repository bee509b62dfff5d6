"""Peak resident memory of a run, sampled in a background thread while it trains.

What is counted: the driver process and, when `children` is set (a Ray run), every process descended
from it: with a local Ray this process started, that is Ray's GCS, raylet, its helper processes and
every worker, the regions' among them. A Ray cluster this process joined runs its raylet and workers
elsewhere (or under `ray start`): they are not descendants and are not counted, and no per-region
figure can be read.

The measure is PSS (proportional set size, from /proc/PID/smaps_rollup): a page shared by k processes
counts 1/k in each, so the sum over processes is what they occupy together. Where PSS cannot be read
(not Linux, or another user's process), RSS is used, which counts shared pages (torch's libraries, a
zero-copy object-store buffer) once in every process that maps them, so its sum over-counts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field

import psutil

from codistill.records import ResidentMemory

log = logging.getLogger(__name__)

PSS, RSS = "pss", "rss"
# Twice a second: a region's peak (an evaluation's activations) lasts well over that.
INTERVAL_S = 0.5


@dataclass(frozen=True)
class MemoryPeaks:
    """What a sampler saw: the largest total of one sample, each process's own peak, and the first total."""

    measure: str  # PSS or RSS
    total_bytes: int  # max over samples of the sum over counted processes
    baseline_bytes: int  # the total of the first sample (before the regions were built)
    process_bytes: dict[int, int] = field(default_factory=dict)  # by pid, each process's own peak
    samples: int = 0

    def per_hosted_region(self, hosts: dict[int, int]) -> int | None:
        """The largest `peak of a process / regions it hosts` over region-hosting processes (pid -> regions);
        None when none of them was seen (they run outside the counted processes)."""
        seen = [self.process_bytes[pid] / n for pid, n in hosts.items() if pid in self.process_bytes and n]
        return int(max(seen)) if seen else None

    def per_region_growth(self, regions: int) -> int | None:
        """(peak total - baseline) / regions: one region's share when all share one process."""
        return int(max(0, self.total_bytes - self.baseline_bytes) / regions) if regions else None


def _pss_readable(proc: psutil.Process) -> bool:
    try:
        return getattr(proc.memory_full_info(), "pss", None) is not None
    except (psutil.Error, OSError):
        return False


class MemorySampler:
    """Samples the resident memory of `root` (default: this process) and, with `children`, of its
    descendants, every `interval_s` seconds from `start()` to `stop()` (one sample at each)."""

    def __init__(self, root: int | None = None, *, children: bool = True, interval_s: float = INTERVAL_S):
        self.root = psutil.Process(root or os.getpid())
        self.children, self.interval_s = children, interval_s
        self.measure = PSS if _pss_readable(self.root) else RSS
        self._total, self._baseline, self._samples = 0, 0, 0
        self._peaks: dict[int, int] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._baseline = self.sample()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()

    def _loop(self) -> None:
        while not self._done.wait(self.interval_s):
            self.sample()

    def _processes(self) -> list[psutil.Process]:
        if not self.children:
            return [self.root]
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return [self.root]

    def _resident(self, proc: psutil.Process) -> int | None:
        """The process's PSS (RSS where PSS is not the measure); None once it has exited."""
        try:
            if self.measure == PSS:
                return int(proc.memory_full_info().pss)
            return int(proc.memory_info().rss)
        except psutil.AccessDenied:  # another user's process (a cluster's raylet): its RSS still shows
            try:
                return int(proc.memory_info().rss)
            except psutil.Error:
                return None
        except (psutil.Error, OSError):  # exited between listing and reading
            return None

    def sample(self) -> int:
        """One sample now: the total over counted processes; peaks are updated."""
        seen = {p.pid: r for p in self._processes() if (r := self._resident(p)) is not None}
        total = sum(seen.values())
        with self._lock:
            self._samples += 1
            self._total = max(self._total, total)
            for pid, r in seen.items():
                self._peaks[pid] = max(self._peaks.get(pid, 0), r)
        return total

    def peaks(self) -> MemoryPeaks:
        with self._lock:
            return MemoryPeaks(self.measure, self._total, self._baseline, dict(self._peaks), self._samples)


def release_free_memory() -> None:
    """Collect garbage and hand the allocator's free pages back to the system (glibc's malloc_trim).

    An earlier run in this process (a bench's previous cell) leaves freed memory resident in malloc's
    arenas, one per thread that allocated; without this it would count in the next run's baseline and
    total, and the next run, reusing it, would seem to grow by nothing. Elsewhere than glibc: a no-op."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def hosting(region_pids: list[int]) -> dict[int, int]:
    """pid -> how many regions it hosts, from the hosting pid of each region."""
    return dict(Counter(region_pids))


# What a run's total counts, as its results say.
DRIVER_ONLY = "driver process"
DRIVER_AND_DESCENDANTS = "driver process and its descendants"


class RunMemory:
    """One strategy's memory while it runs: a sampler over the processes it uses, and which of them
    host its regions (read from the runner once they are placed, and again before their results).

    `distributed`: the regions run in Ray worker processes, counted as the driver's descendants (a
    local Ray this process started). Otherwise they are threads of the driver process, which alone is
    counted: whatever else it started (a Ray kept up for other cells) is not this run's.
    """

    def __init__(self, distributed: bool, regions: int, interval_s: float = INTERVAL_S):
        self.distributed, self.regions = distributed, regions
        self.sampler = MemorySampler(children=distributed, interval_s=interval_s)
        self.hosts: dict[int, int] = {}

    def __enter__(self) -> RunMemory:
        release_free_memory()  # what an earlier run freed is not this one's
        self.sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sampler.stop()

    def placed(self, runner) -> None:
        """Record the process hosting each region now (a restarted process adds its new pid)."""
        region_pids = getattr(runner, "region_pids", None)
        if region_pids is None:
            return
        try:
            self.hosts.update(hosting(region_pids()))
        except Exception as exc:  # a process lost meanwhile: the run reports it; memory goes without it
            log.warning("could not read the regions' processes: %s", " ".join(str(exc).splitlines())[:200])

    def figures(self) -> ResidentMemory:
        peaks = self.sampler.peaks()
        region = peaks.per_hosted_region(self.hosts) if self.distributed else peaks.per_region_growth(self.regions)
        scope = DRIVER_AND_DESCENDANTS if self.distributed else DRIVER_ONLY
        return ResidentMemory(peaks.measure, peaks.total_bytes, region, scope, peaks.samples)

"""Every region in this process, one thread each, over InProcessTransport.

Same regions, same inbox, same serialisation round trip as the gRPC service;
no Ray, no sockets. The reference for tests and the benchmarks' baseline.
"""

from __future__ import annotations

import threading

import torch

from codistill.config import RunConfig
from codistill.data import Split
from codistill.errors import RegionError
from codistill.launch.fedavg import WeightAverager
from codistill.launch.plan import region_data
from codistill.records import ProgressSnapshot, RegionPlan, RegionResult, Role
from codistill.region.network import InProcessNetwork
from codistill.region.service import Region, build_region
from codistill.storage import Location


class InProcessRunner:
    """The runner protocol (start, poll, stop, results, close) over threads."""

    host = None  # nothing is served: run-level convergence is tracked, not exported

    def __init__(self, cfg: RunConfig, split: Split, plans: list[RegionPlan], run_id: str, checkpoints: Location | None = None):
        self.cfg, self.split, self.plans, self.run_id, self.checkpoints = cfg, split, plans, run_id, checkpoints
        self.regions: list[Region] = []
        self._threads: list[threading.Thread] = []
        self._results: dict[int, RegionResult] = {}
        self._errors: dict[int, BaseException] = {}

    def start(self) -> None:
        torch.set_num_threads(self.cfg.regions.torch_threads)
        hub = WeightAverager([len(p.labeled) for p in self.plans]) if any(p.role is Role.WEIGHTS for p in self.plans) else None
        network = InProcessNetwork(self.cfg.exchange, hub.average if hub else None)
        for p in self.plans:
            folder = self.checkpoints.child(f"region-{p.id}") if self.checkpoints else None
            self.regions.append(build_region(self.cfg, p, region_data(self.split, p), network, run_id=self.run_id, checkpoint_dir=folder))
        self._threads = [threading.Thread(target=self._work, args=(r,), name=f"region-{r.id}", daemon=True) for r in self.regions]
        for t in self._threads:
            t.start()

    def _work(self, region: Region) -> None:
        try:
            self._results[region.id] = region.run()
        except BaseException as exc:  # reported by results() with the region id
            self._errors[region.id] = exc
            self.stop()  # peers must not wait for a dead region's rounds

    def poll(self, timeout_s: float) -> tuple[list[ProgressSnapshot], bool]:
        """Every region's progress after at most `timeout_s`, and whether all have finished."""
        for t in self._threads:
            t.join(timeout_s / max(1, len(self._threads)))
        done = not any(t.is_alive() for t in self._threads)
        return [r.progress() for r in self.regions], done

    def stop(self) -> None:
        for r in self.regions:
            r.stop()

    def metrics_targets(self) -> dict[int, str]:
        return {}

    def results(self) -> list[RegionResult]:
        if self._errors:
            region, exc = sorted(self._errors.items())[0]
            raise RegionError(region, f"{type(exc).__name__}: {exc}") from exc
        return [self._results[p.id] for p in self.plans]

    def close(self) -> None:
        for r in self.regions:
            r.close()

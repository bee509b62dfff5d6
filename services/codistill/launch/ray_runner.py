"""Regions as Ray actors that talk to each other over gRPC.

Ray places the actors and the driver wires them (it hands each region the
addresses of the peers it sends to), then steps back: predictions travel
region to region, never through the driver.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import ray
import torch

from codistill.config import RunConfig
from codistill.data import Split
from codistill.launch.loopback import keep_local_ray_on_loopback
from codistill.launch.monitor import RunMonitor
from codistill.launch.plan import RegionPlan, region_data
from codistill.region.messages import RegionError
from codistill.region.node import RegionNode
from codistill.region.trainer import RegionData, RegionResult, resolve_device

LOOPBACK = "127.0.0.1"


class RegionActor:
    """Hosts one RegionNode inside a Ray worker process."""

    def __init__(self, region_id: int, cfg: RunConfig, run_id: str, arch: str, steps: int, exchange: bool, *arrays):
        # Arrays arrive as top-level arguments so Ray resolves the shared ObjectRefs.
        x_labeled, y_labeled, x_transfer, x_test, y_test, num_classes = arrays
        data = RegionData(x_labeled, y_labeled, x_transfer, x_test, y_test, num_classes)
        torch.set_num_threads(cfg.regions.torch_threads)
        device = cfg.regions.device
        if device == "auto":
            device = "cuda" if cfg.regions.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.node = RegionNode(
            region_id, cfg, data, run_id=run_id, arch=arch, steps=steps, exchange=exchange, device=resolve_device(device)
        )

    def serve(self, host: str | None) -> str:
        return self.node.serve(host or ray.util.get_node_ip_address())

    def prepare(self, sources: list[int]) -> None:
        self.node.prepare(sources)

    def connect(self, targets: dict[int, str]) -> None:
        self.node.connect_grpc(targets)

    def run(self) -> RegionResult:
        try:
            return self.node.run()
        except Exception as exc:
            raise RegionError(self.node.id, f"{type(exc).__name__}: {exc}") from None

    def metrics_address(self) -> str | None:
        return self.node.metrics_address

    def progress(self) -> dict:
        return self.node.progress()

    def stop(self) -> None:
        self.node.trainer.stop()

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.node.close()


def ensure_ray(cfg: RunConfig, address: str | None) -> bool:
    """Start a local Ray (loopback only) or join `address`; returns True when local."""
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address.startswith(LOOPBACK)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
        return False
    keep_local_ray_on_loopback()
    needed = math.ceil(cfg.regions.count * cfg.regions.num_cpus)
    num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, needed)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, configure_logging=False)
    return True


def run_on_ray(
    cfg: RunConfig,
    split: Split,
    plans: list[RegionPlan],
    run_id: str,
    *,
    local: bool,
    make_monitor: Callable[[str, dict[int, str]], RunMonitor],
    on_progress: Callable[[list[dict], list[dict]], None] | None = None,
    poll_s: float = 0.5,
) -> list[RegionResult]:
    host = cfg.exchange.host if cfg.exchange.host != "auto" else (LOOPBACK if local else None)
    monitor: RunMonitor | None = None
    remote = ray.remote(RegionActor).options(
        num_cpus=cfg.regions.num_cpus,
        num_gpus=cfg.regions.num_gpus,
        max_concurrency=4,  # progress/status calls while run() is busy
        name=None,
    )
    shared = {k: ray.put(v) for k, v in (("transfer", split.dataset.train.x[split.transfer]), ("test_x", split.dataset.test.x), ("test_y", split.dataset.test.y))}
    actors = []
    for p in plans:
        d = region_data(split, p)
        # Shared arrays go through the object store once, not once per region.
        arrays = (d.x_labeled, d.y_labeled, shared["transfer"], shared["test_x"], shared["test_y"], d.num_classes)
        actors.append(remote.remote(p.id, cfg, run_id, p.arch, p.steps, p.exchange, *arrays))
    try:
        addresses = _gather([a.serve.remote(host) for a in actors], plans)
        _gather([a.prepare.remote(p.receives_from) for a, p in zip(actors, plans)], plans)
        _gather([a.connect.remote({j: addresses[j] for j in p.sends_to} if p.exchange else {}) for a, p in zip(actors, plans)], plans)
        metric_addresses = _gather([a.metrics_address.remote() for a in actors], plans)
        monitor = make_monitor(host or ray.util.get_node_ip_address(), {p.id: m for p, m in zip(plans, metric_addresses) if m})
        pending = {a.run.remote(): i for i, a in enumerate(actors)}
        results: dict[int, RegionResult] = {}
        stopping = False
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll_s)
            for ref in done:
                i = pending.pop(ref)
                results[i] = _gather([ref], [plans[i]])[0]
            snapshots = _gather([a.progress.remote() for a in actors], plans)
            if monitor.observe(snapshots) and not stopping:
                stopping = True
                ray.get([a.stop.remote() for a in actors])
            if on_progress:
                on_progress(snapshots, monitor.drain())
        if cfg.monitor.linger_s:
            time.sleep(cfg.monitor.linger_s)
        return [results[i] for i in range(len(plans))]
    finally:
        if monitor is not None:
            monitor.close()
        for a in actors:
            try:
                ray.get(a.close.remote(), timeout=10)
            except Exception:
                pass
            ray.kill(a)


def _gather(refs: list, plans: list[RegionPlan]) -> list:
    """ray.get each result, turning any Ray failure into a RegionError naming the region."""
    out = []
    for ref, plan in zip(refs, plans):
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, RegionError):
                raise RegionError(cause.region, cause.message) from None
            raise RegionError(plan.id, _last_line(exc)) from None
        except ray.exceptions.RayError as exc:
            raise RegionError(plan.id, _last_line(exc)) from None
    return out


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__

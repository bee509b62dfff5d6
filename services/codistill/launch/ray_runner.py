"""Regions as Ray actors that talk to each other over gRPC.

Ray places the actors and the driver wires them (it hands each region the
addresses of the peers it sends to), then steps back: predictions travel
region to region, never through the driver.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import ray
import torch

from codistill.config import RunConfig
from codistill.data import Split
from codistill.launch.fedavg import WeightAverager
from codistill.launch.loopback import keep_local_ray_on_loopback
from codistill.launch.monitor import RunMonitor
from codistill.launch.plan import RegionPlan, region_data
from codistill.region import checkpoint
from codistill.region.messages import RegionError
from codistill.region.node import RegionNode
from codistill.region.trainer import RegionData, RegionResult, resolve_device

LOOPBACK = "127.0.0.1"


class RegionDirectory:
    """Where each region of a run can be reached now; a restarted region re-registers here."""

    def __init__(self):
        self.addresses: dict[int, str] = {}
        self.metrics: dict[int, str] = {}

    def register(self, region: int, address: str, metrics_address: str | None) -> None:
        self.addresses[region] = address
        if metrics_address:
            self.metrics[region] = metrics_address

    def lookup(self, region: int) -> str | None:
        return self.addresses.get(region)

    def metrics_targets(self) -> dict[int, str]:
        return dict(self.metrics)


class RegionActor:
    """Hosts one RegionNode inside a Ray worker process.

    On first start the driver wires it (serve, prepare, connect). When Ray
    restarts it after a crash, it wires itself from the directory, registers
    its new address, and `run` (retried by Ray) resumes from its checkpoint.
    """

    def __init__(
        self,
        region_id: int,
        cfg: RunConfig,
        run_id: str,
        plan: RegionPlan,
        host: str | None,
        directory,
        checkpoint_dir: Path | None,
        hub,
        *arrays,
    ):
        # Arrays arrive as top-level arguments so Ray resolves the shared ObjectRefs.
        x_labeled, y_labeled, x_transfer, x_test, y_test, num_classes, x_val, y_val = arrays
        data = RegionData(x_labeled, y_labeled, x_transfer, x_test, y_test, num_classes, x_val, y_val)
        torch.set_num_threads(cfg.regions.torch_threads)
        device = cfg.regions.device
        if device == "auto":
            device = "cuda" if cfg.regions.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.plan, self.host, self.directory = plan, host, directory
        with warnings.catch_warnings():  # the property warns about an unrelated deprecation
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        restarts = 0
        if restarted:
            last = checkpoint.load_latest(checkpoint_dir) if checkpoint_dir else None
            restarts = (last["restarts"] if last else 0) + 1
        self.node = RegionNode(
            region_id, cfg, data, run_id=run_id, arch=plan.arch, steps=plan.steps, exchange=plan.exchange, self_teach=plan.self_teach,
            device=resolve_device(device), checkpoint_dir=checkpoint_dir, restarts=restarts, resolve=self._lookup,
        )
        if plan.average:
            self.node.trainer.average_with(lambda r, k, state: ray.get(hub.average.remote(r, k, state)))
        if restarted:
            self.serve(host)
            self.prepare(plan.receives_from)
            self.connect({j: self._lookup(j) for j in plan.sends_to} if plan.exchange else {})

    def _lookup(self, region: int) -> str | None:
        return ray.get(self.directory.lookup.remote(region), timeout=10)

    def serve(self, host: str | None) -> str:
        address = self.node.serve(host or ray.util.get_node_ip_address())
        ray.get(self.directory.register.remote(self.node.id, address, self.node.metrics_address))
        return address

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
    checkpoints: Path | None = None,
    on_started: Callable[[list], None] | None = None,
) -> list[RegionResult]:
    host = cfg.exchange.host if cfg.exchange.host != "auto" else (LOOPBACK if local else None)
    monitor: RunMonitor | None = None
    restarts = cfg.fault.max_restarts if checkpoints else 0
    remote = ray.remote(RegionActor).options(
        num_cpus=cfg.regions.num_cpus,
        num_gpus=cfg.regions.num_gpus,
        max_concurrency=4,  # progress/status calls while run() is busy
        max_restarts=restarts,
        max_task_retries=restarts,  # run() resumes from the checkpoint on the restarted actor
    )
    directory = ray.remote(RegionDirectory).options(num_cpus=0).remote()
    hub = None
    if any(p.average for p in plans):
        hub = ray.remote(WeightAverager).options(num_cpus=0, max_concurrency=len(plans) + 2).remote([len(p.labeled) for p in plans])
    train = split.dataset.train
    shared = {
        k: ray.put(v)
        for k, v in (
            ("transfer", train.x[split.transfer]),
            ("test_x", split.dataset.test.x),
            ("test_y", split.dataset.test.y),
            ("val_x", train.x[split.validation]),
            ("val_y", train.y[split.validation]),
        )
    }
    actors = []
    for p in plans:
        d = region_data(split, p)
        # Shared arrays go through the object store once, not once per region.
        arrays = (
            d.x_labeled, d.y_labeled, shared["transfer"], shared["test_x"], shared["test_y"], d.num_classes,
            shared["val_x"], shared["val_y"],
        )
        ckpt = checkpoints / f"region-{p.id}" if checkpoints else None
        actors.append(remote.remote(p.id, cfg, run_id, p, host, directory, ckpt, hub, *arrays))
    try:
        addresses = _gather([a.serve.remote(host) for a in actors], plans)
        _gather([a.prepare.remote(p.receives_from) for a, p in zip(actors, plans)], plans)
        _gather([a.connect.remote({j: addresses[j] for j in p.sends_to} if p.exchange else {}) for a, p in zip(actors, plans)], plans)
        metric_addresses = _gather([a.metrics_address.remote() for a in actors], plans)
        monitor = make_monitor(host or ray.util.get_node_ip_address(), {p.id: m for p, m in zip(plans, metric_addresses) if m})
        pending = {a.run.remote(): i for i, a in enumerate(actors)}
        if on_started:
            on_started(actors)
        results: dict[int, RegionResult] = {}
        stopping = False
        last: list[dict | None] = [None] * len(actors)
        polls = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll_s)
            for ref in done:
                i = pending.pop(ref)
                results[i] = _gather([ref], [plans[i]])[0]
            snapshots = _poll(actors, last)
            if monitor.observe(snapshots) and not stopping:
                stopping = True
                ray.get([a.stop.remote() for a in actors])
            polls += 1
            if polls % 10 == 0:  # a restarted region serves metrics on a new port
                monitor.set_targets(ray.get(directory.metrics_targets.remote()))
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


def _poll(actors: list, last: list[dict | None], timeout_s: float = 2.0) -> list[dict]:
    """Progress of every region; a region that is restarting keeps its last snapshot."""
    refs = [a.progress.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    ready = set(ready)
    for i, ref in enumerate(refs):
        if ref in ready:
            try:
                last[i] = ray.get(ref)
                continue
            except ray.exceptions.RayError:
                pass
        if last[i] is not None:
            last[i] = {**last[i], "records": [], "evals": [], "state": "restarting"}
    return [snap if snap is not None else _placeholder(i) for i, snap in enumerate(last)]


def _placeholder(index: int) -> dict:
    nan = float("nan")
    return {
        "region": index, "arch": "?", "state": "starting", "step": 0, "steps": 0, "test_accuracy": nan,
        "loss_supervised": nan, "loss_distill": nan, "bytes_sent": 0, "bytes_received": 0, "records": [], "evals": [],
    }


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

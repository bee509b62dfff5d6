"""Run every region in this process, one thread each, over InProcessTransport.

Same trainer, same inbox, same serialisation round trip as the gRPC service;
no Ray, no sockets. The reference for tests and the benchmarks' baseline.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import torch

from codistill.config import RunConfig
from codistill.data import Split
from codistill.launch.fedavg import WeightAverager
from codistill.launch.monitor import RunMonitor
from codistill.launch.plan import RegionPlan, region_data
from codistill.region.messages import RegionError
from codistill.region.node import RegionNode
from codistill.region.trainer import RegionResult


def run_inprocess(
    cfg: RunConfig,
    split: Split,
    plans: list[RegionPlan],
    run_id: str,
    make_monitor: Callable[[str | None, dict[int, str]], RunMonitor],
    on_progress: Callable[[list[dict], list[dict]], None] | None = None,
    poll_s: float = 0.5,
    checkpoints: Path | None = None,
) -> list[RegionResult]:
    torch.set_num_threads(cfg.regions.torch_threads)
    nodes = [
        RegionNode(
            p.id, cfg, region_data(split, p), run_id=run_id, arch=p.arch, steps=p.steps, exchange=p.exchange, self_teach=p.self_teach,
            checkpoint_dir=checkpoints / f"region-{p.id}" if checkpoints else None,
        )
        for p in plans
    ]
    if any(p.average for p in plans):
        averager = WeightAverager([len(p.labeled) for p in plans])
        for node in nodes:
            node.trainer.average_with(averager.average)
    for node, p in zip(nodes, plans):
        node.prepare(p.receives_from)
    for node, p in zip(nodes, plans):
        if p.exchange:
            node.connect_inprocess({j: nodes[j].inbox for j in p.sends_to})
    results: dict[int, RegionResult] = {}
    errors: dict[int, BaseException] = {}

    def work(node: RegionNode) -> None:
        try:
            results[node.id] = node.run()
        except BaseException as exc:  # reported below with the region id
            errors[node.id] = exc
            for other in nodes:  # peers must not wait for a dead region's rounds
                other.trainer.stop()

    # No sockets in-process: run-level convergence is tracked but not served.
    monitor = make_monitor(None, {})
    stopping = False

    def observe() -> None:
        nonlocal stopping
        snapshots = [n.progress() for n in nodes]
        if monitor.observe(snapshots) and not stopping:
            stopping = True
            for n in nodes:
                n.trainer.stop()
        if on_progress:
            on_progress(snapshots, monitor.drain())

    threads = [threading.Thread(target=work, args=(n,), name=f"region-{n.id}", daemon=True) for n in nodes]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(poll_s / max(1, len(threads)))
            observe()
        observe()
    finally:
        for n in nodes:
            n.close()
        monitor.close()
    if errors:
        region, exc = sorted(errors.items())[0]
        raise RegionError(region, f"{type(exc).__name__}: {exc}") from exc
    return [results[p.id] for p in plans]

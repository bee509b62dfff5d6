"""One region as a running service, built fully wired in one call.

    region = build_region(cfg, plan, data, network, run_id=...)
    result = region.run()        # blocks; progress(), stop() and close() from other threads

`build_region` assembles the parts: the node (inbox, server, metrics), the
learner, the exchange policy the region's role calls for, and the chaos
wrappers its config names. Whoever hosts a region (a thread, a Ray actor)
uses only `Region`.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from codistill.config import RunConfig
from codistill.consensus import Rule
from codistill.records import ProgressSnapshot, RegionData, RegionPlan, RegionResult, Role
from codistill.region.chaos import Hang, LyingTransport
from codistill.region.exchange import Average, AsyncFresh, Exchange, NoExchange, SelfTeacher, SyncRounds, WeightAveraging
from codistill.region.journal import Journal
from codistill.region.learner import Learner, Teacher, Tensors, resolve_device
from codistill.region.loop import RegionLoop
from codistill.region.messages import RegionState
from codistill.region.node import RegionNode
from codistill.region.transport import NullTransport, Transport
from codistill.storage import Location


class Network(Protocol):
    average: Average | None

    def serve(self, node: RegionNode) -> None: ...

    def register(self, node: RegionNode) -> None: ...

    def transport(self, node: RegionNode, targets: tuple[int, ...]) -> Transport: ...

    def peer_versions(self, node: RegionNode, peers: tuple[int, ...]) -> dict[int, int]: ...


class Region:
    def __init__(self, plan: RegionPlan, node: RegionNode, loop: RegionLoop, transport: Transport):
        self.id, self.arch, self.steps = plan.id, plan.arch, plan.steps
        self._node, self._loop, self._transport = node, loop, transport

    @property
    def address(self) -> str | None:
        return self._node.address

    @property
    def metrics_address(self) -> str | None:
        return self._node.metrics_address

    @property
    def host(self) -> str:
        """The host part of the address the region serves on ("" when it serves nothing)."""
        address = self._node.address or ""
        return address.rpartition(":")[0].strip("[]")

    def run(self) -> RegionResult:
        try:
            result = self._loop.run()
        except Exception:
            self._node.live.state = RegionState.FAILED
            raise
        return replace(result, node_id=self._node.node_id, node_ip=self.host)

    def progress(self) -> ProgressSnapshot:
        """The region now, plus the events and evaluations since the last call."""
        evals = self._loop.journal.drain_evals()
        live, inbox = self._node.live, self._node.inbox
        return ProgressSnapshot(
            region=self.id, arch=self.arch, state=live.state.value, step=live.step, steps=self.steps,
            test_accuracy=live.test_accuracy, loss_supervised=live.loss_supervised, loss_distill=live.loss_distill,
            bytes_sent=live.bytes_sent, bytes_received=inbox.bytes_received() if inbox else 0,
            metrics_address=self.metrics_address, records=self._loop.journal.drain(), evals=evals, node_ip=self.host,
        )

    def stop(self) -> None:
        """End training at the next step (the result still comes from `run`)."""
        self._loop.stop()

    def close(self) -> None:
        self._loop.stop()
        self._transport.close()
        self._node.close()


def build_region(
    cfg: RunConfig, plan: RegionPlan, data: RegionData, network: Network, *, run_id: str,
    checkpoint_dir: Path | Location | None = None, restarts: int = 0,
) -> Region:
    """A region served, its inbox ready and registered with `network`, its parts wired; not yet running."""
    node = RegionNode(plan.id, cfg, data, run_id=run_id, steps=plan.steps, restarts=restarts)
    network.serve(node)
    inbox = node.prepare(list(plan.receives_from))
    learner = build_learner(cfg, plan, data)
    publishes = plan.role is Role.PREDICTIONS and bool(plan.sends_to)
    transport: Transport = network.transport(node, plan.sends_to) if publishes else NullTransport()
    if publishes and plan.id in cfg.chaos.liars:
        transport = LyingTransport(transport)
    node.declare(list(plan.sends_to) if plan.role is Role.PREDICTIONS else [])
    journal, stopped = Journal(), threading.Event()
    exchange = _exchange(cfg, plan, run_id, learner, transport, node, journal, network)
    chaos = cfg.chaos
    if chaos.hang_region == plan.id and chaos.hang_seconds > 0:
        exchange = Hang(exchange, chaos.hang_at_step, chaos.hang_seconds, node.pause, stopped)
    loop = RegionLoop(
        plan.id, cfg, plan.steps, learner, exchange, inbox, node.metrics_sink, live=node.live, journal=journal, stopped=stopped,
        checkpoint_dir=checkpoint_dir, restarts=restarts,
    )
    network.register(node)
    if restarts and cfg.exchange.mode == "sync":
        # Restored mid-run: the rounds its peers have already published will not be sent again.
        for peer, version in network.peer_versions(node, tuple(plan.receives_from)).items():
            inbox.seen_at(peer, version)
    return Region(plan, node, loop, transport)


def build_learner(cfg: RunConfig, plan: RegionPlan, data: RegionData) -> Learner:
    """The region's learner, its model drawn from the region's seed, on the device `regions.device` names."""
    device = resolve_device(cfg.regions.device, cfg.regions.num_gpus)
    rule = Rule.MEAN if plan.role is Role.SELF else Rule(cfg.consensus.rule)  # its own predictions: one teacher
    return Learner(cfg, plan.arch, plan.steps, Tensors.of(data, device), cfg.seed * 1000 + plan.id, Teacher(rule, cfg.consensus), device)


def _exchange(
    cfg: RunConfig, plan: RegionPlan, run_id: str, learner: Learner, transport: Transport, node: RegionNode, journal: Journal,
    network: Network,
) -> Exchange:
    """The exchange policy of the region's role, chosen once."""
    inbox, metrics = node.inbox, node.metrics_sink
    if plan.role is Role.SELF:
        return SelfTeacher(cfg, learner, inbox, metrics)
    if plan.role is Role.WEIGHTS:
        assert network.average is not None, "fedavg regions need the network's weight hub"
        return WeightAveraging(plan.id, cfg, learner, network.average, inbox, metrics)
    if plan.role is Role.PREDICTIONS and plan.sends_to:
        policy = SyncRounds if cfg.exchange.mode == "sync" else AsyncFresh
        return policy(plan.id, run_id, cfg, learner, transport, inbox, journal, metrics)
    return NoExchange(inbox, metrics)

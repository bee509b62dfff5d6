"""How a region exchanges with its peers: one policy per strategy, chosen once at start.

The loop calls `before_step(step)`, which publishes when a round is due and
returns the pool of predictions to distil from at this step (or None), and
`after_step(done)` once `done` steps are finished.

  NoExchange       independent, centralized: never exchanges.
  SyncRounds       codistill, exchange.mode sync: publish round r, wait for a quorum of
                   senders, distil from exactly round r's predictions (reproducible).
  AsyncFresh       codistill, exchange.mode async: never wait; distil from peers'
                   latest predictions while younger than max_staleness steps.
  SelfTeacher      selftrain: no peers; distil from the region's own last round.
  WeightAveraging  fedavg: average weights with every region every average_every steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch

from codistill.config import RunConfig
from codistill.metrics import MetricsSink
from codistill.records import PublishEvent
from codistill.region.inbox import PeerInbox, Pool
from codistill.region.journal import Journal
from codistill.region.learner import Learner
from codistill.region.messages import PredictionBatch, PublishReport
from codistill.region.transport import Transport

# fedavg's hub: (region, round, weights) -> the average of every region's weights.
Average = Callable[[int, int, dict], dict]


def chunk_ids(transfer_size: int, chunk_size: int | None, version: int, seed: int) -> torch.Tensor:
    """The transfer examples published at `version`; every region uses the same schedule."""
    if chunk_size is None or chunk_size >= transfer_size:
        return torch.arange(transfer_size)
    order = torch.randperm(transfer_size, generator=torch.Generator().manual_seed(seed))
    n_chunks = -(-transfer_size // chunk_size)
    k = version % n_chunks
    return torch.sort(order[k * chunk_size : (k + 1) * chunk_size]).values


def publish_round(step: int, interval: int, first: int) -> int | None:
    """The round a region publishes at `step`, or None. Rounds start at `first` (the burn-in),
    so no region ever distils from predictions its peers made before the burn-in ended."""
    if step < first or (step - first) % interval:
        return None
    return (step - first) // interval


def first_round(cfg: RunConfig) -> int:
    return cfg.distill.burn_in if cfg.distill.weight > 0 else 0


@dataclass
class Ledger:
    """What a region's exchange has cost so far (checkpointed with the region)."""

    version: int = -1  # the newest round published
    bytes_sent: int = 0  # prediction bytes delivered
    publish_failures: int = 0
    exchange_seconds: float = 0.0
    weight_bytes: int = 0  # fedavg: parameter bytes sent (= received)
    exchanges: int = 0

    def account(self, report: PublishReport, metrics: MetricsSink) -> None:
        if report.delivered or report.failed:
            metrics.published(report.seconds, report.bytes_sent, report.delivered, report.failed)
        self.bytes_sent += report.bytes_sent
        self.publish_failures += len(report.failed)


class Exchange:
    """The policy of a region that never exchanges; the base of those that do."""

    def __init__(self, inbox: PeerInbox | None, metrics: MetricsSink):
        self.ledger = Ledger()
        self.inbox, self.metrics = inbox, metrics

    def before_step(self, step: int) -> Pool | None:
        return None

    def after_step(self, done: int) -> None:
        pass

    def finish(self) -> None:
        """The loop has ended: account for what is still in flight."""

    def report(self, step: int) -> None:
        """Peers' counters, ages and refusals, for the region's metrics."""
        if self.inbox is None:
            return
        counters = dict(self.inbox.counters)
        self.metrics.exchange_state(
            {p: (c.messages, c.bytes) for p, c in counters.items()},
            self.inbox.staleness(step),
            dict(self.inbox.rejections),
            self.inbox.age_seconds(),
        )

    def state(self) -> dict:
        counters = self.inbox.counters.items() if self.inbox else ()
        return {
            **{f.name: getattr(self.ledger, f.name) for f in fields(Ledger)},
            "peer_counters": {p: (c.last_version, c.messages, c.bytes) for p, c in counters},
        }

    def load_state(self, state: dict) -> None:
        for f in fields(Ledger):
            setattr(self.ledger, f.name, state.get(f.name, f.default))
        if self.inbox is None:
            return
        self.inbox.own_version = self.ledger.version  # peers' rounds are judged against this region's own
        for peer, (version, messages, nbytes) in state["peer_counters"].items():
            if peer in self.inbox.counters:
                c = self.inbox.counters[peer]
                c.last_version, c.messages, c.bytes = version, c.messages + messages, c.bytes + nbytes


NoExchange = Exchange


class SelfTeacher(Exchange):
    """selftrain: every round, the region's own predictions on the round's chunk are its only teacher."""

    def __init__(self, cfg: RunConfig, learner: Learner, inbox: PeerInbox | None, metrics: MetricsSink):
        super().__init__(inbox, metrics)
        self.cfg, self.learner = cfg, learner
        self._pool: Pool | None = None

    def before_step(self, step: int) -> Pool | None:
        version = publish_round(step, self.cfg.exchange.publish_interval, first_round(self.cfg))
        if version is not None:
            start = time.perf_counter()
            ids = chunk_ids(len(self.learner.data.x_transfer), self.cfg.exchange.chunk_size, version, self.cfg.seed)
            probs = self.learner.predict_transfer(ids)
            self.ledger.version = version
            self.ledger.exchanges += 1
            self.ledger.exchange_seconds += time.perf_counter() - start
            self._pool = Pool(ids, probs[None], torch.ones(1, len(ids), dtype=torch.bool))
        return self._pool


class _Publishing(Exchange):
    """codistill: publish softened predictions on a chunk of the transfer set every round."""

    def __init__(
        self, region: int, run_id: str, cfg: RunConfig, learner: Learner, transport: Transport, inbox: PeerInbox,
        journal: Journal, metrics: MetricsSink,
    ):
        super().__init__(inbox, metrics)
        self.region, self.run_id, self.cfg, self.learner = region, run_id, cfg, learner
        self.transport, self.journal = transport, journal

    def before_step(self, step: int) -> Pool | None:
        self.inbox.clock = step
        version = publish_round(step, self.cfg.exchange.publish_interval, first_round(self.cfg))
        if version is not None:
            start = time.perf_counter()
            report = self._publish(step, version)
            arrived = self._collect(version)
            elapsed = time.perf_counter() - start
            self.report(step)
            self.ledger.exchange_seconds += elapsed
            self.journal.record(PublishEvent(
                self.region, step, time.time(), version=version, bytes=report.bytes_sent, delivered=len(report.delivered),
                failed=sorted(report.failed), publish_seconds=report.seconds, round_seconds=elapsed, peers_arrived=arrived,
            ))
        return self._pool_at(step)

    def _publish(self, step: int, version: int) -> PublishReport:
        T = self.cfg.distill.temperature
        ids = chunk_ids(len(self.learner.data.x_transfer), self.cfg.exchange.chunk_size, version, self.cfg.seed)
        batch = PredictionBatch(self.run_id, self.region, version, step, ids, T, self.learner.predict_transfer(ids))
        report = self.transport.publish(batch)
        self.ledger.account(report, self.metrics)
        self.ledger.exchanges += 1
        self.ledger.version = self.inbox.own_version = version
        return report

    def _collect(self, version: int) -> int:
        """Wait for peers' round `version` where the mode does; returns how many delivered it."""
        return 0

    def _pool_at(self, step: int) -> Pool | None:
        raise NotImplementedError

    def finish(self) -> None:
        self.ledger.account(self.transport.flush(), self.metrics)


class SyncRounds(_Publishing):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pool: Pool | None = None

    def _collect(self, version: int) -> int:
        ex, sources = self.cfg.exchange, self.inbox.sources
        if not sources:
            self._pool = None
            return 0
        needed = max(1, int(np.ceil(ex.quorum * len(sources))))
        arrived = self.inbox.wait_round(version, needed, ex.round_timeout_s)
        self._pool = self.inbox.round_pool(version)
        return arrived

    def _pool_at(self, step: int) -> Pool | None:
        return self._pool


class AsyncFresh(_Publishing):
    def _pool_at(self, step: int) -> Pool | None:
        return self.inbox.fresh_pool(step, self.cfg.exchange.max_staleness)


class WeightAveraging(Exchange):
    """fedavg: start from the weights every region starts from, then average every E steps.

    Averaging models that began from different random weights gives a useless
    model (their hidden units do not correspond), so FedAvg's regions share
    one initialisation, drawn from the run seed.
    """

    def __init__(self, region: int, cfg: RunConfig, learner: Learner, average: Average, inbox: PeerInbox | None, metrics: MetricsSink):
        super().__init__(inbox, metrics)
        self.region, self.cfg, self.learner, self.average = region, cfg, learner, average
        learner.share_initialisation(cfg.seed)

    def after_step(self, done: int) -> None:
        every = self.cfg.exchange.average_every
        if done % every:
            return
        start = time.perf_counter()
        weights = self.learner.weights()
        self.learner.load_weights(self.average(self.region, done // every, weights))
        if self.cfg.exchange.average_optimizer == "fresh":
            # As common FedAvg clients do: each round starts a new local optimiser.
            self.learner.fresh_optimizer()
        self.ledger.weight_bytes += sum(v.numel() * v.element_size() for v in weights.values())
        self.ledger.exchanges += 1
        self.ledger.exchange_seconds += time.perf_counter() - start

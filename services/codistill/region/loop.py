"""A region's training loop: exchange when due, one learner step, checkpoint, evaluate.

The loop knows nothing of Ray, gRPC, strategies or faults: its exchange
policy (codistill.region.exchange) decides what it distils from, and chaos
wraps the parts it is given.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from codistill.config import RunConfig
from codistill.metrics import MetricsSink
from codistill.records import CheckpointEvent, EvalEvent, Evaluation, RegionResult, ResumeEvent
from codistill.region import checkpoint
from codistill.region.exchange import Exchange
from codistill.region.inbox import PeerInbox
from codistill.region.journal import Journal, Live
from codistill.region.learner import Learner
from codistill.region.messages import RegionState
from codistill.region.stats import ConsensusStats
from codistill.storage import Location


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class RegionLoop:
    def __init__(
        self, region: int, cfg: RunConfig, steps: int, learner: Learner, exchange: Exchange, inbox: PeerInbox | None,
        metrics: MetricsSink, *, live: Live | None = None, journal: Journal | None = None, stopped: threading.Event | None = None,
        checkpoint_dir: Path | Location | None = None, restarts: int = 0,
    ):
        self.id, self.cfg, self.steps, self.learner, self.exchange = region, cfg, steps, learner, exchange
        self.inbox, self.metrics, self.checkpoint_dir, self.restarts = inbox, metrics, checkpoint_dir, restarts
        self.stats = ConsensusStats(inbox.sources if inbox else [], cfg.distill.temperature, metrics)
        self.live, self.journal = live or Live(), journal or Journal()
        self.stopped = stopped or threading.Event()
        self.start_step, self.eval_step = 0, -1
        self.curve: list[tuple[int, float]] = []
        self._cpu_before = 0.0  # CPU seconds spent before the checkpoint this run resumed from
        self._cpu_start = time.thread_time()

    def run(self) -> RegionResult:
        start, self._cpu_start = time.perf_counter(), time.thread_time()
        self._resume()
        self.live.state = RegionState.TRAINING
        self.learner.model.train()
        for step in range(self.start_step, self.steps):
            if self.stopped.is_set():
                break
            self.live.step = step
            pool = self.exchange.before_step(step)
            self.live.version, self.live.bytes_sent = self.exchange.ledger.version, self.exchange.ledger.bytes_sent
            outcome = self.learner.step(pool if self._distils(step) else None)
            self.live.loss_supervised, self.live.loss_distill = outcome.loss_supervised, outcome.loss_distill
            self.metrics.step(outcome.loss_supervised, outcome.loss_distill)
            self.stats.observe(outcome)
            self.exchange.after_step(step + 1)
            if (step + 1) % self.cfg.train.eval_every == 0 or step + 1 == self.steps:
                self._evaluate(step + 1)
            # After the evaluation: a run resumed from this step has its curve up to and with it.
            self._checkpoint(step + 1)
        return self._finish(start)

    def stop(self) -> None:
        self.stopped.set()
        if self.inbox is not None:
            self.inbox.interrupt()

    def _distils(self, step: int) -> bool:
        return step >= self.cfg.distill.burn_in and self.cfg.distill.weight > 0

    # ------------------------------------------------------------ evaluation
    def _evaluate(self, done: int) -> None:
        acc, probs = self.learner.evaluate()
        self.metrics.evaluated(acc)
        self._log_eval(done, acc, probs)
        kl, agree = self.stats.window()
        step, inbox = self.live.step, self.inbox
        self.journal.record(EvalEvent(
            self.id, done, time.time(), test_accuracy=acc, loss_supervised=self.live.loss_supervised,
            loss_distill=self.live.loss_distill, kl_to_consensus=kl, agreement=agree, bytes_sent=self.exchange.ledger.bytes_sent,
            bytes_received=inbox.bytes_received() if inbox else 0,
            peer_age_steps={str(p): a for p, a in inbox.staleness(step).items()} if inbox else {},
        ))
        self.exchange.report(step)

    def _log_eval(self, step: int, acc: float, probs: torch.Tensor) -> None:
        self.live.test_accuracy, self.eval_step = acc, step
        self.curve.append((step, acc))
        self.journal.evaluated(Evaluation(step, acc, probs.cpu().numpy().astype(np.float16), self.learner.probe()))

    def _finish(self, start: float) -> RegionResult:
        if not self.stopped.is_set():
            self.live.step = self.steps
        self.live.state = RegionState.DRAINING
        self.exchange.finish()
        ledger, inbox = self.exchange.ledger, self.inbox
        self.live.bytes_sent = ledger.bytes_sent
        acc, probs = self.learner.evaluate()
        self.metrics.evaluated(acc)
        if self.eval_step != self.live.step:  # stopped early: the last model was not evaluated yet
            self._log_eval(self.live.step, acc, probs)
        val_acc, val_probs = self.learner.validate()
        counters = inbox.counters if inbox else {}
        self.live.state = RegionState.STOPPED
        return RegionResult(
            id=self.id, arch=self.learner.arch, steps=self.live.step, labeled_samples=len(self.learner.data.y_labeled),
            test_accuracy=acc, per_class_recall=self.learner.recall(probs),
            bytes_sent=ledger.bytes_sent + ledger.weight_bytes,
            bytes_received=(inbox.bytes_received() if inbox else 0) + ledger.weight_bytes,
            messages_received={p: c.messages for p, c in counters.items()}, publish_failures=ledger.publish_failures,
            restarts=self.restarts, resumed_from=self.start_step, train_seconds=time.perf_counter() - start,
            exchange_seconds=ledger.exchange_seconds, peak_rss_bytes=peak_rss_bytes(), test_probs=probs.cpu().numpy(),
            validation_accuracy=val_acc, validation_probs=val_probs.cpu().numpy(), cpu_seconds=self._cpu_seconds(),
            curve=list(self.curve), peer_weights=self.stats.peer_weights(), exchanges=ledger.exchanges, weights=self.learner.saved_weights(),
        )

    def _cpu_seconds(self) -> float:
        return self._cpu_before + time.thread_time() - self._cpu_start

    # ------------------------------------------------------------ checkpoints
    def _checkpoint(self, done: int) -> None:
        every = self.cfg.fault.checkpoint_every
        if self.checkpoint_dir is None or not every or done % every or done >= self.steps:
            return
        state = {
            **self.learner.state(), **self.exchange.state(), **self.stats.state(),
            "restarts": self.restarts, "cpu_seconds": self._cpu_seconds(), "curve": list(self.curve),
        }
        checkpoint.save(self.checkpoint_dir, done, state)
        self.journal.record(CheckpointEvent(self.id, done, time.time()))

    def _resume(self) -> None:
        """Continue from the newest checkpoint, if there is one."""
        state = checkpoint.load_latest(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        if state is None:
            return
        self.learner.load_state(state)
        self.exchange.load_state(state)
        self.stats.load_state(state)
        self._cpu_before = state.get("cpu_seconds", 0.0)
        self.curve = [tuple(point) for point in state.get("curve", [])]
        self.start_step = self.live.step = int(state["step"])
        self.journal.record(ResumeEvent(self.id, self.start_step, time.time(), from_step=self.start_step, restarts=self.restarts))

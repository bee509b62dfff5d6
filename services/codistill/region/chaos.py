"""Deliberate faults (`chaos.*`), as wrappers around an honest region's parts.

A lying region publishes through a `LyingTransport`; a hanging one runs its
exchange policy inside `Hang`. The loop itself has no fault branch.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Callable

import torch

from codistill.region.exchange import Exchange, Ledger
from codistill.region.inbox import Pool
from codistill.region.messages import PredictionBatch, PublishReport
from codistill.region.transport import Transport


class LyingTransport:
    """chaos.liars: every batch becomes a confident lie, all mass on the class the region finds least likely."""

    def __init__(self, inner: Transport):
        self.inner = inner

    def publish(self, batch: PredictionBatch) -> PublishReport:
        lie = torch.nn.functional.one_hot(batch.probs.argmin(1), batch.probs.shape[1]).float()
        return self.inner.publish(replace(batch, probs=lie))

    def flush(self, timeout_s: float | None = None) -> PublishReport:
        return self.inner.flush(timeout_s)

    def close(self) -> None:
        self.inner.close()


class Hang(Exchange):
    """chaos.hang_*: at one step the region stops training and answering its peers for a while.

    `pause(seconds)` makes the region's server hold incoming calls as long; the
    wait ends early when the region is stopped.
    """

    def __init__(self, inner: Exchange, at_step: int, seconds: float, pause: Callable[[float], None], stopped: threading.Event):
        self.inner, self.at_step, self.seconds, self.pause, self.stopped = inner, at_step, seconds, pause, stopped

    @property
    def ledger(self) -> Ledger:
        return self.inner.ledger

    def before_step(self, step: int) -> Pool | None:
        if step == self.at_step:
            self.pause(self.seconds)
            self.stopped.wait(self.seconds)
        return self.inner.before_step(step)

    def after_step(self, done: int) -> None:
        self.inner.after_step(done)

    def finish(self) -> None:
        self.inner.finish()

    def report(self, step: int) -> None:
        self.inner.report(step)

    def state(self) -> dict:
        return self.inner.state()

    def load_state(self, state: dict) -> None:
        self.inner.load_state(state)

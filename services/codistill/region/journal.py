"""What a region shows of itself while it runs, written by its loop and read by whoever hosts it:
`Live` (its state now, for GetStatus and progress snapshots) and `Journal` (events for
metrics.jsonl and evaluations for the run-level monitor since the last look)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from codistill.records import Evaluation, RegionEvent
from codistill.region.messages import RegionState


@dataclass
class Live:
    state: RegionState = RegionState.STARTING
    step: int = 0
    version: int = -1  # the newest round published
    test_accuracy: float = 0.0
    bytes_sent: int = 0  # prediction bytes delivered so far
    loss_supervised: float = float("nan")
    loss_distill: float = float("nan")


class Journal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[RegionEvent] = []
        self._evals: list[Evaluation] = []

    def record(self, event: RegionEvent) -> None:
        with self._lock:
            self._events.append(event)

    def evaluated(self, evaluation: Evaluation) -> None:
        with self._lock:
            self._evals.append(evaluation)

    def drain(self) -> tuple[RegionEvent, ...]:
        with self._lock:
            out, self._events = tuple(self._events), []
        return out

    def drain_evals(self) -> tuple[Evaluation, ...]:
        with self._lock:
            out, self._evals = tuple(self._evals), []
        return out

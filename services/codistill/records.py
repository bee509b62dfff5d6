"""The records regions, runners, the driver, the monitor and the bench hand each other.

Frozen dataclasses, each with `to_json()` where it is written somewhere: a
region's result (an entry of `regions` in results.json), a strategy's result,
the events of metrics.jsonl, the progress snapshot a live display reads, and
the run state `--resume` continues from. Their JSON keys are the documented
file formats; the code reads fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


def write_json(path: Path, doc: Any, indent: int | None = 2) -> Path:
    """Write `doc` so that a reader sees the old file or the new one, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=indent))
    tmp.replace(path)
    return path


# ------------------------------------------------------------------ a region's inputs
@dataclass(frozen=True, eq=False)
class RegionData:
    """Arrays a region trains and evaluates on (uint8 images or float32)."""

    x_labeled: np.ndarray
    y_labeled: np.ndarray
    x_transfer: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    # The validation split every choice is made on; None when there is none.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


class Role(str, Enum):
    """How a region of a strategy exchanges; its exchange policy follows from this."""

    ALONE = "alone"  # independent, centralized, and any region without peers
    PREDICTIONS = "predictions"  # codistill
    SELF = "self"  # selftrain: distils from its own earlier predictions
    WEIGHTS = "weights"  # fedavg


@dataclass(frozen=True, eq=False)
class RegionPlan:
    """One region of a strategy: what it trains, how long, and whom it exchanges with."""

    id: int
    arch: str
    steps: int
    role: Role
    labeled: np.ndarray  # indices into split.dataset.train
    sends_to: tuple[int, ...] = ()
    receives_from: tuple[int, ...] = ()


# ------------------------------------------------------------------ events (metrics.jsonl)
def _plain(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in fields(record)}


@dataclass(frozen=True)
class RegionEvent:
    """Something a region did at `step`; one line of metrics.jsonl."""

    kind: ClassVar[str] = ""
    region: int
    step: int
    time: float

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **_plain(self)}


@dataclass(frozen=True)
class EvalEvent(RegionEvent):
    kind: ClassVar[str] = "eval"
    test_accuracy: float
    loss_supervised: float
    loss_distill: float
    kl_to_consensus: float | None  # mean since the last evaluation; None: no distillation step
    agreement: float | None
    bytes_sent: int
    bytes_received: int
    peer_age_steps: dict[str, int]


@dataclass(frozen=True)
class PublishEvent(RegionEvent):
    kind: ClassVar[str] = "publish"
    version: int
    bytes: int
    delivered: int
    failed: list[int]
    publish_seconds: float
    round_seconds: float
    peers_arrived: int


@dataclass(frozen=True)
class CheckpointEvent(RegionEvent):
    kind: ClassVar[str] = "checkpoint"


@dataclass(frozen=True)
class ResumeEvent(RegionEvent):
    kind: ClassVar[str] = "resume"
    from_step: int
    restarts: int


@dataclass(frozen=True)
class RunEvent:
    """The k-th evaluation of the whole run: every region's k-th evaluation combined."""

    kind: ClassVar[str] = "run"
    evaluation: int
    step: int
    time: float
    disagreement: float
    ensemble_test_accuracy: float
    mean_test_accuracy: float
    converged: bool

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **_plain(self)}


# ------------------------------------------------------------------ progress
@dataclass(frozen=True, eq=False)
class Evaluation:
    """One evaluation of one region, for run-level figures: test predictions for the ensemble's
    accuracy, and predicted classes on a fixed probe of the transfer set for convergence."""

    step: int
    accuracy: float
    test_probs: np.ndarray  # [N_test, C] float16
    probe: np.ndarray  # [PROBE_SIZE] int16


@dataclass(frozen=True, eq=False)
class ProgressSnapshot:
    """A region now, plus the events and evaluations since the previous snapshot."""

    region: int
    arch: str
    state: str
    step: int
    steps: int
    test_accuracy: float
    loss_supervised: float
    loss_distill: float
    bytes_sent: int
    bytes_received: int
    metrics_address: str | None = None
    records: tuple[RegionEvent, ...] = ()
    evals: tuple[Evaluation, ...] = ()
    node_ip: str = ""  # the host the region serves on ("" in-process)

    @classmethod
    def placeholder(cls, region: int) -> ProgressSnapshot:
        """A region not heard from yet."""
        nan = float("nan")
        return cls(region, "?", "starting", 0, 0, nan, nan, nan, 0, 0)

    def restarting(self) -> ProgressSnapshot:
        """This region's last snapshot while it restarts: nothing new."""
        return replace(self, state="restarting", records=(), evals=())


# ------------------------------------------------------------------ results
@dataclass(frozen=True, eq=False)
class RegionResult:
    id: int
    arch: str
    steps: int
    labeled_samples: int
    test_accuracy: float
    per_class_recall: list[float]
    bytes_sent: int
    bytes_received: int
    messages_received: dict[int, int]
    publish_failures: int
    restarts: int
    resumed_from: int
    train_seconds: float
    exchange_seconds: float
    peak_rss_bytes: int  # of the hosting process (in-process runs share one)
    test_probs: np.ndarray = field(repr=False)
    # Accuracy on the validation split (NaN without one): what choices are made on.
    validation_accuracy: float = float("nan")
    validation_probs: np.ndarray | None = field(default=None, repr=False)
    # CPU seconds of the region's own thread: its compute, whatever else shares the machine.
    cpu_seconds: float = 0.0
    # Test accuracy at every evaluation: [(step, accuracy), ...].
    curve: list[tuple[int, float]] = field(default_factory=list)
    # Mean consensus weight this region gave each peer over the run (its attention row).
    peer_weights: dict[int, float] = field(default_factory=dict)
    # Exchanges made: prediction publishes (codistill), own rounds (selftrain) or weight averages (fedavg).
    exchanges: int = 0
    # Where the region ran: its Ray node ("" outside Ray) and the address it served gRPC on.
    node_id: str = ""
    node_ip: str = ""
    # The final model's weights as safetensors bytes (codistill.saved): the driver saves them under models/.
    weights: bytes = field(default=b"", repr=False)

    _UNSAVED: ClassVar[tuple[str, ...]] = ("test_probs", "validation_probs", "weights")

    def to_json(self) -> dict[str, Any]:
        """The region's entry in results.json (predictions are not saved)."""
        d = {k: v for k, v in _plain(self).items() if k not in self._UNSAVED}
        d["messages_received"] = {str(k): v for k, v in self.messages_received.items()}
        d["peer_weights"] = {str(k): v for k, v in self.peer_weights.items()}
        d["curve"] = [list(point) for point in self.curve]
        return d


@dataclass(frozen=True)
class ResidentMemory:
    """A strategy's peak resident memory while it trained (codistill.launch.memory).

    `peak_total_bytes`: the largest sum over the counted processes (`scope`) at one sample.
    `peak_region_bytes`: with Ray, the largest peak of a region-hosting process divided by the regions it
    hosts; in one process, (peak total - total before the regions were built) / regions; None where the
    regions' processes were not counted (a cluster this process joined). `measure`: pss or rss.
    """

    measure: str
    peak_total_bytes: int
    peak_region_bytes: int | None
    scope: str
    samples: int = 0


@dataclass(frozen=True, eq=False)
class StrategyResult:
    strategy: str
    regions: tuple[RegionResult, ...]
    ensemble_test_accuracy: float
    wall_seconds: float  # training, every invocation together (a resumed run adds the time before it stopped)
    transport: str
    ensemble_validation_accuracy: float = float("nan")
    wall_seconds_this_run: float | None = None  # training in this invocation (None: the same as wall_seconds)
    linger_seconds: float = 0.0  # endpoints kept up after training (monitor.linger_s), not in the figures above
    memory: ResidentMemory | None = None  # sampled over this invocation (None: not measured)

    @property
    def mean_test_accuracy(self) -> float:
        return float(np.mean([r.test_accuracy for r in self.regions]))

    @property
    def mean_validation_accuracy(self) -> float:
        return float(np.mean([r.validation_accuracy for r in self.regions]))

    def to_json(self) -> dict[str, Any]:
        """The strategy's figures as results.json holds them (the top level, or an entry of `compare`)."""
        accs = [r.test_accuracy for r in self.regions]
        return {
            "strategy": self.strategy,
            "transport": self.transport,
            "mean_test_accuracy": self.mean_test_accuracy,
            "min_test_accuracy": float(np.min(accs)),
            "max_test_accuracy": float(np.max(accs)),
            "ensemble_test_accuracy": self.ensemble_test_accuracy,
            # What every choice is made on (the test figures above only report).
            "mean_validation_accuracy": self.mean_validation_accuracy,
            "ensemble_validation_accuracy": self.ensemble_validation_accuracy,
            # The regions' own compute, summed: strategies differ in work per step.
            "cpu_seconds": float(sum(r.cpu_seconds for r in self.regions)),
            "bytes_sent": int(sum(r.bytes_sent for r in self.regions)),
            "bytes_received": int(sum(r.bytes_received for r in self.regions)),
            "wall_seconds": self.wall_seconds,
            "wall_seconds_this_run": self.wall_seconds if self.wall_seconds_this_run is None else self.wall_seconds_this_run,
            "linger_seconds": self.linger_seconds,
            **self._memory_json(),
            "regions": [r.to_json() for r in self.regions],
        }

    def _memory_json(self) -> dict[str, Any]:
        m = self.memory
        return {
            "peak_total_resident_bytes": m.peak_total_bytes if m else None,
            "peak_region_resident_bytes": m.peak_region_bytes if m else None,
            "resident_measure": m.measure if m else None,
            "resident_scope": m.scope if m else None,
        }


@dataclass(frozen=True)
class DatasetInfo:
    """The sizes of a run's split, as results.json reports them."""

    name: str
    train: int
    test: int
    transfer: int
    validation: int
    labeled_per_region: list[int]
    classes: list[str]

    def to_json(self) -> dict[str, Any]:
        return _plain(self)


# ------------------------------------------------------------------ the run state
@dataclass(frozen=True)
class RunState:
    """What `--resume` needs (state.json): the run id, the strategies in order, and the
    figures (results.json documents) of those that finished."""

    run_id: str
    strategies: tuple[str, ...]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Training seconds an unfinished strategy spent in invocations that were stopped.
    spent: dict[str, float] = field(default_factory=dict)

    def finished(self, strategy: str, summary: dict[str, Any]) -> RunState:
        return replace(self, done={**self.done, strategy: summary}, spent={k: v for k, v in self.spent.items() if k != strategy})

    def stopped(self, strategy: str, seconds: float) -> RunState:
        """`strategy` was interrupted after training `seconds` in this invocation."""
        return replace(self, spent={**self.spent, strategy: self.spent.get(strategy, 0.0) + seconds})

    @property
    def pending(self) -> list[str]:
        return [s for s in self.strategies if s not in self.done]

    def summaries(self) -> dict[str, dict[str, Any]]:
        """The finished strategies' figures, in run order."""
        return {s: self.done[s] for s in self.strategies if s in self.done}

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "strategies": list(self.strategies), "done": dict(self.done), "spent": dict(self.spent)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RunState:
        spent = {str(k): float(v) for k, v in doc.get("spent", {}).items()}
        return cls(str(doc["run_id"]), tuple(doc["strategies"]), dict(doc.get("done", {})), spent)

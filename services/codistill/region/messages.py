"""Domain values exchanged between regions, free of protobuf and gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from codistill.errors import MessageRejected, RegionError  # noqa: F401  (raised and caught by the wire modules)


class RegionState(str, Enum):
    STARTING = "starting"
    TRAINING = "training"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class PredictionBatch:
    """One region's softened predictions for some transfer examples."""

    run_id: str
    sender: int
    version: int  # publish counter of the sender; the round in sync mode
    step: int  # sender's training step when it predicted
    sample_ids: torch.Tensor  # [n] int64 indices into the transfer set
    temperature: float
    probs: torch.Tensor  # [n, C] float32, rows sum to 1


class Rejection(str, Enum):
    """Why an incoming message was refused; a bounded set, safe as a metric label."""

    WRONG_RUN = "wrong_run"
    UNKNOWN_SENDER = "unknown_sender"
    REPLAY = "replay"
    NOT_READY = "not_ready"
    BAD_TEMPERATURE = "bad_temperature"
    BAD_DTYPE = "bad_dtype"
    BAD_SHAPE = "bad_shape"
    BAD_CLASS_COUNT = "bad_class_count"
    NON_FINITE = "non_finite"
    NEGATIVE = "negative"
    NOT_NORMALISED = "not_normalised"
    UNKNOWN_SAMPLE = "unknown_sample"
    DUPLICATE_SAMPLE = "duplicate_sample"
    TOO_LARGE = "too_large"
    UNDECODABLE = "undecodable"
    UNAUTHENTICATED = "unauthenticated"
    WRONG_IDENTITY = "wrong_identity"
    FUTURE_VERSION = "future_version"
    # Compressed predictions: no encoding this region knows, a kept class outside 0..C-1, one
    # class kept twice in a row.
    UNKNOWN_ENCODING = "unknown_encoding"
    BAD_CLASS_INDEX = "bad_class_index"
    DUPLICATE_CLASS = "duplicate_class"

    @property
    def depends_on_state(self) -> bool:
        """True for refusals that hinge on the receiver's state (FAILED_PRECONDITION)."""
        return self in (
            Rejection.WRONG_RUN,
            Rejection.UNKNOWN_SENDER,
            Rejection.REPLAY,
            Rejection.NOT_READY,
            Rejection.FUTURE_VERSION,
        )


@dataclass
class PublishReport:
    bytes_sent: int = 0
    delivered: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class PeerCounters:
    last_version: int = -1
    messages: int = 0
    bytes: int = 0


@dataclass
class RegionStatus:
    run_id: str
    region: int
    state: RegionState
    step: int
    version: int
    test_accuracy: float
    bytes_sent: int
    bytes_received: int
    peers: dict[int, PeerCounters]
    # The Ray node hosting the region ("" outside Ray) and the address it serves gRPC on.
    node_id: str = ""
    address: str = ""

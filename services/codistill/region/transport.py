"""The seam between a region's training logic and the network.

A region's exchange only ever calls `Transport.publish` (and `flush` when it ends). `GrpcTransport`
(codistill.region.client) is the real one; `InProcessTransport` delivers to
peers' inboxes in the same process, with the same serialisation round trip, so
the math is identical and tests and benchmarks have a reference without
sockets.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

from codistill.region import serde
from codistill.region.inbox import PeerInbox
from codistill.region.messages import MessageRejected, PredictionBatch, PublishReport


class Transport(Protocol):
    def publish(self, batch: PredictionBatch) -> PublishReport:
        """Send one batch to every peer this region sends to."""

    def flush(self, timeout_s: float | None = None) -> PublishReport:
        """Wait for sends still in flight; report their outcomes."""

    def close(self) -> None:
        """Release connections."""


class NullTransport:
    """For strategies that never exchange."""

    def publish(self, batch: PredictionBatch) -> PublishReport:
        return PublishReport()

    def flush(self, timeout_s: float | None = None) -> PublishReport:
        return PublishReport()

    def close(self) -> None:
        pass


class InProcessTransport:
    """Delivers straight into peers' inboxes; bytes are what gRPC would have carried."""

    def __init__(self, targets: dict[int, PeerInbox], encoding: serde.Encoding | str = "float16"):
        self.targets = dict(targets)
        self.encoding = encoding

    def publish(self, batch: PredictionBatch) -> PublishReport:
        start = time.perf_counter()
        message = serde.predictions_to_proto(batch, self.encoding)
        size = message.ByteSize()
        decoded = serde.predictions_from_proto(message)
        report = PublishReport()
        for peer, inbox in self.targets.items():
            try:
                inbox.receive(decoded, size)
            except MessageRejected as exc:
                report.failed[peer] = exc.reason.value
                continue
            report.delivered.append(peer)
            report.bytes_sent += size
        report.seconds = time.perf_counter() - start
        return report

    def flush(self, timeout_s: float | None = None) -> PublishReport:
        return PublishReport()  # deliveries are synchronous

    def close(self) -> None:
        self.targets.clear()


class DeferredTransport:
    """A transport made at its first use.

    A region is built, served and registered before its peers are; its first
    publish comes after every region of the run is up, so that is when its
    peers are looked up. After `close` nothing is sent.
    """

    def __init__(self, make: Callable[[], Transport]):
        self._make = make
        self._inner: Transport | None = None
        self._closed = False
        self._lock = threading.Lock()

    def _transport(self) -> Transport:
        with self._lock:
            if self._inner is None:
                self._inner = NullTransport() if self._closed else self._make()
            return self._inner

    def publish(self, batch: PredictionBatch) -> PublishReport:
        return self._transport().publish(batch)

    def flush(self, timeout_s: float | None = None) -> PublishReport:
        with self._lock:
            inner = self._inner
        return inner.flush(timeout_s) if inner is not None else PublishReport()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            inner = self._inner
        if inner is not None:
            inner.close()

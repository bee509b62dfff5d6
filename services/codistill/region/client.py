"""gRPC client side of the exchange: one channel per peer, deadlines, retries."""

from __future__ import annotations

import collections
import functools
import json
import threading
import time
from typing import Callable

import grpc

from codistill.region import serde
from codistill.region.messages import PredictionBatch, PublishReport, RegionStatus
from codistill.region.security import TLS_SERVER_NAME, TlsFiles, bearer
from codistill.v1 import region_pb2_grpc

# Retry only UNAVAILABLE (peer restarting or not yet listening); everything
# else is an answer and retrying it would be wrong.
_RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{"service": "codistill.v1.Region"}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


def channel_options(max_message_bytes: int) -> list[tuple[str, object]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(_RETRY_POLICY)),
    ]


def open_channel(address: str, max_message_bytes: int, tls: TlsFiles | None = None) -> grpc.Channel:
    options = channel_options(max_message_bytes)
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    options.append(("grpc.ssl_target_name_override", TLS_SERVER_NAME))
    return grpc.secure_channel(address, tls.channel_credentials(), options=options)


def get_status(
    address: str,
    timeout_s: float = 5.0,
    max_message_bytes: int = 4 * 1024 * 1024,
    *,
    token: str | None = None,
    tls: TlsFiles | None = None,
) -> RegionStatus:
    """Read a region's status; `token` is a token derived from the run's secret (e.g. security.operator_token)."""
    with open_channel(address, max_message_bytes, tls) as channel:
        stub = region_pb2_grpc.RegionStub(channel)
        reply = stub.GetStatus(serde.status_request(), timeout=timeout_s, metadata=bearer(token) if token else None)
    return serde.status_from_proto(reply)


class GrpcTransport:
    """Pushes each batch to all peers without waiting for them.

    Every call has a deadline. Each peer gets its messages one at a time and
    in order: while a call to a peer is in flight, newer messages wait in a
    small per-peer queue and go out from the completion callback. With
    `keep_all` (sync rounds) every round is queued; otherwise only the newest
    message waits (stale predictions are worth less than fresh ones). A queue
    that overflows drops its oldest message and counts it as DROPPED, so a hung
    peer costs its senders nothing but memory for a few messages. Outcomes
    arrive by callback and are reported by the next `publish` (or by `flush`).
    When a peer stays UNAVAILABLE, its address is looked up again through
    `resolve`, so a restarted region is found.
    """

    def __init__(
        self,
        targets: dict[int, str],
        *,
        dtype: str = "float16",
        encoding: serde.Encoding | None = None,
        rpc_timeout_s: float = 10.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        token: str | None = None,
        tls: TlsFiles | None = None,
        resolve: Callable[[int], str | None] | None = None,
        keep_all: bool = True,
        max_queued: int = 8,
    ):
        self.dtype = dtype
        # How predictions travel; without one, the dense tensor in `dtype`.
        self.encoding = encoding or serde.Encoding("dense", dtype)
        self.rpc_timeout_s = rpc_timeout_s
        self._max_message_bytes = max_message_bytes
        self._tls = tls
        self._resolve = resolve
        self._keep_all = keep_all
        self._max_queued = max_queued
        self._metadata = bearer(token) if token else None
        # Re-entrant: grpc runs a done-callback at once, in this thread, if the call already failed.
        self._lock = threading.RLock()
        self._addresses = dict(targets)
        self._channels = {peer: open_channel(addr, max_message_bytes, tls) for peer, addr in targets.items()}
        self._stubs = {peer: region_pb2_grpc.RegionStub(ch) for peer, ch in self._channels.items()}
        self._inflight: dict[int, grpc.Future] = {}
        self._queued: dict[int, collections.deque] = {peer: collections.deque() for peer in targets}
        self._completed = PublishReport()
        self._closed = False

    def _send(self, peer: int, message, size: int) -> None:
        """Start one call to `peer`; caller holds the lock."""
        stub = self._stubs.get(peer)
        if stub is None or self._closed:
            return
        started = time.perf_counter()
        future = stub.PushPredictions.future(message, timeout=self.rpc_timeout_s, metadata=self._metadata)
        self._inflight[peer] = future
        future.add_done_callback(functools.partial(self._on_done, peer, size, started))

    def _on_done(self, peer: int, size: int, started: float, future: grpc.Future) -> None:
        latency = time.perf_counter() - started
        code = None
        try:
            future.result()
        except grpc.RpcError as exc:
            code = exc.code()
        except Exception:  # cancelled on close
            code = grpc.StatusCode.CANCELLED
        if code is grpc.StatusCode.UNAVAILABLE:
            self._reresolve(peer)
        with self._lock:
            report = self._completed
            report.seconds = max(report.seconds, latency)
            if code is None:
                report.delivered.append(peer)
                report.bytes_sent += size
            else:
                report.failed[peer] = code.name
            if self._inflight.get(peer) is future:
                del self._inflight[peer]
            queue = self._queued.get(peer)
            if queue:
                self._send(peer, *queue.popleft())

    def _reresolve(self, peer: int) -> None:
        if self._resolve is None:
            return
        address = self._resolve(peer)
        with self._lock:
            if address and address != self._addresses.get(peer) and not self._closed:
                old = self._channels.get(peer)
                self._addresses[peer] = address
                self._channels[peer] = open_channel(address, self._max_message_bytes, self._tls)
                self._stubs[peer] = region_pb2_grpc.RegionStub(self._channels[peer])
                if old is not None:
                    old.close()

    def _take_completed(self) -> PublishReport:
        with self._lock:
            report, self._completed = self._completed, PublishReport()
        return report

    def publish(self, batch: PredictionBatch) -> PublishReport:
        message = serde.predictions_to_proto(batch, self.encoding)
        size = message.ByteSize()  # what crosses the wire
        report = self._take_completed()
        with self._lock:
            for peer in list(self._stubs):
                if peer not in self._inflight:
                    self._send(peer, message, size)
                    continue
                queue = self._queued[peer]
                if not self._keep_all:
                    queue.clear()  # only the newest predictions are worth sending
                queue.append((message, size))
                if len(queue) > self._max_queued:
                    queue.popleft()
                    report.failed[peer] = "DROPPED"
        return report

    def flush(self, timeout_s: float | None = None) -> PublishReport:
        """Wait for calls in flight and queued (up to the deadline) and report them."""
        deadline = time.monotonic() + (self.rpc_timeout_s if timeout_s is None else timeout_s)
        while time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._inflight) or any(self._queued.values())
            if not busy:
                break
            time.sleep(0.01)
        return self._take_completed()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for queue in self._queued.values():
                queue.clear()
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
            self._stubs.clear()

"""gRPC client side of the exchange: one channel per peer, deadlines, retries."""

from __future__ import annotations

import json
import time

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
    with open_channel(address, max_message_bytes, tls) as channel:
        stub = region_pb2_grpc.RegionStub(channel)
        reply = stub.GetStatus(serde.status_request(), timeout=timeout_s, metadata=bearer(token) if token else None)
    return serde.status_from_proto(reply)


class GrpcTransport:
    """Pushes each batch to all peers concurrently, every call under a deadline."""

    def __init__(
        self,
        targets: dict[int, str],
        *,
        dtype: str = "float16",
        rpc_timeout_s: float = 10.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        token: str | None = None,
        tls: TlsFiles | None = None,
    ):
        self.dtype = dtype
        self.rpc_timeout_s = rpc_timeout_s
        self._metadata = bearer(token) if token else None
        self._channels = {peer: open_channel(addr, max_message_bytes, tls) for peer, addr in targets.items()}
        self._stubs = {peer: region_pb2_grpc.RegionStub(ch) for peer, ch in self._channels.items()}

    def publish(self, batch: PredictionBatch) -> PublishReport:
        start = time.perf_counter()
        message = serde.predictions_to_proto(batch, self.dtype)
        size = message.ByteSize()
        calls = {
            peer: stub.PushPredictions.future(message, timeout=self.rpc_timeout_s, metadata=self._metadata)
            for peer, stub in self._stubs.items()
        }
        report = PublishReport()
        for peer, call in calls.items():
            try:
                call.result()
            except grpc.RpcError as exc:
                report.failed[peer] = exc.code().name if exc.code() else "UNKNOWN"
                continue
            report.delivered.append(peer)
            report.bytes_sent += size
        report.seconds = time.perf_counter() - start
        return report

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        self._stubs.clear()

"""Thin gRPC servicer: size, decode, identity, then the inbox; refusals map to status codes.

Requests arrive as raw bytes (no deserializer), so the region's own size cap and
undecodable bytes are refused, and counted, by the region itself. The work runs
on a small thread pool, apart from the event loop that keeps health checks and
slow or stalled streams answerable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import grpc

from codistill.region import serde
from codistill.region.inbox import PeerInbox
from codistill.region.messages import MessageRejected, RegionStatus, Rejection
from codistill.region.security import Authority, Identity
from codistill.v1 import region_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = "codistill.v1.Region"
# Decoding and storing are short and hold the GIL: a few threads keep a queue moving.
HANDLER_THREADS = 4


def status_code(reason: Rejection) -> grpc.StatusCode:
    if reason is Rejection.TOO_LARGE:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if reason is Rejection.UNAUTHENTICATED:
        return grpc.StatusCode.UNAUTHENTICATED
    if reason is Rejection.WRONG_IDENTITY:
        return grpc.StatusCode.PERMISSION_DENIED
    if reason.depends_on_state:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INVALID_ARGUMENT


class RegionServicer:
    def __init__(
        self,
        inbox: Callable[[], PeerInbox | None],
        status: Callable[[], RegionStatus],
        *,
        max_message_bytes: int,
        authority: Authority | None = None,
    ):
        # The inbox exists only once the region is wired to its peers.
        self._inbox = inbox
        self._status = status
        self.max_message_bytes = max_message_bytes
        self._authority = authority or Authority()
        self._pool = ThreadPoolExecutor(max_workers=HANDLER_THREADS, thread_name_prefix="region-rpc")
        # Refusals while there is no inbox yet; the node folds them in once it has one.
        self.early_rejections: Counter[str] = Counter()
        # Calls that reached a handler; authentication tests assert refused calls never do.
        self.entered = 0
        # Chaos: until this monotonic time the handler does not answer (a hung region).
        self.pause_until = 0.0

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "PushPredictions": grpc.unary_unary_rpc_method_handler(
                    self.PushPredictions, response_serializer=region_pb2.PushPredictionsResponse.SerializeToString
                ),
                "GetStatus": grpc.unary_unary_rpc_method_handler(
                    self.GetStatus, response_serializer=region_pb2.RegionStatus.SerializeToString
                ),
            },
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _maybe_hang(self) -> None:
        delay = self.pause_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    # ------------------------------------------------------------ handlers
    async def PushPredictions(self, raw: bytes, context):
        self.entered += 1
        await self._maybe_hang()
        identity = self._authority.identify(context)
        try:
            version = await asyncio.get_running_loop().run_in_executor(self._pool, self.accept, raw, identity)
        except MessageRejected as exc:
            await context.abort(status_code(exc.reason), str(exc))
        except Exception:  # a bug, not bad input: never surface as UNKNOWN
            log.exception("PushPredictions failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error while storing predictions")
        return serde.push_response_to_proto(version)

    async def GetStatus(self, raw: bytes, context):
        self.entered += 1
        try:
            status = await asyncio.get_running_loop().run_in_executor(self._pool, self._status)
            return serde.status_to_proto(status)
        except Exception:
            log.exception("GetStatus failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error while reading status")

    # --------------------------------------------------------- plain logic
    def accept(self, raw: bytes, identity: Identity) -> int:
        """Size, decode, identity and content checks, then store; raises MessageRejected, counted."""
        inbox = self._inbox()
        try:
            if inbox is None:
                raise MessageRejected(Rejection.NOT_READY, "region is not wired to its peers yet")
            if len(raw) > self.max_message_bytes:
                raise MessageRejected(Rejection.TOO_LARGE, f"{len(raw)} bytes exceed this region's cap of {self.max_message_bytes}")
            request = serde.decode_push(raw, max_ids=inbox.transfer_size, num_classes=inbox.num_classes)
            identity.check_sender(request.sender_id)
            batch = serde.predictions_from_proto(request, max_ids=inbox.transfer_size, num_classes=inbox.num_classes)
        except MessageRejected as exc:
            self._count(inbox, exc.reason)
            raise
        return inbox.receive(batch, len(raw))  # counts its own refusals

    def _count(self, inbox: PeerInbox | None, reason: Rejection) -> None:
        if inbox is not None:
            inbox.reject(reason)
        else:
            self.early_rejections[reason.value] += 1

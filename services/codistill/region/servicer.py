"""Thin gRPC servicer: decode, hand to the inbox, map refusals to status codes."""

from __future__ import annotations

import logging
import time
from typing import Callable

import grpc

from codistill.region import serde
from codistill.region.inbox import PeerInbox
from codistill.region.messages import MessageRejected, RegionStatus, Rejection
from codistill.v1 import region_pb2_grpc

log = logging.getLogger(__name__)


def status_code(reason: Rejection) -> grpc.StatusCode:
    if reason is Rejection.TOO_LARGE:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if reason is Rejection.UNAUTHENTICATED:
        return grpc.StatusCode.UNAUTHENTICATED
    if reason.depends_on_state:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INVALID_ARGUMENT


class RegionServicer(region_pb2_grpc.RegionServicer):
    def __init__(self, inbox: Callable[[], PeerInbox | None], status: Callable[[], RegionStatus]):
        # The inbox exists only once the region is wired to its peers.
        self._inbox = inbox
        self._status = status
        # Calls that reached a handler; authentication tests assert refused calls never do.
        self.entered = 0
        # Chaos: until this monotonic time the handler does not answer (a hung region).
        self.pause_until = 0.0

    def _maybe_hang(self) -> None:
        delay = self.pause_until - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def PushPredictions(self, request, context):
        self.entered += 1
        self._maybe_hang()
        inbox = self._inbox()
        code, detail = None, ""
        try:
            if inbox is None:
                raise MessageRejected(Rejection.NOT_READY, "region is not wired to its peers yet")
            try:
                batch = serde.predictions_from_proto(request)
            except MessageRejected as exc:
                inbox.reject(exc.reason)
                raise
            version = inbox.receive(batch, request.ByteSize())
        except MessageRejected as exc:
            code, detail = status_code(exc.reason), str(exc)
        except Exception:  # never surface as UNKNOWN
            log.exception("PushPredictions failed")
            code, detail = grpc.StatusCode.INTERNAL, "internal error while storing predictions"
        if code is not None:
            context.abort(code, detail)
        return serde.push_response_to_proto(version)

    def GetStatus(self, request, context):
        self.entered += 1
        try:
            return serde.status_to_proto(self._status())
        except Exception:
            log.exception("GetStatus failed")
            context.abort(grpc.StatusCode.INTERNAL, "internal error while reading status")

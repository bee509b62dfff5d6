"""A region's gRPC server: the Region service plus standard health, on its own event loop.

The server is asyncio-based, so a call waiting for its request body holds no
thread: slow or never-finished streams cannot starve honest pushes or health
checks. What bounds them instead:
  * at most `max_concurrent_rpcs` calls at once (memory: each may buffer up to
    the transport limit), and MAX_STREAMS_PER_CONNECTION per connection;
  * connections are closed after MAX_CONNECTION_AGE_MS (+ a grace for calls in
    flight, longer than any honest deadline) and when idle; keepalive pings find
    dead peers; a TLS or HTTP/2 handshake must finish within HANDSHAKE_TIMEOUT_MS.
Messages up to the transport limit, a bit above the region's own cap, reach
the handler, which refuses (and counts) anything above the cap itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codistill.region.security import TlsFiles, TokenBook, TokenInterceptor
from codistill.region.servicer import SERVICE_NAME, RegionServicer

HEALTH_SERVICES = ("", SERVICE_NAME)
# An honest peer has one push in flight (plus a status call); a few more leave room for retries.
MAX_STREAMS_PER_CONNECTION = 16
# Calls at once, at most; fewer when each may buffer a large message (see max_concurrent_rpcs).
MAX_CONCURRENT_RPCS = 256
CONCURRENT_MESSAGE_BUDGET_BYTES = 512 * 1024 * 1024
MIN_CONCURRENT_RPCS = 32
MAX_CONNECTION_AGE_MS = 120_000
# Longer than any honest call's deadline (exchange.rpc_timeout_s, 10 s by default).
MAX_CONNECTION_AGE_GRACE_MS = 30_000
MAX_CONNECTION_IDLE_MS = 300_000
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
HANDSHAKE_TIMEOUT_MS = 10_000
# Health Watch streams need no token and live until cancelled, and each holds one of the
# server's concurrent-call slots: capped apart (per connection and in total, far below
# MIN_CONCURRENT_RPCS), so watchers can never take the slots peers push through.
MAX_WATCHES = 8
MAX_WATCHES_PER_CONNECTION = 2
# gRPC takes int32 message sizes.
_INT32_MAX = 2**31 - 1


def transport_limit(max_message_bytes: int) -> int:
    """What the gRPC core lets through: a bit above the region's cap, so the handler sees, refuses and counts oversized messages."""
    return min(_INT32_MAX, max_message_bytes + max(max_message_bytes // 4, 64 * 1024))


def max_concurrent_rpcs(max_message_bytes: int) -> int:
    """Enough for every honest peer and its health checks; few enough that buffered bodies fit the budget."""
    fit = CONCURRENT_MESSAGE_BUDGET_BYTES // transport_limit(max_message_bytes)
    return max(MIN_CONCURRENT_RPCS, min(MAX_CONCURRENT_RPCS, fit))


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", transport_limit(max_message_bytes)),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        # A port another server holds must fail to bind, not be shared: regions pick ports in a range.
        ("grpc.so_reuseport", 0),
    ]


class HealthService(health_pb2_grpc.HealthServicer):
    """Standard health for the known service names only: an unknown name gets NOT_FOUND and leaves no state.

    At most MAX_WATCHES Watch streams are open at once, MAX_WATCHES_PER_CONNECTION on one
    connection; one more is refused with RESOURCE_EXHAUSTED (Check is never limited).
    """

    def __init__(self):
        self._serving = False
        self._changed: asyncio.Event | None = None  # created on the server's loop
        self._watches: Counter[str] = Counter()  # open Watch streams by connection (peer address)

    def _status(self) -> int:
        return health_pb2.HealthCheckResponse.SERVING if self._serving else health_pb2.HealthCheckResponse.NOT_SERVING

    def bind(self) -> None:
        """Call on the server's loop."""
        self._changed = asyncio.Event()

    def set(self, serving: bool) -> None:
        """Call on the server's loop: wakes every Watch."""
        self._serving = serving
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def Check(self, request, context):
        if request.service not in HEALTH_SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:100]!r}")
        return health_pb2.HealthCheckResponse(status=self._status())

    @property
    def open_watches(self) -> int:
        return sum(self._watches.values())

    async def Watch(self, request, context):
        if request.service not in HEALTH_SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:100]!r}")
        connection = context.peer()
        if self.open_watches >= MAX_WATCHES or self._watches[connection] >= MAX_WATCHES_PER_CONNECTION:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many health watches are open; use Check")
        # Counted on the server's one event loop: no lock needed.
        self._watches[connection] += 1
        try:
            last = None
            while True:
                changed = self._changed
                if self._status() != last:
                    last = self._status()
                    yield health_pb2.HealthCheckResponse(status=last)
                await changed.wait()
        finally:
            self._watches[connection] -= 1
            if not self._watches[connection]:
                del self._watches[connection]


class RegionServer:
    """A bound gRPC server running on an event loop in its own thread."""

    def __init__(self, server: grpc.aio.Server, port: int, health: HealthService, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self.port = port
        self._server = server
        self._health = health
        self._loop = loop
        self._thread = thread

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._call(self._server.start(), timeout=30)

    def set_serving(self, serving: bool) -> None:
        async def flip():
            self._health.set(serving)

        self._call(flip(), timeout=10)

    def stop(self, grace_s: float) -> None:
        try:
            self._call(self._server.stop(grace_s), timeout=grace_s + 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()


def create_server(
    address: str,
    servicer: RegionServicer,
    *,
    max_message_bytes: int,
    token: str | None = None,
    tls: TlsFiles | None = None,
    on_unauthenticated: Callable[[], None] = lambda: None,
) -> RegionServer:
    """Bind `address` (port 0 picks a free one) without starting; `token` is the run's secret."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(target=_run_loop, args=(loop, ready), name="region-grpc", daemon=True)
    thread.start()
    ready.wait()

    async def build() -> tuple[grpc.aio.Server, int, HealthService]:
        interceptors = [TokenInterceptor(TokenBook(token), on_unauthenticated)] if token else []
        server = grpc.aio.server(
            interceptors=interceptors,
            options=server_options(max_message_bytes),
            maximum_concurrent_rpcs=max_concurrent_rpcs(max_message_bytes),
        )
        server.add_generic_rpc_handlers([servicer.handler()])
        health = HealthService()
        health.bind()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        try:
            port = server.add_secure_port(address, tls.server_credentials()) if tls else server.add_insecure_port(address)
        except RuntimeError:  # grpc's way of saying the address is taken or unknown
            port = 0
        return server, port, health

    try:
        server, port, health = asyncio.run_coroutine_threadsafe(build(), loop).result(30)
    except BaseException:
        _discard(loop, thread)
        raise
    if port == 0:
        _discard(loop, thread)
        raise OSError(f"could not bind gRPC server to {address}")
    return RegionServer(server, port, health, loop, thread)


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


def _discard(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()

"""A region's endpoint: its inbox, its gRPC server and metrics, and the status it reports.

The region's loop fills `live`; the node serves it (GetStatus) and takes
peers' predictions into its inbox. A node exists before its loop runs, so a
region can be reached and wired before it trains.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from codistill.config import RunConfig, port_range
from codistill.metrics import MetricsSink, NullMetrics, RegionMetrics
from codistill.records import RegionData
from codistill.region import serde
from codistill.region.client import GrpcTransport, get_status
from codistill.region.inbox import SYNC_VERSION_LEAD, PeerInbox
from codistill.region.journal import Live
from codistill.region.ports import bind_in_range
from codistill.region.messages import RegionState, RegionStatus, Rejection
from codistill.region.security import Authority, TlsFiles, TokenBook, region_token
from codistill.region.server import RegionServer, create_server
from codistill.region.servicer import RegionServicer


def message_cap(configured: int | None, ids_per_message: int, num_classes: int, topk: int = 0) -> int:
    """exchange.max_message_bytes as given, or, when None, the largest honest message in any
    encoding (top-k keeping `topk` classes) plus headroom."""
    if configured is not None:
        return configured
    return serde.default_max_message_bytes(ids_per_message, num_classes, topk)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ray_node_id() -> str:
    """The Ray node this process runs on; "" outside a Ray worker or driver."""
    if "ray" not in sys.modules:  # never imported: not under Ray, and not worth importing to find out
        return ""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


class RegionNode:
    def __init__(
        self, region_id: int, cfg: RunConfig, data: RegionData, *, run_id: str, steps: int | None = None, restarts: int = 0,
    ):
        self.id, self.cfg, self.run_id, self.restarts = region_id, cfg, run_id, restarts
        self.steps = steps if steps is not None else cfg.train.steps
        self.transfer_size, self.num_classes = len(data.x_transfer), data.num_classes
        self.live = Live()
        self.inbox: PeerInbox | None = None
        self._server: RegionServer | None = None
        self.address: str | None = None
        self.servicer: RegionServicer | None = None
        self.metrics: RegionMetrics | None = None
        self.metrics_address: str | None = None
        self._sources: list[int] = []
        sec = cfg.security
        self._secret = sec.resolved_token()  # the run's secret; each region presents a token derived from it
        self._tls = TlsFiles.load(sec.tls_dir, region_id) if sec.tls_dir else None
        self.unauthenticated = 0
        self.node_id = ray_node_id()

    @property
    def max_message_bytes(self) -> int:
        """The largest PushPredictions this region sends or takes."""
        chunk = self.cfg.exchange.chunk_size
        ids = self.transfer_size if chunk is None else min(chunk, self.transfer_size)
        return message_cap(self.cfg.exchange.max_message_bytes, ids, self.num_classes, self.cfg.exchange.topk)

    @property
    def metrics_sink(self) -> MetricsSink:
        return self.metrics if self.metrics is not None else NullMetrics()

    # ------------------------------------------------------------ lifecycle
    def serve(self, host: str = "127.0.0.1") -> str:
        """Start the gRPC server (and metrics, when enabled) on a free port of `host`; returns host:port."""
        cap = self.max_message_bytes
        authority = Authority(TokenBook(self._secret) if self._secret else None, tls=self._tls is not None)
        self.servicer = RegionServicer(lambda: self.inbox, self.status, max_message_bytes=cap, authority=authority)
        self._server = bind_in_range(
            lambda port: create_server(
                _join(host, port), self.servicer, max_message_bytes=cap, token=self._secret, tls=self._tls,
                on_unauthenticated=self._unauthenticated,
            ),
            port_range(self.cfg.exchange.port_range), what="exchange.port_range", host=host,
        )
        self._server.start()
        self._server.set_serving(True)
        self.address = _join(host, self._server.port)
        if self.cfg.monitor.metrics:
            # cfg.strategy is the strategy these regions run (the driver sets it per --compare entry).
            self.metrics = RegionMetrics(self.run_id, self.cfg.strategy, self.id)
            metrics = self.metrics
            port = bind_in_range(
                lambda p: metrics.serve(host, p), port_range(self.cfg.monitor.port_range), what="monitor.port_range", host=host,
            )
            self.metrics_address = _join(host, port)
            if self.restarts:
                self.metrics.restarted(self.restarts)
        return self.address

    def prepare(self, sources: list[int]) -> PeerInbox:
        """Create the inbox for predictions from `sources`; messages are refused before this."""
        ex = self.cfg.exchange
        inbox = PeerInbox(
            self.run_id,
            sources,
            self.num_classes,
            self.transfer_size,
            temperature=self.cfg.distill.temperature,
            version_lead=SYNC_VERSION_LEAD if ex.mode == "sync" else None,
            # Rounds are numbered by step: no region of this run publishes past this one.
            last_round=self.steps // ex.publish_interval,
        )
        if self.servicer is not None:
            inbox.rejections.update(self.servicer.early_rejections)
        self.inbox = inbox
        self._sources = list(sources)
        self.declare([])
        return self.inbox

    def declare(self, targets: list[int]) -> None:
        """Name this region's peers in its metrics, so every series exists from the start."""
        if self.metrics is not None:
            self.metrics.declare(sorted(targets), self._sources, [r.value for r in Rejection])

    def grpc_transport(self, targets: dict[int, str], resolve: Callable[[int], str | None] | None = None) -> GrpcTransport:
        """A transport to `targets` with this region's credentials and message cap."""
        ex = self.cfg.exchange
        return GrpcTransport(
            targets,
            encoding=serde.Encoding.from_config(ex),
            rpc_timeout_s=ex.rpc_timeout_s,
            max_message_bytes=self.max_message_bytes,
            token=region_token(self._secret, self.id) if self._secret else None,
            tls=self._tls,
            resolve=resolve,
            keep_all=ex.mode == "sync",
        )

    def peer_status(self, address: str, timeout_s: float = 5.0) -> RegionStatus:
        """A peer's GetStatus, asked with this region's own credentials."""
        token = region_token(self._secret, self.id) if self._secret else None
        return get_status(address, timeout_s, token=token, tls=self._tls)

    def pause(self, seconds: float) -> None:
        """Hold incoming calls for `seconds` (a hung region, for chaos)."""
        if self.servicer is not None:
            self.servicer.pause_until = time.monotonic() + seconds

    def _unauthenticated(self) -> None:
        self.unauthenticated += 1
        if self.inbox is not None:
            self.inbox.reject(Rejection.UNAUTHENTICATED)

    def close(self, grace_s: float = 2.0) -> None:
        if self._server is not None:
            self._server.set_serving(False)
            self._server.stop(grace_s)
            self._server = None
        if self.servicer is not None:
            self.servicer.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.live.state is not RegionState.FAILED:
            self.live.state = RegionState.STOPPED

    # --------------------------------------------------------------- status
    def status(self) -> RegionStatus:
        live, inbox = self.live, self.inbox
        return RegionStatus(
            run_id=self.run_id,
            region=self.id,
            state=live.state,
            step=live.step,
            # The newest round published, already while the region waits for its peers' share of it.
            version=max(live.version, inbox.own_version) if inbox else live.version,
            test_accuracy=live.test_accuracy,
            bytes_sent=live.bytes_sent,
            bytes_received=inbox.bytes_received() if inbox else 0,
            peers=dict(inbox.counters) if inbox else {},
            node_id=self.node_id,
            address=self.address or "",
        )

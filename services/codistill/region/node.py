"""One region as a running service: trainer + inbox + gRPC server + transport.

A host process (a Ray actor, or a plain thread in the in-process harness)
creates a node, starts serving, wires it to peers, then runs it.
"""

from __future__ import annotations

import time
from typing import Callable

from codistill.config import RunConfig
from codistill.metrics import RegionMetrics
from codistill.region import serde
from codistill.region.client import GrpcTransport
from codistill.region.inbox import SYNC_VERSION_LEAD, PeerInbox
from codistill.region.messages import RegionState, RegionStatus, Rejection
from codistill.region.security import Authority, TlsFiles, TokenBook, region_token
from codistill.region.server import RegionServer, create_server
from codistill.region.servicer import RegionServicer
from codistill.region.trainer import RegionData, RegionResult, RegionTrainer
from codistill.region.transport import InProcessTransport


def message_cap(configured: int | None, ids_per_message: int, num_classes: int) -> int:
    """exchange.max_message_bytes as given, or, when None, the largest honest message plus headroom."""
    if configured is not None:
        return configured
    return serde.default_max_message_bytes(ids_per_message, num_classes)


class RegionNode:
    def __init__(
        self,
        region_id: int,
        cfg: RunConfig,
        data: RegionData,
        *,
        run_id: str,
        restarts: int = 0,
        resolve: Callable[[int], str | None] | None = None,
        **trainer_kwargs,
    ):
        self.id = region_id
        self.cfg = cfg
        self.run_id = run_id
        self.trainer = RegionTrainer(region_id, cfg, data, run_id=run_id, **trainer_kwargs)
        self.trainer.restarts = restarts
        self.trainer.on_hang = self._hang
        self._resolve = resolve
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

    @property
    def max_message_bytes(self) -> int:
        """The largest PushPredictions this region sends or takes."""
        transfer = len(self.trainer.x_transfer)
        chunk = self.cfg.exchange.chunk_size
        ids = transfer if chunk is None else min(chunk, transfer)
        return message_cap(self.cfg.exchange.max_message_bytes, ids, self.trainer.num_classes)

    # ------------------------------------------------------------ lifecycle
    def serve(self, host: str = "127.0.0.1") -> str:
        """Start the gRPC server on a free port of `host`; returns host:port."""
        cap = self.max_message_bytes
        authority = Authority(TokenBook(self._secret) if self._secret else None, tls=self._tls is not None)
        self.servicer = RegionServicer(lambda: self.inbox, self.status, max_message_bytes=cap, authority=authority)
        bind = f"[{host}]:0" if ":" in host else f"{host}:0"
        self._server = create_server(
            bind,
            self.servicer,
            max_message_bytes=cap,
            token=self._secret,
            tls=self._tls,
            on_unauthenticated=self._unauthenticated,
        )
        self._server.start()
        self._server.set_serving(True)
        port = self._server.port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.cfg.monitor.metrics:
            self.metrics = RegionMetrics(self.run_id, self.id)
            mport = self.metrics.serve(host)
            self.metrics_address = f"[{host}]:{mport}" if ":" in host else f"{host}:{mport}"
            self.trainer.metrics = self.metrics
            if self.trainer.restarts:
                self.metrics.restarts.labels(run=self.run_id, region=str(self.id)).inc(self.trainer.restarts)
        return self.address

    def prepare(self, sources: list[int]) -> PeerInbox:
        """Create the inbox for predictions from `sources`; messages are refused before this."""
        ex = self.cfg.exchange
        inbox = PeerInbox(
            self.run_id,
            sources,
            self.trainer.num_classes,
            len(self.trainer.x_transfer),
            temperature=self.cfg.distill.temperature,
            version_lead=SYNC_VERSION_LEAD if ex.mode == "sync" else None,
            # Rounds are numbered by step: no region of this run publishes past this one.
            last_round=self.trainer.steps // ex.publish_interval,
        )
        if self.servicer is not None:
            inbox.rejections.update(self.servicer.early_rejections)
        self.inbox = inbox
        self._sources = list(sources)
        self._declare_metrics([])
        return self.inbox

    def _hang(self, seconds: float) -> None:
        if self.servicer is not None:
            self.servicer.pause_until = time.monotonic() + seconds

    def _unauthenticated(self) -> None:
        self.unauthenticated += 1
        if self.inbox is not None:
            self.inbox.reject(Rejection.UNAUTHENTICATED)

    def _declare_metrics(self, targets: list[int]) -> None:
        if self.metrics is not None:
            self.metrics.declare(sorted(targets), self._sources, [r.value for r in Rejection])

    def connect_grpc(self, targets: dict[int, str]) -> None:
        self._declare_metrics(list(targets))
        if not targets:
            return
        ex = self.cfg.exchange
        transport = GrpcTransport(
            targets,
            dtype=ex.dtype,
            rpc_timeout_s=ex.rpc_timeout_s,
            max_message_bytes=self.max_message_bytes,
            token=region_token(self._secret, self.id) if self._secret else None,
            tls=self._tls,
            resolve=self._resolve,
            keep_all=ex.mode == "sync",
        )
        self.trainer.attach(transport, self.inbox)

    def connect_inprocess(self, targets: dict[int, PeerInbox]) -> None:
        self.trainer.attach(InProcessTransport(targets, self.cfg.exchange.dtype), self.inbox)

    def run(self) -> RegionResult:
        try:
            result = self.trainer.run()
        except Exception:
            self.trainer.state = RegionState.FAILED
            raise
        return result

    def close(self, grace_s: float = 2.0) -> None:
        self.trainer.stop()
        self.trainer.transport.close()
        if self._server is not None:
            self._server.set_serving(False)
            self._server.stop(grace_s)
            self._server = None
        if self.servicer is not None:
            self.servicer.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.trainer.state is not RegionState.FAILED:
            self.trainer.state = RegionState.STOPPED

    # --------------------------------------------------------------- status
    def status(self) -> RegionStatus:
        t = self.trainer
        inbox = self.inbox
        return RegionStatus(
            run_id=self.run_id,
            region=self.id,
            state=t.state,
            step=t.step,
            version=t.version,
            test_accuracy=t.test_accuracy,
            bytes_sent=t.bytes_sent,
            bytes_received=inbox.bytes_received() if inbox else 0,
            peers=dict(inbox.counters) if inbox else {},
        )

    def progress(self) -> dict:
        """A snapshot for live displays, plus records and evaluations since the last call."""
        s = self.status()
        t = self.trainer
        return {
            "evals": t.drain_evals(),
            "metrics_address": self.metrics_address,
            "region": self.id,
            "arch": t.arch,
            "state": s.state.value,
            "step": s.step,
            "steps": t.steps,
            "test_accuracy": s.test_accuracy,
            "loss_supervised": t.last_losses[0],
            "loss_distill": t.last_losses[1],
            "bytes_sent": s.bytes_sent,
            "bytes_received": s.bytes_received,
            "records": t.drain_records(),
        }

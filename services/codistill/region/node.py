"""One region as a running service: trainer + inbox + gRPC server + transport.

A host process (a Ray actor, or a plain thread in the in-process harness)
creates a node, starts serving, wires it to peers, then runs it.
"""

from __future__ import annotations

import time
from typing import Callable

import grpc

from codistill.config import RunConfig
from codistill.metrics import RegionMetrics
from codistill.region.client import GrpcTransport
from codistill.region.inbox import PeerInbox
from codistill.region.messages import RegionState, RegionStatus, Rejection
from codistill.region.security import TlsFiles
from codistill.region.server import create_server, set_serving
from codistill.region.servicer import RegionServicer
from codistill.region.trainer import RegionData, RegionResult, RegionTrainer
from codistill.region.transport import InProcessTransport


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
        self._server: grpc.Server | None = None
        self._health = None
        self.address: str | None = None
        self.servicer: RegionServicer | None = None
        self.metrics: RegionMetrics | None = None
        self.metrics_address: str | None = None
        self._sources: list[int] = []
        sec = cfg.security
        self._token = sec.resolved_token()
        self._tls = TlsFiles.load(sec.tls_dir, region_id) if sec.tls_dir else None
        self.unauthenticated = 0

    # ------------------------------------------------------------ lifecycle
    def serve(self, host: str = "127.0.0.1") -> str:
        """Start the gRPC server on a free port of `host`; returns host:port."""
        self.servicer = RegionServicer(lambda: self.inbox, self.status)
        bind = f"[{host}]:0" if ":" in host else f"{host}:0"
        self._server, port, self._health = create_server(
            bind,
            self.servicer,
            max_message_bytes=self.cfg.exchange.max_message_bytes,
            token=self._token,
            tls=self._tls,
            on_unauthenticated=self._unauthenticated,
        )
        self._server.start()
        set_serving(self._health, True)
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
        self.inbox = PeerInbox(self.run_id, sources, self.trainer.num_classes, len(self.trainer.x_transfer))
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
            max_message_bytes=ex.max_message_bytes,
            token=self._token,
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
            set_serving(self._health, False)
            self._server.stop(grace_s).wait()
            self._server = None
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

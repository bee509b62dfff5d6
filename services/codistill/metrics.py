"""Prometheus metrics of a region and of a run.

Each region owns a private registry served on its own free port, so many
regions share a node and no state is global. Names follow Prometheus
conventions (base units, `_total` counters); labels are bounded: `run`,
`strategy` (one per --compare entry, so strategies of one run stay apart),
`region`, `peer` (ids bounded by the run size) and `reason` (a fixed enum).
"""

from __future__ import annotations

import threading
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class MetricsSink(Protocol):
    """What the trainer reports; the no-op default keeps it free of Prometheus."""

    def step(self, loss_supervised: float, loss_distill: float) -> None: ...
    def evaluated(self, accuracy: float) -> None: ...
    def consensus(self, kl: float, agreement: float, weights: dict[int, float], entropy: float) -> None: ...
    def published(self, seconds: float, nbytes: int, delivered: list[int], failed: dict[int, str]) -> None: ...
    def exchange_state(self, received: dict[int, tuple[int, int]], ages: dict[int, int], rejections: dict[str, int], age_seconds: dict[int, float] | None = None) -> None: ...


class NullMetrics:
    def step(self, loss_supervised, loss_distill):
        pass

    def evaluated(self, accuracy):
        pass

    def consensus(self, kl, agreement, weights, entropy):
        pass

    def published(self, seconds, nbytes, delivered, failed):
        pass

    def exchange_state(self, received, ages, rejections, age_seconds=None):
        pass


class _Served:
    """A private registry served over HTTP on a free port."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self._server = None

    def serve(self, host: str, port: int = 0) -> int:
        """Serve /metrics on `port` of `host` (0: a free one); returns the port. OSError when it is taken."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class RegionMetrics(_Served):
    def __init__(self, run_id: str, strategy: str, region: int):
        super().__init__()
        r = self.registry
        base = ["run", "strategy", "region"]
        peer = base + ["peer"]
        self._labels = {"run": run_id, "strategy": strategy, "region": str(region)}
        self._lock = threading.Lock()
        self.steps = Counter("codistill_steps_total", "Training steps taken.", base, registry=r)
        self.loss_supervised = Gauge("codistill_loss_supervised", "Cross-entropy on the labeled batch (nats).", base, registry=r)
        self.loss_distill = Gauge("codistill_loss_distill", "T²-scaled KL to the consensus on the transfer batch.", base, registry=r)
        self.accuracy = Gauge("codistill_test_accuracy_ratio", "Held-out test accuracy, evaluated every eval_every steps.", base, registry=r)
        self.kl = Gauge("codistill_consensus_kl_nats", "KL(consensus ‖ own prediction) on recent transfer batches.", base, registry=r)
        self.agreement = Gauge("codistill_consensus_agreement_ratio", "Share of transfer examples where own argmax equals the consensus argmax.", base, registry=r)
        self.attention = Gauge("codistill_attention_weight", "Mean weight this region gives each peer in its consensus.", peer, registry=r)
        self.attention_entropy = Gauge("codistill_attention_entropy_nats", "Mean entropy of the per-example weights over peers.", base, registry=r)
        self.publish_seconds = Histogram("codistill_publish_duration_seconds", "Time to push one batch of predictions to all peers.", base, buckets=PUBLISH_BUCKETS, registry=r)
        self.sent_bytes = Counter("codistill_sent_bytes_total", "Serialized prediction bytes delivered to peers.", base, registry=r)
        self.received_bytes = Counter("codistill_received_bytes_total", "Serialized prediction bytes accepted from peers.", base, registry=r)
        self.messages_sent = Counter("codistill_messages_sent_total", "Prediction messages delivered, per receiving peer.", peer, registry=r)
        self.messages_received = Counter("codistill_messages_received_total", "Prediction messages accepted, per sending peer.", peer, registry=r)
        self.publish_failures = Counter("codistill_publish_failures_total", "Pushes to a peer that failed (deadline, unreachable, refused).", peer, registry=r)
        self.age = Gauge("codistill_peer_prediction_age_steps", "Receiver steps since the newest prediction from each peer arrived.", peer, registry=r)
        self.age_seconds = Gauge("codistill_peer_prediction_age_seconds", "Seconds since the newest prediction from each peer arrived.", peer, registry=r)
        self.rejected = Counter("codistill_rejected_messages_total", "Incoming messages refused, by reason.", base + ["reason"], registry=r)
        self.restarts = Counter("codistill_restarts_total", "Times this region was restarted after a crash (restored from a checkpoint).", base, registry=r)
        self.reachable = Gauge("codistill_reachable_peers", "Peers the last publish reached.", base, registry=r)
        self._seen_received: dict[int, tuple[int, int]] = {}
        self._seen_rejections: dict[str, int] = {}

    def restarted(self, times: int) -> None:
        """Count the crashes this region was restored from before it started again."""
        self.restarts.labels(**self._labels).inc(times)

    def _l(self, **extra: str):
        return {**self._labels, **extra}

    def declare(self, sends_to: list[int], receives_from: list[int], reasons: list[str]) -> None:
        """Create every bounded label combination at zero, so rates and sums exist before the first event."""
        self.steps.labels(**self._labels)
        self.restarts.labels(**self._labels)
        self.sent_bytes.labels(**self._labels)
        self.received_bytes.labels(**self._labels)
        self.reachable.labels(**self._labels)
        for peer in sends_to:
            self.messages_sent.labels(**self._l(peer=str(peer)))
            self.publish_failures.labels(**self._l(peer=str(peer)))
        for peer in receives_from:
            self.messages_received.labels(**self._l(peer=str(peer)))
        for reason in reasons:
            self.rejected.labels(**self._l(reason=reason))

    # ------------------------------------------------------------ sink api
    def step(self, loss_supervised: float, loss_distill: float) -> None:
        self.steps.labels(**self._labels).inc()
        self.loss_supervised.labels(**self._labels).set(loss_supervised)
        self.loss_distill.labels(**self._labels).set(loss_distill)

    def evaluated(self, accuracy: float) -> None:
        self.accuracy.labels(**self._labels).set(accuracy)

    def consensus(self, kl: float, agreement: float, weights: dict[int, float], entropy: float) -> None:
        self.kl.labels(**self._labels).set(kl)
        self.agreement.labels(**self._labels).set(agreement)
        for peer, w in weights.items():
            self.attention.labels(**self._l(peer=str(peer))).set(w)
        self.attention_entropy.labels(**self._labels).set(entropy)

    def published(self, seconds: float, nbytes: int, delivered: list[int], failed: dict[int, str]) -> None:
        self.publish_seconds.labels(**self._labels).observe(seconds)
        self.sent_bytes.labels(**self._labels).inc(nbytes)
        for peer in delivered:
            self.messages_sent.labels(**self._l(peer=str(peer))).inc()
        for peer in failed:
            self.publish_failures.labels(**self._l(peer=str(peer))).inc()
        self.reachable.labels(**self._labels).set(len(delivered))

    def exchange_state(self, received: dict[int, tuple[int, int]], ages: dict[int, int], rejections: dict[str, int], age_seconds: dict[int, float] | None = None) -> None:
        """Fold in cumulative inbox counters (messages, bytes per peer) as counter increments."""
        with self._lock:
            for peer, (messages, nbytes) in received.items():
                old_m, old_b = self._seen_received.get(peer, (0, 0))
                labels = self._l(peer=str(peer))
                self.messages_received.labels(**labels).inc(max(0, messages - old_m))
                self.received_bytes.labels(**self._labels).inc(max(0, nbytes - old_b))
                self._seen_received[peer] = (messages, nbytes)
                self.age.labels(**labels).set(ages.get(peer, -1))
                if age_seconds and peer in age_seconds:
                    self.age_seconds.labels(**labels).set(age_seconds[peer])
            for reason, n in rejections.items():
                self.rejected.labels(**self._l(reason=reason)).inc(max(0, n - self._seen_rejections.get(reason, 0)))
                self._seen_rejections[reason] = n


class RunMetrics(_Served):
    """Run-level series computed by the driver from all regions' evaluations."""

    def __init__(self, run_id: str, strategy: str):
        super().__init__()
        self._labels = {"run": run_id, "strategy": strategy}
        run = list(self._labels)
        self.disagreement = Gauge("codistill_disagreement_ratio", "Mean pairwise share of test examples on which two regions' predictions differ.", run, registry=self.registry)
        self.ensemble = Gauge("codistill_ensemble_accuracy_ratio", "Test accuracy of the average of all regions' predictions.", run, registry=self.registry)
        self.mean_accuracy = Gauge("codistill_mean_test_accuracy_ratio", "Mean test accuracy over regions.", run, registry=self.registry)
        self.converged = Gauge("codistill_converged", "1 once disagreement stayed under the threshold for the configured number of evaluations.", run, registry=self.registry)

    def update(self, disagreement: float, ensemble: float, mean_accuracy: float, converged: bool) -> None:
        self.disagreement.labels(**self._labels).set(disagreement)
        self.ensemble.labels(**self._labels).set(ensemble)
        self.mean_accuracy.labels(**self._labels).set(mean_accuracy)
        self.converged.labels(**self._labels).set(1 if converged else 0)

"""Region metrics as Prometheus would scrape them, parsed with prometheus_client."""

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from codistill.launch.monitor import ConvergenceTracker, pairwise_disagreement
from codistill.metrics import RegionMetrics, RunMetrics
from codistill.region.inbox import PeerInbox
from codistill.region.messages import MessageRejected, PredictionBatch, Rejection

EXPECTED = {
    "codistill_steps": "counter",
    "codistill_loss_supervised": "gauge",
    "codistill_loss_distill": "gauge",
    "codistill_test_accuracy_ratio": "gauge",
    "codistill_consensus_kl_nats": "gauge",
    "codistill_consensus_agreement_ratio": "gauge",
    "codistill_attention_weight": "gauge",
    "codistill_attention_entropy_nats": "gauge",
    "codistill_publish_duration_seconds": "histogram",
    "codistill_sent_bytes": "counter",
    "codistill_received_bytes": "counter",
    "codistill_messages_sent": "counter",
    "codistill_messages_received": "counter",
    "codistill_publish_failures": "counter",
    "codistill_peer_prediction_age_steps": "gauge",
    "codistill_peer_prediction_age_seconds": "gauge",
    "codistill_rejected_messages": "counter",
    "codistill_reachable_peers": "gauge",
}


def _scrape(metrics: RegionMetrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}


@pytest.fixture
def fed_metrics():
    """Metrics of region 0 after real inbox traffic, including hostile free text."""
    m = RegionMetrics("run-a", "codistill", 0)
    inbox = PeerInbox("run-a", [1, 2], num_classes=3, transfer_size=10, version_lead=2)
    m.declare([1, 2], [1, 2], [r.value for r in Rejection])
    good = PredictionBatch("run-a", 1, 0, 0, torch.arange(3), 2.0, torch.full((3, 3), 1 / 3))
    inbox.receive(good, 120)
    hostile = [
        PredictionBatch("run-a'}evil{x=\"", 1, 1, 0, torch.arange(3), 2.0, torch.full((3, 3), 1 / 3)),
        PredictionBatch("run-a", 99999, 1, 0, torch.arange(3), 2.0, torch.full((3, 3), 1 / 3)),
        PredictionBatch("run-a", 2, 1, 0, torch.arange(3), 2.0, torch.full((3, 3), float("nan"))),
        PredictionBatch("run-a", 2, 2**62, 0, torch.arange(3), 2.0, torch.full((3, 3), 1 / 3)),
    ]
    for bad in hostile:
        with pytest.raises(MessageRejected):
            inbox.receive(bad, 50)
    m.step(0.5, 0.1)
    m.evaluated(0.8)
    m.consensus(0.02, 0.9, {1: 0.7, 2: 0.3}, 0.6)
    m.published(0.01, 300, [1], {2: "UNAVAILABLE"})
    m.exchange_state({p: (c.messages, c.bytes) for p, c in inbox.counters.items()}, inbox.staleness(5), dict(inbox.rejections), inbox.age_seconds())
    return m


def test_names_and_types(fed_metrics):
    families = _scrape(fed_metrics)
    for name, kind in EXPECTED.items():
        assert name in families, name
        assert families[name].type == kind, (name, families[name].type)


def test_label_values_are_bounded_never_peer_text(fed_metrics):
    allowed = {
        "run": {"run-a"},
        "strategy": {"codistill"},
        "region": {"0"},
        "peer": {"1", "2"},
        "reason": {r.value for r in Rejection},
    }
    for family in _scrape(fed_metrics).values():
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label == "le":
                    continue
                assert label in allowed, (family.name, label)
                assert value in allowed[label], (family.name, label, value)


def test_counters_follow_the_inbox(fed_metrics):
    f = _scrape(fed_metrics)
    rejected = {s.labels["reason"]: s.value for s in f["codistill_rejected_messages"].samples if s.name.endswith("_total")}
    assert rejected["wrong_run"] == 1 and rejected["unknown_sender"] == 1 and rejected["non_finite"] == 1
    assert rejected["future_version"] == 1
    # Bytes count only accepted payload: the refused messages' 4 x 50 bytes are not in it.
    assert f["codistill_received_bytes"].samples[0].value == 120
    assert rejected["replay"] == 0  # declared up front, so rates exist before the first event
    received = {s.labels["peer"]: s.value for s in f["codistill_messages_received"].samples if s.name.endswith("_total")}
    assert received == {"1": 1.0, "2": 0.0}
    weights = {s.labels["peer"]: s.value for s in f["codistill_attention_weight"].samples}
    assert weights == {"1": 0.7, "2": 0.3}


def test_exchange_state_is_idempotent_for_cumulative_counts(fed_metrics):
    fed_metrics.exchange_state({1: (1, 120)}, {}, {"wrong_run": 1})
    f = _scrape(fed_metrics)
    received = {s.labels["peer"]: s.value for s in f["codistill_messages_received"].samples if s.name.endswith("_total")}
    assert received["1"] == 1.0


def test_pairwise_disagreement_and_convergence():
    import numpy as np

    a, b, c = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 0]), np.array([1, 1, 2, 3])
    assert pairwise_disagreement([a, b, c]) == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    assert pairwise_disagreement([a]) == 0.0
    t = ConvergenceTracker(threshold=0.1, patience=2)
    assert [t.update(x) for x in (0.05, 0.2, 0.05, 0.04, 0.5)] == [False, False, False, True, True]


def _labels_of(registry) -> list[dict]:
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return [s.labels for f in families if f.name.startswith("codistill_") for s in f.samples]


def test_every_region_series_names_its_strategy(fed_metrics):
    fed_metrics.restarted(2)
    labels = _labels_of(fed_metrics.registry)
    assert labels and all(l.get("strategy") == "codistill" for l in labels)


def test_run_series_of_two_strategies_stay_apart():
    """Two strategies of one run (--compare) publish the same names; only `strategy` tells them apart."""
    series = {}
    for strategy, disagreement in (("codistill", 0.10), ("independent", 0.66)):
        m = RunMetrics("run-a", strategy)
        m.update(disagreement, 0.8, 0.7, False)
        for f in text_string_to_metric_families(generate_latest(m.registry).decode()):
            for s in f.samples:
                series[(s.name, tuple(sorted(s.labels.items())))] = s.value
    disagreement = {dict(k[1])["strategy"]: v for k, v in series.items() if k[0] == "codistill_disagreement_ratio"}
    assert disagreement == {"codistill": 0.10, "independent": 0.66}
    assert len(series) == 8  # four run-level series per strategy, none shared

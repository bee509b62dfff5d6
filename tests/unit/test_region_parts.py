"""The region's small parts: deferred and lying transports, the hang wrapper, and the shared records."""

import json
import threading

import pytest
import torch

from codistill.errors import (
    CertsError, ConfigError, DataError, MixedVersions, PartitionError, RegionError, ReportError, ResumeError, SecurityError,
    UserError,
)
from codistill.records import RunState
from codistill.region.chaos import Hang, LyingTransport
from codistill.region.exchange import Exchange
from codistill.region.learner import resolve_device
from codistill.region.messages import PredictionBatch, PublishReport
from codistill.region.transport import DeferredTransport


class Recorder:
    def __init__(self):
        self.batches, self.closed = [], False

    def publish(self, batch):
        self.batches.append(batch)
        return PublishReport(bytes_sent=1, delivered=[1])

    def flush(self, timeout_s=None):
        return PublishReport()

    def close(self):
        self.closed = True


def _batch():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    return PredictionBatch("run", 0, 3, 40, torch.tensor([4, 9]), 3.0, probs)


def test_deferred_transport_is_made_at_the_first_publish_and_never_after_close():
    made = []

    def make():
        made.append(Recorder())
        return made[-1]

    t = DeferredTransport(make)
    assert made == [] and t.flush().delivered == []  # nothing to flush before the first publish
    assert t.publish(_batch()).delivered == [1] and len(made) == 1
    t.publish(_batch())
    assert len(made) == 1 and len(made[0].batches) == 2
    t.close()
    assert made[0].closed
    late = DeferredTransport(make)
    late.close()
    assert late.publish(_batch()).delivered == [] and len(made) == 1  # closed first: nothing is made or sent


def test_a_liar_publishes_all_mass_on_its_least_likely_class():
    inner = Recorder()
    LyingTransport(inner).publish(_batch())
    (sent,) = inner.batches
    assert torch.equal(sent.probs, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert (sent.sender, sent.version, sent.step) == (0, 3, 40) and torch.equal(sent.sample_ids, torch.tensor([4, 9]))


def test_hang_pauses_the_region_at_its_step_only():
    pauses, steps = [], []

    class Inner(Exchange):
        def before_step(self, step):
            steps.append(step)
            return None

    stopped = threading.Event()
    stopped.set()  # the wait returns at once; what matters is that it is asked for, at the right step
    hang = Hang(Inner(None, None), at_step=2, seconds=8.0, pause=pauses.append, stopped=stopped)
    for step in range(4):
        hang.before_step(step)
    assert pauses == [8.0] and steps == [0, 1, 2, 3]
    assert hang.ledger is hang.inner.ledger


def test_run_state_round_trips_through_its_file_format():
    state = RunState("run-1", ("codistill", "independent")).finished("codistill", {"mean_test_accuracy": 0.5})
    again = RunState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state and again.pending == ["independent"]
    assert list(again.summaries()) == ["codistill"]


def test_auto_device_is_cuda_only_for_a_region_given_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", 0).type == "cpu"  # both runners: no GPU given, no GPU used
    assert resolve_device("cpu", 1).type == "cpu"
    assert resolve_device("auto", 0.5).type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", 0.5).type == "cpu"


@pytest.mark.parametrize("kind", [ConfigError, DataError, PartitionError, SecurityError, CertsError, ResumeError, ReportError, MixedVersions])
def test_user_errors_share_one_base(kind):
    assert issubclass(kind, UserError) and not issubclass(RegionError, UserError)

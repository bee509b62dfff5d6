import pytest
import torch

from codistill.region.inbox import PeerInbox
from codistill.region.messages import MessageRejected, PredictionBatch, Rejection


def _probs(n, c=3, seed=0):
    return torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(seed)), -1)


def _batch(sender=1, version=0, ids=(0, 1, 2), probs=None, run="r", T=2.0):
    ids = torch.tensor(ids)
    return PredictionBatch(run, sender, version, 0, ids, T, _probs(len(ids)) if probs is None else probs)


@pytest.fixture
def inbox():
    return PeerInbox("r", sources=[1, 2], num_classes=3, transfer_size=10)


BAD = {
    "nan": (_batch(probs=torch.tensor([[float("nan"), 0.5, 0.5]] * 3)), Rejection.NON_FINITE),
    "inf": (_batch(probs=torch.tensor([[float("inf"), 0.0, 0.0]] * 3)), Rejection.NON_FINITE),
    "negative": (_batch(probs=torch.tensor([[1.2, -0.2, 0.0]] * 3)), Rejection.NEGATIVE),
    "not normalised": (_batch(probs=torch.full((3, 3), 0.5)), Rejection.NOT_NORMALISED),
    "wrong shape": (_batch(probs=_probs(2)), Rejection.BAD_SHAPE),
    "wrong class count": (_batch(probs=torch.softmax(torch.randn(3, 4), -1)), Rejection.BAD_CLASS_COUNT),
    "unknown sample": (_batch(ids=(0, 1, 99)), Rejection.UNKNOWN_SAMPLE),
    "duplicate sample": (_batch(ids=(1, 1, 2)), Rejection.DUPLICATE_SAMPLE),
    "bad temperature": (_batch(T=0.0), Rejection.BAD_TEMPERATURE),
    "wrong run": (_batch(run="other"), Rejection.WRONG_RUN),
    "unknown sender": (_batch(sender=7), Rejection.UNKNOWN_SENDER),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_messages_are_rejected_and_never_stored(inbox, case):
    batch, reason = BAD[case]
    with pytest.raises(MessageRejected) as info:
        inbox.receive(batch, 100)
    assert info.value.reason is reason
    assert inbox.rejections[reason.value] == 1
    assert inbox.fresh_pool(0, 100).empty and inbox.round_pool(0).empty
    assert inbox.bytes_received() == 0


def test_replay_is_rejected(inbox):
    inbox.receive(_batch(version=3), 10)
    with pytest.raises(MessageRejected) as info:
        inbox.receive(_batch(version=3), 10)
    assert info.value.reason is Rejection.REPLAY and info.value.reason.depends_on_state


def test_round_pool_holds_exactly_that_round(inbox):
    inbox.receive(_batch(sender=1, version=0, ids=(0, 1, 2)), 10)
    inbox.receive(_batch(sender=2, version=0, ids=(1, 2, 3)), 10)
    inbox.receive(_batch(sender=1, version=1, ids=(5, 6, 7)), 10)
    pool = inbox.round_pool(0)
    assert pool.ids.tolist() == [0, 1, 2, 3]
    assert pool.mask.tolist() == [[True, True, True, False], [False, True, True, True]]
    assert inbox.wait_round(1, needed=1, timeout_s=0.01) == 1
    assert inbox.wait_round(1, needed=2, timeout_s=0.01) == 1
    assert inbox.counters[1].messages == 2 and inbox.bytes_received() == 30


def test_stale_predictions_are_masked(inbox):
    inbox.clock = 0
    inbox.receive(_batch(sender=1, version=0, ids=(0, 1)), 10)
    inbox.clock = 50
    inbox.receive(_batch(sender=2, version=0, ids=(1, 2)), 10)
    pool = inbox.fresh_pool(now=60, max_staleness=20)
    assert pool.ids.tolist() == [1, 2]
    assert pool.mask[0].tolist() == [False, False] and pool.mask[1].tolist() == [True, True]
    assert inbox.staleness(60) == {1: 60, 2: 10}

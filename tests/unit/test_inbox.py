import threading
import time

import pytest
import torch

from codistill.region.inbox import SYNC_VERSION_LEAD, PeerInbox
from codistill.region.messages import MessageRejected, PredictionBatch, Rejection


def _probs(n, c=3, seed=0):
    return torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(seed)), -1)


def _batch(sender=1, version=0, ids=(0, 1, 2), probs=None, run="r", T=2.0):
    ids = torch.tensor(ids)
    return PredictionBatch(run, sender, version, 0, ids, T, _probs(len(ids)) if probs is None else probs)


@pytest.fixture
def inbox():
    return PeerInbox("r", sources=[1, 2], num_classes=3, transfer_size=10, temperature=2.0)


@pytest.fixture
def sync_inbox():
    """An inbox as a sync-round region builds it: versions capped at own_version + lead."""
    return PeerInbox("r", sources=[1, 2], num_classes=3, transfer_size=10, temperature=2.0, version_lead=SYNC_VERSION_LEAD, last_round=50)


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
    "infinite temperature": (_batch(T=float("inf")), Rejection.BAD_TEMPERATURE),
    "nan temperature": (_batch(T=float("nan")), Rejection.BAD_TEMPERATURE),
    "another region's temperature": (_batch(T=3.0), Rejection.BAD_TEMPERATURE),
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


@pytest.mark.parametrize("T", [float("inf"), float("nan"), -1.0])
def test_temperature_must_be_finite_and_positive_even_without_a_reference(T):
    inbox = PeerInbox("r", sources=[1], num_classes=3, transfer_size=10)
    with pytest.raises(MessageRejected) as info:
        inbox.receive(_batch(T=T), 10)
    assert info.value.reason is Rejection.BAD_TEMPERATURE


def test_temperature_matches_up_to_float32_rounding():
    inbox = PeerInbox("r", sources=[1], num_classes=3, transfer_size=10, temperature=0.1)
    wire = float(torch.tensor(0.1, dtype=torch.float32))  # what a float proto field carries
    assert wire != 0.1
    assert inbox.receive(_batch(T=wire), 10) == 0


@pytest.mark.parametrize("version", [SYNC_VERSION_LEAD + 1, 2**63 - 1])
def test_far_future_version_is_refused_and_does_not_block_the_real_sender(sync_inbox, version):
    with pytest.raises(MessageRejected) as info:
        sync_inbox.receive(_batch(sender=1, version=version), 10)
    assert info.value.reason is Rejection.FUTURE_VERSION and info.value.reason.depends_on_state
    assert sync_inbox.rejections["future_version"] == 1
    assert sync_inbox.counters[1].last_version == -1 and sync_inbox.round_pool(version).empty
    # The real sender's next honest round is taken.
    assert sync_inbox.receive(_batch(sender=1, version=0), 10) == 0
    assert sync_inbox.counters[1].last_version == 0


def test_version_cap_follows_the_round_in_progress(sync_inbox):
    assert sync_inbox.receive(_batch(sender=1, version=SYNC_VERSION_LEAD - 1), 10) == SYNC_VERSION_LEAD - 1
    sync_inbox.own_version = 10
    assert sync_inbox.receive(_batch(sender=1, version=10 + SYNC_VERSION_LEAD), 10) == 10 + SYNC_VERSION_LEAD
    with pytest.raises(MessageRejected, match="future_version"):
        sync_inbox.receive(_batch(sender=2, version=11 + SYNC_VERSION_LEAD), 10)


def test_no_version_past_the_runs_last_round(inbox):
    inbox.last_round = 7
    assert inbox.receive(_batch(version=7), 10) == 7
    with pytest.raises(MessageRejected, match="future_version"):
        inbox.receive(_batch(sender=2, version=8), 10)


def test_one_peer_cannot_evict_anothers_rounds(sync_inbox):
    sync_inbox.receive(_batch(sender=1, version=0, ids=(0, 1, 2)), 10)
    for version in range(1, 10):  # many newer rounds from the other peer
        sync_inbox.own_version = version
        sync_inbox.receive(_batch(sender=2, version=version, ids=(3, 4)), 10)
    pool = sync_inbox.round_pool(0)
    assert pool.ids.tolist() == [0, 1, 2] and pool.mask[0].all()
    # Each sender keeps only its own newest rounds.
    assert sync_inbox.round_pool(1).empty and not sync_inbox.round_pool(9).empty


def test_a_region_behind_does_not_wait_for_rounds_its_peers_have_left(sync_inbox):
    sync_inbox.receive(_batch(sender=1, version=0), 10)
    with pytest.raises(MessageRejected, match="future_version"):
        sync_inbox.receive(_batch(sender=1, version=9), 10)  # peer 1 is far ahead (this region restarted)
    started = time.monotonic()
    assert sync_inbox.wait_round(1, needed=1, timeout_s=5) == 1
    assert time.monotonic() - started < 1
    # Once the peer's messages are taken again, waiting is back to what was delivered.
    sync_inbox.own_version = 8
    sync_inbox.receive(_batch(sender=1, version=10), 10)
    assert sync_inbox.wait_round(11, needed=1, timeout_s=0.01) == 0


def test_wait_round_wakes_when_a_sender_is_seen_ahead(sync_inbox):
    def later():
        time.sleep(0.2)
        with pytest.raises(MessageRejected):
            sync_inbox.receive(_batch(sender=1, version=40), 10)

    thread = threading.Thread(target=later)
    thread.start()
    started = time.monotonic()
    assert sync_inbox.wait_round(0, needed=1, timeout_s=5) == 1
    thread.join()
    assert time.monotonic() - started < 2


def test_a_round_a_peer_has_already_left_behind_is_not_waited_for():
    # A region restored from a checkpoint replays rounds; a peer that said it is at round 5
    # sent rounds up to 5 to the region's lost incarnation, and will not send them again.
    import time as _time

    inbox = PeerInbox("run", [1, 2], 3, 10)
    inbox.seen_at(1, 5)
    start = _time.monotonic()
    assert inbox.wait_round(4, 1, timeout_s=5.0) == 1  # peer 1 counts as past round 4
    assert _time.monotonic() - start < 1.0
    assert inbox.wait_round(6, 1, timeout_s=0.2) == 0  # but not past round 6
    inbox.seen_at(2, -3)  # an older word changes nothing
    assert inbox.wait_round(4, 2, timeout_s=0.2) == 1

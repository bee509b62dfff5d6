"""Compressed predictions: every refusal of a top-k or uint8 message, and how the encoding is chosen."""

import numpy as np
import pytest
import torch

from codistill import config
from codistill.config import ConfigError
from codistill.preflight import check_encoding
from codistill.region import serde, validation
from codistill.region.inbox import PeerInbox
from codistill.region.messages import MessageRejected, PredictionBatch, Rejection
from codistill.region.node import message_cap
from codistill.v1 import region_pb2 as pb

C = 5


def _probs(n=3):
    return torch.softmax(torch.randn(n, C, generator=torch.Generator().manual_seed(0)) * 2, -1)


def _msg(encoding: serde.Encoding, n=3) -> pb.PushPredictionsRequest:
    batch = PredictionBatch("r", 1, 0, 0, torch.arange(n), 2.0, _probs(n))
    return serde.predictions_to_proto(batch, encoding)


def _topk(values, classes, num_classes=C, shape=None) -> pb.PushPredictionsRequest:
    """A top-k message for 2 rows, from float32 values [2, k] and class indices."""
    values = np.asarray(values, dtype="<f4")
    msg = _msg(serde.Encoding("topk", "float32", 2), n=2)
    msg.topk.CopyFrom(pb.TopK(
        values=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=shape or list(values.shape), data=values.tobytes()),
        classes=[int(c) for row in classes for c in row],
        num_classes=num_classes,
    ))
    return msg


def _short(msg: pb.PushPredictionsRequest) -> pb.PushPredictionsRequest:
    msg.topk.values.data = msg.topk.values.data[:-4]
    return msg


def _uint8(rows, shape=None) -> pb.PushPredictionsRequest:
    q = np.asarray(rows, dtype=np.uint8)
    msg = _msg(serde.Encoding("uint8"), n=len(rows))
    msg.uint8.CopyFrom(pb.Quantized(shape=shape or list(q.shape), data=q.tobytes()))
    return msg


HOSTILE = {
    # top-k: 2 rows of k = 2, 5 classes
    "topk class index out of range": (_topk([[0.5, 0.3]] * 2, [[0, 5], [1, 2]]), Rejection.BAD_CLASS_INDEX),
    "topk negative class index": (_topk([[0.5, 0.3]] * 2, [[0, 1], [-1, 2]]), Rejection.BAD_CLASS_INDEX),
    "topk class kept twice": (_topk([[0.5, 0.3]] * 2, [[0, 1], [2, 2]]), Rejection.DUPLICATE_CLASS),
    "topk kept mass above 1": (_topk([[0.7, 0.4], [0.5, 0.3]], [[0, 1], [1, 2]]), Rejection.NOT_NORMALISED),
    "topk value above 1": (_topk([[1.5, 0.0], [0.5, 0.3]], [[0, 1], [1, 2]]), Rejection.NOT_NORMALISED),
    "topk negative value": (_topk([[0.9, -0.1], [0.5, 0.3]], [[0, 1], [1, 2]]), Rejection.NEGATIVE),
    "topk NaN value": (_topk([[np.nan, 0.1], [0.5, 0.3]], [[0, 1], [1, 2]]), Rejection.NON_FINITE),
    "topk infinite value": (_topk([[np.inf, 0.1], [0.5, 0.3]], [[0, 1], [1, 2]]), Rejection.NON_FINITE),
    "topk k beyond the classes": (_topk([[0.1] * 6] * 2, [list(range(6))] * 2), Rejection.BAD_CLASS_COUNT),
    "topk k beyond its own class count": (_topk([[0.1] * 3] * 2, [[0, 1, 2]] * 2, num_classes=2), Rejection.BAD_CLASS_COUNT),
    "topk another class count": (_topk([[0.5, 0.3]] * 2, [[0, 1], [1, 2]], num_classes=7), Rejection.BAD_CLASS_COUNT),
    "topk fewer classes than values": (_topk([[0.5, 0.3]] * 2, [[0, 1], [1]]), Rejection.BAD_SHAPE),
    "topk more classes than values": (_topk([[0.5, 0.3]] * 2, [[0, 1, 2], [1, 2, 3]]), Rejection.BAD_SHAPE),
    "topk rows differ from ids": (_topk([[0.5, 0.3]] * 3, [[0, 1]] * 3), Rejection.BAD_SHAPE),
    "topk values not 2-D": (_topk([0.5, 0.3, 0.5, 0.3], [[0, 1], [1, 2]]), Rejection.BAD_SHAPE),
    "topk keeps no class": (_topk(np.zeros((2, 0)), [[], []]), Rejection.BAD_SHAPE),
    "topk bytes short of the shape": (_short(_topk([[0.5, 0.3]] * 2, [[0, 1], [1, 2]])), Rejection.BAD_DTYPE),
    # uint8: 2 rows of 5 classes
    "uint8 row of no mass": (_uint8([[0] * 5, [51] * 5]), Rejection.NOT_NORMALISED),
    "uint8 row far above 255": (_uint8([[255] * 5, [51] * 5]), Rejection.NOT_NORMALISED),
    "uint8 row far below 255": (_uint8([[40] * 5, [51] * 5]), Rejection.NOT_NORMALISED),
    "uint8 bytes short of the shape": (_uint8([[51] * 5] * 2, shape=[2, 6]), Rejection.BAD_SHAPE),
    "uint8 shape not 2-D": (_uint8([[51] * 5] * 2, shape=[10]), Rejection.BAD_SHAPE),
    "uint8 rows differ from ids": (_uint8([[51] * 5] * 2, shape=[1, 10]), Rejection.BAD_SHAPE),
    "uint8 negative class count wrapping to the data length": (_uint8([[51] * 5] * 2, shape=[2, 5 - 2**63]), Rejection.BAD_SHAPE),
    "uint8 another class count": (_uint8([[85] * 3] * 2), Rejection.BAD_CLASS_COUNT),
    # neither
    "no encoding": (pb.PushPredictionsRequest(run_id="r", sender_id=1, sample_ids=[0, 1], temperature=2.0), Rejection.UNKNOWN_ENCODING),
}


@pytest.fixture
def inbox():
    return PeerInbox("r", sources=[1], num_classes=C, transfer_size=10, temperature=2.0)


def _receive(inbox: PeerInbox, msg: pb.PushPredictionsRequest) -> int:
    """What the servicer does with a decoded request: decode against the receiver, refusals counted."""
    try:
        batch = serde.predictions_from_proto(msg, max_ids=inbox.transfer_size, num_classes=inbox.num_classes)
    except MessageRejected as exc:
        inbox.reject(exc.reason)
        raise
    return inbox.receive(batch, msg.ByteSize())


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_compressed_messages_are_refused_by_reason_and_never_stored(inbox, case):
    msg, reason = HOSTILE[case]
    with pytest.raises(MessageRejected) as info:
        _receive(inbox, msg)
    assert info.value.reason is reason, info.value
    assert not reason.depends_on_state  # INVALID_ARGUMENT on the wire
    assert dict(inbox.rejections) == {reason.value: 1}
    assert inbox.round_pool(0).empty and inbox.bytes_received() == 0


T = torch.tensor
# Each check on its own, before the rows are made dense: the dense checks that follow would
# catch some of these too, but only after building rows as wide as the sender said.
DIRECT = {
    "index": (lambda: validation.check_topk(T([[0.5, 0.3]]), T([[0, 5]]), 5), Rejection.BAD_CLASS_INDEX),
    "negative index": (lambda: validation.check_topk(T([[0.5, 0.3]]), T([[-1, 2]]), 5), Rejection.BAD_CLASS_INDEX),
    "duplicate": (lambda: validation.check_topk(T([[0.5, 0.3]]), T([[2, 2]]), 5), Rejection.DUPLICATE_CLASS),
    "non-finite": (lambda: validation.check_topk(T([[float("nan"), 0.3]]), T([[0, 2]]), 5), Rejection.NON_FINITE),
    "negative": (lambda: validation.check_topk(T([[0.5, -0.3]]), T([[0, 2]]), 5), Rejection.NEGATIVE),
    "mass": (lambda: validation.check_topk(T([[0.7, 0.4]]), T([[0, 2]]), 5), Rejection.NOT_NORMALISED),
    "no rows": (lambda: validation.check_topk_sizes(0, [0, 2], 0, 5, 5), Rejection.BAD_SHAPE),
    "values not [rows, k]": (lambda: validation.check_topk_sizes(2, [3, 2], 6, 5, 5), Rejection.BAD_SHAPE),
    "k = 0": (lambda: validation.check_topk_sizes(2, [2, 0], 0, 5, 5), Rejection.BAD_SHAPE),
    "receiver's class count": (lambda: validation.check_topk_sizes(2, [2, 2], 4, 2**31 - 1, 5), Rejection.BAD_CLASS_COUNT),
    "k > classes": (lambda: validation.check_topk_sizes(2, [2, 6], 12, 5, None), Rejection.BAD_CLASS_COUNT),
    "index count": (lambda: validation.check_topk_sizes(2, [2, 2], 5, 5, 5), Rejection.BAD_SHAPE),
    "uint8 no rows": (lambda: validation.check_quantized_sizes(0, [0, 5], 0), Rejection.BAD_SHAPE),
    "uint8 not [rows, C]": (lambda: validation.check_quantized_sizes(2, [2, 5, 1], 10), Rejection.BAD_SHAPE),
    "uint8 bytes": (lambda: validation.check_quantized_sizes(2, [2, 5], 9), Rejection.BAD_SHAPE),
    # 300 classes: a zero row is within one step per class of 255, yet has nothing to renormalise.
    "uint8 no mass": (lambda: validation.check_quantized(torch.zeros(1, 300, dtype=torch.uint8)), Rejection.NOT_NORMALISED),
    "uint8 sum": (lambda: validation.check_quantized(T([[255, 255, 0]], dtype=torch.uint8)), Rejection.NOT_NORMALISED),
}


@pytest.mark.parametrize("case", sorted(DIRECT))
def test_each_compressed_check_refuses_by_its_own_reason(case):
    check, reason = DIRECT[case]
    with pytest.raises(MessageRejected) as info:
        check()
    assert info.value.reason is reason, info.value


def test_compressed_checks_pass_honest_contents():
    assert validation.check_topk_sizes(2, [2, 5], 10, 5, 5) == 5
    validation.check_topk(T([[0.5, 0.5], [1.0, 0.0]]), T([[0, 4], [3, 1]]), 5)
    assert validation.check_quantized_sizes(2, [2, 3], 6) == 3
    validation.check_quantized(T([[255, 0, 0], [85, 85, 85], [86, 85, 85]], dtype=torch.uint8))


@pytest.mark.parametrize("encoding", [serde.Encoding("topk", "float16", 2), serde.Encoding("uint8")])
def test_honest_compressed_messages_are_stored_as_distributions(inbox, encoding):
    msg = _msg(encoding)
    assert _receive(inbox, msg) == 0
    pool = inbox.round_pool(0)
    assert pool.ids.tolist() == [0, 1, 2] and pool.mask.all()
    assert torch.allclose(pool.peers[0].sum(1), torch.ones(3), atol=1e-6)
    # The argmax survives either encoding.
    assert torch.equal(pool.peers[0].argmax(1), _probs().argmax(1))
    assert inbox.bytes_received() == msg.ByteSize()


@pytest.mark.parametrize(
    "encoding,dtype,expected",
    [("float16", "float16", serde.Encoding("dense", "float16", 4)), ("float16", "float32", serde.Encoding("dense", "float32", 4)),
     ("topk", "float16", serde.Encoding("topk", "float16", 4)), ("uint8", "float32", serde.Encoding("uint8", "float32", 4))],
)
def test_the_encoding_comes_from_the_exchange_config(encoding, dtype, expected):
    cfg = config.from_dict({"exchange": {"encoding": encoding, "dtype": dtype, "topk": 4}})
    assert serde.Encoding.from_config(cfg.exchange) == expected


def test_preflight_refuses_a_topk_beyond_the_class_count():
    cfg = config.from_dict({"exchange": {"encoding": "topk", "topk": 11}})
    with pytest.raises(ConfigError, match=r"^exchange\.topk: 11 exceeds the dataset's 10 classes"):
        check_encoding(cfg, 10)
    check_encoding(config.from_dict({"exchange": {"encoding": "topk", "topk": 10}}), 10)  # exact, allowed
    check_encoding(config.from_dict({"exchange": {"encoding": "uint8", "topk": 11}}), 10)  # topk unused


def test_the_region_cap_admits_a_topk_message_keeping_every_class():
    n = 300
    batch = PredictionBatch("r" * 300, 2**31 - 1, 2**62, 2**62, torch.arange(2**40, 2**40 + n), 3.0, torch.full((n, C), 1 / C))
    widest = serde.wire_size(batch, serde.Encoding("topk", "float32", C))
    assert widest > serde.wire_size(batch, "float32")  # values and indices outgrow the dense tensor
    assert message_cap(None, n, C, topk=C) >= widest
    assert message_cap(4096, n, C, topk=C) == 4096  # a configured cap stands

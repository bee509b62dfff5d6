import tracemalloc

import pytest
import torch
from torch.testing import assert_close

from codistill.region import serde
from codistill.region.messages import MessageRejected, PredictionBatch, Rejection
from codistill.v1 import region_pb2 as pb


def _batch(n=5, c=4):
    probs = torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(0)), -1)
    return PredictionBatch("run", 1, 3, 75, torch.arange(10, 10 + n), 2.0, probs)


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 1e-3)])
def test_predictions_round_trip(dtype, tol):
    b = _batch()
    msg = serde.predictions_to_proto(b, dtype)
    back = serde.predictions_from_proto(msg)
    assert (back.run_id, back.sender, back.version, back.step, back.temperature) == ("run", 1, 3, 75, 2.0)
    assert torch.equal(back.sample_ids, b.sample_ids)
    assert_close(back.probs, b.probs, atol=tol, rtol=tol)


def test_float16_halves_the_payload():
    b = _batch(200, 10)
    assert serde.wire_size(b, "float16") < 0.6 * serde.wire_size(b, "float32")


def test_bytes_length_must_match_shape():
    msg = serde.predictions_to_proto(_batch(), "float32")
    msg.probs.data = msg.probs.data[:-2]
    with pytest.raises(MessageRejected) as info:
        serde.predictions_from_proto(msg)
    assert info.value.reason is Rejection.BAD_DTYPE


def test_unknown_dtype_is_rejected():
    msg = serde.predictions_to_proto(_batch(), "float32")
    msg.probs.dtype = 0
    with pytest.raises(MessageRejected, match="dtype"):
        serde.predictions_from_proto(msg)


def test_a_shape_whose_size_overflows_64_bits_is_refused():
    # 4 * 2**62 elements wrap to 0 in int64, which would "match" empty data.
    msg = serde.tensor_to_proto(torch.zeros(0), "float32")
    del msg.shape[:]
    msg.shape.extend([4, 2**62])
    with pytest.raises(MessageRejected) as info:
        serde.tensor_from_proto(msg)
    assert info.value.reason is Rejection.BAD_DTYPE


def _peak_python_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("rows,max_ids", [(10**6, 300), (3, None)])
def test_counts_are_checked_before_any_list_or_tensor_is_built(rows, max_ids):
    n = 10**6
    msg = serde.predictions_to_proto(_batch(3, 4), "float32")
    msg.sample_ids.extend(range(10, n - 3 + 10))
    msg.probs.CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[rows, 4], data=bytes(rows * 4 * 4)))

    def decode():
        with pytest.raises(MessageRejected) as info:
            serde.predictions_from_proto(msg, max_ids=max_ids)
        assert info.value.reason is Rejection.BAD_SHAPE

    # Turning a million ids into a tensor (or a list) would take megabytes.
    assert _peak_python_bytes(decode) < 256 * 1024


def test_undecodable_bytes_are_refused_by_reason():
    with pytest.raises(MessageRejected) as info:
        serde.decode_push(b"\xff\xff\xff\xff")
    assert info.value.reason is Rejection.UNDECODABLE


@pytest.mark.parametrize("n,c", [(1, 2), (300, 4), (10_000, 10), (60_000, 10)])
def test_derived_message_cap_admits_the_largest_honest_message(n, c):
    probs = torch.full((n, c), 1 / c)
    biggest = PredictionBatch("r" * 300, 2**31 - 1, 2**62, 2**62, torch.arange(2**40, 2**40 + n), 3.0, probs)
    size = serde.wire_size(biggest, "float32")
    cap = serde.default_max_message_bytes(n, c)
    assert size <= cap <= 2 * size + serde.MESSAGE_HEADROOM_BYTES

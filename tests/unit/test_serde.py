import pytest
import torch
from torch.testing import assert_close

from codistill.region import serde
from codistill.region.messages import MessageRejected, PredictionBatch, Rejection


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

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


# ------------------------------------------------------------- compressed encodings
def _sharp_and_flat(n=64, c=10):
    """Rows from near one-hot to near uniform, as temperatures 0.25..8 make them."""
    g = torch.Generator().manual_seed(1)
    scale = torch.logspace(-0.9, 0.6, n)[:, None]
    return torch.softmax(torch.randn(n, c, generator=g) / scale, -1)


def _decode(probs, encoding, num_classes=None):
    b = PredictionBatch("run", 1, 3, 75, torch.arange(len(probs)), 2.0, probs)
    return serde.predictions_from_proto(serde.predictions_to_proto(b, encoding), num_classes=num_classes).probs


@pytest.mark.parametrize("k", [1, 3, 9])
def test_topk_is_exact_on_kept_classes_and_spreads_the_rest_evenly(k):
    probs = _sharp_and_flat()
    back = _decode(probs, serde.Encoding("topk", "float32", k), num_classes=10)
    kept, classes = probs.topk(k, dim=1)
    assert torch.equal(back.gather(1, classes), kept)  # float32 values: bit for bit
    others = torch.ones_like(probs, dtype=torch.bool).scatter_(1, classes, False)
    rest = back[others].reshape(len(probs), 10 - k)
    assert (rest == rest[:, :1]).all()  # evenly: one value per row
    expected = ((1 - kept.sum(1)).clamp_min(0) / (10 - k))[:, None].expand_as(rest)
    assert_close(rest, expected, rtol=0, atol=1e-6)
    assert_close(back.sum(1), torch.ones(len(probs)), rtol=0, atol=1e-6)


def test_topk_in_float16_is_off_only_by_float16_rounding_on_kept_classes():
    probs = _sharp_and_flat()
    back = _decode(probs, serde.Encoding("topk", "float16", 3))
    kept, classes = probs.topk(3, dim=1)
    assert torch.equal(back.gather(1, classes), kept.half().float())


def test_topk_keeping_every_class_is_exact():
    probs = _sharp_and_flat()
    assert torch.equal(_decode(probs, serde.Encoding("topk", "float32", 10)), probs)
    # A k beyond the class count keeps every class too.
    assert torch.equal(_decode(probs, serde.Encoding("topk", "float32", 1000)), probs)


@pytest.mark.parametrize("c", [2, 10, 100, 1000])
def test_uint8_rows_sum_to_255_and_every_probability_is_within_one_step(c):
    probs = torch.cat([_sharp_and_flat(64, c), torch.full((1, c), 1 / c), torch.eye(c)[:2]])
    q = serde.quantize(probs)
    assert (q.sum(1, dtype=torch.int64) == 255).all()
    # The bound: each byte is floor or ceil of 255 p, so |q/255 - p| < 1/255 (strictly) before
    # renormalising; rows already sum to 1, so renormalising moves nothing but float rounding.
    before = (q.double() / 255 - probs.double()).abs().max().item()
    assert before < 1 / 255
    back = _decode(probs, serde.Encoding("uint8"), num_classes=c)
    assert (back - probs).abs().max().item() < 1 / 255 + 1e-6
    assert_close(back.sum(1), torch.ones(len(probs)), rtol=0, atol=1e-5)


def test_uint8_receiver_renormalises_rows_rounded_entry_by_entry():
    # Another sender may round each entry on its own: rows then sum to 255 give or take.
    probs = torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    msg = serde.predictions_to_proto(PredictionBatch("run", 1, 0, 0, torch.arange(2), 2.0, probs), serde.Encoding("uint8"))
    msg.uint8.data = bytes([128, 128, 0, 85, 85, 85])  # sums 256 and 255
    back = serde.predictions_from_proto(msg).probs
    assert_close(back, torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("encoding", [serde.Encoding("topk", "float16", 3), serde.Encoding("uint8")])
def test_compressed_encodings_carry_fewer_bytes_than_float16(encoding):
    b = _batch(200, 10)
    assert serde.wire_size(b, encoding) < 0.75 * serde.wire_size(b, "float16")


@pytest.mark.parametrize(
    "n,c,k",
    [
        (300, 10, 10),  # every class kept: top-k is wider than dense
        (300, 1000, 1000),  # class indices of 2-byte varints
        (300, 1000, 3),
        (1, 2, 2),
        (10_000, 10, 3),
    ],
)
def test_derived_message_cap_admits_the_largest_honest_message_of_each_encoding(n, c, k):
    probs = torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(0)), -1)
    biggest = PredictionBatch("r" * 300, 2**31 - 1, 2**62, 2**62, torch.arange(2**40, 2**40 + n), 3.0, probs)
    encodings = [serde.Encoding(kind, dtype, k) for kind in ("dense", "topk") for dtype in ("float16", "float32")]
    sizes = [serde.wire_size(biggest, e) for e in [*encodings, serde.Encoding("uint8")]]
    cap = serde.default_max_message_bytes(n, c, k)
    assert max(sizes) <= cap <= 2 * max(sizes) + serde.MESSAGE_HEADROOM_BYTES


def test_a_message_in_no_known_encoding_is_refused():
    msg = serde.predictions_to_proto(_batch(), "float32")
    msg.ClearField("probs")
    with pytest.raises(MessageRejected) as info:
        serde.predictions_from_proto(msg)
    assert info.value.reason is Rejection.UNKNOWN_ENCODING
    # A newer peer's encoding arrives as a field this region does not know (here field 12).
    msg.ParseFromString(msg.SerializeToString() + b"\x62\x03abc")
    assert msg.WhichOneof("predictions") is None
    with pytest.raises(MessageRejected) as info:
        serde.predictions_from_proto(msg)
    assert info.value.reason is Rejection.UNKNOWN_ENCODING


def test_each_encoding_sets_its_own_field_so_peers_tell_them_apart():
    b = _batch(3, 4)
    kinds = {e: serde.predictions_to_proto(b, serde.Encoding(e, "float16", 2)).WhichOneof("predictions") for e in ("dense", "topk", "uint8")}
    assert kinds == {"dense": "probs", "topk": "topk", "uint8": "uint8"}
    # A region that predates the encodings reads `probs` only: it finds none in a compressed message.
    assert not serde.predictions_to_proto(b, serde.Encoding("topk")).HasField("probs")

"""A push's sizes are checked on its wire bytes, before it is parsed (region/push_sizes, region/protowire)."""

import pytest
import torch

from codistill.region import protowire, push_sizes, serde
from codistill.region.messages import MessageRejected, PredictionBatch, Rejection
from codistill.v1 import region_pb2 as pb

C, MAX_IDS = 4, 50


def _batch(n=5):
    probs = torch.softmax(torch.randn(n, C, generator=torch.Generator().manual_seed(0)), -1)
    return PredictionBatch("run", 1, 3, 75, torch.arange(n), 2.0, probs)


def _raw(encoding="float16", n=5) -> bytes:
    return serde.predictions_to_proto(_batch(n), encoding).SerializeToString()


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _field(number: int, wire: int, payload: bytes) -> bytes:
    tag = _varint(number << 3 | wire)
    return tag + (_varint(len(payload)) + payload if wire == 2 else payload)


def _reason(raw: bytes) -> Rejection:
    with pytest.raises(MessageRejected) as info:
        push_sizes.check(raw, MAX_IDS, C)
    return info.value.reason


@pytest.mark.parametrize("encoding", ["float16", "float32", serde.Encoding("topk", "float16", 2), serde.Encoding("uint8")])
def test_every_honest_encoding_passes_and_parses_to_the_same_batch(encoding):
    raw = _raw(encoding)
    push_sizes.check(raw, MAX_IDS, C)
    back = serde.predictions_from_proto(serde.decode_push(raw, MAX_IDS, C), MAX_IDS, C)
    assert back.probs.shape == (5, C) and torch.equal(back.sample_ids, torch.arange(5))


def test_ids_are_counted_packed_and_unpacked_alike():
    head = pb.PushPredictionsRequest(run_id="run", sender_id=1).SerializeToString()
    packed = _field(5, 2, b"\x00" * 7)
    unpacked = b"".join(_field(5, 0, b"\x00") for _ in range(7))
    mixed = _field(5, 2, b"\x00" * 3) + b"".join(_field(5, 0, b"\x00") for _ in range(4))
    for ids in (packed, unpacked, mixed):
        fields = protowire.walk(memoryview(head + ids), push_sizes._PUSH, budget=protowire.Budget(1000))
        assert fields.counts[5] == 7
        assert len(pb.PushPredictionsRequest.FromString(head + ids).sample_ids) == 7  # as the parser reads them


@pytest.mark.parametrize("unpacked", [False, True])
def test_one_id_past_the_transfer_set_is_refused_before_the_rest_is_read(unpacked):
    ids = b"".join(_field(5, 0, b"\x01") for _ in range(MAX_IDS + 1)) if unpacked else _field(5, 2, b"\x01" * (MAX_IDS + 1))
    assert _reason(_raw() + ids) is Rejection.BAD_SHAPE
    # Exactly MAX_IDS ids (with the 5 already there: fewer) pass the count; the shapes then disagree.
    fewer = b"".join(_field(5, 0, b"\x01") for _ in range(MAX_IDS - 5)) if unpacked else _field(5, 2, b"\x01" * (MAX_IDS - 5))
    assert _reason(_raw() + fewer) is Rejection.BAD_SHAPE


def test_a_packed_list_too_long_for_the_limit_is_refused_without_counting():
    # 60 MB of zero ids: the length alone says there are more than MAX_IDS.
    raw = _raw() + _field(5, 2, bytes(10 * MAX_IDS + 1))
    with pytest.raises(protowire.WireError) as info:
        protowire.walk(memoryview(raw), push_sizes._PUSH, limits={5: MAX_IDS}, budget=protowire.Budget(0))
    assert info.value.too_many and info.value.field == 5


@pytest.mark.parametrize(
    "msg,reason",
    [
        (lambda m: m.uint8.shape.extend([5, 3_000_000]) or m.uint8.__setattr__("data", b""), Rejection.BAD_SHAPE),
        (lambda m: (m.uint8.shape.extend([5, 7]), m.uint8.__setattr__("data", bytes(35))), Rejection.BAD_CLASS_COUNT),
        (lambda m: (m.probs.shape.extend([5, 7]), m.probs.__setattr__("dtype", pb.DTYPE_FLOAT16), m.probs.__setattr__("data", bytes(70))), Rejection.BAD_CLASS_COUNT),
        (lambda m: (m.probs.shape.extend([5, C]), m.probs.__setattr__("dtype", 9), m.probs.__setattr__("data", bytes(40))), Rejection.BAD_DTYPE),
        (lambda m: (m.probs.shape.extend([1] * 9)), Rejection.BAD_SHAPE),
        (lambda m: (m.probs.shape.extend([5, -1]), m.probs.__setattr__("dtype", pb.DTYPE_FLOAT16)), Rejection.BAD_SHAPE),
        (lambda m: (m.topk.values.shape.extend([5, 2]), m.topk.classes.extend([0] * (5 * C + 1)), m.topk.__setattr__("num_classes", C)), Rejection.BAD_CLASS_COUNT),
        (lambda m: (m.topk.values.shape.extend([5, 2]), m.topk.__setattr__("num_classes", 3_000_000)), Rejection.BAD_CLASS_COUNT),
        (lambda m: m.__setattr__("run_id", "r" * 5000), Rejection.WRONG_RUN),
        (lambda m: None, Rejection.UNKNOWN_ENCODING),
    ],
    ids=["uint8 bytes short", "uint8 other classes", "dense other classes", "dense dtype", "nine dims", "negative dim",
         "topk more indices than rows x classes", "topk other class count", "long run id", "no encoding"],
)
def test_sizes_no_honest_sender_writes_are_refused_with_their_reason(msg, reason):
    m = pb.PushPredictionsRequest(run_id="run", sender_id=1, sample_ids=range(5), temperature=2.0)
    msg(m)
    assert _reason(m.SerializeToString()) is reason


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x05run",  # a string running past the message
        b"\x10" + b"\xff" * 11,  # a varint of eleven bytes
        _field(2, 2, b"xx"),  # sender_id with a length-delimited wire type
        _field(1, 2, b"run") + _field(1, 2, b"run"),  # a singular field twice
        b"\x13\x14",  # a group
        b"\x00\x01",  # field number 0
    ],
    ids=["truncated", "long varint", "wrong wire type", "singular twice", "group", "field zero"],
)
def test_broken_wire_bytes_are_undecodable(raw):
    assert _reason(raw + _raw()) is Rejection.UNDECODABLE or _reason(_raw() + raw) is Rejection.UNDECODABLE


def test_two_encodings_at_once_are_refused():
    dense = serde.predictions_to_proto(_batch(), "float16")
    quantized = serde.predictions_to_proto(_batch(), serde.Encoding("uint8"))
    assert _reason(dense.SerializeToString() + _field(9, 2, quantized.uint8.SerializeToString())) is Rejection.UNDECODABLE


def test_small_unknown_fields_pass_and_many_unknown_bytes_are_an_unknown_encoding():
    push_sizes.check(_raw() + _field(40, 2, b"x" * 100), MAX_IDS, C)  # a newer peer's small extra field
    assert _reason(_raw() + _field(40, 2, bytes(push_sizes.MESSAGE_HEADROOM_BYTES + 1))) is Rejection.UNKNOWN_ENCODING
    many = b"".join(_field(41, 0, b"\x01") for _ in range(push_sizes.MESSAGE_HEADROOM_BYTES))
    assert _reason(_raw() + many) is Rejection.UNKNOWN_ENCODING


def test_negative_varints_read_as_int64_and_int32():
    assert protowire.as_int64(2**64 - 1) == -1 and protowire.as_int32(2**64 - 2) == -2
    assert protowire.varint(memoryview(_varint(300)), 0, 2) == (300, 2)

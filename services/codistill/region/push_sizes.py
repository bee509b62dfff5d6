"""The sizes of an incoming PushPredictions, checked on its wire bytes before it is parsed.

Parsing builds every field at once: sixty million one-byte ids become half a gigabyte of
int64, a uint8 payload of the wrong class count is copied and then made dense. Here every
count (ids, rows, classes, k, dimensions) and byte length is read off the wire with
`protowire` and checked against what the receiver expects, so a refused message costs no more
than its bytes, and one that passes is no larger than an honest message of the receiver's size.
The refusals are those `serde` makes after parsing, with the same reasons, made earlier.
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from codistill.region import protowire, validation
from codistill.region.messages import MessageRejected, Rejection
from codistill.v1 import region_pb2 as pb

# How a dense tensor's elements travel: a config's dtype name, the wire's code, little-endian.
DTYPES = {
    "float16": (pb.DTYPE_FLOAT16, np.dtype("<f2")),
    "float32": (pb.DTYPE_FLOAT32, np.dtype("<f4")),
}
BY_CODE = {code: dt for code, dt in DTYPES.values()}
# Room for the run id, the scalar fields, the shape and the field tags; also the most bytes of
# fields a region does not know (a newer peer's) that a message may carry.
MESSAGE_HEADROOM_BYTES = 64 * 1024
# A tensor of more dimensions is refused before its shape is read further.
MAX_DIMS = 8
# Run ids are a name of at most 100 characters, a time stamp and a short hex tag.
MAX_RUN_ID_BYTES = 1024


def _layout(message: Descriptor) -> dict[int, protowire.Kind]:
    """How each field of `message` is written on the wire, from the generated descriptor."""
    layout = {}
    for f in message.fields:
        if f.is_repeated:
            layout[f.number] = protowire.Kind.REPEATED  # this protocol repeats integers only
        elif f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE):
            layout[f.number] = protowire.Kind.BYTES
        elif f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32):
            layout[f.number] = protowire.Kind.FIXED32
        else:
            layout[f.number] = protowire.Kind.VARINT
    return layout


_PUSH, _TENSOR, _TOPK, _QUANTIZED = (
    _layout(m.DESCRIPTOR) for m in (pb.PushPredictionsRequest, pb.Tensor, pb.TopK, pb.Quantized)
)


def check(raw: bytes, max_ids: int | None = None, num_classes: int | None = None) -> None:
    """Refuse, from the wire bytes alone, a PushPredictions whose sizes no honest sender writes."""
    buf = memoryview(raw)
    budget = protowire.Budget(MESSAGE_HEADROOM_BYTES)
    try:
        top = protowire.walk(
            buf, _PUSH, limits={pb.PushPredictionsRequest.SAMPLE_IDS_FIELD_NUMBER: max_ids} if max_ids is not None else None, budget=budget
        )
    except protowire.WireError as exc:
        if exc.too_many and exc.field == pb.PushPredictionsRequest.SAMPLE_IDS_FIELD_NUMBER:
            raise MessageRejected(Rejection.BAD_SHAPE, f"more sample ids than the transfer set's {max_ids}") from None
        raise _refusal(raw, exc) from None
    if top.length(pb.PushPredictionsRequest.RUN_ID_FIELD_NUMBER) > MAX_RUN_ID_BYTES:
        raise MessageRejected(Rejection.WRONG_RUN, f"a run id of {top.length(pb.PushPredictionsRequest.RUN_ID_FIELD_NUMBER)} bytes belongs to no run")
    present = [number for number in _ENCODING_SIZES if number in top.spans]
    if len(present) > 1:
        raise MessageRejected(Rejection.UNDECODABLE, f"message carries predictions in {len(present)} encodings at once")
    if not present:
        raise MessageRejected(Rejection.UNKNOWN_ENCODING, "message carries predictions in no encoding this region knows")
    rows = top.counts.get(pb.PushPredictionsRequest.SAMPLE_IDS_FIELD_NUMBER, 0)
    start, end = top.spans[present[0]]
    try:
        _ENCODING_SIZES[present[0]](buf, start, end, rows, num_classes, budget)
    except protowire.WireError as exc:
        raise _refusal(raw, exc) from None


def _refusal(raw: bytes, exc: protowire.WireError) -> MessageRejected:
    if exc.unknown:  # most likely a newer peer's encoding
        return MessageRejected(Rejection.UNKNOWN_ENCODING, str(exc))
    return MessageRejected(Rejection.UNDECODABLE, f"{len(raw)} bytes are not a PushPredictionsRequest: {exc}")


def _tensor_head(buf: memoryview, start: int, end: int, budget: protowire.Budget) -> tuple[int, tuple[int, ...], int]:
    """A Tensor's dtype code, shape and data length, read off the wire."""
    try:
        fields = protowire.walk(
            buf, _TENSOR, start=start, end=end, limits={pb.Tensor.SHAPE_FIELD_NUMBER: MAX_DIMS},
            decode=frozenset({pb.Tensor.SHAPE_FIELD_NUMBER}), budget=budget,
        )
    except protowire.WireError as exc:
        if exc.too_many:
            raise MessageRejected(Rejection.BAD_SHAPE, f"a tensor shape has more than {MAX_DIMS} dimensions") from None
        raise
    shape = tuple(fields.values.get(pb.Tensor.SHAPE_FIELD_NUMBER, []))
    code = protowire.as_int32(fields.scalars.get(pb.Tensor.DTYPE_FIELD_NUMBER, 0))
    return code, shape, fields.length(pb.Tensor.DATA_FIELD_NUMBER)


def _dense_sizes(buf: memoryview, start: int, end: int, rows: int, num_classes: int | None, budget: protowire.Budget) -> None:
    code, shape, nbytes = _tensor_head(buf, start, end, budget)
    if len(shape) != 2 or shape[0] != rows:
        raise MessageRejected(Rejection.BAD_SHAPE, f"probs shape {list(shape[:3])} is not [{rows}, C] for {rows} sample ids")
    check_tensor_bytes(code, shape, nbytes)
    if num_classes is not None and shape[1] != num_classes:
        raise MessageRejected(Rejection.BAD_CLASS_COUNT, f"expected {num_classes} classes, got {shape[1]}")


def _topk_sizes(buf: memoryview, start: int, end: int, rows: int, num_classes: int | None, budget: protowire.Budget) -> None:
    classes_field = pb.TopK.CLASSES_FIELD_NUMBER
    # No honest message keeps more classes a row than the receiver has.
    limits = {classes_field: rows * num_classes} if num_classes is not None else None
    try:
        fields = protowire.walk(buf, _TOPK, start=start, end=end, limits=limits, budget=budget)
    except protowire.WireError as exc:
        if exc.too_many:
            raise MessageRejected(Rejection.BAD_CLASS_COUNT, f"more top-k class indices than {rows} rows of {num_classes} classes hold") from None
        raise
    values_start, values_end = fields.spans.get(pb.TopK.VALUES_FIELD_NUMBER, (start, start))
    code, shape, nbytes = _tensor_head(buf, values_start, values_end, budget)
    declared = protowire.as_int32(fields.scalars.get(pb.TopK.NUM_CLASSES_FIELD_NUMBER, 0))
    validation.check_topk_sizes(rows, list(shape[:3]), fields.counts.get(classes_field, 0), declared, num_classes)
    check_tensor_bytes(code, shape, nbytes)


def _uint8_sizes(buf: memoryview, start: int, end: int, rows: int, num_classes: int | None, budget: protowire.Budget) -> None:
    shape_field = pb.Quantized.SHAPE_FIELD_NUMBER
    try:
        fields = protowire.walk(
            buf, _QUANTIZED, start=start, end=end, limits={shape_field: MAX_DIMS}, decode=frozenset({shape_field}), budget=budget
        )
    except protowire.WireError as exc:
        if exc.too_many:
            raise MessageRejected(Rejection.BAD_SHAPE, f"a uint8 shape has more than {MAX_DIMS} dimensions") from None
        raise
    shape = fields.values.get(shape_field, [])
    validation.check_quantized_sizes(rows, shape[:3], fields.length(pb.Quantized.DATA_FIELD_NUMBER), num_classes)


# The oneof `predictions`: each encoding's field and the check of its sizes.
_ENCODING_SIZES = {
    pb.PushPredictionsRequest.PROBS_FIELD_NUMBER: _dense_sizes,
    pb.PushPredictionsRequest.TOPK_FIELD_NUMBER: _topk_sizes,
    pb.PushPredictionsRequest.UINT8_FIELD_NUMBER: _uint8_sizes,
}


def check_tensor_bytes(code: int, shape: tuple[int, ...], nbytes: int) -> np.dtype:
    """A known dtype, no negative dimension, and exactly dtype x shape bytes; returns the dtype."""
    np_dtype = BY_CODE.get(code)
    if np_dtype is None:
        raise MessageRejected(Rejection.BAD_DTYPE, f"unsupported tensor dtype code {code}")
    if any(d < 0 for d in shape):
        raise MessageRejected(Rejection.BAD_SHAPE, f"negative dimension in shape {shape}")
    # Python integers: a shape like [2**32, 2**32] must not wrap around to a small size.
    if nbytes != math.prod(shape) * np_dtype.itemsize:
        raise MessageRejected(Rejection.BAD_DTYPE, f"{nbytes} bytes do not match shape {shape} of {np_dtype.name}")
    return np_dtype

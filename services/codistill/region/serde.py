"""The one boundary between protobuf messages and domain values/tensors.

Nothing else in codistill touches `*_pb2` message classes, but for `push_sizes`, which checks an
incoming push's sizes on its wire bytes before this module parses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from google.protobuf.message import DecodeError

from codistill.region import push_sizes, validation
from codistill.region.messages import (
    MessageRejected,
    PeerCounters,
    PredictionBatch,
    RegionState,
    RegionStatus,
    Rejection,
)
from codistill.v1 import region_pb2 as pb

if TYPE_CHECKING:
    from codistill.config import ExchangeConfig

_DTYPES = push_sizes.DTYPES
_BY_CODE = push_sizes.BY_CODE
# A receiver accepts either dtype, so its size cap must admit the widest.
_WIDEST_ITEMSIZE = max(dt.itemsize for _, dt in _DTYPES.values())
# An int64 varint takes at most 10 bytes on the wire.
_ID_WIRE_BYTES = 10
MESSAGE_HEADROOM_BYTES = push_sizes.MESSAGE_HEADROOM_BYTES
# uint8: a probability p travels as round(255 p), so a byte step is 1/255.
_UINT8_STEPS = 255


@dataclass(frozen=True)
class Encoding:
    """How a region's predictions travel.

    dense: every probability in `dtype`; topk: the `k` largest of each row in `dtype`, with
    their classes; uint8: every probability in 8 bits.
    """

    kind: Literal["dense", "topk", "uint8"] = "dense"
    dtype: str = "float16"
    k: int = 3

    @classmethod
    def from_config(cls, exchange: ExchangeConfig) -> Encoding:
        # exchange.encoding "float16" names the dense tensor, whose element type is exchange.dtype.
        kind = "dense" if exchange.encoding == "float16" else exchange.encoding
        return cls(kind, exchange.dtype, exchange.topk)


def _as_encoding(encoding: Encoding | str) -> Encoding:
    """A plain string is a dense tensor's dtype."""
    return encoding if isinstance(encoding, Encoding) else Encoding("dense", encoding)


def _varint_bytes(n: int) -> int:
    return max(1, -(-n.bit_length() // 7))


def default_max_message_bytes(ids_per_message: int, num_classes: int, topk: int = 0) -> int:
    """The largest honest PushPredictions in any encoding: ids x the widest row, the ids, and headroom.

    A receiver takes every encoding, so the widest row counts: dense in float32 (4 bytes a class),
    or top-k with k near the class count (k x (4 bytes + the largest class index's varint));
    uint8's byte a class is never the widest.
    """
    k = min(topk, num_classes)
    row = max(num_classes * _WIDEST_ITEMSIZE, k * (_WIDEST_ITEMSIZE + _varint_bytes(num_classes - 1)))
    return ids_per_message * (row + _ID_WIRE_BYTES) + MESSAGE_HEADROOM_BYTES


def tensor_to_proto(t: torch.Tensor, dtype: str) -> pb.Tensor:
    code, np_dtype = _DTYPES[dtype]
    array = t.detach().cpu().numpy().astype(np_dtype, copy=False)
    return pb.Tensor(dtype=code, shape=list(array.shape), data=array.tobytes())


def tensor_from_proto(msg: pb.Tensor) -> torch.Tensor:
    """Decode to float32; bytes length must match dtype × shape."""
    if len(msg.shape) > push_sizes.MAX_DIMS:
        raise MessageRejected(Rejection.BAD_SHAPE, f"shape has {len(msg.shape)} dimensions")
    shape = tuple(int(d) for d in msg.shape)
    np_dtype = push_sizes.check_tensor_bytes(msg.dtype, shape, len(msg.data))
    array = np.frombuffer(msg.data, dtype=np_dtype).reshape(shape)
    return torch.from_numpy(array.astype(np.float32))


# ------------------------------------------------------------------ top-k
def topk_to_proto(probs: torch.Tensor, k: int, dtype: str) -> pb.TopK:
    """The min(k, C) largest probabilities of each row, largest first, with their classes."""
    num_classes = probs.shape[1]
    values, classes = probs.detach().cpu().topk(min(k, num_classes), dim=1)
    return pb.TopK(values=tensor_to_proto(values, dtype), classes=classes.flatten().tolist(), num_classes=num_classes)


def spread_topk(values: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dense rows: the kept values where they were, each row's remaining mass spread evenly over
    its other classes (none when every class is kept)."""
    rows, k = values.shape
    if k == num_classes:
        rest = torch.zeros(rows)
    else:
        # float16 rounding can push a row's kept mass a hair past 1: nothing remains then.
        rest = (1 - values.sum(1)).clamp_min(0) / (num_classes - k)
    return rest[:, None].repeat(1, num_classes).scatter_(1, classes, values)


def topk_from_proto(msg: pb.TopK, rows: int, num_classes: int | None = None) -> torch.Tensor:
    """Checked and made dense; `num_classes` is the receiver's, so a message never makes a row wider."""
    k = validation.check_topk_sizes(rows, list(msg.values.shape[:3]), len(msg.classes), msg.num_classes, num_classes)
    values = tensor_from_proto(msg.values)
    classes = torch.from_numpy(np.fromiter(msg.classes, dtype=np.int64, count=rows * k)).reshape(rows, k)
    validation.check_topk(values, classes, msg.num_classes)
    return spread_topk(values, classes, msg.num_classes)


# ------------------------------------------------------------------ uint8
def quantize(probs: torch.Tensor) -> torch.Tensor:
    """Each row as bytes summing to exactly 255 (largest remainder): every probability is rounded
    down or up to a step of 1/255, so each is off by less than 1/255, and a row's mass stays 1."""
    p = probs.detach().cpu().double()
    scaled = p / p.sum(1, keepdim=True) * _UINT8_STEPS
    q = scaled.floor()
    # The steps still missing from 255 go to the entries with the largest remainders.
    missing = (_UINT8_STEPS - q.sum(1)).round().clamp(0, p.shape[1]).long()
    order = torch.argsort(scaled - q, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(p.shape[1]).expand_as(order).contiguous())
    return (q + (rank < missing[:, None])).to(torch.uint8)


def dequantize(q: torch.Tensor) -> torch.Tensor:
    """Probabilities from bytes, each row renormalised (a sender may round each entry on its own)."""
    q = q.float()
    return q / q.sum(1, keepdim=True)


def quantized_to_proto(probs: torch.Tensor) -> pb.Quantized:
    q = quantize(probs).numpy()
    return pb.Quantized(shape=list(q.shape), data=q.tobytes())


def quantized_from_proto(msg: pb.Quantized, rows: int, expected: int | None = None) -> torch.Tensor:
    """Checked and made dense; `expected` is the receiver's class count, checked before the rows are built."""
    num_classes = validation.check_quantized_sizes(rows, list(msg.shape[:3]), len(msg.data), expected)
    q = torch.from_numpy(np.frombuffer(msg.data, dtype=np.uint8).reshape(rows, num_classes).copy())
    validation.check_quantized(q)
    return dequantize(q)


# ------------------------------------------------------------ predictions
def predictions_to_proto(batch: PredictionBatch, encoding: Encoding | str = "float16") -> pb.PushPredictionsRequest:
    """`encoding`: an Encoding, or a dtype name for the dense tensor."""
    enc = _as_encoding(encoding)
    if enc.kind == "topk":
        payload = {"topk": topk_to_proto(batch.probs, enc.k, enc.dtype)}
    elif enc.kind == "uint8":
        payload = {"uint8": quantized_to_proto(batch.probs)}
    else:
        payload = {"probs": tensor_to_proto(batch.probs, enc.dtype)}
    return pb.PushPredictionsRequest(
        run_id=batch.run_id,
        sender_id=batch.sender,
        version=batch.version,
        step=batch.step,
        sample_ids=batch.sample_ids.tolist(),
        temperature=batch.temperature,
        **payload,
    )


def decode_push(raw: bytes, max_ids: int | None = None, num_classes: int | None = None) -> pb.PushPredictionsRequest:
    """Parse the wire bytes of a PushPredictions request, once its sizes are known to fit.

    Every count (ids, rows, classes, k, dimensions) and byte length is read off the wire and
    checked against the receiver's `max_ids` (its transfer-set size) and `num_classes` before
    the message is parsed, so a refused message costs no more than its bytes.
    """
    push_sizes.check(raw, max_ids, num_classes)
    try:
        return pb.PushPredictionsRequest.FromString(raw)
    except DecodeError:
        raise MessageRejected(Rejection.UNDECODABLE, f"{len(raw)} bytes are not a PushPredictionsRequest") from None


def _probs_from_proto(msg: pb.PushPredictionsRequest, rows: int, num_classes: int | None) -> torch.Tensor:
    kind = msg.WhichOneof("predictions")
    if kind == "probs":
        if len(msg.probs.shape) != 2 or msg.probs.shape[0] != rows:
            raise MessageRejected(Rejection.BAD_SHAPE, f"probs shape {list(msg.probs.shape[:3])} is not [{rows}, C] for {rows} sample ids")
        return tensor_from_proto(msg.probs)
    if kind == "topk":
        return topk_from_proto(msg.topk, rows, num_classes)
    if kind == "uint8":
        return quantized_from_proto(msg.uint8, rows, num_classes)
    # None set, or a field of an encoding this region does not know (parsed as unknown).
    raise MessageRejected(Rejection.UNKNOWN_ENCODING, "message carries predictions in no encoding this region knows")


def predictions_from_proto(
    msg: pb.PushPredictionsRequest, max_ids: int | None = None, num_classes: int | None = None
) -> PredictionBatch:
    """Decode to domain values, dense; counts are checked first, so no oversized list is ever built.

    `max_ids` is the receiver's transfer-set size: no honest message carries more ids.
    `num_classes` is the receiver's class count: a top-k message for another is refused before
    it is made dense.
    """
    count = len(msg.sample_ids)  # the repeated field's length: no Python ints are made
    if max_ids is not None and count > max_ids:
        raise MessageRejected(Rejection.BAD_SHAPE, f"{count} sample ids, more than the transfer set's {max_ids}")
    probs = _probs_from_proto(msg, count, num_classes)
    return PredictionBatch(
        run_id=msg.run_id,
        sender=int(msg.sender_id),
        version=int(msg.version),
        step=int(msg.step),
        sample_ids=torch.from_numpy(np.fromiter(msg.sample_ids, dtype=np.int64, count=count)),
        temperature=float(msg.temperature),
        probs=probs,
    )


def push_response_to_proto(version: int) -> pb.PushPredictionsResponse:
    return pb.PushPredictionsResponse(accepted_version=version)


def status_request() -> pb.GetStatusRequest:
    return pb.GetStatusRequest()


def status_to_proto(status: RegionStatus) -> pb.RegionStatus:
    return pb.RegionStatus(
        run_id=status.run_id,
        region_id=status.region,
        state=status.state.value,
        step=status.step,
        version=status.version,
        test_accuracy=status.test_accuracy,
        bytes_sent=status.bytes_sent,
        bytes_received=status.bytes_received,
        peers=[
            pb.PeerStatus(peer_id=p, last_version=c.last_version, messages_received=c.messages, bytes_received=c.bytes)
            for p, c in sorted(status.peers.items())
        ],
        node_id=status.node_id,
        address=status.address,
    )


def status_from_proto(msg: pb.RegionStatus) -> RegionStatus:
    return RegionStatus(
        run_id=msg.run_id,
        region=msg.region_id,
        state=RegionState(msg.state),
        step=msg.step,
        version=msg.version,
        test_accuracy=msg.test_accuracy,
        bytes_sent=msg.bytes_sent,
        bytes_received=msg.bytes_received,
        peers={p.peer_id: PeerCounters(p.last_version, p.messages_received, p.bytes_received) for p in msg.peers},
        node_id=msg.node_id,
        address=msg.address,
    )


def wire_size(batch: PredictionBatch, encoding: Encoding | str) -> int:
    """Serialized size in bytes of the message that would carry `batch`."""
    return predictions_to_proto(batch, encoding).ByteSize()

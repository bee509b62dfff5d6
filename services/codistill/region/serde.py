"""The one boundary between protobuf messages and domain values/tensors.

Nothing else in codistill touches `*_pb2` message classes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from google.protobuf.message import DecodeError

from codistill.region.messages import (
    MessageRejected,
    PeerCounters,
    PredictionBatch,
    RegionState,
    RegionStatus,
    Rejection,
)
from codistill.v1 import region_pb2 as pb

_DTYPES = {
    "float16": (pb.DTYPE_FLOAT16, np.dtype("<f2")),
    "float32": (pb.DTYPE_FLOAT32, np.dtype("<f4")),
}
_BY_CODE = {code: dt for code, dt in _DTYPES.values()}
# A receiver accepts either dtype, so its size cap must admit the widest.
_WIDEST_ITEMSIZE = max(dt.itemsize for _, dt in _DTYPES.values())
# An int64 varint takes at most 10 bytes on the wire.
_ID_WIRE_BYTES = 10
# Room for the run id, the scalar fields, the shape and the field tags.
MESSAGE_HEADROOM_BYTES = 64 * 1024


def default_max_message_bytes(ids_per_message: int, num_classes: int) -> int:
    """The largest honest PushPredictions: ids x classes probabilities, the ids, and headroom."""
    return ids_per_message * (num_classes * _WIDEST_ITEMSIZE + _ID_WIRE_BYTES) + MESSAGE_HEADROOM_BYTES


def tensor_to_proto(t: torch.Tensor, dtype: str) -> pb.Tensor:
    code, np_dtype = _DTYPES[dtype]
    array = t.detach().cpu().numpy().astype(np_dtype, copy=False)
    return pb.Tensor(dtype=code, shape=list(array.shape), data=array.tobytes())


def tensor_from_proto(msg: pb.Tensor) -> torch.Tensor:
    """Decode to float32; bytes length must match dtype × shape."""
    np_dtype = _BY_CODE.get(msg.dtype)
    if np_dtype is None:
        raise MessageRejected(Rejection.BAD_DTYPE, f"unsupported tensor dtype code {msg.dtype}")
    if len(msg.shape) > 8:
        raise MessageRejected(Rejection.BAD_SHAPE, f"shape has {len(msg.shape)} dimensions")
    shape = tuple(int(d) for d in msg.shape)
    if any(d < 0 for d in shape):
        raise MessageRejected(Rejection.BAD_SHAPE, f"negative dimension in shape {shape}")
    # Python integers: a shape like [2**32, 2**32] must not wrap around to a small size.
    expected = math.prod(shape) * np_dtype.itemsize
    if len(msg.data) != expected:
        raise MessageRejected(
            Rejection.BAD_DTYPE, f"{len(msg.data)} bytes do not match shape {shape} of {np_dtype.name}"
        )
    array = np.frombuffer(msg.data, dtype=np_dtype).reshape(shape)
    return torch.from_numpy(array.astype(np.float32))


def predictions_to_proto(batch: PredictionBatch, dtype: str = "float16") -> pb.PushPredictionsRequest:
    return pb.PushPredictionsRequest(
        run_id=batch.run_id,
        sender_id=batch.sender,
        version=batch.version,
        step=batch.step,
        sample_ids=batch.sample_ids.tolist(),
        temperature=batch.temperature,
        probs=tensor_to_proto(batch.probs, dtype),
    )


def decode_push(raw: bytes) -> pb.PushPredictionsRequest:
    """Parse the wire bytes of a PushPredictions request."""
    try:
        return pb.PushPredictionsRequest.FromString(raw)
    except DecodeError:
        raise MessageRejected(Rejection.UNDECODABLE, f"{len(raw)} bytes are not a PushPredictionsRequest") from None


def predictions_from_proto(msg: pb.PushPredictionsRequest, max_ids: int | None = None) -> PredictionBatch:
    """Decode to domain values; counts are checked first, so no oversized list is ever built.

    `max_ids` is the receiver's transfer-set size: no honest message carries more ids.
    """
    count = len(msg.sample_ids)  # the repeated field's length: no Python ints are made
    if max_ids is not None and count > max_ids:
        raise MessageRejected(Rejection.BAD_SHAPE, f"{count} sample ids, more than the transfer set's {max_ids}")
    if len(msg.probs.shape) != 2 or msg.probs.shape[0] != count:
        raise MessageRejected(Rejection.BAD_SHAPE, f"probs shape {list(msg.probs.shape[:3])} is not [{count}, C] for {count} sample ids")
    return PredictionBatch(
        run_id=msg.run_id,
        sender=int(msg.sender_id),
        version=int(msg.version),
        step=int(msg.step),
        sample_ids=torch.from_numpy(np.fromiter(msg.sample_ids, dtype=np.int64, count=count)),
        temperature=float(msg.temperature),
        probs=tensor_from_proto(msg.probs),
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


def wire_size(batch: PredictionBatch, dtype: str) -> int:
    """Serialized size in bytes of the message that would carry `batch`."""
    return predictions_to_proto(batch, dtype).ByteSize()

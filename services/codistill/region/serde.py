"""The one boundary between protobuf messages and domain values/tensors.

Nothing else in codistill touches `*_pb2` message classes.
"""

from __future__ import annotations

import numpy as np
import torch

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


def tensor_to_proto(t: torch.Tensor, dtype: str) -> pb.Tensor:
    code, np_dtype = _DTYPES[dtype]
    array = t.detach().cpu().numpy().astype(np_dtype, copy=False)
    return pb.Tensor(dtype=code, shape=list(array.shape), data=array.tobytes())


def tensor_from_proto(msg: pb.Tensor) -> torch.Tensor:
    """Decode to float32; bytes length must match dtype × shape."""
    np_dtype = _BY_CODE.get(msg.dtype)
    if np_dtype is None:
        raise MessageRejected(Rejection.BAD_DTYPE, f"unsupported tensor dtype code {msg.dtype}")
    shape = tuple(int(d) for d in msg.shape)
    if any(d < 0 for d in shape):
        raise MessageRejected(Rejection.BAD_SHAPE, f"negative dimension in shape {shape}")
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize if shape else np_dtype.itemsize
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


def predictions_from_proto(msg: pb.PushPredictionsRequest) -> PredictionBatch:
    return PredictionBatch(
        run_id=msg.run_id,
        sender=int(msg.sender_id),
        version=int(msg.version),
        step=int(msg.step),
        sample_ids=torch.tensor(list(msg.sample_ids), dtype=torch.int64),
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
    )


def wire_size(batch: PredictionBatch, dtype: str) -> int:
    """Serialized size in bytes of the message that would carry `batch`."""
    return predictions_to_proto(batch, dtype).ByteSize()

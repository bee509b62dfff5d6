"""Hostile top-k and uint8 messages against a real region gRPC server: INVALID_ARGUMENT, counted by reason."""

import logging

import grpc
import numpy as np
import pytest
import torch

from codistill.records import RegionData
from codistill.region import client, serde
from codistill.region.messages import PredictionBatch
from codistill.region.node import RegionNode
from codistill.v1 import region_pb2, region_pb2_grpc

pytestmark = pytest.mark.integration
C, M = 6, 20


class _Errors(logging.Handler):
    """Collects ERROR records: a refusal is quiet, a logged traceback is a bug."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def served():
    from tests.conftest import make_tiny_cfg

    rng = np.random.default_rng(0)
    data = RegionData(
        rng.random((30, 1, 8, 8), dtype=np.float32), rng.integers(0, C, 30),
        rng.random((M, 1, 8, 8), dtype=np.float32), rng.random((10, 1, 8, 8), dtype=np.float32),
        rng.integers(0, C, 10), C,
    )
    cfg = make_tiny_cfg()
    cfg.monitor.metrics = False
    node = RegionNode(0, cfg, data, run_id="run-1")
    node.serve("127.0.0.1")
    node.prepare([1, 2])
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    with client.open_channel(node.address, 4 << 20) as channel:
        yield node, region_pb2_grpc.RegionStub(channel), errors
    logging.getLogger().removeHandler(errors)
    node.close()


def _honest(node: RegionNode, encoding: serde.Encoding, version: int = 0) -> region_pb2.PushPredictionsRequest:
    probs = torch.softmax(torch.randn(4, C, generator=torch.Generator().manual_seed(version)) * 2, -1)
    batch = PredictionBatch("run-1", 1, version, 0, torch.arange(4), node.cfg.distill.temperature, probs)
    return serde.predictions_to_proto(batch, encoding)


def _topk(node, classes=None, values=None, num_classes=C, shape=None):
    """Top-k of 4 rows, k = 2, with its classes, values or class count replaced."""
    msg = _honest(node, serde.Encoding("topk", "float32", 2))
    if classes is not None:
        del msg.topk.classes[:]
        msg.topk.classes.extend([c for row in classes for c in row])
    if values is not None:
        v = np.asarray(values, dtype="<f4")
        msg.topk.values.CopyFrom(region_pb2.Tensor(dtype=region_pb2.DTYPE_FLOAT32, shape=shape or list(v.shape), data=v.tobytes()))
    msg.topk.num_classes = num_classes
    return msg


def _uint8(node, rows=None, shape=None):
    msg = _honest(node, serde.Encoding("uint8"))
    if rows is not None:
        q = np.asarray(rows, dtype=np.uint8)
        msg.uint8.CopyFrom(region_pb2.Quantized(shape=list(q.shape), data=q.tobytes()))
    if shape is not None:
        del msg.uint8.shape[:]
        msg.uint8.shape.extend(shape)
    return msg


OK_ROWS = [[0, 1], [2, 3], [4, 5], [1, 0]]
HOSTILE = {
    "topk index out of range": (lambda n: _topk(n, classes=[[0, 1], [2, C], [4, 5], [1, 0]]), "bad_class_index"),
    "topk negative index": (lambda n: _topk(n, classes=[[0, 1], [2, 3], [-1, 5], [1, 0]]), "bad_class_index"),
    "topk huge index": (lambda n: _topk(n, classes=[[0, 2**31 - 1], [2, 3], [4, 5], [1, 0]]), "bad_class_index"),
    "topk duplicate classes": (lambda n: _topk(n, classes=[[0, 1], [3, 3], [4, 5], [1, 0]]), "duplicate_class"),
    "topk mass above 1": (lambda n: _topk(n, classes=OK_ROWS, values=[[0.6, 0.3], [0.9, 0.2], [0.5, 0.1], [0.4, 0.4]]), "not_normalised"),
    "topk negative value": (lambda n: _topk(n, classes=OK_ROWS, values=[[0.6, -0.3], [0.5, 0.2], [0.5, 0.1], [0.4, 0.4]]), "negative"),
    "topk NaN value": (lambda n: _topk(n, classes=OK_ROWS, values=[[np.nan, 0.3], [0.5, 0.2], [0.5, 0.1], [0.4, 0.4]]), "non_finite"),
    "topk k beyond the classes": (lambda n: _topk(n, classes=[list(range(C + 1))] * 4, values=[[0.1] * (C + 1)] * 4), "bad_class_count"),
    "topk another class count": (lambda n: _topk(n, num_classes=C + 4), "bad_class_count"),
    "topk huge class count": (lambda n: _topk(n, num_classes=2**31 - 1), "bad_class_count"),
    "topk fewer indices than values": (lambda n: _topk(n, classes=[[0, 1], [2, 3], [4, 5], [1]]), "bad_shape"),
    "topk values for other rows": (lambda n: _topk(n, values=[[0.5, 0.3]] * 3), "bad_shape"),
    "topk values of a huge k": (lambda n: _topk(n, values=[[0.5, 0.3]] * 4, shape=[4, 2**62]), "bad_class_count"),
    "uint8 row without mass": (lambda n: _uint8(n, rows=[[0] * C, [43] * C, [43] * C, [43] * C]), "not_normalised"),
    "uint8 row of all 255": (lambda n: _uint8(n, rows=[[255] * C, [43] * C, [43] * C, [43] * C]), "not_normalised"),
    "uint8 bytes short of the shape": (lambda n: _uint8(n, shape=[4, C + 1]), "bad_shape"),
    "uint8 rows for other ids": (lambda n: _uint8(n, shape=[2, 2 * C]), "bad_shape"),
    "uint8 shape wrapping to the data length": (lambda n: _uint8(n, shape=[4, C - 2**62]), "bad_shape"),
    "uint8 another class count": (lambda n: _uint8(n, rows=[[85] * 3] * 4), "bad_class_count"),
    "no encoding": (lambda n: _without_predictions(n), "unknown_encoding"),
    "an encoding from a newer peer": (lambda n: _newer_encoding(n), "unknown_encoding"),
}


def _without_predictions(node):
    msg = _honest(node, serde.Encoding("uint8"))
    msg.ClearField("uint8")
    return msg


def _newer_encoding(node):
    """Field 12 of PushPredictionsRequest: unknown to this region, so no encoding it knows is set."""
    return region_pb2.PushPredictionsRequest.FromString(_without_predictions(node).SerializeToString() + b"\x62\x04\x0a\x02\x01\x02")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_compressed_message_is_invalid_argument_and_counted(served, case):
    node, stub, errors = served
    make, reason = HOSTILE[case]
    before, stored = dict(node.inbox.rejections), node.inbox.counters[1].messages
    with pytest.raises(grpc.RpcError) as info:
        stub.PushPredictions(make(node), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (info.value.code(), info.value.details())
    assert info.value.details().startswith(reason), info.value.details()
    after = dict(node.inbox.rejections)
    assert after.pop(reason) == before.pop(reason, 0) + 1 and after == before  # counted once, by this reason
    assert node.inbox.counters[1].messages == stored
    assert not errors.records, errors.records[0].getMessage()


@pytest.mark.parametrize("encoding", [serde.Encoding("topk", "float16", 2), serde.Encoding("uint8")])
def test_honest_compressed_messages_are_taken_and_their_wire_bytes_counted(served, encoding):
    node, stub, errors = served
    version = node.inbox.counters[1].last_version + 1
    msg = _honest(node, encoding, version)
    received = node.inbox.bytes_received()
    assert stub.PushPredictions(msg, timeout=5).accepted_version == version
    assert node.inbox.bytes_received() - received == msg.ByteSize()
    pool = node.inbox.round_pool(version)
    assert pool.ids.tolist() == [0, 1, 2, 3] and torch.allclose(pool.peers[0].sum(1), torch.ones(4), atol=1e-6)
    assert not errors.records

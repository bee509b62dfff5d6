"""Random messages from a raw gRPC client: no crash, no UNKNOWN, every refusal counted, consensus untouched."""

import logging

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codistill.region import client
from codistill.region.node import RegionNode
from codistill.region.server import transport_limit
from codistill.records import RegionData
from codistill.v1 import region_pb2, region_pb2_grpc

pytestmark = pytest.mark.integration
C, M = 4, 16
CAP = 64 * 1024  # the region's own cap; the client may send far more
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}


class _Errors(logging.Handler):
    """Collects ERROR records (a logged traceback is a bug: refusals are quiet)."""

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
        rng.random((20, 1, 8, 8), dtype=np.float32), rng.integers(0, C, 20),
        rng.random((M, 1, 8, 8), dtype=np.float32), rng.random((5, 1, 8, 8), dtype=np.float32),
        rng.integers(0, C, 5), C,
    )
    cfg = make_tiny_cfg()
    cfg.exchange.max_message_bytes = CAP
    node = RegionNode(0, cfg, data, run_id="run-1")
    node.serve("127.0.0.1")
    node.prepare([1, 2])
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    channel = client.open_channel(node.address, 16 << 20)
    tally = {"counted": 0}  # refusals the region itself must have counted
    yield node, region_pb2_grpc.RegionStub(channel), tally, errors, channel
    channel.close()
    logging.getLogger().removeHandler(errors)
    node.close()


floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 0.25, 1.0, -0.0, 1e-8]),
)


def _ids(draw) -> list[int]:
    if draw(st.integers(0, 14)) == 0:  # a long list: past the transfer set, the cap, or the transport limit
        count = draw(st.sampled_from([M + 1, 2_000, 20_000]))
        start = draw(st.sampled_from([0, 2**40]))  # 1-byte or 6-byte varints
        return list(range(start, start + count))
    return draw(st.lists(st.integers(0, M + 2) | st.integers(-(2**63), 2**63 - 1), min_size=draw(st.integers(0, 1)), max_size=6))


# Shapes whose element counts overflow 64 bits, have many dimensions, or are negative.
HUGE_SHAPES = [[2**32, 2**32], [4, 2**62], [2**63 - 1, 2**63 - 1], [2**63 - 1], [3] * 40, [-(2**63), C]]


def _data(draw, rows: int, c: int, dtype: int) -> bytes:
    np_dtype = "<f2" if dtype == 1 else "<f4"
    if rows > 8 or draw(st.booleans()):  # well-formed rows, so deeper checks are reached
        return np.full(rows * c, 1 / max(c, 1), dtype=np_dtype).tobytes()
    values = draw(st.lists(floats, min_size=0, max_size=rows * c + 2))
    with np.errstate(over="ignore"):
        data = np.asarray(values, dtype=np_dtype).tobytes()
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, max(0, len(data))))]
    return data


@st.composite
def messages(draw):
    sample_ids = _ids(draw)
    c = draw(st.sampled_from([C, C, 1, 5]))
    rows = len(sample_ids) if draw(st.integers(0, 4)) else draw(st.integers(0, 7))
    dtype = draw(st.sampled_from([1, 2, 1, 2, 0, 7]))
    odd = [[rows], [], [rows, c, 1], [-1, c], *HUGE_SHAPES]
    shape = [rows, c] if draw(st.integers(0, 3)) else draw(st.sampled_from(odd))
    data = _data(draw, rows, c, dtype)
    if rows in (4, 8) and draw(st.integers(0, 3)) == 0:
        # rows x (2**64 / rows) elements wrap to 0 in int64, which would "match" empty data.
        shape, data = [rows, 2**64 // rows], b""
    encoding = draw(st.sampled_from(["probs", "probs", "topk", "topk", "uint8", "none"]))
    if encoding == "topk":
        payload = {"topk": _topk(draw, rows, dtype)}
    elif encoding == "uint8":
        payload = {"uint8": _uint8(draw, rows, c, shape)}
    elif encoding == "probs":
        payload = {"probs": region_pb2.Tensor(dtype=dtype, shape=shape, data=data)}
    else:
        payload = {}
    return region_pb2.PushPredictionsRequest(
        run_id=draw(st.sampled_from(["run-1", "run-1", "", "x" * 300, "\u00e9vil\n", "x" * (CAP + 1000)])),
        sender_id=draw(st.sampled_from([1, 2, 0, -5, 2**31 - 1])),
        version=draw(st.integers(-1, 3) | st.integers(-(2**63), 2**63 - 1)),
        step=draw(st.integers(-(2**63), 2**63 - 1)),
        sample_ids=sample_ids,
        temperature=draw(st.just(3.0) | floats),
        **payload,
    )


# A top-k payload is well formed but for at most one fault, so that every check is reached.
TOPK_FAULTS = ["none", "index", "duplicate", "values", "k", "num_classes", "shape", "classes"]


def _topk(draw, rows: int, dtype: int) -> region_pb2.TopK:
    fault = draw(st.sampled_from(TOPK_FAULTS))
    k = draw(st.sampled_from([0, C + 1, 2**40] if fault == "k" else [1, 2, 3, C]))
    kk, n = min(k, 8), min(rows, 8)
    classes = [c for _ in range(n) for c in draw(st.permutations(range(max(C, kk))))[:kk]]
    if fault == "index" and classes:
        classes[draw(st.integers(0, len(classes) - 1))] = draw(st.sampled_from([-1, C, C + 1, 2**31 - 1, -(2**31)]))
    if fault == "duplicate" and kk > 1 and classes:
        i = draw(st.integers(0, len(classes) - 1))
        classes[i] = classes[i - 1] if i % kk else classes[i + 1]
    if fault == "classes":
        classes = draw(st.lists(st.integers(-2, C + 1) | st.integers(-(2**31), 2**31 - 1), max_size=40))
    np_dtype = "<f2" if dtype == 1 else "<f4"
    if fault == "values":  # the right length, any floats: NaN, negative, a row's mass past 1
        with np.errstate(over="ignore"):
            data = np.asarray(draw(st.lists(floats, min_size=n * kk, max_size=n * kk)), dtype=np_dtype).tobytes()
    else:
        data = np.full(n * kk, 1 / max(C, kk), dtype=np_dtype).tobytes()
    shape = draw(st.sampled_from([[rows], [], [rows, k, 1], [-1, k], [rows + 1, k], *HUGE_SHAPES])) if fault == "shape" else [rows, k]
    num_classes = draw(st.sampled_from([1, 0, -1, C + 1, 2**31 - 1])) if fault == "num_classes" else C
    return region_pb2.TopK(values=region_pb2.Tensor(dtype=dtype, shape=shape, data=data), classes=classes, num_classes=num_classes)


def _uint8(draw, rows: int, c: int, shape: list[int]) -> region_pb2.Quantized:
    kind = draw(st.sampled_from(["honest", "any bytes", "any length"]))
    if kind == "honest" and 0 < c and rows <= 8:  # rows of 255 steps, which one fault may spoil
        row = [255 // c + (i < 255 % c) for i in range(c)]
        data = bytearray(bytes(row) * rows)
        if data and draw(st.booleans()):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    elif kind == "any bytes" and rows <= 8:
        data = bytes(draw(st.lists(st.integers(0, 255), min_size=rows * c, max_size=rows * c)))
    else:
        data = draw(st.binary(max_size=64))
    return region_pb2.Quantized(shape=shape, data=data)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(msg=messages())
def test_random_messages_never_crash_or_surface_unknown(served, msg):
    node, stub, tally, errors, _ = served
    before = {p: c.last_version for p, c in node.inbox.counters.items()}
    try:
        reply = stub.PushPredictions(msg, timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        assert {p: c.last_version for p, c in node.inbox.counters.items()} == before
        if msg.ByteSize() > transport_limit(CAP):
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the gRPC core's own refusal
        else:
            tally["counted"] += 1
        assert sum(node.inbox.rejections.values()) == tally["counted"], dict(node.inbox.rejections)
        assert not errors.records, errors.records[0].getMessage()
        return
    assert sum(node.inbox.rejections.values()) == tally["counted"]
    # Whatever got through is a valid distribution over known samples.
    assert reply.accepted_version == msg.version
    pool = node.inbox.round_pool(msg.version)
    assert not pool.empty
    assert np.isfinite(pool.peers.numpy()).all() and (pool.peers.numpy() >= 0).all()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.binary(max_size=64) | st.sampled_from([b"\xff" * 8, b"\x2a\xff\xff\xff\xff\x0f", b"\x0a\x05run-1\x3a\x02\x12\xff"]))
def test_random_bytes_never_crash_or_surface_unknown(served, raw):
    node, _, tally, errors, channel = served
    push = channel.unary_unary("/codistill.v1.Region/PushPredictions")  # bytes as they are
    try:
        push(raw, timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        tally["counted"] += 1
    assert sum(node.inbox.rejections.values()) == tally["counted"], dict(node.inbox.rejections)
    assert not errors.records, errors.records[0].getMessage()

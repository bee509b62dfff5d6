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
    return region_pb2.PushPredictionsRequest(
        run_id=draw(st.sampled_from(["run-1", "run-1", "", "x" * 300, "\u00e9vil\n", "x" * (CAP + 1000)])),
        sender_id=draw(st.sampled_from([1, 2, 0, -5, 2**31 - 1])),
        version=draw(st.integers(-1, 3) | st.integers(-(2**63), 2**63 - 1)),
        step=draw(st.integers(-(2**63), 2**63 - 1)),
        sample_ids=sample_ids,
        temperature=draw(st.just(3.0) | floats),
        probs=region_pb2.Tensor(dtype=dtype, shape=shape, data=data),
    )


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

"""Random messages from a raw gRPC client: no crash, no UNKNOWN, consensus untouched."""

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codistill.region import client
from codistill.region.node import RegionNode
from codistill.region.trainer import RegionData
from codistill.v1 import region_pb2, region_pb2_grpc

pytestmark = pytest.mark.integration
C, M = 4, 16
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def served():
    from tests.conftest import make_tiny_cfg

    rng = np.random.default_rng(0)
    data = RegionData(
        rng.random((20, 1, 8, 8), dtype=np.float32), rng.integers(0, C, 20),
        rng.random((M, 1, 8, 8), dtype=np.float32), rng.random((5, 1, 8, 8), dtype=np.float32),
        rng.integers(0, C, 5), C,
    )
    node = RegionNode(0, make_tiny_cfg(), data, run_id="run-1")
    node.serve("127.0.0.1")
    node.prepare([1, 2])
    channel = client.open_channel(node.address, 1 << 20)
    yield node, region_pb2_grpc.RegionStub(channel)
    channel.close()
    node.close()


floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 0.25, 1.0, -0.0, 1e-8]),
)


@st.composite
def messages(draw):
    n = draw(st.integers(0, 6))
    c = draw(st.sampled_from([C, C, 1, 5]))
    rows = draw(st.integers(0, 7))
    dtype = draw(st.sampled_from([0, 1, 2, 7]))
    values = draw(st.lists(floats, min_size=0, max_size=rows * c + 2))
    with np.errstate(over="ignore"):
        data = np.asarray(values, dtype="<f2" if dtype == 1 else "<f4").tobytes()
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, max(0, len(data))))]
    shape = draw(st.sampled_from([[rows, c], [rows], [], [rows, c, 1], [-1, c]]))
    return region_pb2.PushPredictionsRequest(
        run_id=draw(st.sampled_from(["run-1", "run-1", "", "x" * 300, "\u00e9vil\n"])),
        sender_id=draw(st.sampled_from([1, 2, 0, -5, 2**31 - 1])),
        version=draw(st.integers(-(2**63), 2**63 - 1)),
        step=draw(st.integers(-(2**63), 2**63 - 1)),
        sample_ids=draw(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, M + 2), max_size=n)),
        temperature=draw(floats),
        probs=region_pb2.Tensor(dtype=dtype, shape=shape, data=data),
    )


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(msg=messages())
def test_random_messages_never_crash_or_surface_unknown(served, msg):
    node, stub = served
    before = {p: c.last_version for p, c in node.inbox.counters.items()}
    try:
        reply = stub.PushPredictions(msg, timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        assert {p: c.last_version for p, c in node.inbox.counters.items()} == before
        return
    # Whatever got through is a valid distribution over known samples.
    assert reply.accepted_version == msg.version
    pool = node.inbox.round_pool(msg.version)
    assert not pool.empty
    assert np.isfinite(pool.peers.numpy()).all() and (pool.peers.numpy() >= 0).all()

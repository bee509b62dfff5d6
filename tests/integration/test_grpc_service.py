"""A real region gRPC server on loopback, poked by a raw client."""

import logging
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codistill.region import client, serde
from codistill.region.messages import PredictionBatch
from codistill.region.node import RegionNode
from codistill.region.server import transport_limit
from codistill.records import RegionData
from codistill.v1 import region_pb2, region_pb2_grpc

pytestmark = pytest.mark.integration
C, M = 4, 20
CAP = 256 * 1024  # the region's own message cap here; clients may send far more


@pytest.fixture
def node(tiny_cfg):
    import numpy as np

    tiny_cfg.exchange.max_message_bytes = CAP
    rng = np.random.default_rng(0)
    d = RegionData(
        rng.random((30, 1, 8, 8), dtype=np.float32), rng.integers(0, C, 30),
        rng.random((M, 1, 8, 8), dtype=np.float32), rng.random((10, 1, 8, 8), dtype=np.float32),
        rng.integers(0, C, 10), C,
    )
    n = RegionNode(0, tiny_cfg, d, run_id="run-1")
    n.serve("127.0.0.1")
    n.prepare([1, 2])
    yield n
    n.close()


@pytest.fixture
def stub(node):
    with client.open_channel(node.address, 4 * 1024 * 1024) as channel:
        yield region_pb2_grpc.RegionStub(channel), channel


def _request(**overrides):
    probs = torch.softmax(torch.randn(5, C), -1)
    b = PredictionBatch("run-1", 1, 0, 0, torch.arange(5), 3.0, probs)
    msg = serde.predictions_to_proto(b, "float32")
    for k, v in overrides.items():
        if k == "probs":
            msg.probs.CopyFrom(v)
        elif k == "sample_ids":
            del msg.sample_ids[:]
            msg.sample_ids.extend(v)
        else:
            setattr(msg, k, v)
    return msg


def _tensor(values, shape, dtype=region_pb2.DTYPE_FLOAT32):
    import numpy as np

    return region_pb2.Tensor(dtype=dtype, shape=shape, data=np.asarray(values, dtype="<f4").tobytes())


CASES = {
    "nan": (dict(probs=_tensor([float("nan")] * 5 * C, [5, C])), grpc.StatusCode.INVALID_ARGUMENT),
    "wrong shape": (dict(probs=_tensor([0.25] * 3 * C, [3, C])), grpc.StatusCode.INVALID_ARGUMENT),
    "wrong class count": (dict(probs=_tensor([0.2] * 5 * 5, [5, 5])), grpc.StatusCode.INVALID_ARGUMENT),
    "inf": (dict(probs=_tensor([float("inf")] + [0.0] * (5 * C - 1), [5, C])), grpc.StatusCode.INVALID_ARGUMENT),
    "negative": (dict(probs=_tensor([1.5, -0.5, 0.0, 0.0] * 5, [5, C])), grpc.StatusCode.INVALID_ARGUMENT),
    "rows not summing to 1": (dict(probs=_tensor([0.5] * 5 * C, [5, C])), grpc.StatusCode.INVALID_ARGUMENT),
    "duplicate sample ids": (dict(sample_ids=[0, 1, 1, 2, 3]), grpc.StatusCode.INVALID_ARGUMENT),
    "negative temperature": (dict(temperature=-1.0), grpc.StatusCode.INVALID_ARGUMENT),
    "bytes do not match dtype": (
        dict(probs=region_pb2.Tensor(dtype=region_pb2.DTYPE_FLOAT16, shape=[5, C], data=b"\0" * 5 * C * 4)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "zero temperature": (dict(temperature=0.0), grpc.StatusCode.INVALID_ARGUMENT),
    "infinite temperature": (dict(temperature=float("inf")), grpc.StatusCode.INVALID_ARGUMENT),
    "nan temperature": (dict(temperature=float("nan")), grpc.StatusCode.INVALID_ARGUMENT),
    "another temperature": (dict(temperature=2.0), grpc.StatusCode.INVALID_ARGUMENT),
    # 4 * 2**62 elements wrap to 0 in int64, which would "match" the empty data.
    "shape overflowing 64 bits": (
        dict(sample_ids=[0, 1, 2, 3], probs=region_pb2.Tensor(dtype=region_pb2.DTYPE_FLOAT32, shape=[4, 2**62])),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "more ids than the transfer set": (dict(sample_ids=list(range(M + 1))), grpc.StatusCode.INVALID_ARGUMENT),
    "far-future version": (dict(version=2**63 - 1), grpc.StatusCode.FAILED_PRECONDITION),
    "unknown sample": (dict(sample_ids=[0, 1, 2, 3, M]), grpc.StatusCode.INVALID_ARGUMENT),
    "wrong run": (dict(run_id="someone-else"), grpc.StatusCode.FAILED_PRECONDITION),
    "unknown sender": (dict(sender_id=9), grpc.StatusCode.FAILED_PRECONDITION),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_messages_get_specific_codes_and_never_reach_consensus(node, stub, case, caplog):
    overrides, code = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        stub[0].PushPredictions(_request(**overrides), timeout=5)
    assert info.value.code() == code
    assert node.inbox.round_pool(0).empty and node.inbox.fresh_pool(0, 10**6).empty
    assert sum(node.inbox.rejections.values()) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # refusals are quiet


def test_undecodable_bytes_are_invalid_argument_and_counted(node, stub, caplog):
    raw = stub[1].unary_unary("/codistill.v1.Region/PushPredictions")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(node.inbox.rejections) == {"undecodable": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_far_future_version_does_not_block_the_real_sender(node, stub):
    with pytest.raises(grpc.RpcError) as info:
        stub[0].PushPredictions(_request(version=2**63 - 1), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert node.inbox.rejections["future_version"] == 1
    assert stub[0].PushPredictions(_request(version=0), timeout=5).accepted_version == 0
    assert node.inbox.counters[1].last_version == 0


def test_good_message_is_stored_and_replay_refused(node, stub):
    reply = stub[0].PushPredictions(_request(), timeout=5)
    assert reply.accepted_version == 0
    pool = node.inbox.round_pool(0)
    assert pool.ids.tolist() == [0, 1, 2, 3, 4] and pool.mask[0].all() and not pool.mask[1].any()
    with pytest.raises(grpc.RpcError) as info:
        stub[0].PushPredictions(_request(), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_oversized_message_is_refused_by_the_regions_own_cap_and_counted(node, stub):
    big = _request()
    big.run_id = "run-1" + " " * CAP  # over the region's cap, within what the client may send
    assert CAP < big.ByteSize() < transport_limit(CAP) < 4 * 1024 * 1024
    with pytest.raises(grpc.RpcError) as info:
        stub[0].PushPredictions(big, timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(node.inbox.rejections) == {"too_large": 1} and node.servicer.entered == 1
    assert node.inbox.bytes_received() == 0


def test_message_beyond_the_transport_limit_is_refused_before_any_handler(node, stub):
    big = _request()
    big.run_id = "x" * transport_limit(CAP)
    with pytest.raises(grpc.RpcError) as info:
        stub[0].PushPredictions(big, timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert node.servicer.entered == 0


def test_health_and_status(node, stub):
    health = health_pb2_grpc.HealthStub(stub[1])
    for service in ("", "codistill.v1.Region"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="something.Else"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    stub[0].PushPredictions(_request(), timeout=5)
    status = client.get_status(node.address)
    assert status.region == 0 and status.run_id == "run-1" and status.state.value == "starting"
    assert status.peers[1].messages == 1 and status.peers[2].messages == 0 and status.bytes_received > 0


def test_not_wired_region_refuses(tiny_cfg, node):
    node.inbox = None
    with client.open_channel(node.address, 1 << 22) as ch:
        with pytest.raises(grpc.RpcError) as info:
            region_pb2_grpc.RegionStub(ch).PushPredictions(_request(), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_publish_to_dead_peer_reports_failure_within_deadline(node):
    t = client.GrpcTransport({1: node.address, 2: "127.0.0.1:1"}, dtype="float16", rpc_timeout_s=2.0)
    try:
        b = PredictionBatch("run-1", 1, 0, 0, torch.arange(5), 3.0, torch.softmax(torch.randn(5, C), -1))
        assert t.publish(b).delivered == []  # pushes do not wait; outcomes come later
        report = t.flush()
    finally:
        t.close()
    assert report.delivered == [1] and report.failed == {2: "UNAVAILABLE"}
    assert report.bytes_sent > 0 and report.seconds < 10


def test_health_watch_serves_known_names_only(node, stub):
    health = health_pb2_grpc.HealthStub(stub[1])
    started = time.monotonic()
    for i in range(50):  # distinct unknown names: each refused at once, none watched
        watch = health.Watch(health_pb2.HealthCheckRequest(service=f"unknown-{i}"), timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            next(watch)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert time.monotonic() - started < 5
    watch = health.Watch(health_pb2.HealthCheckRequest(service="codistill.v1.Region"), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    node._server.set_serving(False)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()

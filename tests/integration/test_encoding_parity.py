"""Sync mode gives the same numbers through Ray + gRPC and in-process, for every encoding."""

import pytest
import ray

from codistill.launch import driver
from tests.conftest import make_tiny_cfg

pytestmark = pytest.mark.integration
ENCODINGS = ("float16", "topk", "uint8")
# What must agree between the two transports: every figure a run reports per region.
SAME = ("test_accuracy", "validation_accuracy", "per_class_recall", "curve", "peer_weights", "bytes_sent", "bytes_received")


@pytest.fixture(scope="module")
def ray_2cpu():
    """A local Ray of its own on loopback (address="local": never another session's cluster),
    shut down after the module; reused when this pytest session already started one."""
    if ray.is_initialized():
        yield
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _cfg(encoding: str):
    # 10 classes, so that keeping 2 of them (topk) or a byte each (uint8) saves something.
    cfg = make_tiny_cfg()
    cfg.data.synthetic_classes = 10
    cfg.data.validation_size = 100
    cfg.train.steps = 40  # rounds at steps 10, 20, 30
    cfg.exchange.encoding = encoding
    cfg.exchange.topk = 2
    cfg.monitor.metrics = False
    return cfg


@pytest.fixture(scope="module")
def runs(ray_2cpu, tmp_path_factory):
    """{(encoding, transport): summary}; each run once for all the tests of this module."""
    out = {}
    for encoding in ENCODINGS:
        for transport in ("inprocess", "grpc"):
            cfg = _cfg(encoding)
            cfg.exchange.transport = transport
            out[encoding, transport] = driver.run(cfg, tmp_path_factory.mktemp(f"{encoding}-{transport}"))
    return out


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_ray_grpc_and_inprocess_agree(runs, encoding):
    over_grpc, in_process = runs[encoding, "grpc"], runs[encoding, "inprocess"]
    assert over_grpc["transport"] == "grpc" and in_process["transport"] == "inprocess"
    for g, i in zip(over_grpc["regions"], in_process["regions"], strict=True):
        assert g["messages_received"] == i["messages_received"] == {str(p): 3 for p in range(3) if p != g["id"]}
        for key in SAME:
            assert g[key] == i[key], (encoding, g["id"], key)
    assert over_grpc["bytes_sent"] == in_process["bytes_sent"] > 0


@pytest.mark.parametrize("encoding", ["topk", "uint8"])
@pytest.mark.parametrize("transport", ["inprocess", "grpc"])
def test_compressed_encodings_send_fewer_bytes(runs, encoding, transport):
    dense, compressed = runs["float16", transport], runs[encoding, transport]
    # Same rounds and sample ids: only the encoding of the probabilities differs.
    assert compressed["bytes_sent"] < 0.75 * dense["bytes_sent"], (compressed["bytes_sent"], dense["bytes_sent"])
    assert compressed["bytes_sent"] == sum(r["bytes_received"] for r in compressed["regions"])

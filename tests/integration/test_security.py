"""Token and mutual-TLS authentication between regions."""

import grpc
import numpy as np
import pytest
import torch

from codistill import config
from codistill.certs import CertsError, make_certs
from codistill.launch import driver
from codistill.region import client, serde
from codistill.region.messages import PredictionBatch
from codistill.region.node import RegionNode
from codistill.region.security import TlsFiles, bearer
from codistill.region.trainer import RegionData
from codistill.v1 import region_pb2_grpc

pytestmark = pytest.mark.integration
C = 4


def _data():
    rng = np.random.default_rng(0)
    return RegionData(
        rng.random((20, 1, 8, 8), dtype=np.float32), rng.integers(0, C, 20),
        rng.random((10, 1, 8, 8), dtype=np.float32), rng.random((5, 1, 8, 8), dtype=np.float32),
        rng.integers(0, C, 5), C,
    )


def _request():
    b = PredictionBatch("run-1", 1, 0, 0, torch.arange(3), 2.0, torch.full((3, C), 1 / C))
    return serde.predictions_to_proto(b, "float32")


def _node(cfg):
    n = RegionNode(0, cfg, _data(), run_id="run-1")
    n.serve("127.0.0.1")
    n.prepare([1])
    return n


@pytest.fixture
def token_node(tiny_cfg):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.security = config.SecurityConfig(token="s3cret")
    n = _node(cfg)
    yield n
    n.close()


@pytest.mark.parametrize("metadata", [None, bearer("wrong"), (("authorization", "s3cret"),)])
def test_missing_or_wrong_token_is_unauthenticated_and_never_handled(token_node, metadata):
    with client.open_channel(token_node.address, 1 << 22) as ch:
        with pytest.raises(grpc.RpcError) as info:
            region_pb2_grpc.RegionStub(ch).PushPredictions(_request(), timeout=5, metadata=metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert token_node.servicer.entered == 0
    assert token_node.unauthenticated == 1
    assert token_node.inbox.rejections["unauthenticated"] == 1


def test_right_token_is_served(token_node):
    with client.open_channel(token_node.address, 1 << 22) as ch:
        reply = region_pb2_grpc.RegionStub(ch).PushPredictions(_request(), timeout=5, metadata=bearer("s3cret"))
    assert reply.accepted_version == 0 and token_node.servicer.entered == 1
    assert client.get_status(token_node.address, token="s3cret").peers[1].messages == 1


@pytest.fixture
def tls_node(tiny_cfg, tmp_path):
    make_certs(tmp_path / "certs", regions=2)
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.security = config.SecurityConfig(tls_dir=str(tmp_path / "certs"))
    n = _node(cfg)
    yield n, tmp_path / "certs"
    n.close()


def test_mtls_accepts_a_region_certificate(tls_node):
    node, certs = tls_node
    with client.open_channel(node.address, 1 << 22, TlsFiles.load(certs, 1)) as ch:
        assert region_pb2_grpc.RegionStub(ch).PushPredictions(_request(), timeout=5).accepted_version == 0
    assert node.servicer.entered == 1


def test_mtls_refuses_foreign_or_missing_certificates(tls_node, tmp_path):
    node, _ = tls_node
    make_certs(tmp_path / "other", regions=1)
    foreign = TlsFiles.load(tmp_path / "other", 0)
    for tls in (foreign, None):
        with client.open_channel(node.address, 1 << 22, tls) as ch:
            with pytest.raises(grpc.RpcError) as info:
                region_pb2_grpc.RegionStub(ch).PushPredictions(_request(), timeout=3)
        # The TLS handshake fails, so the call never becomes an RPC on the server.
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert node.servicer.entered == 0


def test_certs_refuse_to_overwrite(tmp_path):
    make_certs(tmp_path, regions=1)
    with pytest.raises(CertsError, match="--force"):
        make_certs(tmp_path, regions=1)
    assert (tmp_path / "region-0-key.pem").stat().st_mode & 0o077 == 0


def test_token_is_never_written_to_the_run_folder(tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.security = config.SecurityConfig(token="do-not-leak")
    cfg.train.steps = 20
    driver.run(cfg, tmp_path)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"do-not-leak" not in path.read_bytes(), path


def test_secured_run_over_ray(local_ray, tiny_cfg, tmp_path):
    make_certs(tmp_path / "certs", regions=3)
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.exchange.transport = "grpc"
    cfg.train.steps = 40
    cfg.security = config.SecurityConfig(token="s3cret", tls_dir=str(tmp_path / "certs"))
    doc = driver.run(cfg, tmp_path / "run")
    for r in doc["regions"]:
        assert sum(r["messages_received"].values()) == 2 * 4  # 2 peers x 4 rounds

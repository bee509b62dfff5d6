"""Token and mutual-TLS authentication between regions, and the binding of sender ids to them."""

import datetime as dt

import grpc
import numpy as np
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from codistill import config
from codistill.certs import CertsError, make_certs
from codistill.launch import driver
from codistill.region import client, serde
from codistill.region.messages import PredictionBatch
from codistill.region.node import RegionNode
from codistill.region.security import TLS_SERVER_NAME, TlsFiles, TokenBook, bearer, operator_token, region_token
from codistill.records import RegionData
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


def _request(sender=1, version=0):
    b = PredictionBatch("run-1", sender, version, 0, torch.arange(3), 3.0, torch.full((3, C), 1 / C))
    return serde.predictions_to_proto(b, "float32")


def _node(cfg):
    n = RegionNode(0, cfg, _data(), run_id="run-1")
    n.serve("127.0.0.1")
    n.prepare([1, 2])
    return n


def _push(address, request, tls=None, metadata=None):
    with client.open_channel(address, 1 << 22, tls) as ch:
        return region_pb2_grpc.RegionStub(ch).PushPredictions(request, timeout=5, metadata=metadata)


def _refused(address, request, tls=None, metadata=None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        _push(address, request, tls, metadata)
    return info.value.code()


@pytest.fixture
def token_node(tiny_cfg):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.security = config.SecurityConfig(token="s3cret")
    n = _node(cfg)
    yield n
    n.close()


WRONG_TOKENS = {
    "none": None,
    "wrong": bearer("wrong"),
    "the raw secret": bearer("s3cret"),
    "no Bearer prefix": (("authorization", region_token("s3cret", 1)),),
    "derived from another secret": bearer(region_token("other", 1)),
    "mac of another region": bearer("region-1." + region_token("s3cret", 2).split(".")[1]),
}


@pytest.mark.parametrize("case", sorted(WRONG_TOKENS))
def test_missing_or_wrong_token_is_unauthenticated_and_never_handled(token_node, case):
    assert _refused(token_node.address, _request(), metadata=WRONG_TOKENS[case]) == grpc.StatusCode.UNAUTHENTICATED
    assert token_node.servicer.entered == 0
    assert token_node.unauthenticated == 1
    assert token_node.inbox.rejections["unauthenticated"] == 1


def test_a_regions_own_token_is_served(token_node):
    reply = _push(token_node.address, _request(sender=1), metadata=bearer(region_token("s3cret", 1)))
    assert reply.accepted_version == 0 and token_node.servicer.entered == 1
    assert client.get_status(token_node.address, token=operator_token("s3cret")).peers[1].messages == 1


def test_with_tokens_a_region_cannot_send_under_another_regions_id(token_node):
    as_region_2 = bearer(region_token("s3cret", 2))
    for token in (as_region_2, bearer(region_token("s3cret", 0)), bearer(operator_token("s3cret"))):
        assert _refused(token_node.address, _request(sender=1, version=2**62), metadata=token) == grpc.StatusCode.PERMISSION_DENIED
    inbox = token_node.inbox
    assert inbox.rejections["wrong_identity"] == 3
    assert inbox.counters[1].messages == 0 and inbox.round_pool(0).empty
    # Region 1 itself is untouched, and region 2 may speak for itself.
    assert _push(token_node.address, _request(sender=1), metadata=bearer(region_token("s3cret", 1))).accepted_version == 0
    assert _push(token_node.address, _request(sender=2), metadata=as_region_2).accepted_version == 0


def test_token_book_names_the_presenting_region():
    book = TokenBook("s3cret")
    assert book.principal(bearer(region_token("s3cret", 7))).region == 7
    assert book.principal(bearer(operator_token("s3cret"))).region is None
    assert region_token("s3cret", 1) != region_token("s3cret", 2) != region_token("other", 2)
    for bad in ("region-7." + "0" * 64, "region-7", "region-x." + "0" * 64, "region-1" + "1" * 200 + ".ab"):
        assert book.principal(bearer(bad)) is None


@pytest.fixture
def tls_node(tiny_cfg, tmp_path):
    make_certs(tmp_path / "certs", regions=3)
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.security = config.SecurityConfig(tls_dir=str(tmp_path / "certs"))
    n = _node(cfg)
    yield n, tmp_path / "certs"
    n.close()


def test_mtls_accepts_a_region_certificate(tls_node):
    node, certs = tls_node
    assert _push(node.address, _request(sender=1), TlsFiles.load(certs, 1)).accepted_version == 0
    assert node.servicer.entered == 1


def test_with_mtls_a_region_cannot_send_under_another_regions_id(tls_node):
    node, certs = tls_node
    # Region 2's certificate, and the receiver's own, claiming to be region 1.
    for holder in (2, 0):
        code = _refused(node.address, _request(sender=1, version=2**62), TlsFiles.load(certs, holder))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    assert node.inbox.rejections["wrong_identity"] == 2
    assert node.inbox.counters[1].messages == 0
    assert _push(node.address, _request(sender=1), TlsFiles.load(certs, 1)).accepted_version == 0
    assert _push(node.address, _request(sender=2), TlsFiles.load(certs, 2)).accepted_version == 0


def _ca_signed(certs, common_name: str) -> TlsFiles:
    """A certificate signed by the run's CA that names no region."""
    ca_key = serialization.load_pem_private_key((certs / "ca-key.pem").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_SERVER_NAME)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.PrivateFormat.PKCS8
    return TlsFiles(
        (certs / "ca.pem").read_bytes(),
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()),
    )


def test_mtls_refuses_a_certificate_that_names_no_region(tls_node):
    node, certs = tls_node
    assert _refused(node.address, _request(sender=1), _ca_signed(certs, "region-1")) == grpc.StatusCode.PERMISSION_DENIED
    assert node.inbox.rejections["wrong_identity"] == 1


def test_region_certificates_name_their_region(tmp_path):
    make_certs(tmp_path, regions=4)
    cert = x509.load_pem_x509_certificate((tmp_path / "region-3.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["codistill://region/3"]
    assert TLS_SERVER_NAME in san.get_values_for_type(x509.DNSName)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "codistill-region-3"


def test_mtls_refuses_foreign_or_missing_certificates(tls_node, tmp_path):
    node, _ = tls_node
    make_certs(tmp_path / "other", regions=1)
    foreign = TlsFiles.load(tmp_path / "other", 0)
    for tls in (foreign, None):
        # The TLS handshake fails, so the call never becomes an RPC on the server.
        assert _refused(node.address, _request(), tls) == grpc.StatusCode.UNAVAILABLE
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
        # Every round of both peers was taken: each region sent under its own token and certificate.
        assert r["exchanges"] >= 3
        assert list(r["messages_received"].values()) == [r["exchanges"]] * 2, r["messages_received"]

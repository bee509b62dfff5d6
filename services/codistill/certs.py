"""`codistill certs DIR`: a CA and region certificates for mutual TLS.

Keys are ECDSA P-256. Every region certificate names `codistill-region`
(what clients verify), `localhost` and 127.0.0.1, plus any --host given, and
its own region: URI SAN `codistill://region/<i>` and CN `codistill-region-<i>`,
which a receiver checks against the sender id of every message.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from codistill.errors import CertsError
from codistill.region.security import TLS_SERVER_NAME, region_common_name, region_uri


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "codistill"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_certs(folder: Path, regions: int, hosts: list[str] | None = None, days: int = 365, force: bool = False) -> list[Path]:
    """Write ca.pem, ca-key.pem and region-{i}.pem / region-{i}-key.pem for i < regions."""
    if regions < 1:
        raise CertsError("--regions must be at least 1")
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "ca.pem").exists() and not force:
        raise CertsError(f"{folder / 'ca.pem'} exists; pass --force to replace the run's certificates")
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("codistill CA"))
        .issuer_name(_name("codistill CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(folder / "ca-key.pem", ca_key)
    _write_cert(folder / "ca.pem", ca)
    sans: list[x509.GeneralName] = [x509.DNSName(TLS_SERVER_NAME), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for host in hosts or []:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    written = [folder / "ca.pem"]
    for i in range(regions):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(region_common_name(i)))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([*sans, x509.UniformResourceIdentifier(region_uri(i))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(folder / f"region-{i}-key.pem", key)
        _write_cert(folder / f"region-{i}.pem", cert)
        written.append(folder / f"region-{i}.pem")
    return written

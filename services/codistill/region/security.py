"""Authentication and encryption between regions.

Two independent layers, both optional:
  * a shared bearer token, checked by a server interceptor with a
    constant-time comparison before any handler runs (UNAUTHENTICATED);
  * mutual TLS with certificates from `codistill certs`: each region proves
    it holds a certificate signed by the run's CA, and traffic is encrypted.
    A peer without a valid certificate fails the TLS handshake, so no RPC,
    and no handler, is ever reached.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc

# Every region certificate carries this name; clients verify it instead of the
# peer's address, which on a cluster is only known once Ray places the region.
TLS_SERVER_NAME = "codistill-region"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"


class SecurityError(ValueError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, folder: str | Path, region: int) -> TlsFiles:
        folder = Path(folder).expanduser()
        own = (folder / f"region-{region}.pem", folder / f"region-{region}-key.pem")
        shared = (folder / "region.pem", folder / "region-key.pem")
        cert, key = own if own[0].is_file() else shared
        for path in (folder / "ca.pem", cert, key):
            if not path.is_file():
                raise SecurityError(f"TLS file {path} is missing; create them with `codistill certs {folder}`")
        return cls((folder / "ca.pem").read_bytes(), cert.read_bytes(), key.read_bytes())

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without the run's token before they reach a handler.

    Health checks stay open so orchestrators can probe a region.
    """

    def __init__(self, token: str, on_reject: Callable[[], None] = lambda: None):
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid region token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_HEALTH_PREFIX):
            return continuation(handler_call_details)
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(presented, self._expected):
            return continuation(handler_call_details)
        self._on_reject()
        return self._deny

"""Authentication and encryption between regions, and who a call speaks for.

Two independent layers, both optional; each one binds a call to a region:
  * tokens derived from the run's secret: region i presents
    `region-<i>.<HMAC-SHA256(secret, "region:<i>")>`, so a receiver holding the
    secret can tell which region presents a token, and no region can make
    another's. A server interceptor checks it in constant time before any
    handler runs (UNAUTHENTICATED) and before any request body is read;
  * mutual TLS with certificates from `codistill certs`: each region proves it
    holds a certificate signed by the run's CA, and traffic is encrypted. A
    peer without a valid certificate fails the TLS handshake, so no RPC, and no
    handler, is ever reached. Each certificate names its region
    (`codistill://region/<i>`, CN `codistill-region-<i>`).
The handler then requires every layer that is on to name the message's
`sender_id` (PERMISSION_DENIED otherwise), so a region cannot speak for another.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import grpc

from codistill.errors import SecurityError  # noqa: F401  (importable from here too)
from codistill.region.messages import MessageRejected, Rejection

# Every region certificate carries this name; clients verify it instead of the
# peer's address, which on a cluster is only known once Ray places the region.
TLS_SERVER_NAME = "codistill-region"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_REGION_URI = re.compile(r"codistill://region/(\d{1,9})")
_REGION_CN = re.compile(r"codistill-region-(\d{1,9})")
_REGION_PRINCIPAL = re.compile(r"region-(\d{1,9})")
_OPERATOR = "operator"
# A token is a principal name and 64 hex digits; anything much longer is not one.
_MAX_TOKEN_CHARS = 128


def region_uri(region: int) -> str:
    """The URI SAN naming `region` in its certificate."""
    return f"codistill://region/{region}"


def region_common_name(region: int) -> str:
    return f"codistill-region-{region}"


@dataclass(frozen=True)
class TlsFiles:
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, folder: str | Path, region: int, regions: int | None = None) -> TlsFiles:
        """Region `region`'s files; `regions` (the run's count) makes the fix in a refusal exact."""
        folder = Path(folder).expanduser()
        paths = (folder / "ca.pem", folder / f"region-{region}.pem", folder / f"region-{region}-key.pem")
        for path in paths:
            if not path.is_file():
                count = regions or region + 1
                fresh = " --force" if (folder / "ca.pem").exists() else ""
                raise SecurityError(
                    f"TLS file {path} is missing ({count} regions need region-0 to region-{count - 1}); "
                    f"create them with `codistill certs {folder} --regions {count}{fresh}`"
                )
        return cls(*(path.read_bytes() for path in paths))

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert)


# ------------------------------------------------------------------ tokens
def _mac(secret: str, label: str) -> str:
    return hmac.new(secret.encode(), label.encode(), hashlib.sha256).hexdigest()


def region_token(secret: str, region: int) -> str:
    """The token region `region` presents; only a holder of the run's secret can make it."""
    return f"region-{region}.{_mac(secret, f'region:{region}')}"


def operator_token(secret: str) -> str:
    """A token for tools that read status (GetStatus) but speak for no region."""
    return f"{_OPERATOR}.{_mac(secret, _OPERATOR)}"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for: a region, or (region None) the operator."""

    region: int | None


class TokenBook:
    """Tells which principal a presented token belongs to, given the run's secret."""

    def __init__(self, secret: str):
        self._secret = secret

    def principal(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal | None:
        """The principal of the call's bearer token, or None when it has no valid one."""
        presented = ""
        for key, value in metadata or ():
            if key == "authorization":
                presented = value.decode(errors="replace") if isinstance(value, bytes) else value
        if not presented.startswith("Bearer ") or len(presented) > _MAX_TOKEN_CHARS:
            return None
        name, _, mac = presented[len("Bearer ") :].partition(".")
        if name == _OPERATOR:
            principal, label = Principal(None), _OPERATOR
        elif match := _REGION_PRINCIPAL.fullmatch(name):
            region = int(match.group(1))
            principal, label = Principal(region), f"region:{region}"
        else:
            return None
        # Constant-time, so a caller learns nothing from how long a refusal takes.
        if hmac.compare_digest(mac.encode(), _mac(self._secret, label).encode()):
            return principal
        return None


# ------------------------------------------------------------ certificates
def certificate_region(auth_context: dict[str, list[bytes]]) -> int | None:
    """The region a verified peer certificate names (URI SAN or CN), or None when it names none or several."""
    named = set()
    for uri in auth_context.get("peer_uri", []):
        if match := _REGION_URI.fullmatch(uri.decode(errors="replace")):
            named.add(int(match.group(1)))
    for cn in auth_context.get("x509_common_name", []):
        if match := _REGION_CN.fullmatch(cn.decode(errors="replace")):
            named.add(int(match.group(1)))
    return named.pop() if len(named) == 1 else None


# ---------------------------------------------------------------- binding
@dataclass(frozen=True)
class Identity:
    """The region each credential layer that is on names (None: that layer names no region)."""

    named: tuple[int | None, ...] = ()

    def check_sender(self, sender: int) -> None:
        """Refuse a message whose sender_id is not the region every credential names."""
        for region in self.named:
            if region != sender:
                who = "no region" if region is None else f"region {region}"
                raise MessageRejected(Rejection.WRONG_IDENTITY, f"credentials name {who}, not sender {sender}")


class Authority:
    """Reads a call's credentials into an Identity; with no layer on, any sender is taken at its word."""

    def __init__(self, tokens: TokenBook | None = None, tls: bool = False):
        self._tokens = tokens
        self._tls = tls

    def identify(self, context) -> Identity:
        named: list[int | None] = []
        if self._tls:
            named.append(certificate_region(context.auth_context()))
        if self._tokens is not None:
            principal = self._tokens.principal(context.invocation_metadata())
            named.append(principal.region if principal else None)
        return Identity(tuple(named))


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid token before they reach a handler or send their body.

    Health checks stay open so orchestrators can probe a region.
    """

    def __init__(self, tokens: TokenBook, on_reject: Callable[[], None] = lambda: None):
        self._tokens = tokens
        self._on_reject = on_reject

        async def deny(request_iterator, context):
            # Never reads the body: a caller without a token costs no buffer and no wait.
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid region token")

        self._deny = grpc.stream_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_HEALTH_PREFIX):
            return await continuation(handler_call_details)
        if self._tokens.principal(handler_call_details.invocation_metadata) is not None:
            return await continuation(handler_call_details)
        self._on_reject()
        return self._deny

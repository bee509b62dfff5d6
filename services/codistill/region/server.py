"""Building a region's gRPC server: the Region service plus standard health."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from codistill.region.client import channel_options
from codistill.region.security import TlsFiles, TokenInterceptor
from codistill.v1 import region_pb2_grpc

SERVICE_NAME = "codistill.v1.Region"


def create_server(
    address: str,
    servicer: region_pb2_grpc.RegionServicer,
    *,
    max_message_bytes: int = 64 * 1024 * 1024,
    max_workers: int = 8,
    token: str | None = None,
    tls: TlsFiles | None = None,
    on_unauthenticated=lambda: None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Bind `address` (port 0 picks a free one) without starting; returns (server, port, health)."""
    interceptors = [TokenInterceptor(token, on_unauthenticated)] if token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="region-rpc"),
        options=channel_options(max_message_bytes),
        interceptors=interceptors,
    )
    region_pb2_grpc.add_RegionServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port(address, tls.server_credentials()) if tls else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    return server, port, health_servicer


def set_serving(health_servicer: health.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, status)

"""The gRPC server: event ingestion services, grpc.health.v1 and server reflection (SPEC §6.1)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcHealth:
    """Reports SERVING for "" and every ingest service while the service is ready, NOT_SERVING otherwise."""

    def __init__(self, service_names: Sequence[str]) -> None:
        self.servicer = HealthServicer()
        self.service_names = ("", *service_names)

    async def set_ready(self, ready: bool) -> None:
        for name in self.service_names:
            await self.servicer.set(name, SERVING if ready else NOT_SERVING)


def create_grpc_server(
    host: str,
    port: int,
    max_message_bytes: int,
    max_concurrent_rpcs: int,
    ingest_service_names: Sequence[str] = (),
) -> tuple[grpc.aio.Server, GrpcHealth]:
    """A plaintext grpc.aio server bound to host:port with health and reflection registered.
    Ingest servicers are added by the caller before `start()`."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    health = GrpcHealth(ingest_service_names)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflected = [*ingest_service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME]
    reflection.enable_server_reflection(reflected, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {address}: is another process listening on it?")
    return server, health

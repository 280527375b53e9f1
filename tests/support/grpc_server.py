"""A gRPC ingest server on a free loopback port with a channel to it, for the transport and hostile-input tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from service.proto.accelbyte.iam.account.v1 import account_pb2_grpc
from service.proto.accelbyte.social.statistic.v1 import statistic_pb2_grpc
from service.proto.challengectl.v1 import ingest_pb2_grpc
from service.transport.grpc_api import (
    EVENT_INGEST_SERVICE_NAME,
    LOGIN_SERVICE_NAME,
    STAT_SERVICE_NAME,
    EventSubmitter,
    GrpcHealth,
    create_grpc_server,
)
from tests.servers import free_port

# The unary ingest methods by their full path, for calls with raw bytes.
INGEST_UNARY_METHODS = (
    f"/{LOGIN_SERVICE_NAME}/OnMessage",
    f"/{STAT_SERVICE_NAME}/OnMessage",
    f"/{EVENT_INGEST_SERVICE_NAME}/Publish",
)


@dataclass
class Running:
    channel: grpc.aio.Channel
    health: GrpcHealth

    @property
    def login(self) -> account_pb2_grpc.UserAuthenticationUserLoggedInServiceStub:
        return account_pb2_grpc.UserAuthenticationUserLoggedInServiceStub(self.channel)

    @property
    def stat(self) -> statistic_pb2_grpc.StatisticStatItemUpdatedServiceStub:
        return statistic_pb2_grpc.StatisticStatItemUpdatedServiceStub(self.channel)

    @property
    def ingest(self) -> ingest_pb2_grpc.EventIngestStub:
        return ingest_pb2_grpc.EventIngestStub(self.channel)


@asynccontextmanager
async def serving(
    ingestor: EventSubmitter | None,
    max_message_bytes: int = 4 * 1024 * 1024,
    max_concurrent_rpcs: int = 64,
    **options: object,
) -> AsyncIterator[Running]:
    """A started server on a free loopback port and a channel to it; stopped on exit."""
    port = free_port()
    server, health = create_grpc_server(
        "127.0.0.1", port, max_message_bytes, max_concurrent_rpcs, ingestor=ingestor, **options
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Running(channel, health)
    finally:
        await server.stop(None)

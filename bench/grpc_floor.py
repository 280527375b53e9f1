"""The CPU floor of one AGS OnMessage call in grpc.aio, with no ingestion behind it.

Starts a child process serving `StatisticStatItemUpdatedService/OnMessage` (on uvloop, as `serve` runs),
sends RATE calls/s for DURATION seconds from this process (open model, one event per call, as
`bench/events.py` does), and prints the server process's CPU per call, for two servers:

- `empty`: a bare grpc.aio server whose servicer returns `Empty` at once: the part no change to the
  service's code can lower;
- `transport`: the service's own gRPC server (`create_grpc_server`: interceptor, servicers, health,
  reflection) with an ingestion core that accepts every event at once: the transport layer's share;
- alternatives to grpc.aio's per-call cost, each returning `Empty` at once: `generic` (grpc.aio with a
  generic handler on raw bytes: no protobuf decode or encode by gRPC), `asyncio` (grpc.aio on the
  standard asyncio loop instead of uvloop), `sync` (the synchronous grpc server with a thread pool of 8).

Whatever `bench/events.py` measures for OnMessage above `transport` is ingestion itself
(docs/events.md#onmessage-services).

    python bench/grpc_floor.py [--rate 500] [--duration 20] [--port 21150]
                               [--servers empty transport generic asyncio sync]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from google.protobuf import empty_pb2  # noqa: E402

from service.proto.accelbyte.social.statistic.v1 import statistic_pb2, statistic_pb2_grpc  # noqa: E402
from service.runtime.event_loop import run  # noqa: E402
from service.transport.grpc_api import create_grpc_server  # noqa: E402
from service.usecases.events import EventFields, SubmitResult  # noqa: E402


class _Empty(statistic_pb2_grpc.StatisticStatItemUpdatedServiceServicer):
    async def OnMessage(self, request: statistic_pb2.StatItemUpdated, context: object) -> empty_pb2.Empty:
        return empty_pb2.Empty()


class _AcceptAll:
    """An ingestion core that accepts every event without doing anything."""

    async def submit(self, events: Sequence[EventFields], origin: str, deadline: float | None = None) -> SubmitResult:
        return SubmitResult(len(events), 0, 0, [], True)


_EMPTY_BYTES = empty_pb2.Empty().SerializeToString()


async def _raw_on_message(request: bytes, context: object) -> bytes:
    return _EMPTY_BYTES


def _sync_on_message(request: statistic_pb2.StatItemUpdated, context: object) -> empty_pb2.Empty:
    return empty_pb2.Empty()


def _generic_handler(behaviour: object) -> grpc.GenericRpcHandler:
    """OnMessage of the stat service with gRPC's (de)serialization left out: the handler sees raw bytes."""
    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    service = statistic_pb2.DESCRIPTOR.services_by_name["StatisticStatItemUpdatedService"].full_name
    return grpc.method_handlers_generic_handler(service, {"OnMessage": handler})


async def _serve(port: int, kind: str) -> None:
    if kind in ("empty", "asyncio"):
        server = grpc.aio.server()
        statistic_pb2_grpc.add_StatisticStatItemUpdatedServiceServicer_to_server(_Empty(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
    elif kind == "generic":
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_generic_handler(_raw_on_message),))
        server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        server, _ = create_grpc_server("127.0.0.1", port, 4 << 20, 2048, ingestor=_AcceptAll())
    await server.start()
    await server.wait_for_termination()


def _serve_sync(port: int) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    handler = grpc.unary_unary_rpc_method_handler(
        _sync_on_message,
        request_deserializer=statistic_pb2.StatItemUpdated.FromString,
        response_serializer=empty_pb2.Empty.SerializeToString,
    )
    service = statistic_pb2.DESCRIPTOR.services_by_name["StatisticStatItemUpdatedService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"OnMessage": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _server_main(port: int, kind: str) -> None:
    if kind == "sync":
        _serve_sync(port)
    elif kind == "asyncio":
        asyncio.run(_serve(port, kind))
    else:
        run(_serve(port, kind))


async def _drive(port: int, rate: float, duration_s: float, server: psutil.Process) -> tuple[int, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 60)  # the child imports the service first
        stub = statistic_pb2_grpc.StatisticStatItemUpdatedServiceStub(channel)
        message = statistic_pb2.StatItemUpdated(
            id="e", user_id="u", namespace="ns", payload=statistic_pb2.StatItem(stat_code="s", latest_value=1, inc=1)
        )
        for _ in range(50):  # warm-up: connection, HTTP/2 settings, first-call paths
            await stub.OnMessage(message, timeout=5)
        calls: list[asyncio.Task[object]] = []
        cpu_before = sum(server.cpu_times()[:2])
        started = time.monotonic()
        for index in range(int(rate * duration_s)):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(asyncio.ensure_future(stub.OnMessage(message, timeout=5)))
        results = await asyncio.gather(*calls, return_exceptions=True)
        cpu_s = sum(server.cpu_times()[:2]) - cpu_before
    ok = sum(not isinstance(result, BaseException) for result in results)
    return ok, cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="calls per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--port", type=int, default=21150)
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=("empty", "transport", "generic", "asyncio", "sync"),
        default=["empty", "transport", "generic", "asyncio", "sync"],
    )
    args = parser.parse_args()
    for kind in args.servers:
        child = multiprocessing.get_context("spawn").Process(target=_server_main, args=(args.port, kind), daemon=True)
        child.start()
        try:
            ok, cpu_s = asyncio.run(_drive(args.port, args.rate, args.duration, psutil.Process(child.pid)))
        finally:
            child.terminate()
            child.join(5)
        print(
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}: {kind}: {args.rate:g} calls/s for "
            f"{args.duration:g} s, {ok} OK; server CPU {cpu_s:.2f} s = {cpu_s / max(ok, 1) * 1e6:.0f} us per call"
        )


if __name__ == "__main__":
    main()

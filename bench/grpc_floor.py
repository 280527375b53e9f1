"""The CPU floor of one AGS OnMessage call in grpc.aio, with no ingestion behind it.

Starts a child process serving `StatisticStatItemUpdatedService/OnMessage` with a servicer that returns
`Empty` at once (on uvloop, as `serve` runs), sends RATE calls/s for DURATION seconds from this process
(open model, one event per call, as `bench/events.py` does), and prints the server process's CPU per call.
Whatever `bench/events.py` measures for OnMessage above this figure is the service's own work
(docs/events.md#onmessage-services); this figure is the part no change to the service's code can lower.

    python bench/grpc_floor.py [--rate 500] [--duration 20] [--port 21150]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from google.protobuf import empty_pb2  # noqa: E402

from service.proto.accelbyte.social.statistic.v1 import statistic_pb2, statistic_pb2_grpc  # noqa: E402
from service.runtime.event_loop import run  # noqa: E402


class _Empty(statistic_pb2_grpc.StatisticStatItemUpdatedServiceServicer):
    async def OnMessage(self, request: statistic_pb2.StatItemUpdated, context: object) -> empty_pb2.Empty:
        return empty_pb2.Empty()


async def _serve(port: int) -> None:
    server = grpc.aio.server()
    statistic_pb2_grpc.add_StatisticStatItemUpdatedServiceServicer_to_server(_Empty(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _server_main(port: int) -> None:
    run(_serve(port))


async def _drive(port: int, rate: float, duration_s: float, server: psutil.Process) -> tuple[int, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
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
    args = parser.parse_args()
    child = multiprocessing.get_context("spawn").Process(target=_server_main, args=(args.port,), daemon=True)
    child.start()
    time.sleep(1.5)
    try:
        ok, cpu_s = asyncio.run(_drive(args.port, args.rate, args.duration, psutil.Process(child.pid)))
    finally:
        child.terminate()
        child.join(5)
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}: {args.rate:g} calls/s for {args.duration:g} s, "
        f"{ok} OK; gRPC server CPU {cpu_s:.2f} s = {cpu_s / max(ok, 1) * 1e6:.0f} us per OnMessage call "
        "(empty servicer)"
    )


if __name__ == "__main__":
    main()

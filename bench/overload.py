"""Overload at 3x capacity (issue 10 target row): does the player API shed fast (503 + Retry-After within
50 ms, no 2 s pool waits) and is it back to normal within 2 s after the load drops?

For each tree (this checkout, and optionally `--before-tree` for comparison), a fresh `challengectl serve`
(one process, default settings) answers new-player `POST /v1/challenges/initialize`, the write-heavy
request of the seed report's init wave, every request a new player:

1. capacity: closed loop, `--concurrency` requests in flight, for `--capacity-s` seconds;
2. baseline: open loop at half that rate;
3. overload: open loop at `--factor` x capacity for `--overload-s` seconds;
4. recovery: open loop at half capacity again; "back to normal" is the end of the last 250 ms window
   (by scheduled send time) with a failed request or a p95 above twice the baseline p95 (at least
   baseline + 20 ms), counted from the moment the load dropped.

Every tree gets the same offered load: the capacity measured on the first tree (or `--capacity`), so that
a before/after compares the services at one rate and not two capacity readings of a noisy machine; with
`--rounds N` the trees are measured in turns, N times each.

The open-loop client is a lean asyncio one on uvloop, as the service (keep-alive connections, one request
in flight on each, a new connection when none is idle); latency runs from each request's scheduled send
time, so client lag counts against the service, not for it.

    python bench/overload.py [--before-tree DIR] [--factor 3] [--overload-s 10] [--port 20120]
        [--capacity REQ_PER_S] [--rounds 1] [--service-env CHALLENGE_HTTP_MAX_INFLIGHT=32]

Uses DATABASE_URL / REDIS_URL when set (embedded servers otherwise). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import player_api
import uvloop

from bench.serve_process import api_cpu_s

MAX_CLIENT_CONNECTIONS = 900  # under the service's default http_max_connections (1024)
# An idle connection is dropped by the client after this long, before the service's own idle timeout
# (http_idle_timeout_ms, 5 s) can close it under a request, as HTTP clients' keep-alive timeouts do.
CLIENT_KEEPALIVE_S = 4.0
WINDOW_S = 0.25


@dataclass
class Outcome:
    scheduled: float
    latency_s: float
    status: int  # 0: connection error
    retry_after: bool


@dataclass
class Client:
    """Open- and closed-loop HTTP/1.1 requests over a pool of keep-alive connections."""

    port: int
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = field(default_factory=list)
    open_connections: int = 0

    def _idle_connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < CLIENT_KEEPALIVE_S:
                return reader, writer
            writer.close()
            self.open_connections -= 1
        return None

    async def request(self, raw: bytes) -> tuple[int, bool]:
        connection = self._idle_connection()
        if connection is not None:
            reader, writer = connection
        elif self.open_connections >= MAX_CLIENT_CONNECTIONS:
            return -1, False  # the client's own limit: counted apart, never against the service
        else:
            self.open_connections += 1
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.open_connections -= 1
                return 0, False
        try:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").lower().split("\r\n")
            status = int(lines[0].split()[1])
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            writer.close()
            self.open_connections -= 1
            return 0, False
        if headers.get("connection") == "close":
            writer.close()
            self.open_connections -= 1
        else:
            self.idle.append((reader, writer, time.monotonic()))
        return status, "retry-after" in headers


def initialize_request(token: str) -> bytes:
    return (
        f"POST /challenge/v1/challenges/initialize HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class NewPlayers:
    """Pre-minted requests of players never seen before (minting during the run would load the client)."""

    def __init__(self, count: int, tag: str) -> None:
        self._requests = [
            initialize_request(player_api.mint_token(player_api.SECRET.encode(), f"ov-{tag}-{i}", ttl_s=3600))
            for i in range(count)
        ]
        self._next = 0

    def take(self) -> bytes | None:
        """The next request; None when all are used."""
        if self._next == len(self._requests):
            return None
        self._next += 1
        return self._requests[self._next - 1]


async def closed_loop(client: Client, players: NewPlayers, concurrency: int, seconds: float) -> float:
    """Successful requests per second with `concurrency` in flight, for `seconds` or until `players` runs out."""
    done = 0
    started = time.monotonic()

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < started + seconds and (raw := players.take()) is not None:
            status, _ = await client.request(raw)
            done += status == 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


async def open_loop(client: Client, players: NewPlayers, rate: float, seconds: float, out: list[Outcome]) -> None:
    started = time.monotonic()
    tasks = []

    async def one(scheduled: float, raw: bytes | None) -> None:
        assert raw is not None, "too few players minted for the schedule"
        status, retry_after = await client.request(raw)
        out.append(Outcome(scheduled - started, time.monotonic() - scheduled, status, retry_after))

    for index in range(int(rate * seconds)):
        scheduled = started + index / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, players.take())))
    await asyncio.gather(*tasks)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def recovery_s(recovery: list[Outcome], baseline_p95: float) -> float:
    """End of the last abnormal window after the drop (0 when the first window is already normal)."""
    limit = max(2 * baseline_p95, baseline_p95 + 0.020)
    windows: dict[int, list[Outcome]] = {}
    for outcome in recovery:
        windows.setdefault(int(outcome.scheduled / WINDOW_S), []).append(outcome)
    last_abnormal = -1
    for index, outcomes in sorted(windows.items()):
        failed = any(o.status != 200 for o in outcomes)
        if failed or percentile([o.latency_s for o in outcomes], 0.95) > limit:
            last_abnormal = index
    return (last_abnormal + 1) * WINDOW_S


async def drive(port: int, args: argparse.Namespace, tag: str, capacity: float | None) -> dict[str, float]:
    """One tree's run; `capacity` None: measure it (closed loop) first."""
    client = Client(port)
    warm = NewPlayers(2000, f"{tag}-warm")
    await closed_loop(client, warm, args.concurrency, 2)
    if capacity is None:
        capacity_players = NewPlayers(int(4000 * args.capacity_s), f"{tag}-cap")
        capacity = await closed_loop(client, capacity_players, args.concurrency, args.capacity_s)
    low_rate, high_rate = capacity / 2, capacity * args.factor
    players = NewPlayers(int(low_rate * (args.baseline_s + args.recovery_s) + high_rate * args.overload_s) + 10, tag)
    baseline: list[Outcome] = []
    await open_loop(client, players, low_rate, args.baseline_s, baseline)
    overload: list[Outcome] = []
    await open_loop(client, players, high_rate, args.overload_s, overload)
    recovery: list[Outcome] = []
    await open_loop(client, players, low_rate, args.recovery_s, recovery)
    baseline_p95 = percentile([o.latency_s for o in baseline if o.status == 200], 0.95)
    ok = [o.latency_s for o in overload if o.status == 200]
    shed = [o for o in overload if o.status == 503]
    shed_latency = [o.latency_s for o in shed]
    return {
        "capacity": capacity,
        "offered": high_rate,
        "baseline_p95_ms": baseline_p95 * 1000,
        "sent": len(overload),
        "ok": len(ok),
        "shed": len(shed),
        "shed_with_retry_after": sum(o.retry_after for o in shed),
        "connection_errors": sum(1 for o in overload if o.status == 0),
        "other": sum(1 for o in overload if o.status not in (200, 503, 0, -1)),
        "client_limited": sum(1 for o in overload if o.status == -1),
        "ok_p50_ms": percentile(ok, 0.5) * 1000,
        "ok_p95_ms": percentile(ok, 0.95) * 1000,
        "shed_p50_ms": percentile(shed_latency, 0.5) * 1000,
        "shed_p95_ms": percentile(shed_latency, 0.95) * 1000,
        "over_2s": sum(1 for o in overload if o.latency_s >= 2.0),
        "recovery_s": recovery_s(recovery, baseline_p95),
        "recovery_failed": sum(1 for o in recovery if o.status != 200),
    }


def measure_tree(tree: Path, args: argparse.Namespace, tag: str, capacity: float | None) -> dict[str, float]:
    env = {
        "CHALLENGE_REDIS_KEY_PREFIX": f"bench-overload-{os.getpid()}-{tag}",
        **dict(setting.split("=", 1) for setting in args.service_env),
    }
    with player_api.service_of_tree(tree, env) as service:
        cpu_before = api_cpu_s(service)
        # No collections in the client while it drives: with tens of thousands of outcomes held, its own gen-2
        # pauses delayed sends by tens of ms late in the run, which "back to normal" then counted against the
        # service (8 of 13 runs had such a late window with the collector on, 0 of 7 with it off).
        gc.disable()
        try:
            result = uvloop.run(drive(player_api.PORT, args, tag, capacity))
        finally:
            gc.enable()
        result["api_cpu_s"] = api_cpu_s(service) - cpu_before
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-tree", help="also measure this checkout of the 'before' commit, first")
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--capacity-s", type=float, default=5.0)
    parser.add_argument("--baseline-s", type=float, default=5.0)
    parser.add_argument("--overload-s", type=float, default=10.0)
    parser.add_argument("--recovery-s", type=float, default=10.0)
    parser.add_argument("--capacity", type=float, help="req/s to take as capacity instead of measuring it")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each tree, taken in turns")
    parser.add_argument("--port", type=int, default=None, help="player API port (default: a free one)")
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="extra service environment"
    )
    args = parser.parse_args()
    if args.port is not None:
        player_api.PORT, player_api.GRPC_PORT, player_api.ADMIN_PORT = args.port, args.port + 1, args.port + 2
    trees = {"after (this checkout)": player_api.REPO_ROOT}
    if args.before_tree:
        trees = {f"before ({Path(args.before_tree).resolve()})": Path(args.before_tree).resolve(), **trees}
    load_start = os.getloadavg()[0]
    results: dict[str, dict[str, float]] = {}
    capacity = args.capacity
    for round_index in range(args.rounds):
        for index, (label, tree) in enumerate(trees.items()):
            result = measure_tree(tree, args, f"r{round_index}t{index}", capacity)
            capacity = result["capacity"]
            results[label if args.rounds == 1 else f"{label} #{round_index + 1}"] = result
    load_end = os.getloadavg()[0]
    print(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average "
        f"{load_start:.1f} -> {load_end:.1f}; new-player POST /v1/challenges/initialize, serve with default "
        f"settings (one API worker process), client in one uvloop process on the same machine; capacity = "
        + (
            f"{args.capacity:g} req/s (given)"
            if args.capacity
            else f"closed loop with {args.concurrency} in flight on the first tree"
        )
        + f"; overload {args.factor:g}x capacity for {args.overload_s:g} s, "
        f"baseline and recovery at 0.5x"
    )
    columns = [
        ("capacity req/s", "capacity", "{:.0f}"),
        ("offered req/s", "offered", "{:.0f}"),
        ("sent", "sent", "{:.0f}"),
        ("200", "ok", "{:.0f}"),
        ("503", "shed", "{:.0f}"),
        ("503 with Retry-After", "shed_with_retry_after", "{:.0f}"),
        ("connection errors", "connection_errors", "{:.0f}"),
        ("other statuses", "other", "{:.0f}"),
        ("not sent (client limit)", "client_limited", "{:.0f}"),
        ("200 p50 / p95 ms", ("ok_p50_ms", "ok_p95_ms"), "{:.0f} / {:.0f}"),
        ("503 p50 / p95 ms", ("shed_p50_ms", "shed_p95_ms"), "{:.1f} / {:.1f}"),
        (">= 2 s", "over_2s", "{:.0f}"),
        ("baseline p95 ms", "baseline_p95_ms", "{:.1f}"),
        ("back to normal after s", "recovery_s", "{:.2f}"),
        ("failed in recovery", "recovery_failed", "{:.0f}"),
        ("API CPU s", "api_cpu_s", "{:.1f}"),
    ]
    print("| | " + " | ".join(label for label in results) + " |")
    print("|---|" + "---|" * len(results))
    for title, key, fmt in columns:
        cells = []
        for result in results.values():
            keys = key if isinstance(key, tuple) else (key,)
            cells.append(fmt.format(*(result[k] for k in keys)))
        print(f"| {title} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

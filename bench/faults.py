"""Fault drill (issue 11, README "Reliability and security"): each fault against a running service under
steady load from the load generator's operations (`challengectl.loadtest.operations`), one table row each.

The drill starts everything it breaks itself: a PostgreSQL server in a temporary data dir (the embedded
server, Unix socket only), a redis-server on a port of `--port-base`, and `challengectl serve` from this
checkout on ports of `--port-base`. It never touches the machine's own PostgreSQL or Redis.

Load: `--http-rate` player requests per second (cached active listing) and `--event-rate` AGS login
events per second (commit acks, a fresh UUID each) over `--users` players, initialised first. The catalog
has one login goal with an unreachable target, so a player's progress in PostgreSQL is the number of
their login events that were committed: "acked lost" = acknowledged events missing from PostgreSQL,
"extra" = events counted more than once or committed without an ack (a call released as not committed
whose entry was committed afterwards is counted here; the sender's retry would be a duplicate).

Per row: requests and events sent, errors by class (the generator's failure classes), p95 during the
fault and after it, time to recover (from the dependency's or service's return to the last failed
operation), acked events lost.

    python bench/faults.py [--only pg-stop,redis-stop] [--users 200] [--http-rate 100] [--event-rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psycopg
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from serve_process import start_serve  # noqa: E402

from challengectl.loadtest.operations import GeneratorOptions, Operations  # noqa: E402
from challengectl.loadtest.profiles import user_id_of  # noqa: E402
from service.proto.challengectl.v1 import ingest_pb2  # noqa: E402
from service.runtime.embedded import EmbeddedPostgres  # noqa: E402

SECRET = "fault-drill-" + "s" * 32
GOAL = "drill-logins"
CATALOG = {
    "challenges": [
        {
            "challengeId": "drill",
            "name": "Drill",
            "description": "login counter of the fault drill",
            "goals": [
                {
                    "goalId": GOAL,
                    "name": "Logins",
                    "eventSource": "login",
                    "defaultAssigned": True,
                    "requirement": {"statCode": "logins", "operator": ">=", "targetValue": 1_000_000_000},
                    "reward": {"type": "WALLET", "rewardId": "COINS", "quantity": 1},
                }
            ],
        }
    ]
}
FAULT_S = 10.0
WARMUP_S = 3.0
AFTER_S = 6.0


# --- what the drill runs ----------------------------------------------------------------------------


class Redis:
    """A redis-server of the drill's own on a fixed port (restarted on the same port and data)."""

    def __init__(self, base: Path, port: int) -> None:
        self.dir, self.port = base / "redis", port
        self.dir.mkdir()
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).returncode == 0)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class RedisCluster:
    """Three redis-server nodes with cluster mode on (no replicas), each on a port of the drill's range."""

    def __init__(self, base: Path, ports: list[int]) -> None:
        self.ports = ports
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        self.dirs = {port: base / f"cluster-{port}" for port in ports}
        for directory in self.dirs.values():
            directory.mkdir()
        self.url = f"redis://127.0.0.1:{ports[0]}/0"

    def start_node(self, port: int) -> None:
        self.nodes[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            + ["--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"],
            cwd=self.dirs[port],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0)

    def stop_node(self, port: int) -> None:
        process = self.nodes.pop(port)
        process.terminate()
        process.wait(10)

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        _wait(self.healthy)

    def healthy(self) -> bool:
        info = subprocess.run(
            ["redis-cli", "-p", str(self.ports[0]), "cluster", "info"], capture_output=True, text=True
        )
        return "cluster_state:ok" in info.stdout

    def stop(self) -> None:
        for port in list(self.nodes):
            self.stop_node(port)


class Service:
    """`challengectl serve` from this checkout; `index` picks its ports within the drill's range."""

    def __init__(self, base: Path, port_base: int, index: int, database_url: str, redis_url: str) -> None:
        """Ports base+10+3*index .. +2: HTTP, gRPC, admin."""
        self.http_port, self.grpc_port, self.admin_port = (port_base + 10 + 3 * index + k for k in range(3))
        self.log = base / f"serve-{index}.log"
        self.settings = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "XDG_CONFIG_HOME": str(base / "config"),
            "CHALLENGE_CATALOG_PATH": str(base / "catalog.json"),
            "CHALLENGE_JWT_SECRET": SECRET,
            "CHALLENGE_HTTP_PORT": str(self.http_port),
            "CHALLENGE_GRPC_PORT": str(self.grpc_port),
            "CHALLENGE_ADMIN_PORT": str(self.admin_port),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/challenge"

    def start(self) -> None:
        self.process = start_serve(self.settings, log_path=self.log)

    def signal(self, signum: int) -> float:
        """Send `signum` and wait for the exit; return the seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signum)
        self.process.wait(60)
        self.process = None
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None:
            self.signal(signal.SIGTERM)


def _wait(predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for a drill server to start")
        time.sleep(0.1)


# --- load ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    done: float  # monotonic
    latency_ms: float
    kind: str  # http | event
    failure: str | None


@dataclass
class Load:
    """Steady load on one or more services; per-player sent and acknowledged login events."""

    services: list[Service]
    users: list[int]
    http_rate: float
    event_rate: float
    samples: list[Sample] = field(default_factory=list)
    sent: Counter[int] = field(default_factory=Counter)
    acked: Counter[int] = field(default_factory=Counter)
    ryw_checks: int = 0
    ryw_violations: int = 0
    http_connections: int = 64
    _last: tuple[float, float, str | None] = (0.0, 0.0, None)

    def record(self, label: str, at: float, sent: float, done: float, failure: str | None) -> None:
        self._last = (sent, done, failure)

    async def open(self) -> None:
        self.ops = [
            Operations(
                GeneratorOptions(
                    api_url=service.api_url,
                    grpc_addr=f"127.0.0.1:{service.grpc_port}",
                    jwt_key=SECRET.encode(),
                    event_rpc="ags",
                    timeout_s=10.0,
                ),
                token_ttl_s=3600,
                http_connections=self.http_connections,
                recorder=self,
            )
            for service in self.services
        ]
        for ops in self.ops:
            await ops.start(with_grpc=True)
        for start in range(0, len(self.users), 50):
            await asyncio.gather(*(self.ops[0].initialize(0.0, n, True) for n in self.users[start : start + 50]))

    async def close(self) -> None:
        for ops in self.ops:
            await ops.close()

    async def _http(self, n: int, index: int) -> None:
        await self.ops[index % len(self.ops)].challenges(0.0, n, True)
        self._keep("http")

    async def _event(self, n: int, index: int) -> None:
        self.sent[n] += 1
        await _send_login(self.ops[index % len(self.ops)], n)
        failure = self._keep("event")
        if failure is None:
            self.acked[n] += 1

    def _keep(self, kind: str) -> str | None:
        # Operations records synchronously just before returning, so this is the call that just ended.
        sent, done, failure = self._last
        now = time.monotonic()
        self.samples.append(Sample(now, (done - sent) * 1000, kind, failure))
        return failure

    async def run(self, stop: asyncio.Event) -> None:
        """Launch operations at the configured rates (which may change meanwhile) until `stop`; at most
        1500 requests and 500 events in flight, and at most 0.1 s of launches owed (a client that cannot
        keep up skips them rather than bursting later)."""
        tasks: set[asyncio.Task[None]] = set()
        events: set[asyncio.Task[None]] = set()
        http_n = event_n = 0
        http_due = event_due = 0.0
        last = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            http_due = min(http_due + (now - last) * self.http_rate, http_n + self.http_rate * 0.1 + 1)
            event_due = min(event_due + (now - last) * self.event_rate, event_n + self.event_rate * 0.1 + 1)
            last = now
            while http_n < http_due and len(tasks) < 1500:
                tasks.add(asyncio.create_task(self._http(self.users[http_n % len(self.users)], http_n)))
                http_n += 1
            while event_n < event_due and len(events) < 500:
                events.add(asyncio.create_task(self._event(self.users[(event_n * 7) % len(self.users)], event_n)))
                event_n += 1
            tasks = {task for task in tasks if not task.done()}
            events = {task for task in events if not task.done()}
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks, *events, return_exceptions=True)

    async def capacity(self, seconds: float, concurrency: int) -> float:
        """Cached listings per second with `concurrency` requests always in flight (closed loop)."""
        deadline = time.monotonic() + seconds
        completed = 0

        async def worker(offset: int) -> None:
            nonlocal completed
            index = offset
            while time.monotonic() < deadline:
                await self.ops[0].challenges(0.0, self.users[index % len(self.users)], True)
                completed += self._last[2] is None
                index += concurrency

        await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
        return completed / seconds

    async def read_your_writes(self, rounds: int) -> None:
        """Two instances: a login acked by one must show in the next read on the other."""
        async with aiohttp.ClientSession() as session:
            for round_number in range(rounds):
                n = self.users[round_number % len(self.users)]
                writer, reader = self.ops[round_number % 2], self.services[(round_number + 1) % 2]
                await _send_login(writer, n)
                self.sent[n] += 1
                if self._last[2] is not None:
                    continue
                self.acked[n] += 1
                expected = self.acked[n]
                token_headers = writer._user_headers(n)
                url = f"{reader.api_url}/v1/challenges?active_only=true"
                async with session.get(url, headers=token_headers) as response:
                    body = await response.json()
                progress = next(
                    (g["progress"] for c in body.get("challenges", []) for g in c["goals"] if g["goalId"] == GOAL), -1
                )
                self.ryw_checks += 1
                # Concurrent load adds acked logins too: progress may be higher, never lower.
                if progress < expected:
                    self.ryw_violations += 1


async def _send_login(ops: Operations, n: int) -> None:
    """One AGS login OnMessage call for player `n`, with a fresh event id."""
    assert ops.sender is not None
    event = ingest_pb2.Event(
        id=str(uuid.uuid4()), user_id=user_id_of(n), namespace="accelbyte", kind=ingest_pb2.EVENT_KIND_LOGIN
    )
    await ops.send_events(time.perf_counter(), ops.sender.prepare(0, [event]))


# --- one row ------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    requests: int = 0
    events: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    p95_during_ms: str = ""
    p95_after_ms: str = ""
    recover_s: str = ""
    acked_lost: int | str = ""
    extra: int | str = ""
    notes: str = ""


def _p95(samples: list[Sample], kind: str) -> str:
    values = sorted(s.latency_ms for s in samples if s.kind == kind)
    if not values:
        return "-"
    return f"{values[min(len(values) - 1, int(0.95 * len(values)))]:.0f}"


def summarise(row: Row, load: Load, fault_at: float, back_at: float, database_url: str, extra_notes: str = "") -> Row:
    samples = load.samples
    row.requests = sum(1 for s in samples if s.kind == "http")
    row.events = sum(1 for s in samples if s.kind == "event")
    row.errors = dict(Counter(f"{s.kind}:{s.failure}" for s in samples if s.failure))
    during = [s for s in samples if fault_at <= s.done <= back_at]
    after = [s for s in samples if s.done > back_at + 1.0]
    row.p95_during_ms = f"{_p95(during, 'http')} / {_p95(during, 'event')}"
    row.p95_after_ms = f"{_p95(after, 'http')} / {_p95(after, 'event')}"
    late_failures = [s.done for s in samples if s.failure and s.done > back_at]
    row.recover_s = f"{max(late_failures) - back_at:.2f}" if late_failures else "0"
    with psycopg.connect(database_url, autocommit=True) as conn:
        progress = dict(
            conn.execute(
                "SELECT user_id, progress FROM user_goal_progress WHERE goal_id = %s AND user_id = ANY(%s)",
                (GOAL, [user_id_of(n) for n in load.users]),
            ).fetchall()
        )
    row.acked_lost = sum(max(0, load.acked[n] - progress.get(user_id_of(n), 0)) for n in load.users)
    row.extra = sum(max(0, progress.get(user_id_of(n), 0) - load.acked[n]) for n in load.users)
    row.notes = extra_notes
    return row


async def drive(
    name: str,
    services: list[Service],
    users: list[int],
    args: argparse.Namespace,
    database_url: str,
    fault: Callable[[], Awaitable[str]],
    recover: Callable[[], Awaitable[str]],
    fault_s: float = FAULT_S,
) -> Row:
    """Warm up, apply `fault`, keep the load on for `fault_s`, `recover`, run on, then count."""
    load = Load(services, users, args.http_rate, args.event_rate)
    await load.open()
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    await asyncio.sleep(WARMUP_S)
    fault_at = time.monotonic()
    notes = [await fault()]
    await asyncio.sleep(fault_s)
    notes.append(await recover())
    back_at = time.monotonic()
    await asyncio.sleep(AFTER_S)
    stop.set()
    await running
    await asyncio.sleep(0.5)  # the last flush of a buffered-ack service
    await load.close()
    return summarise(Row(name), load, fault_at, back_at, database_url, "; ".join(n for n in notes if n))


# --- the faults -----------------------------------------------------------------------------------------


async def in_thread(function: Callable[[], object]) -> object:
    return await asyncio.get_running_loop().run_in_executor(None, function)


class Drill:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = Path(tempfile.mkdtemp(prefix="challengectl-faults-"))
        (self.base / "catalog.json").write_text(json.dumps(CATALOG))
        (self.base / "config").mkdir()
        self.postgres = EmbeddedPostgres(self.base / "data")
        self.redis = Redis(self.base, args.port_base + 1)
        self.database_url = ""
        self.next_user = 1

    def users(self) -> list[int]:
        first = self.next_user
        self.next_user += self.args.users
        return list(range(first, first + self.args.users))

    def service(self, index: int = 0) -> Service:
        return Service(self.base, self.args.port_base, index, self.database_url, self.redis.url)

    def start(self) -> Service:
        self.database_url = self.postgres.start()
        self.redis.start()
        service = self.service()
        service.start()
        return service

    def close(self, services: list[Service]) -> None:
        for service in services:
            service.stop()
        self.redis.stop()
        self.postgres.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    async def pg_stop(self, service: Service) -> Row:
        async def fault() -> str:
            await in_thread(self.postgres.stop)
            return ""

        async def recover() -> str:
            await in_thread(self.postgres.start)
            return ""

        return await drive(
            "PostgreSQL stopped 10 s", [service], self.users(), self.args, self.database_url, fault, recover
        )

    async def pg_terminate(self, service: Service) -> Row:
        def terminate() -> int:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'challengectl-%'"
                ).fetchall()
            return len(rows)

        async def fault() -> str:
            first = await in_thread(terminate)
            await asyncio.sleep(2)
            second = await in_thread(terminate)
            return f"{first}+{second} backends terminated 2 s apart"

        async def recover() -> str:
            return ""

        return await drive(
            "PostgreSQL backends terminated", [service], self.users(), self.args, self.database_url, fault, recover, 3.0
        )

    async def redis_stop(self, service: Service) -> Row:
        async def fault() -> str:
            await in_thread(self.redis.stop)
            return ""

        async def recover() -> str:
            await in_thread(self.redis.start)
            await asyncio.sleep(2)  # the cache's probe interval (1 s) and a fill
            cache = await _admin_json(service, "/admin/cache")
            return (
                f"cache healthy again: {cache.get('healthy')}, bypasses {cache.get('bypasses', cache.get('bypassed'))}"
            )

        return await drive("Redis stopped 10 s", [service], self.users(), self.args, self.database_url, fault, recover)

    async def kill_service(self, service: Service) -> Row:
        async def fault() -> str:
            await in_thread(lambda: service.signal(signal.SIGKILL))
            return "kill -9 (commit acks)"

        async def recover() -> str:
            started = time.monotonic()
            await in_thread(service.start)
            return f"restarted and ready in {time.monotonic() - started:.1f} s"

        return await drive(
            "kill -9 of the service, restart",
            [service],
            self.users(),
            self.args,
            self.database_url,
            fault,
            recover,
            2.0,
        )

    async def sigterm(self, service: Service) -> Row:
        exit_s: list[float] = []

        async def fault() -> str:
            exit_s.append(await in_thread(lambda: service.signal(signal.SIGTERM)))
            return f"exit after SIGTERM in {exit_s[0]:.1f} s"

        async def recover() -> str:
            await in_thread(service.start)
            return ""

        return await drive(
            "SIGTERM under load, restart", [service], self.users(), self.args, self.database_url, fault, recover, 2.0
        )

    async def two_instances(self, service: Service) -> Row:
        second = self.service(1)
        await in_thread(second.start)
        users = self.users()

        async def fault() -> str:
            return "events and reads alternate between the two instances"

        async def recover() -> str:
            return ""

        # Steady load on both, then sequential read-your-writes checks across them.
        row = await drive(
            "two instances, one PostgreSQL and Redis",
            [service, second],
            users,
            self.args,
            self.database_url,
            fault,
            recover,
            5.0,
        )
        load = Load([service, second], users, 0, 0)
        await load.open()
        await load.read_your_writes(200)
        await load.close()
        await in_thread(second.stop)
        row.notes += f"; read-your-writes across instances: {load.ryw_violations} stale of {load.ryw_checks}"
        return row

    async def redis_cluster(self, service: Service) -> Row:
        """A service on a 3-node cluster (`redis_mode=auto` finds it); one node stopped 5 s and restarted."""
        cluster = RedisCluster(self.base, [self.args.port_base + 2 + k for k in range(3)])
        await in_thread(cluster.start)
        clustered = Service(self.base, self.args.port_base, 2, self.database_url, cluster.url)
        try:
            await in_thread(clustered.start)
            restarted = cluster.ports[1]
            before: dict[str, float] = {}

            async def fault() -> str:
                before.update(await _cache_and_dedup(clustered))
                await in_thread(lambda: cluster.stop_node(restarted))
                return f"node :{restarted} stopped 5 s"

            async def recover() -> str:
                await in_thread(lambda: cluster.start_node(restarted))
                await in_thread(lambda: _wait(cluster.healthy))
                return ""

            row = await drive(
                "Redis Cluster (3 nodes), one node restarted",
                [clustered],
                self.users(),
                self.args,
                self.database_url,
                fault,
                recover,
                5.0,
            )
            after = await _cache_and_dedup(clustered)
            keys = [
                int(subprocess.run(["redis-cli", "-p", str(p), "dbsize"], capture_output=True, text=True).stdout)
                for p in cluster.ports
            ]
            row.notes += (
                f"; before the fault / at the end: cache hits {before['hits']:.0f} / {after['hits']:.0f}, "
                f"bypassed {before['bypassed']:.0f} / {after['bypassed']:.0f}, de-dup lookups through Redis "
                f"{before['redis']:.0f} / {after['redis']:.0f}, through the in-process LRU {before['lru']:.0f} / "
                f"{after['lru']:.0f}; cache healthy at the end: {bool(after['healthy'])}; keys per node {keys}"
            )
            return row
        finally:
            await in_thread(clustered.stop)
            await in_thread(cluster.stop)

    async def overload(self, service: Service) -> Row:
        """Measure capacity closed-loop, offer 3x of it open-loop, then drop to half of it."""
        users = self.users()
        probe = Load([service], users, 0, 0)
        await probe.open()
        capacity = await probe.capacity(3.0, 64)
        await probe.close()
        load = Load([service], users, 0, self.args.event_rate, http_connections=2000)
        await load.open()
        stop = asyncio.Event()
        running = asyncio.create_task(load.run(stop))
        load.http_rate = 3 * capacity
        fault_at = time.monotonic()
        await asyncio.sleep(8.0)
        load.http_rate = capacity / 2
        back_at = time.monotonic()
        await asyncio.sleep(AFTER_S)
        stop.set()
        await running
        await load.close()
        offered = sum(1 for s in load.samples if s.kind == "http" and fault_at <= s.done <= back_at) / (
            back_at - fault_at
        )
        return summarise(
            Row("overload: 3x capacity for 8 s, then half"),
            load,
            fault_at,
            back_at,
            self.database_url,
            f"capacity {capacity:.0f} req/s (64 in flight); offered {3 * capacity:.0f}/s, the client (sharing the "
            f"cores) completed {offered:.0f}/s; shed at once with 503 + Retry-After, events unaffected",
        )


async def _admin_json(service: Service, path: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{service.admin_port}{path}") as response:
            return await response.json()


async def _cache_and_dedup(service: Service) -> dict[str, float]:
    """The service's cache hits, bypasses and health (`/admin/cache`) and its de-duplication lookups by
    backend (`challenge_dedup_total`, every process)."""
    cache = await _admin_json(service, "/admin/cache")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{service.admin_port}/metrics") as response:
            text = await response.text()
    lookups: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "challenge_dedup_total":
                lookups[sample.labels["backend"]] += sample.value
    return {
        "hits": cache.get("hits", 0),
        "bypassed": cache.get("bypassed", 0),
        "healthy": float(bool(cache.get("healthy"))),
        "redis": lookups["redis"],
        "lru": lookups["lru"],
    }


SCENARIOS = {
    "pg-stop": Drill.pg_stop,
    "pg-terminate": Drill.pg_terminate,
    "redis-stop": Drill.redis_stop,
    "kill9": Drill.kill_service,
    "sigterm": Drill.sigterm,
    "two-instances": Drill.two_instances,
    "redis-cluster": Drill.redis_cluster,
    "overload": Drill.overload,
}
NOT_DONE: dict[str, str] = {}


def print_table(rows: list[Row], args: argparse.Namespace, seconds: float, load_before: float) -> None:
    print(
        f"# fault drill, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average "
        f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}, {args.users} players, {args.http_rate:g} req/s + "
        f"{args.event_rate:g} login events/s, {seconds:.0f} s"
    )
    print()
    print(
        "| Fault | Requests | Events | Errors by class | p95 during, ms (HTTP / event) | p95 after | Recover, s | Acked lost | Extra | Notes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(row.errors.items())) or "0"
        print(
            f"| {row.name} | {row.requests} | {row.events} | {errors} | {row.p95_during_ms} | {row.p95_after_ms} "
            f"| {row.recover_s} | {row.acked_lost} | {row.extra} | {row.notes} |"
        )
    for name, why in NOT_DONE.items():
        print(f"| {name} | | | | | | | | | {why} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--http-rate", type=float, default=100)
    parser.add_argument("--event-rate", type=float, default=100)
    parser.add_argument("--port-base", type=int, default=20300, help="the drill uses ports base..base+20")
    args = parser.parse_args()
    started, load_before = time.monotonic(), os.getloadavg()[0]
    drill = Drill(args)
    service = await in_thread(drill.start)
    rows: list[Row] = []
    try:
        for name in args.only.split(","):
            print(f"... {name}", file=sys.stderr, flush=True)
            rows.append(await SCENARIOS[name](drill, service))
    finally:
        drill.close([service])
    print_table(rows, args, time.monotonic() - started, load_before)


if __name__ == "__main__":
    asyncio.run(main())

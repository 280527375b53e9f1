"""Event ingestion throughput and ack latency over gRPC, for the batched and the one-event-per-call paths.

Starts `challengectl serve` (embedded PostgreSQL/Redis in a temporary data dir unless DATABASE_URL /
REDIS_URL are set; ack_mode commit unless --ack-mode buffered), initializes USERS players through the
HTTP API so that events have rows to update, then drives two RPC paths from this process with the event
load engine of `events send` and `loadtest` (challengectl/eventload.py):

- `publish`:   challengectl.v1.EventIngest/Publish, BATCH events per call;
- `onmessage`: the AGS StatisticStatItemUpdatedService/OnMessage and UserAuthenticationUserLoggedInService/
               OnMessage, one event per call, as many calls in flight as the schedule demands.

For each path it runs (a) a fixed open-model rate of 500 events/s for DURATION seconds and (b) a search
for the highest sustained rate: the rate doubles from START_RATE until a step fails, then bisects, within
SEARCH_BUDGET seconds. A step fails when the achieved rate is below 95 % of the offered rate or the ack
p99 exceeds P99_BOUND_MS. Calls are launched on a fixed schedule, whatever the server's speed (open
model), and each call's latency runs from its SCHEDULED start, so a stalled server or a late load
generator shows up in the latency instead of silently lowering the load (no coordinated omission).

Events carry unique UUID ids and a realistic mix: 20 % logins, the rest stat updates of the bundled
example catalog's stat codes (one of them feeds only goals the players have not selected). Calls that
fail are retried with the same ids after their step, as a real sender would; at the end the script
checks in PostgreSQL that a sample of players holds exactly the login counts and stat values sent.

    python bench/events.py [--users 2000] [--batch 100] [--duration 10] [--ack-mode commit|buffered]
                           [--step-duration 5] [--search-budget 90] [--p99-bound-ms 500]

Prints a Markdown table; exits with status 1 when the final check finds a lost or double-counted event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil
import psycopg
from hdrh.histogram import HdrHistogram

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.serve_process import free_port, start_serve
from challengectl.eventload import RPC_AGS, RPC_PUBLISH, Call, EventSender, OpenModel, Outcome, Tally
from service.config.resources import example_catalog_path
from service.domain.catalog import Catalog, load_catalog
from service.proto.challengectl.v1 import ingest_pb2
from service.runtime.embedded import discover
from service.transport.auth import mint_token

SECRET = "bench-secret-" + "x" * 32
NAMESPACE = "bench"


PORT, GRPC_PORT, ADMIN_PORT = free_port(), free_port(), free_port()
FIXED_RATE = 500
LOGIN_SHARE = 0.20
# Relative weights of the stat codes among stat events; `headshots` only feeds a goal that is not
# assigned by default, so its events route to a goal but find no row (realistic, and cheap to flush).
STAT_WEIGHTS = {
    "matches_played": 35,
    "enemies_defeated": 15,
    "objectives_captured": 10,
    "matches_won": 10,
    "headshots": 10,
}
SUSTAINED_SHARE = 0.95
RETRY_ROUNDS = 5


class Workload:
    """Generates events round-robin over the players and remembers what each player must end up with.

    Stat values only grow per (player, stat code), so once every event is delivered, a row's progress
    must equal the last value generated; a login goal's progress must equal the number of logins.
    """

    def __init__(self, user_ids: Sequence[str], seed: int) -> None:
        self.user_ids = list(user_ids)
        self.logins: Counter[str] = Counter()
        self.stat_values: dict[tuple[str, str], int] = {}
        self._random = random.Random(seed)
        self._next_user = 0
        self._codes = list(STAT_WEIGHTS)
        self._weights = list(STAT_WEIGHTS.values())

    def next_events(self, count: int) -> list[ingest_pb2.Event]:
        """`count` new events with fresh UUIDs, each for the next player in turn, stamped with the time
        they were generated (so later values of a player's stat have later times)."""
        events = []
        players = len(self.user_ids)
        for _ in range(count):
            user_id = self.user_ids[self._next_user % players]
            self._next_user += 1
            event = ingest_pb2.Event(id=str(uuid.uuid4()), user_id=user_id, namespace=NAMESPACE)
            if self._random.random() < LOGIN_SHARE:
                self.logins[user_id] += 1
                event.kind = ingest_pb2.EVENT_KIND_LOGIN
            else:
                code = self._random.choices(self._codes, self._weights)[0]
                inc = self._random.randint(1, 3)
                value = self.stat_values.get((user_id, code), 0) + inc
                self.stat_values[(user_id, code)] = value
                event.kind = ingest_pb2.EVENT_KIND_STAT
                event.stat_code, event.latest_value, event.inc = code, value, inc
            event.timestamp.GetCurrentTime()
            events.append(event)
        return events


@dataclass
class RpcPath:
    """One RPC path: its sender (challengectl/eventload.py) and the events it packs into a call."""

    name: str
    sender: EventSender
    events_per_call: int

    def calls(self, events: list[ingest_pb2.Event]) -> list[Call]:
        per_call = self.events_per_call
        return [
            self.sender.prepare(index, events[start : start + per_call], events[start].id)
            for index, start in enumerate(range(0, len(events), per_call))
        ]


@dataclass
class StepResult:
    """What one step (one offered rate on one path) measured."""

    path: str
    phase: str
    offered: float
    achieved: float
    latency_us: HdrHistogram
    errors: Counter[str]
    error_details: dict[str, str]  # the first message seen per gRPC code
    flushes: int
    rows_updated: int
    flush_ms_p95: float
    flush_ms_mean: float
    cpu_client: float
    cpu_service: float
    cpu_machine: float
    service_us_per_event: float
    launch_lag_ms: float
    failed_requests: list[Outcome] = field(repr=False)
    verdict: str = ""

    def percentile_ms(self, percentile: float) -> float:
        return self.latency_us.get_value_at_percentile(percentile) / 1000

    def sustained(self, p99_bound_ms: float) -> bool:
        """Achieved at least 95 % of the offered rate with the ack p99 within the bound."""
        return (
            self.achieved >= SUSTAINED_SHARE * self.offered
            and self.latency_us.get_total_count() > 0
            and self.percentile_ms(99) <= p99_bound_ms
        )


class Bench:
    """The running service, its clients and the step runner."""

    def __init__(
        self,
        args: argparse.Namespace,
        service: subprocess.Popen,
        channel: grpc.aio.Channel,
        http: aiohttp.ClientSession,
        workload: Workload,
    ) -> None:
        self.args = args
        self.service = psutil.Process(service.pid)
        self.channel = channel
        self.http = http
        self.workload = workload
        self.retried_calls = 0

    async def admin_buffer(self) -> dict[str, Any]:
        async with self.http.get(f"http://127.0.0.1:{ADMIN_PORT}/admin/buffer") as response:
            response.raise_for_status()
            return await response.json()

    async def flush_seconds(self) -> tuple[float, float]:
        """(sum of flush durations in seconds, number of flushes) from the service's Prometheus metrics."""
        async with self.http.get(f"http://127.0.0.1:{ADMIN_PORT}/metrics") as response:
            response.raise_for_status()
            text = await response.text()
        total = re.search(r"^challenge_flush_duration_seconds_sum (\S+)$", text, re.MULTILINE)
        count = re.search(r"^challenge_flush_duration_seconds_count (\S+)$", text, re.MULTILINE)
        if total is None or count is None:
            raise SystemExit("the service's /metrics has no challenge_flush_duration_seconds histogram")
        return float(total.group(1)), float(count.group(1))

    async def wait_buffer_empty(self, timeout_s: float = 30.0) -> None:
        """Wait until every partition is flushed, so that the next step starts from an empty buffer."""
        deadline = time.monotonic() + timeout_s
        while (stats := await self.admin_buffer())["entries"] or stats["pending_waiters"]:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"the event buffer did not drain within {timeout_s:.0f} s: {stats['entries']} "
                    f"entries, {stats['pending_waiters']} waiters"
                )
            await asyncio.sleep(0.05)

    async def run_step(self, path: RpcPath, phase: str, rate: float, duration_s: float) -> StepResult:
        """Offer `rate` events/s on `path` for `duration_s` seconds on a fixed schedule and measure."""
        calls = path.calls(self.workload.next_events(max(path.events_per_call, round(rate * duration_s))))
        call_rate = rate / path.events_per_call
        before = await self.admin_buffer()
        flush_before = await self.flush_seconds()
        cpu_before = (time.process_time(), _cpu_seconds(self.service), psutil.cpu_times())
        tally, schedule, start = await self._open_model(path, calls, call_rate)
        wall_s = time.perf_counter() - start
        cpu_after = (time.process_time(), _cpu_seconds(self.service), psutil.cpu_times())
        if tally.first_rejection is not None:
            raise SystemExit(f"the service rejected {tally.rejected} events, first: {tally.first_rejection.reason}")
        await self.wait_buffer_empty()
        after = await self.admin_buffer()
        flush_after = await self.flush_seconds()
        flushes_in_step = flush_after[1] - flush_before[1]
        step = StepResult(
            path=path.name,
            phase=phase,
            offered=rate,
            achieved=tally.acked / max(duration_s, tally.last_done - start),
            latency_us=tally.latency_us,
            errors=tally.errors,
            error_details=tally.details,
            flushes=after["flushes_total"] - before["flushes_total"],
            rows_updated=after["rows_updated_total"] - before["rows_updated_total"],
            flush_ms_p95=after["flush_ms_p95"],
            flush_ms_mean=(flush_after[0] - flush_before[0]) / flushes_in_step * 1000 if flushes_in_step else 0.0,
            cpu_client=(cpu_after[0] - cpu_before[0]) / wall_s * 100,
            cpu_service=(cpu_after[1] - cpu_before[1]) / wall_s * 100,
            cpu_machine=_busy_share(cpu_before[2], cpu_after[2]) * 100,
            service_us_per_event=(cpu_after[1] - cpu_before[1]) / max(tally.acked, 1) * 1e6,
            launch_lag_ms=schedule.max_lag_s * 1000,
            failed_requests=tally.failed,
        )
        await self.retry(path, step.failed_requests)
        return step

    @staticmethod
    async def _open_model(path: RpcPath, calls: list[Call], call_rate: float) -> tuple[Tally, OpenModel[Call], float]:
        """Send `calls` at `call_rate` per second (open model, no in-flight cap); the tally, the schedule
        (its launch lag) and the start time."""
        tally = Tally(max_latency_s=120.0)
        schedule: OpenModel[Call] = OpenModel()

        async def one(call: Call, due: float) -> None:
            tally.record(await path.sender.send(call, due))

        start = time.perf_counter() + 0.05
        await schedule.drive(((start + call.index / call_rate, call) for call in calls), one)
        await schedule.drain()
        return tally, schedule, start

    async def retry(self, path: RpcPath, failed: list[Outcome]) -> None:
        """Resend failed calls with the same event ids until they succeed (de-duplication makes it safe)."""
        self.retried_calls += len(failed)
        pending = await path.sender.resend(failed, rounds=RETRY_ROUNDS)
        if pending:
            raise SystemExit(
                f"{len(pending)} {path.name} calls still failed after {RETRY_ROUNDS} retries, the last "
                f"with {pending[-1].failure}: {pending[-1].detail}"
            )
        await self.wait_buffer_empty()

    async def search(self, path: RpcPath) -> list[StepResult]:
        """Double the rate until a step is not sustained, then bisect, within the search budget."""
        args = self.args
        steps: list[StepResult] = []
        best: float | None = None
        worst: float | None = None
        budget_end = time.monotonic() + args.search_budget
        rate = float(args.start_rate)
        # A step costs its duration plus building, draining and retrying; stop before the budget is blown.
        while time.monotonic() + args.step_duration * 1.6 < budget_end:
            step = await self.run_step(path, "search", rate, args.step_duration)
            step.verdict = "sustained" if step.sustained(args.p99_bound_ms) else "not sustained"
            steps.append(step)
            if step.verdict == "sustained":
                best = rate
            else:
                worst = rate
            if worst is None:
                rate = rate * 2
            elif best is None:
                rate = rate / 2
            elif worst / best <= 1.1:
                break
            else:
                rate = _round_rate((best + worst) / 2)
        return steps


def _round_rate(rate: float) -> float:
    return float(max(50, round(rate / 50) * 50))


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _busy_share(before: Any, after: Any) -> float:
    """Share of all cores' time that was not idle between two psutil.cpu_times() samples."""
    idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
    total = sum(after) - sum(before)
    return 1 - idle / total if total > 0 else 0.0


def start_service(
    data_dir: Path, log_path: Path, ack_mode: str, workers: str | None, service_tree: Path
) -> subprocess.Popen:
    """Start `python -m challengectl serve` and wait for /readyz."""
    settings = {
        "CHALLENGE_DATA_DIR": str(data_dir),
        "CHALLENGE_JWT_SECRET": SECRET,
        "CHALLENGE_HTTP_PORT": str(PORT),
        "CHALLENGE_GRPC_PORT": str(GRPC_PORT),
        "CHALLENGE_ADMIN_PORT": str(ADMIN_PORT),
        "CHALLENGE_NAMESPACE": NAMESPACE,
        "CHALLENGE_ACK_MODE": ack_mode,
        "CHALLENGE_CATALOG_PATH": str(example_catalog_path()),
    }
    if workers is not None:
        settings["CHALLENGE_WORKERS"] = workers
    # The tree's service/ shadows this checkout's (before/after comparisons); the CLI comes from this checkout.
    return start_serve(settings, pythonpath=f"{service_tree.resolve()}{os.pathsep}{REPO_ROOT}", log_path=log_path)


async def initialize_players(http: aiohttp.ClientSession, user_ids: Sequence[str]) -> None:
    """POST /v1/challenges/initialize for every player, 16 at a time, so that events have rows to update."""
    limit = asyncio.Semaphore(16)
    url = f"http://127.0.0.1:{PORT}/challenge/v1/challenges/initialize"

    async def initialize(user_id: str) -> None:
        token = mint_token(SECRET.encode(), user_id, ttl_s=3600)
        async with limit, http.post(url, headers={"Authorization": f"Bearer {token}"}) as response:
            if response.status != 200:
                raise SystemExit(f"initialize of {user_id} answered {response.status}: {await response.text()}")
            await response.read()

    await asyncio.gather(*(initialize(user_id) for user_id in user_ids))


@dataclass
class Verification:
    """The final check of a sample of players against what was sent."""

    players: int = 0
    login_rows: int = 0
    login_exact: int = 0
    stat_rows: int = 0
    stat_exact: int = 0
    stat_earlier: int = 0  # an earlier value sent: two events of one (player, stat) arrived out of send order
    wrong: list[str] = field(default_factory=list)


def verify_sample(database_url: str, catalog: Catalog, workload: Workload, sample_size: int) -> Verification:
    """Compare the sampled players' active rows in PostgreSQL with the login counts and stat values sent."""
    sample = random.Random(7).sample(workload.user_ids, min(sample_size, len(workload.user_ids)))
    check = Verification(players=len(sample))
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, goal_id, progress FROM user_goal_progress WHERE user_id = ANY(%s) AND is_active", (sample,)
        ).fetchall()
    for user_id, goal_id, progress in rows:
        goal = catalog.goals_by_id[goal_id]
        if goal.event_source == "login":
            check.login_rows += 1
            expected = workload.logins[user_id]
            if progress == expected:
                check.login_exact += 1
            else:
                check.wrong.append(f"{user_id}/{goal_id}: {progress} logins counted, {expected} sent")
            continue
        check.stat_rows += 1
        last_sent = workload.stat_values.get((user_id, goal.requirement.stat_code), 0)
        if progress == last_sent:
            check.stat_exact += 1
        elif 0 < progress < last_sent:
            check.stat_earlier += 1
        else:
            check.wrong.append(f"{user_id}/{goal_id}: progress {progress}, last value sent {last_sent}")
    return check


def database_url_of(data_dir: Path) -> str:
    """DATABASE_URL when set, else the URL of the service's embedded PostgreSQL."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    found = discover(data_dir)
    if not found or not found["database_url"]:
        raise SystemExit(f"cannot find the embedded PostgreSQL of {data_dir}")
    return found["database_url"]


def print_report(
    args: argparse.Namespace, steps: list[StepResult], bench: Bench, check: Verification, setup_s: float
) -> None:
    print(
        f"ack_mode={args.ack_mode} users={args.users} publish batch={args.batch} events/call, "
        f"fixed rate {FIXED_RATE} events/s for {args.duration}s, search steps of {args.step_duration}s "
        f"(sustained: achieved >= {SUSTAINED_SHARE:.0%} of offered and ack p99 <= {args.p99_bound_ms:g} ms), "
        f"call deadline {args.deadline_s:g}s; serve --workers {args.workers or 'default'} (service CPU: the "
        "process running gRPC ingestion), load generator in one asyncio process, "
        f"{os.cpu_count()} cores shared with PostgreSQL and Redis; setup {setup_s:.0f}s"
    )
    print()
    print(
        "| path | phase | offered ev/s | achieved ev/s | ack p50 ms | p95 ms | p99 ms | max ms | errors "
        "| flushes | rows updated | flush mean ms | flush p95 ms | CPU % client/service/machine "
        "| service CPU us/event | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for step in steps:
        errors = ", ".join(f"{code} {count}" for code, count in sorted(step.errors.items())) or "0"
        print(
            f"| {step.path} | {step.phase} | {step.offered:.0f} | {step.achieved:.0f} | "
            f"{step.percentile_ms(50):.1f} | {step.percentile_ms(95):.1f} | {step.percentile_ms(99):.1f} | "
            f"{step.latency_us.get_max_value() / 1000:.1f} | {errors} | {step.flushes} | {step.rows_updated} | "
            f"{step.flush_ms_mean:.1f} | {step.flush_ms_p95:.1f} | {step.cpu_client:.0f}/{step.cpu_service:.0f}/{step.cpu_machine:.0f} | "
            f"{step.service_us_per_event:.0f} | {step.verdict} |"
        )
    print()
    for name in dict.fromkeys(step.path for step in steps if step.phase == "search"):
        sustained = [s.offered for s in steps if s.path == name and s.phase == "search" and s.verdict == "sustained"]
        best = f"{max(sustained):.0f} events/s" if sustained else "none of the rates tried"
        print(f"- highest sustained rate, {name}: {best}")
    details = {code: text for step in steps for code, text in step.error_details.items()}
    for code, text in sorted(details.items()):
        print(f"- {code}, first message: {text!r}")
    print(f"- failed calls resent with the same ids after their step: {bench.retried_calls}")
    print(
        f"- check of {check.players} sampled players in PostgreSQL: login rows exact {check.login_exact}/"
        f"{check.login_rows}; stat rows at the last value sent {check.stat_exact}/{check.stat_rows}, at an "
        f"earlier value sent (events of one player and stat reordered in flight) {check.stat_earlier}; "
        f"lost or double-counted: {len(check.wrong)}"
    )
    for problem in check.wrong[:10]:
        print(f"  - {problem}")
    print(
        "- latency: per call, from its scheduled start to its ack; flushes, rows updated, flush mean: this "
        "step's (admin/buffer, /metrics); flush p95: /admin/buffer's, over the service's last <= 2048 flushes "
        "when the step ended, so it can include earlier steps; CPU: % of one core (client, service process), % of all cores (machine)"
    )


async def run(args: argparse.Namespace, service: subprocess.Popen, data_dir: Path) -> None:
    setup_started = time.monotonic()
    run_tag = uuid.uuid4().hex[:8]
    user_ids = [f"bench-{run_tag}-{index:05d}" for index in range(args.users)]
    workload = Workload(user_ids, seed=args.seed)
    catalog = load_catalog(example_catalog_path())
    steps: list[StepResult] = []
    async with aiohttp.ClientSession() as http, grpc.aio.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        await initialize_players(http, user_ids)
        await channel.channel_ready()
        bench = Bench(args, service, channel, http, workload)
        paths = {
            "publish": RpcPath("publish", EventSender(channel, RPC_PUBLISH, deadline_s=args.deadline_s), args.batch),
            "onmessage": RpcPath("onmessage", EventSender(channel, RPC_AGS, deadline_s=args.deadline_s), 1),
        }
        # A short warm-up so that connections, prepared statements and caches exist before measuring.
        for path in paths.values():
            await bench.run_step(path, "warm-up", FIXED_RATE, 1)
        setup_s = time.monotonic() - setup_started
        for name in args.paths:
            path = paths[name]
            fixed = await bench.run_step(path, "fixed", FIXED_RATE, args.duration)
            fixed.verdict = "sustained" if fixed.sustained(args.p99_bound_ms) else "not sustained"
            steps.append(fixed)
            if args.search_budget > 0:
                steps.extend(await bench.search(path))
        await bench.wait_buffer_empty()
    check = verify_sample(database_url_of(data_dir), catalog, workload, args.sample)
    print_report(args, steps, bench, check, setup_s)
    if check.wrong:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000, help="players initialized before the load")
    parser.add_argument("--batch", type=int, default=100, help="events per Publish call")
    parser.add_argument("--duration", type=float, default=10, help="seconds of the fixed 500 events/s phase")
    parser.add_argument("--ack-mode", choices=("commit", "buffered"), default="commit")
    parser.add_argument("--paths", nargs="+", choices=("publish", "onmessage"), default=["publish", "onmessage"])
    parser.add_argument("--start-rate", type=float, default=1000, help="first rate of the search, events/s")
    parser.add_argument("--step-duration", type=float, default=5, help="seconds per search step")
    parser.add_argument("--search-budget", type=float, default=90, help="seconds per path; 0 skips the search")
    parser.add_argument("--p99-bound-ms", type=float, default=500, help="ack p99 above this fails a step")
    parser.add_argument("--deadline-s", type=float, default=5, help="gRPC deadline of each call")
    parser.add_argument("--sample", type=int, default=200, help="players checked in PostgreSQL at the end")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", help="serve --workers (default: the service's default)")
    parser.add_argument(
        "--service-tree",
        default=str(REPO_ROOT),
        help="source tree whose service/ and sql/ are started (default: this checkout), for before/after runs",
    )
    parser.add_argument(
        "--port-base", type=int, help="the service's HTTP port; gRPC and admin take the next two (default: free ones)"
    )
    args = parser.parse_args()
    if args.port_base is not None:
        global PORT, GRPC_PORT, ADMIN_PORT
        PORT, GRPC_PORT, ADMIN_PORT = args.port_base, args.port_base + 1, args.port_base + 2
    base = Path(tempfile.mkdtemp(prefix="challengectl-bench-events-"))
    data_dir = base / "data"
    service = start_service(data_dir, base / "serve.log", args.ack_mode, args.workers, Path(args.service_tree))
    try:
        asyncio.run(run(args, service, data_dir))
    finally:
        service.send_signal(signal.SIGINT)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

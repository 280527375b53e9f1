"""Service CPU per request and latency of the player operations at a fixed rate (issue 10's data-path rows).

Starts `challengectl serve` (one process, default settings) on the given PostgreSQL database and Redis
(a fresh key prefix per run) with a load-test profile's catalog, initializes PLAYERS players through the
API, initializes each measured player once more (so "returning" players have their synced marker and
cached view), then drives each scenario open-loop at RATE requests/s for DURATION seconds with aiohttp:
latency is taken from each request's scheduled start, and the service's CPU per request is the serve
process's CPU time (user + system, psutil) over the scenario divided by the requests answered.
"per-core req/s" is 1 / CPU per request: what one fully busy core of the service would answer.

With `--baseline-tree DIR` (a tree holding an older `service/` and `sql/`, e.g. from
`git archive <commit> service sql | tar -x -C DIR`) every scenario runs against that tree's service
too, in the same run, on its own database and Redis prefix, and the table gains the ratios.

    python bench/player_data_path.py [--profile seed-m3|all-active-500] [--players 2000] [--rate 200]
        [--duration 15] [--scenarios initialize_new,initialize_returning,challenges,challenges_active[,healthz]]
        [--baseline-tree DIR] [--port-base 20000]

Needs DATABASE_URL (a server where it may create databases) and REDIS_URL. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psutil
import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.serve_process import api_cpu_s, start_serve
from challengectl.loadtest.profiles import get_profile, write_catalog
from service.transport.auth import mint_token

SECRET = "bench-secret-" + "x" * 32
SCENARIOS = ("initialize_new", "initialize_returning", "challenges", "challenges_active")
OPTIONAL_SCENARIOS = ("healthz",)
API = "/challenge/v1/challenges"


@dataclass
class Target:
    """One service under test: where its code comes from and where it keeps its data."""

    label: str
    tree: Path
    database_url: str
    redis_prefix: str


@dataclass
class Result:
    offered: int
    answered: int
    errors: int
    elapsed_s: float
    cpu_s: float
    latencies_ms: list[float]
    failures: dict[str, int] = field(default_factory=dict)  # by HTTP status or exception name

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else float("nan")

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.answered * 1e6 if self.answered else float("nan")


def create_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(admin_url)
    params["dbname"] = name
    return make_conninfo(**params)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_service(target: Target, catalog: Path, ports: tuple[int, int, int], data_dir: Path) -> subprocess.Popen:
    http_port, grpc_port, admin_port = ports
    settings = {
        "DATABASE_URL": target.database_url,
        "CHALLENGE_REDIS_KEY_PREFIX": target.redis_prefix,
        "CHALLENGE_DATA_DIR": str(data_dir),
        "CHALLENGE_JWT_SECRET": SECRET,
        "CHALLENGE_HTTP_PORT": str(http_port),
        "CHALLENGE_GRPC_PORT": str(grpc_port),
        "CHALLENGE_ADMIN_PORT": str(admin_port),
        "CHALLENGE_CATALOG_PATH": str(catalog),
    }
    # The tree's service/ shadows this checkout's; the CLI that `serve` goes through comes from this checkout.
    return start_serve(
        settings,
        pythonpath=f"{target.tree}{os.pathsep}{REPO_ROOT}",
        log_path=data_dir.parent / f"{target.label}-serve.log",
    )


def request_of(scenario: str) -> tuple[str, str]:
    if scenario == "healthz":  # the transport's floor: no authentication, no I/O
        return "GET", "/healthz"
    if scenario.startswith("initialize"):
        return "POST", f"{API}/initialize"
    if scenario == "challenges_active":
        return "GET", f"{API}?active_only=true"
    return "GET", API


async def one_call(
    session: aiohttp.ClientSession, method: str, url: str, token: str, scheduled: float, result: Result
) -> None:
    try:
        async with session.request(method, url, headers={"Authorization": f"Bearer {token}"}) as response:
            await response.read()
            outcome = str(response.status)
    except (TimeoutError, aiohttp.ClientError) as error:
        outcome = type(error).__name__
    if outcome == "200":
        result.answered += 1
        result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
    else:
        result.errors += 1
        result.failures[outcome] = result.failures.get(outcome, 0) + 1


async def concurrently(session: aiohttp.ClientSession, method: str, url: str, tokens: list[str], limit: int) -> None:
    """Each token once, `limit` at a time (setup and warm-up)."""
    semaphore = asyncio.Semaphore(limit)
    failures = 0

    async def call(token: str) -> None:
        nonlocal failures
        async with semaphore, session.request(method, url, headers={"Authorization": f"Bearer {token}"}) as response:
            await response.read()
            failures += response.status != 200

    await asyncio.gather(*(call(token) for token in tokens))
    if failures:
        raise SystemExit(f"{failures} of {len(tokens)} setup calls failed")


async def fixed_rate(
    session: aiohttp.ClientSession, method: str, url: str, tokens: list[str], rate: float, duration: float, pid: int
) -> Result:
    """Open-loop schedule: request i starts at i / rate whatever the earlier ones are doing."""
    process = psutil.Process(pid)
    total = int(rate * duration)
    result = Result(total, 0, 0, 0.0, 0.0, [])
    cpu_before = api_cpu_s(process)
    started = time.perf_counter()
    tasks = []
    for i in range(total):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_call(session, method, url, tokens[i % len(tokens)], scheduled, result)))
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - started
    result.cpu_s = api_cpu_s(process) - cpu_before
    return result


def profiler(out_dir: Path | None, target: Target, scenario: str, pid: int, duration: float) -> subprocess.Popen | None:
    """py-spy sampling the service during one scenario (raw collapsed stacks), when asked for."""
    if out_dir is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{target.label.replace(' ', '-')}-{scenario}.txt"
    command = [
        "py-spy",
        "record",
        "--subprocesses",
        "-p",
        str(pid),
        "-d",
        str(int(duration)),
        "-r",
        "200",
        "-f",
        "raw",
        "-o",
    ]
    return subprocess.Popen([*command, str(out_dir / name)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def drive(target: Target, args: argparse.Namespace, base: Path, catalog: Path) -> dict[str, Result]:
    ports = (args.port_base, args.port_base + 1, args.port_base + 2)
    process = start_service(target, catalog, ports, base / target.label)
    results: dict[str, Result] = {}
    try:
        root = f"http://127.0.0.1:{ports[0]}"
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=args.connections)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            key = SECRET.encode()
            players = [mint_token(key, f"bench-{i:06d}", ttl_s=7200) for i in range(args.players)]
            setup_started = time.perf_counter()
            await concurrently(session, "POST", f"{root}{API}/initialize", players, 8)
            setup_s = time.perf_counter() - setup_started
            print(f"[{target.label}] {args.players} players initialized in {setup_s:.1f} s", file=sys.stderr)
            measured = players[: args.measured_players]
            random.Random(7).shuffle(measured)
            await concurrently(session, "POST", f"{root}{API}/initialize", measured, 8)
            for scenario in args.scenarios:
                method, path = request_of(scenario)
                if scenario == "initialize_new":
                    tokens = [
                        mint_token(key, f"new-{target.label.replace(' ', '-')}-{i:06d}", ttl_s=7200)
                        for i in range(int(args.rate * args.duration))
                    ]
                else:
                    tokens = measured
                spy = profiler(args.py_spy, target, scenario, process.pid, args.duration)
                result = await fixed_rate(
                    session, method, f"{root}{path}", tokens, args.rate, args.duration, process.pid
                )
                if spy is not None:
                    spy.wait(timeout=60)
                results[scenario] = result
                print(
                    f"[{target.label}] {scenario}: {result.answered}/{result.offered} ok, "
                    f"p95 {result.percentile(95):.1f} ms, {result.cpu_us_per_request:.0f} us CPU/req",
                    file=sys.stderr,
                )
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        remove_keys(target.redis_prefix)
    return results


def remove_keys(prefix: str) -> None:
    """Unlink the run's Redis keys (synced markers live for days on a shared server)."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def failure_note(result: Result) -> str:
    return " (" + ", ".join(f"{n} x {k}" for k, n in sorted(result.failures.items())) + ")" if result.failures else ""


def table(args: argparse.Namespace, runs: dict[str, dict[str, Result]]) -> str:
    labels = sorted(runs, key=lambda label: label == "baseline")
    lines = [
        "| scenario | service | answered/offered | errors | p50 ms | p95 ms | p99 ms | CPU us/req | per-core req/s |"
        + (" CPU vs baseline |" if len(labels) > 1 else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if len(labels) > 1 else ""),
    ]
    for scenario in args.scenarios:
        baseline = runs["baseline"][scenario] if "baseline" in runs else None
        for label in labels:
            r = runs[label][scenario]
            row = (
                f"| {scenario} | {label} | {r.answered}/{r.offered} | {r.errors}{failure_note(r)} | {r.percentile(50):.1f} | "
                f"{r.percentile(95):.1f} | {r.percentile(99):.1f} | {r.cpu_us_per_request:.0f} | "
                f"{1e6 / r.cpu_us_per_request:.0f} |"
            )
            if baseline is not None:
                row += f" {r.cpu_us_per_request / baseline.cpu_us_per_request:.2f}x |"
            lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="seed-m3", choices=("seed-m3", "all-active-500"))
    parser.add_argument("--players", type=int, default=2000, help="players initialized before measuring")
    parser.add_argument("--measured-players", type=int, default=1000, help="players the returning scenarios cycle")
    parser.add_argument("--rate", type=float, default=200, help="requests/s of each scenario")
    parser.add_argument("--duration", type=float, default=15, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=64, help="client connection limit")
    parser.add_argument("--scenarios", type=lambda s: s.split(","), default=list(SCENARIOS))
    parser.add_argument("--baseline-tree", type=Path, help="tree with the service/ and sql/ to compare against")
    parser.add_argument("--baseline-first", action="store_true", help="run the baseline before this tree")
    parser.add_argument("--py-spy", type=Path, help="directory for a py-spy profile of each scenario")
    parser.add_argument("--port-base", type=int, default=20000, help="HTTP port; gRPC and admin take the next two")
    args = parser.parse_args()
    unknown = set(args.scenarios) - {*SCENARIOS, *OPTIONAL_SCENARIOS}
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join((*SCENARIOS, *OPTIONAL_SCENARIOS))}")
    args.measured_players = min(args.measured_players, args.players)
    admin_url = os.environ.get("DATABASE_URL")
    if not admin_url or not os.environ.get("REDIS_URL"):
        parser.error("set DATABASE_URL and REDIS_URL")
    base = Path(tempfile.mkdtemp(prefix="challengectl-datapath-"))
    catalog = base / f"{args.profile}.json"
    write_catalog(get_profile(args.profile), catalog)
    stamp = f"{os.getpid()}"
    targets = [Target("this tree", REPO_ROOT, "", f"bdp{stamp}a")]
    if args.baseline_tree:
        targets.append(Target("baseline", args.baseline_tree.resolve(), "", f"bdp{stamp}b"))
    if args.baseline_first:
        targets.reverse()
    runs: dict[str, dict[str, Result]] = {}
    for index, target in enumerate(targets):
        name = f"bench_data_path_{stamp}_{index}"
        target.database_url = create_database(admin_url, name)
        try:
            runs[target.label] = asyncio.run(drive(target, args, base, catalog))
        finally:
            drop_database(admin_url, name)
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {os.getloadavg()[0]:.1f}; profile {args.profile}, {args.players} players initialized, "
        f"{args.measured_players} measured, {args.rate:g} req/s for {args.duration:g} s per scenario, "
        f"one serve process, PostgreSQL/Redis/client on the same machine"
    )
    print()
    print(table(args, runs))
    print(
        json.dumps(
            {label: {s: vars(r) | {"latencies_ms": None} for s, r in res.items()} for label, res in runs.items()}
        ),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()

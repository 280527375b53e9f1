"""Shared pieces of the scripts that measure issue 10's target rows (bench/README.md, "Issue 10 target rows"):
a fresh `challengectl serve` on a load-test profile's catalog, `challengectl loadtest run` and `users init`
against it, the issue's targets as load-test thresholds, the run's header line, and the verdict logic
(capacity stepping, RSS flatness) that the tests cover.

The service always runs on embedded PostgreSQL and Redis in a temporary data dir (DATABASE_URL and REDIS_URL
are ignored): `loadtest run --reset` truncates the progress tables, which must never hit a shared database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import psycopg.sql

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.serve_process import port_is_free, start_serve
from challengectl.loadtest.profiles import get_profile, user_id_of, write_catalog
from challengectl.loadtest.thresholds import default_thresholds, evaluate, parse_threshold
from service.runtime.embedded import discover

SECRET = "bench-secret-" + "x" * 32
# Initialize calls in flight while setting players up: below the 8 in progress from which the service sheds
# on latency (service/transport/admission.py), so a slow machine slows the setup down instead of failing it.
SETUP_CONCURRENCY = 6
# This work's ports on the shared machine (bench/README.md); BENCH_PORT_RANGE=FIRST-LAST picks others.
PORT_RANGE = tuple(map(int, os.environ.get("BENCH_PORT_RANGE", "21600-21699").split("-", 1)))

# The seed report's targets (the load test's default gates) and issue 10's rows, as `loadtest` threshold
# expressions ("0 failed" is 100 % success).
SEED_TARGETS = tuple(threshold.expr for threshold in default_thresholds())
NO_FAILURES = "*:success>=100%"
SEED_M3_ROW = (
    "initialize_new:p95<=10ms",
    "initialize_returning:p95<=5ms",
    "challenges:p95<=10ms",
    "challenges_active:p95<=10ms",
    "set_active:p95<=10ms",
    "claim:p95<=20ms",
    "event:p95<=100ms",
    NO_FAILURES,
)


def load_average() -> float:
    return os.getloadavg()[0]


class Stamp:
    """When a row's run started and the machine's load then and at the end, for the header line."""

    def __init__(self) -> None:
        self.started = datetime.now(UTC)
        self.load_start = load_average()

    def header(self, what: str) -> str:
        return (
            f"{self.started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average {self.load_start:.2f} -> "
            f"{load_average():.2f}; {what}"
        )


def free_ports(count: int = 3, span: tuple[int, int] = PORT_RANGE) -> tuple[int, ...]:
    """The first `count` consecutive ports of `span` that nothing listens on (two row scripts can run at once)."""
    for first in range(span[0], span[1] - count + 2):
        if all(port_is_free(port) for port in range(first, first + count)):
            return tuple(range(first, first + count))
    raise SystemExit(f"no {count} free consecutive ports in {span[0]}-{span[1]}")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# --------------------------------------------------------------------------- the service under test


@dataclass
class Service:
    """A running `serve` of one profile's catalog in `base` (catalog, data dir, logs, reports)."""

    process: subprocess.Popen
    base: Path
    catalog: Path
    ports: tuple[int, ...]

    @property
    def http_port(self) -> int:
        return self.ports[0]

    def cli_env(self) -> dict[str, str]:
        """The environment a `challengectl` command needs to reach this service and its embedded servers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHALLENGE_")}
        http_port, grpc_port, admin_port = self.ports
        env.update(
            PYTHONPATH=str(REPO_ROOT),
            CHALLENGE_DATA_DIR=str(self.base / "data"),
            CHALLENGE_JWT_SECRET=SECRET,
            CHALLENGE_HTTP_PORT=str(http_port),
            CHALLENGE_GRPC_PORT=str(grpc_port),
            CHALLENGE_ADMIN_PORT=str(admin_port),
            CHALLENGE_CATALOG_PATH=str(self.catalog),
            CHALLENGE_GRPC_ADDR=f"127.0.0.1:{grpc_port}",
            CHALLENGE_ADMIN_URL=f"http://127.0.0.1:{admin_port}",
        )
        return env

    def challengectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "challengectl", "--quiet", *args],
            env=self.cli_env(),
            capture_output=True,
            text=True,
        )

    def loadtest(self, profile: str, *args: str) -> dict[str, Any]:
        """`loadtest run --profile PROFILE ARGS` (gated by the seed's targets); the JSON report. Exit 99 (a
        target missed) is a result, not a failure of the benchmark."""
        out = self.base / f"run-{time.monotonic_ns()}.json"
        completed = self.challengectl("loadtest", "run", "--profile", profile, *args, "--out", str(out))
        if completed.returncode not in (0, 99):
            raise SystemExit(f"loadtest failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
        return json.loads(out.read_text())

    def seed_m3(self, init: str, duration: str, scale: float) -> dict[str, Any]:
        """The seed-m3 load test from empty tables: init phase of `init`, gameplay of `duration`, at `scale`."""
        phases = ("--phase", f"init={init}", "--duration", duration, "--scale", f"{scale:g}")
        return self.loadtest("seed-m3", "--reset", "--yes", *phases)

    def initialize_players(self, count: int, concurrency: int) -> Setup:
        """Initialize the profile's first `count` players through the API (`users init`, retrying the ones
        that failed, e.g. refused with 503 under load); how long it took and the rows it added."""
        rows_before, started = self.rows_stored(), time.monotonic()
        pending = [user_id_of(number) for number in range(1, count + 1)]
        ids = self.base / "players.txt"
        for _ in range(10):
            ids.write_text("\n".join(pending) + "\n")
            completed = self.challengectl(
                "-o", "json", "users", "init", "--from-file", str(ids), "--concurrency", str(concurrency)
            )
            if completed.returncode in (0, 1):  # 1: some players failed; they are tried again
                pending = [item["user_id"] for item in json.loads(completed.stdout)["items"] if item["error"]]
                if not pending:
                    break
            else:  # e.g. exit 5 on a 503: the whole list again (the players it did initialize are cheap now)
                time.sleep(1)
        else:
            raise SystemExit(f"{len(pending)} players still not initialized:\n{completed.stderr[-2000:]}")
        seconds = time.monotonic() - started
        return Setup(count, seconds, self.rows_stored() - rows_before)

    def rows_stored(self) -> int:
        """Rows in the service's tables (every user table: the count does not depend on how players are stored)."""
        url = discover(self.base / "data")["database_url"]
        with psycopg.connect(url) as conn:
            names = conn.execute("SELECT schemaname, relname FROM pg_stat_user_tables").fetchall()
            query = "SELECT count(*) FROM {}.{}"
            return sum(
                conn.execute(psycopg.sql.SQL(query).format(*map(psycopg.sql.Identifier, name))).fetchone()[0]
                for name in names
            )

    def processes(self) -> list[psutil.Process]:
        """The serve process and its descendants (API worker, embedded servers when they are children)."""
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def api_process(self) -> psutil.Process:
        """The player API's process: the serve process's spawned worker with `--workers 1`, else serve itself."""
        root = psutil.Process(self.process.pid)
        workers = [child for child in root.children() if "spawn_main" in " ".join(child.cmdline())]
        return workers[0] if workers else root


@dataclass(frozen=True)
class Setup:
    players: int
    seconds: float
    rows: int

    def line(self) -> str:
        return (
            f"setup: {self.players} players initialized through the API in {self.seconds:.1f} s "
            f"({self.players / self.seconds:.0f}/s), {self.rows} rows added"
        )


@contextlib.contextmanager
def serve_profile(
    profile: str, *, workers: int = 1, tree: Path = REPO_ROOT, env: dict[str, str] | None = None
) -> Iterator[Service]:
    """A fresh default `serve` (`--workers`), code from `tree`'s service/, on `profile`'s catalog and embedded
    PostgreSQL/Redis in a temporary directory; stopped and removed afterwards."""
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    base = Path(tempfile.mkdtemp(prefix="challengectl-row-"))
    catalog = base / f"{profile}.json"
    write_catalog(get_profile(profile), catalog)
    ports = free_ports()
    settings = {
        "CHALLENGE_DATA_DIR": str(base / "data"),
        "CHALLENGE_JWT_SECRET": SECRET,
        "CHALLENGE_HTTP_PORT": str(ports[0]),
        "CHALLENGE_GRPC_PORT": str(ports[1]),
        "CHALLENGE_ADMIN_PORT": str(ports[2]),
        "CHALLENGE_WORKERS": str(workers),
        "CHALLENGE_CATALOG_PATH": str(catalog),
        **(env or {}),
    }
    # The tree's service/ shadows this checkout's; the CLI that `serve` goes through comes from this checkout.
    process = start_serve(
        settings, pythonpath=f"{Path(tree).resolve()}{os.pathsep}{REPO_ROOT}", log_path=base / "serve.log"
    )
    try:
        yield Service(process, base, catalog, ports)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(base)], check=False)


# --------------------------------------------------------------------------- verdicts


def target_results(report: dict[str, Any], expressions: Sequence[str]) -> list[dict[str, Any]]:
    """The issue's targets evaluated on a load-test report (as `loadtest run --threshold` would)."""
    return evaluate(report, [parse_threshold(expr) for expr in expressions])


def targets_table(results: Sequence[dict[str, Any]]) -> str:
    def observed(result: dict[str, Any]) -> str:
        value = result["observed"]
        return "no data" if value is None else f"{value:.2f} {result['unit']}"

    verdict = {True: "met", False: "**missed**", None: "no data"}
    return table(
        ("target (issue 10)", "observed", "verdict"),
        ((f"`{r['expr']}`", observed(r), verdict[r["pass"]]) for r in results),
    )


def all_met(results: Sequence[dict[str, Any]]) -> bool:
    return all(result["pass"] is True for result in results)


def failures_line(report: dict[str, Any]) -> str:
    """Operations, failures by class and generator health of a load-test report, in one line."""
    overall = report["overall"]["all"]
    return f"{overall['count']} operations, {overall['success_pct']:.3f} % ok, {failure_classes(report)}"


def failure_classes(report: dict[str, Any]) -> str:
    """`failures: CLASS COUNT, ...` and, when the generator fell behind, why (its latencies then include that)."""
    classes = report["overall"]["all"].get("failures", {})
    failures = ", ".join(f"{name} {count}" for name, count in classes.items()) or "none"
    generator = report["generator"]
    health = "; generator limited: " + "; ".join(generator["limited_reasons"]) if generator["generator_limited"] else ""
    return f"failures: {failures}{health}"


def capacity_search(
    scales: Sequence[float], passes: Callable[[float], bool], stop_after: int = 1
) -> tuple[list[tuple[float, bool]], float | None]:
    """Run `passes(scale)` on ascending `scales` until `stop_after` consecutive scales fail; the verdicts and
    the capacity: the highest scale that passed with every lower scale run passing too (None if the first
    failed)."""
    results: list[tuple[float, bool]] = []
    failed_in_a_row = 0
    for scale in sorted(scales):
        passed = passes(scale)
        results.append((scale, passed))
        failed_in_a_row = 0 if passed else failed_in_a_row + 1
        if failed_in_a_row >= stop_after:
            break
    capacity = None
    for scale, passed in results:
        if not passed:
            break
        capacity = scale
    return results, capacity


FLOOR_BUCKET_S = 60.0


@dataclass(frozen=True)
class RssTrend:
    """RSS of one process over a run: first/last/max sample, and over the final window the least-squares
    slope of every sample and of the floor (each minute's lowest sample).

    The floor is what the process keeps; the peaks above it are its working set of the moment, e.g. the
    ingestion process's calls in flight, which come and go with the event-ack backlog (bench/README.md
    "Memory"). A leak raises the floor; a burst of work only raises samples for a while."""

    start_mb: float
    end_mb: float
    max_mb: float
    slope_mb_per_min: float
    floor_slope_mb_per_min: float
    window_s: float

    @property
    def growth_mb(self) -> float:
        """What the line fitted to every sample grows over the window."""
        return self.slope_mb_per_min * self.window_s / 60

    @property
    def floor_growth_mb(self) -> float:
        """What the line fitted to the floor grows over the window."""
        return self.floor_slope_mb_per_min * self.window_s / 60

    def flat(self, tolerance_mb: float = 2.0, tolerance_fraction: float = 0.02) -> bool:
        """Flat: over the window the floor's fitted growth stays within max(2 MB, 2 % of the final RSS)."""
        return self.floor_growth_mb <= max(tolerance_mb, tolerance_fraction * self.end_mb)


def _slope_per_s(points: Sequence[tuple[float, float]]) -> float:
    mean_t = sum(t for t, _ in points) / len(points)
    mean_mb = sum(mb for _, mb in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (mb - mean_mb) for t, mb in points) / spread if spread else 0.0


def _floor(window: Sequence[tuple[float, float]], bucket_s: float) -> list[tuple[float, float]]:
    """The lowest sample of each `bucket_s` stretch of the window, counted back from its last sample (a
    shorter stretch left at the window's start joins the oldest one)."""
    last_t = window[-1][0]
    buckets = max(1, int((last_t - window[0][0]) // bucket_s))
    lowest: dict[int, tuple[float, float]] = {}
    for t, mb in window:
        bucket = min(int((last_t - t) // bucket_s), buckets - 1)
        if bucket not in lowest or mb < lowest[bucket][1]:
            lowest[bucket] = (t, mb)
    return sorted(lowest.values())


def rss_trend(samples: Sequence[tuple[float, float]], window_s: float) -> RssTrend:
    """`samples` are (seconds, MB) in time order; the slopes are fitted on those within `window_s` of the last."""
    if len(samples) < 2:
        raise ValueError("need at least two RSS samples")
    last_t = samples[-1][0]
    window = [(t, mb) for t, mb in samples if t >= last_t - window_s]
    if len(window) < 2:
        window = list(samples[-2:])
    floor = _floor(window, FLOOR_BUCKET_S)
    return RssTrend(
        start_mb=samples[0][1],
        end_mb=samples[-1][1],
        max_mb=max(mb for _, mb in samples),
        slope_mb_per_min=_slope_per_s(window) * 60,
        floor_slope_mb_per_min=_slope_per_s(floor if len(floor) >= 2 else window) * 60,
        window_s=window[-1][0] - window[0][0],
    )


def endpoint_table(report: dict[str, Any]) -> str:
    """Count, success and latency per phase and endpoint of a load-test report."""
    return table(
        ("phase", "endpoint", "count", "success %", "p50 ms", "p95 ms", "p99 ms"),
        (
            (
                phase["name"],
                name,
                entry["count"],
                f"{entry['success_pct']:.2f}",
                f"{entry['latency_ms']['p50']:.1f}",
                f"{entry['latency_ms']['p95']:.1f}",
                f"{entry['latency_ms']['p99']:.1f}",
            )
            for phase in report["phases"]
            for name, entry in phase["endpoints"].items()
        ),
    )


def p95(report: dict[str, Any], label: str) -> float | None:
    """The p95 of `label` over the run's measured phases, None without operations."""
    entry = report["overall"]["endpoints"].get(label)
    return entry["latency_ms"]["p95"] if entry and entry.get("count") else None


def row_parser(doc: str | None, *, rate: float, setup_players: int = 0) -> argparse.ArgumentParser:
    """The options every all-active-500 row script has: the API rate, and with a setup the players
    initialized before the run and the setup's calls in flight."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=rate, help="API requests per second")
    if setup_players:
        parser.add_argument("--players", type=int, default=setup_players, help="players initialized before the run")
        parser.add_argument(
            "--concurrency", type=int, default=SETUP_CONCURRENCY, help="initialize calls in flight during the setup"
        )
    return parser


def all_active_row(
    *, row: str, what: str, setup_players: int, concurrency: int, loadtest_args: Sequence[str], targets: Sequence[str]
) -> None:
    """One all-active-500 row: a fresh default serve on that catalog, `setup_players` players initialized
    through the API first (none: the run starts from empty tables), then `loadtest run LOADTEST_ARGS`;
    prints the header, the setup, the endpoints and the verdict against `targets`."""
    stamp = Stamp()
    with serve_profile("all-active-500") as service:
        setup = service.initialize_players(setup_players, concurrency) if setup_players else None
        report = service.loadtest("all-active-500", *loadtest_args)
    print(stamp.header(f"all-active-500 (10 x 50 goals, all default), default serve; {what}"))
    print(setup.line() if setup else "setup: none (empty tables, `--reset`)")
    print(f"load test `{' '.join(loadtest_args)}`: seed verdict {report['verdict']}; {failures_line(report)}")
    print()
    print(endpoint_table(report))
    print()
    results = target_results(report, targets)
    print(targets_table(results))
    print()
    print(f"Row verdict (issue 10, {row}): {'MET' if all_met(results) else 'NOT MET'}")

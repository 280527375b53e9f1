"""Where the CPU and the PostgreSQL work go in the all-active-500 gameplay row (bench/all_active_gameplay.py).

Runs the row (a fresh default serve on the all-active-500 catalog, PLAYERS players initialized through the
API, then MINUTES of RATE API req/s + EVENT_RATE `OnMessage` events/s) once per `--service-tree`, in the
order given (repeat a tree to interleave before/after runs), and over the gameplay window samples every
INTERVAL s: the CPU of each process (serve main = gRPC ingestion + flusher, API worker, each PostgreSQL
backend by what it ran, the background writer, checkpointer, walwriter, autovacuum, Redis, the load
generator and its workers), and at the ends of the window the deltas of pg_stat_wal, pg_stat_bgwriter,
pg_stat_user_tables and the flusher's totals (/admin/buffer). Prints per run: the row's endpoint table and
verdict, the CPU split (cores), the PostgreSQL and flush figures; then one comparison table of the runs.

    python bench/gameplay_split.py [--service-tree DIR ...] [--players 10000] [--minutes 2] [--rate 300]
        [--event-rate 500] [--interval 3] [--env KEY=VALUE ...]

Unset DATABASE_URL/REDIS_URL (the serve uses embedded servers); the ports come from bench/target_rows.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import psycopg
import target_rows as rows
from all_active_gameplay import GAMEPLAY_TARGETS

from service.runtime.embedded import discover

_PG_BACKGROUND = {
    "checkpointer": "pg checkpointer",
    "background writer": "pg bgwriter",
    "walwriter": "pg walwriter",
    "autovacuum launcher": "pg autovacuum",
    "autovacuum worker": "pg autovacuum",
}
_WAL = "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal"
_BGWRITER = "SELECT checkpoints_timed, checkpoints_req, buffers_checkpoint, buffers_clean, buffers_backend FROM pg_stat_bgwriter"
_TABLE = (
    "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_hot_upd), 0)"
    " FROM pg_stat_user_tables WHERE relname = 'user_goal_progress'"
)
_ACTIVITY = "SELECT pid, query FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"


def pg_role(process: psutil.Process) -> str:
    """A postgres process's role by its title: a background process, or a backend (told apart later)."""
    title = " ".join(process.cmdline())
    for name, role in _PG_BACKGROUND.items():
        if name in title:
            return role
    return "pg backend"


def statement_name(query: str) -> str:
    """The queries.sql name of a statement, by its text (the flush's two are told apart)."""
    if "implied_goal_progress AS p ON p.user_id = e.user_id" in query:
        return "materialize_event_goals"
    if query.lstrip().startswith("WITH entry AS"):  # pg_stat_activity keeps the first 1 kB of a statement
        return "apply_event_updates"
    return "other"


class Sampler:
    """Samples process CPU and pg_stat_activity of one running service until stopped."""

    def __init__(self, service: rows.Service, interval_s: float) -> None:
        self.service = service
        self.interval_s = interval_s
        self.data_dir = service.base / "data"
        self.database_url = discover(self.data_dir)["database_url"]
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.backend_roles: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.samples = 0
        self._stop = threading.Event()
        self._own = os.getpid()
        self._conn = psycopg.connect(self.database_url, autocommit=True)
        self._postmaster = int((self.data_dir / "pg" / "postmaster.pid").read_text().split()[0])

    def processes(self) -> list[tuple[psutil.Process, str]]:
        """Every process of the run with its role."""
        serve = psutil.Process(self.service.process.pid)
        api = self.service.api_process()
        found: list[tuple[psutil.Process, str]] = [(serve, "serve main (gRPC + flusher)")]
        if api.pid != serve.pid:
            found.append((api, "API worker"))
        for child in psutil.Process(self._postmaster).children():
            found.append((child, pg_role(child)))
        found.append((psutil.Process(self._postmaster), "pg postmaster"))
        for process in psutil.process_iter(["name", "cmdline"]):
            if process.info["name"] == "redis-server" and str(self.service.base) in " ".join(
                process.info["cmdline"] or []
            ):
                found.append((process, "redis"))
        for child in psutil.Process(self._own).children():
            if "loadtest" in child.cmdline():
                found += [(process, "load generator") for process in (child, *child.children(recursive=True))]
        return found

    def sample(self) -> None:
        for pid, query in self._conn.execute(_ACTIVITY).fetchall():
            if query:
                self.backend_roles[pid][statement_name(query)] += 1
        for process, role in self.processes():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            cpu = times.user + times.system
            self.last[process.pid] = (role, cpu)
            self.first.setdefault(process.pid, (role, cpu if self.samples == 0 else 0.0))
        self.samples += 1

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except (psutil.Error, psycopg.Error):
                pass
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()

    def split(self) -> dict[str, float]:
        """CPU seconds per role between the first and last sample (a process born later counts from 0)."""
        cpu: dict[str, float] = collections.defaultdict(float)
        for pid, (role, last_cpu) in self.last.items():
            if role == "pg backend":
                role = pg_role_by_pid(pid, self.backend_roles)
            cpu[role] += last_cpu - self.first[pid][1]
        return dict(cpu)

    def counters(self) -> dict[str, float]:
        """pg_stat_wal, pg_stat_bgwriter and user_goal_progress counters, and the flusher's totals."""
        wal = self._conn.execute(_WAL).fetchone()
        bgw = self._conn.execute(_BGWRITER).fetchone()
        table = self._conn.execute(_TABLE).fetchone()
        admin = f"http://127.0.0.1:{self.service.ports[2]}/admin/buffer"
        with urllib.request.urlopen(admin, timeout=10) as response:
            buffer = json.load(response)
        return {
            "wal_records": float(wal[0]),
            "wal_fpi": float(wal[1]),
            "wal_bytes": float(wal[2]),
            "checkpoints": float(bgw[0] + bgw[1]),
            "buffers_checkpoint": float(bgw[2]),
            "buffers_clean": float(bgw[3]),
            "buffers_backend": float(bgw[4]),
            "rows_inserted": float(table[0]),
            "rows_updated": float(table[1]),
            "hot_updates": float(table[2]),
            "flushes": float(buffer["flushes_total"]),
            "flush_failures": float(buffer["flush_failures_total"]),
            "flush_rows": float(buffer["rows_updated_total"]),
            "flush_ms_p50": float(buffer["flush_ms_p50"]),
            "flush_ms_p95": float(buffer["flush_ms_p95"]),
        }

    def close(self) -> None:
        self._conn.close()


def pg_role_by_pid(pid: int, backend_roles: dict[int, collections.Counter[str]]) -> str:
    seen = backend_roles.get(pid)
    if seen and (seen["apply_event_updates"] or seen["materialize_event_goals"]):
        return "pg backend: flusher"
    return "pg backend: API/other"


def one_run(tree: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    stamp = rows.Stamp()
    loadtest_args = (
        "--users", str(args.players), "--phase", "init=0s", "--phase",
        f"gameplay={args.minutes * 60:g}s@{args.rate:g}/{args.event_rate:g}", "--event-rpc", "ags",
    )  # fmt: skip
    with rows.serve_profile("all-active-500", tree=tree, env=env) as service:
        setup = service.initialize_players(args.players, args.concurrency)
        sampler = Sampler(service, args.interval)
        report_box: dict[str, Any] = {}

        def drive() -> None:
            report_box["report"] = service.loadtest("all-active-500", *loadtest_args)

        before = sampler.counters()
        driver = threading.Thread(target=drive)
        started = time.monotonic()
        driver.start()
        sampling = threading.Thread(target=sampler.run)
        sampling.start()
        driver.join()
        sampler.stop()
        sampling.join()
        window_s = time.monotonic() - started
        after = sampler.counters()
        split = sampler.split()
        sampler.close()
    report = report_box["report"]
    header = stamp.header(f"gameplay split, service tree {tree}, env {env or '-'}")
    deltas = {key: after[key] - before[key] for key in before}
    deltas["flush_ms_p50"], deltas["flush_ms_p95"] = after["flush_ms_p50"], after["flush_ms_p95"]
    results = rows.target_results(report, (*GAMEPLAY_TARGETS, rows.NO_FAILURES))
    return {
        "tree": str(tree),
        "env": " ".join(f"{k}={v}" for k, v in env.items()),
        "header": header,
        "setup": setup.line(),
        "report": report,
        "results": results,
        "window_s": window_s,
        "split": split,
        "pg": deltas,
    }


def print_run(run: dict[str, Any]) -> None:
    report, window_s = run["report"], run["window_s"]
    print(run["header"])
    print(run["setup"])
    print(f"gameplay: {rows.failures_line(report)}; window {window_s:.0f} s")
    print()
    print(rows.endpoint_table(report))
    print()
    print(rows.targets_table(run["results"]))
    print()
    split = run["split"]
    total = sum(split.values())
    print(
        rows.table(
            ("process", "CPU s", "cores", "share"),
            (
                (role, f"{cpu:.1f}", f"{cpu / window_s:.2f}", f"{100 * cpu / total:.1f} %")
                for role, cpu in sorted(split.items(), key=lambda item: -item[1])
            ),
        )
    )
    print(f"all sampled processes: {total / window_s:.2f} cores of {os.cpu_count()}")
    print()
    pg = run["pg"]
    per_s = {key: value / window_s for key, value in pg.items()}
    updates = pg["rows_updated"] or 1.0
    print(
        rows.table(
            ("figure", "window total", "per second"),
            (
                ("user_goal_progress rows inserted", f"{pg['rows_inserted']:.0f}", f"{per_s['rows_inserted']:.0f}"),
                ("user_goal_progress rows updated", f"{pg['rows_updated']:.0f}", f"{per_s['rows_updated']:.0f}"),
                ("of which HOT", f"{pg['hot_updates']:.0f} ({100 * pg['hot_updates'] / updates:.1f} %)", "-"),
                ("WAL bytes", f"{pg['wal_bytes'] / 1e6:.1f} MB", f"{per_s['wal_bytes'] / 1e6:.2f} MB/s"),
                ("WAL records / full-page images", f"{pg['wal_records']:.0f} / {pg['wal_fpi']:.0f}",
                 f"{per_s['wal_records']:.0f} / {per_s['wal_fpi']:.0f}"),
                ("checkpoints", f"{pg['checkpoints']:.0f}", "-"),
                ("buffers written: checkpoint / bgwriter / backend",
                 f"{pg['buffers_checkpoint']:.0f} / {pg['buffers_clean']:.0f} / {pg['buffers_backend']:.0f}", "-"),
                ("flushes / failed flushes", f"{pg['flushes']:.0f} / {pg['flush_failures']:.0f}",
                 f"{per_s['flushes']:.1f} / {per_s['flush_failures']:.1f}"),
                ("rows written by flushes", f"{pg['flush_rows']:.0f}", f"{per_s['flush_rows']:.0f}"),
                ("flush ms p50 / p95 (last 2048)", f"{pg['flush_ms_p50']:.0f} / {pg['flush_ms_p95']:.0f}", "-"),
            ),
        )
    )  # fmt: skip
    print()


def summary(runs: list[dict[str, Any]]) -> str:
    def p95(report: dict[str, Any], endpoint: str) -> str:
        value = rows.p95(report, endpoint)
        return "-" if value is None else f"{value:.0f}"

    return rows.table(
        (
            "run",
            "tree",
            "env",
            "% ok",
            "challenges p95 ms",
            "event p95 ms",
            "flush rows/s",
            "failed flushes",
            "WAL MB/s",
            "cores",
        ),
        (
            (
                index + 1,
                Path(run["tree"]).name,
                run["env"] or "-",
                f"{run['report']['overall']['all']['success_pct']:.1f}",
                p95(run["report"], "challenges"),
                p95(run["report"], "event"),
                f"{run['pg']['flush_rows'] / run['window_s']:.0f}",
                f"{run['pg']['flush_failures']:.0f}",
                f"{run['pg']['wal_bytes'] / run['window_s'] / 1e6:.2f}",
                f"{sum(run['split'].values()) / run['window_s']:.2f}",
            )
            for index, run in enumerate(runs)
        ),
    )


def main() -> None:
    parser = rows.row_parser(__doc__, rate=300.0, setup_players=10_000)
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the gameplay phase")
    parser.add_argument("--event-rate", type=float, default=500.0, help="events per second (OnMessage)")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between CPU samples")
    parser.add_argument("--service-tree", action="append", type=Path, help="service tree per run (repeatable)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the serve (repeatable)")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    runs = []
    for tree in args.service_tree or [rows.REPO_ROOT]:
        run = one_run(tree, args, env)
        print_run(run)
        runs.append(run)
    print(summary(runs))


if __name__ == "__main__":
    main()

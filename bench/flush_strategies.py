"""Flush strategies compared: the project's one-statement UNNEST flush against COPY into a temporary table.

docs/architecture.md ("Performance design") chose to pass a flush's entries as arrays to one statement,
`apply_event_updates` of the named-query registry, instead of what the reference did: COPY the entries into
a temporary table, then one `UPDATE ... FROM` joining it (docs/events.md#flush). This script measures that choice on
one database in one run. The variants, each a complete flush (entries in, outcomes out, committed):

- `unnest registry`: the service's own statement, run like the flusher runs it (`service.storage.store.Queries`,
  one statement on an autocommit connection, its arrays sent as literals as the flusher sends them);
- `copy, temp table per flush`: BEGIN; CREATE TEMP TABLE ... ON COMMIT DROP; COPY the entries; the
  registry's statement with its `entry` source reading the temp table instead of the arrays; COMMIT;
- `copy, session temp table`: the same with the temp table created once per connection
  (ON COMMIT DELETE ROWS), the strongest form of the alternative.

All three run the service's own statement text (`registry_flush_reading` swaps only where the entries come
from), so they differ only in how the entries reach the server. The workload is absolute statistic goals
without rotation. Before timing, every variant runs the same entries on the same
rows (inside a rolled-back transaction, while another session holds some rows locked) and the script checks
that all of them leave identical rows and return identical outcomes.

The database is created for the run and dropped after it: on the server of DATABASE_URL when set, else on
an embedded PostgreSQL in a temporary directory. The schema comes from `service.storage.migrations`. It seeds
USERS players x 5 goals with a mix of states (in progress, completed, claimed, inactive), then times
REPETITIONS flushes of each size and variant, each with fresh random entries, the variants interleaved.

    python bench/flush_strategies.py [--users 100000] [--sizes 500 2000 5000] [--repetitions 20]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from service.runtime.embedded import EmbeddedServers
from service.storage.arrays import with_array_literals
from service.storage.migrations import apply_migrations
from service.storage.registry import load_registry
from service.storage.store import Queries

# (goal_id, buffer source, target): two sources feed two goals each, one feeds one, so an entry touches
# one or two rows, as in the bundled catalog.
GOALS = (
    ("g-kills-10", "stat:kills", 10),
    ("g-kills-100", "stat:kills", 100),
    ("g-wins-5", "stat:wins", 5),
    ("g-wins-50", "stat:wins", 50),
    ("g-matches-25", "stat:matches", 25),
)
SOURCES = sorted({source for _, source, _ in GOALS})
# Share of entries for players without rows (the flush finds nothing to write for them).
MISSING_PLAYER_SHARE = 0.02
ROW_COLUMNS = (
    "user_id",
    "goal_id",
    "progress",
    "status",
    "completed_at",
    "claimed_at",
    "updated_at",
    "is_active",
    "expires_at",
    "baseline_value",
)

SEED_SQL = """
INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress, status, completed_at,
                                claimed_at, created_at, updated_at, is_active, assigned_at)
SELECT 'u' || lpad(p.n::text, 7, '0'), g.goal_id, 'bench', 'bench',
       CASE s.kind WHEN 'fresh' THEN 0 WHEN 'progress' THEN (s.r * g.target)::int ELSE g.target END,
       CASE s.kind WHEN 'fresh' THEN 'not_started' WHEN 'progress' THEN 'in_progress'
                   WHEN 'inactive' THEN 'in_progress' ELSE s.kind END,
       CASE WHEN s.kind IN ('completed', 'claimed') THEN now() - interval '1 day' END,
       CASE WHEN s.kind = 'claimed' THEN now() - interval '12 hours' END,
       now() - interval '2 days', now() - interval '1 day', s.kind <> 'inactive', now() - interval '2 days'
  FROM generate_series(1, %(users)s) AS p (n)
 CROSS JOIN unnest(%(goal_ids)s::text[], %(targets)s::int[]) AS g (goal_id, target)
 CROSS JOIN LATERAL (
       SELECT r, CASE WHEN r < 0.03 THEN 'inactive' WHEN r < 0.06 THEN 'claimed' WHEN r < 0.16 THEN 'completed'
                      WHEN r < 0.50 THEN 'fresh' ELSE 'progress' END AS kind
         FROM (SELECT random() + 0 * p.n AS r) AS draw) AS s
"""

FROM_TEMP_TABLE = "SELECT entry_index, user_id, source, value, inc, event_at FROM flush_entry"
TEMP_TABLE_COLUMNS = "(entry_index bigint, user_id text, source text, value bigint, inc bigint, event_at timestamptz)"
COPY_ENTRIES = "COPY flush_entry (entry_index, user_id, source, value, inc, event_at) FROM STDIN"
ENTRY_CTE_START = "WITH entry AS ("
ENTRY_CTE_END = "\n),\ngoal AS ("


def registry_flush_reading(statement_sql: str, entry_source: str) -> str:
    """The registry's flush statement with its `entry` CTE reading `entry_source` instead of the entry
    arrays: everything after the entries, the whole per-row rule, stays the service's own text."""
    start = statement_sql.index(ENTRY_CTE_START) + len(ENTRY_CTE_START)
    end = statement_sql.index(ENTRY_CTE_END, start)
    return statement_sql[:start] + "\n    " + entry_source + statement_sql[end:]


@dataclass(frozen=True)
class Entries:
    """One flush's entries as parallel lists: unique (user, source) pairs, stat values, increments."""

    user_ids: list[str]
    sources: list[str]
    values: list[int]
    incs: list[int]

    def __len__(self) -> int:
        return len(self.user_ids)


def random_entries(rng: random.Random, users: int, size: int) -> Entries:
    """`size` entries of distinct players (a few without rows), each for one random stat source."""
    players = rng.sample(range(1, users + 1), size)
    user_ids = [f"missing-{n}" if rng.random() < MISSING_PLAYER_SHARE else f"u{n:07d}" for n in players]
    incs = [rng.randint(1, 5) for _ in players]
    return Entries(user_ids, [rng.choice(SOURCES) for _ in players], [rng.randint(0, 150) for _ in players], incs)


def goal_params(now: datetime) -> dict[str, Any]:
    """The goal parameters of `apply_event_updates`: absolute, non-rotating statistic goals."""
    count = len(GOALS)
    return {
        "goal_ids": [g[0] for g in GOALS],
        "goal_sources": [g[1] for g in GOALS],
        "goal_targets": [g[2] for g in GOALS],
        "goal_progress_modes": ["absolute"] * count,
        "goal_boundaries": [None] * count,
        "goal_next_boundaries": [None] * count,
        "goal_reset_flags": [False] * count,
        "goal_reselect_flags": [False] * count,
        "now": now,
    }


def registry_params(entries: Entries, now: datetime) -> dict[str, Any]:
    """The parameters of `apply_event_updates`: the entries as arrays, and the goals."""
    return {
        "entry_user_ids": entries.user_ids,
        "entry_sources": entries.sources,
        "entry_values": entries.values,
        "entry_incs": entries.incs,
        "entry_event_ats": [None] * len(entries.user_ids),
        **goal_params(now),
    }


Flush = Callable[[psycopg.AsyncConnection, Entries, datetime], Awaitable[list[dict[str, Any]]]]


def unnest_registry(queries: Queries) -> Flush:
    async def flush(conn: psycopg.AsyncConnection, entries: Entries, now: datetime) -> list[dict[str, Any]]:
        return await queries.rows(conn, "apply_event_updates", with_array_literals(registry_params(entries, now)))

    return flush


def copy_flush(flush_sql: str, temp_table_per_flush: bool) -> Flush:
    """COPY into a temp table, then the registry's flush statement reading it, in one transaction."""
    statement = registry_flush_reading(flush_sql, FROM_TEMP_TABLE)

    async def flush(conn: psycopg.AsyncConnection, entries: Entries, now: datetime) -> list[dict[str, Any]]:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
            if temp_table_per_flush:
                await cursor.execute(f"CREATE TEMP TABLE flush_entry {TEMP_TABLE_COLUMNS} ON COMMIT DROP")
            async with cursor.copy(COPY_ENTRIES) as copy:
                for index, row in enumerate(
                    zip(entries.user_ids, entries.sources, entries.values, entries.incs, strict=True), start=1
                ):
                    await copy.write_row((index, *row, None))
            await cursor.execute(statement, goal_params(now))
            return await cursor.fetchall()

    return flush


async def prepare_session_temp_table(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(f"CREATE TEMP TABLE flush_entry {TEMP_TABLE_COLUMNS} ON COMMIT DELETE ROWS")


@dataclass
class Variant:
    name: str
    flush: Flush
    session_temp_table: bool = False


@contextmanager
def bench_database() -> Iterator[str]:
    """A database created for this run and dropped after it, on DATABASE_URL's server or an embedded one."""
    embedded: EmbeddedServers | None = None
    base: Path | None = None
    server_url = os.environ.get("DATABASE_URL")
    if not server_url:
        base = Path(tempfile.mkdtemp(prefix="challengectl-bench-flush-"))
        embedded = EmbeddedServers(base / "data", redis=False)
        server_url = embedded.start().database_url
        assert server_url is not None
    name = f"challengectl_bench_flush_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield make_conninfo(server_url, dbname=name)
        finally:
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        if embedded is not None:
            embedded.stop()
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)


def seed(database_url: str, users: int) -> float:
    """Insert users x 5 goal rows in a mix of states, then VACUUM ANALYZE; return the seconds it took."""
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT setseed(0.42)")
        conn.execute(SEED_SQL, {"users": users, "goal_ids": [g[0] for g in GOALS], "targets": [g[2] for g in GOALS]})
        conn.execute("VACUUM ANALYZE user_goal_progress")
    return time.perf_counter() - started


async def verify_equivalence(database_url: str, variants: list[Variant], users: int, size: int) -> str:
    """Run every variant on the same entries and rows (rolled back) while another session holds some rows
    locked; fail unless all leave identical rows and return identical outcomes. Returns a summary."""
    rng = random.Random(99)
    entries = random_entries(rng, users, size)
    now = datetime.now(UTC)
    results = []
    async with await psycopg.AsyncConnection.connect(database_url) as holder:
        locked_users = entries.user_ids[: max(1, size // 50)]
        await holder.execute("SELECT 1 FROM user_goal_progress WHERE user_id = ANY(%s) FOR UPDATE", (locked_users,))
        for variant in variants:
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                if variant.session_temp_table:
                    await prepare_session_temp_table(conn)
                    await conn.commit()
                # The flushes commit on their own; a surrounding transaction turns their commit into a
                # savepoint release, so the rollback below leaves the seeded rows as they were.
                async with conn.transaction(force_rollback=True):
                    outcomes = await variant.flush(conn, entries, now)
                    rows = await (
                        await conn.execute(
                            f"SELECT {', '.join(ROW_COLUMNS)} FROM user_goal_progress"
                            " WHERE user_id = ANY(%s) ORDER BY user_id, goal_id",
                            (entries.user_ids,),
                        )
                    ).fetchall()
            results.append((variant.name, [tuple(o.values()) for o in outcomes], rows))
        await holder.rollback()
    reference_name, reference_outcomes, reference_rows = results[0]
    for name, outcomes, rows in results[1:]:
        if outcomes != reference_outcomes or rows != reference_rows:
            differing = sum(1 for a, b in zip(rows, reference_rows, strict=False) if a != b)
            raise SystemExit(
                f"{name} differs from {reference_name}: {differing} rows, outcomes equal: "
                f"{outcomes == reference_outcomes}"
            )
    counts: dict[str, int] = {}
    for outcome in reference_outcomes:
        counts[outcome[3]] = counts.get(outcome[3], 0) + 1
    changed = sum(1 for row in reference_rows if row[ROW_COLUMNS.index("updated_at")] == now)
    return (
        f"{len(variants)} variants, {size} entries: identical rows ({len(reference_rows)} rows read, {changed} "
        f"written) and outcomes ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"
    )


@dataclass
class Timing:
    durations_ms: list[float]
    rows_updated: list[int]

    def median_ms(self) -> float:
        return statistics.median(self.durations_ms)

    def p95_ms(self) -> float:
        ordered = sorted(self.durations_ms)
        return ordered[max(0, min(len(ordered) - 1, -(-95 * len(ordered) // 100) - 1))]


async def time_flushes(
    database_url: str, variants: list[Variant], users: int, sizes: list[int], repetitions: int, warmup: int
) -> dict[tuple[int, str], Timing]:
    """Interleave the variants' flushes, each on fresh random entries, on one connection per variant."""
    rng = random.Random(2024)
    connections = {}
    try:
        for variant in variants:
            conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
            if variant.session_temp_table:
                await prepare_session_temp_table(conn)
            connections[variant.name] = conn
        timings: dict[tuple[int, str], Timing] = {}
        for size in sizes:
            for repetition in range(warmup + repetitions):
                # Rotate the order, so that no variant always runs right after the same other one.
                order = variants[repetition % len(variants) :] + variants[: repetition % len(variants)]
                for variant in order:
                    entries = random_entries(rng, users, size)
                    conn = connections[variant.name]
                    started = time.perf_counter()
                    outcomes = await variant.flush(conn, entries, datetime.now(UTC))
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    if repetition < warmup:
                        continue
                    timing = timings.setdefault((size, variant.name), Timing([], []))
                    timing.durations_ms.append(elapsed_ms)
                    timing.rows_updated.append(sum(len(o["goal_ids"]) for o in outcomes))
        return timings
    finally:
        for conn in connections.values():
            await conn.close()


async def run(args: argparse.Namespace) -> None:
    registry = load_registry()
    queries = Queries(registry)
    flush_sql = registry.get("apply_event_updates").sql
    variants = [
        Variant("unnest registry (apply_event_updates)", unnest_registry(queries)),
        Variant("copy, temp table per flush", copy_flush(flush_sql, temp_table_per_flush=True)),
        Variant("copy, session temp table", copy_flush(flush_sql, temp_table_per_flush=False), session_temp_table=True),
    ]
    with bench_database() as database_url:
        apply_migrations(database_url, application_name="challengectl-bench")
        seed_s = seed(database_url, args.users)
        check = await verify_equivalence(database_url, variants, args.users, max(args.sizes))
        timings = await time_flushes(database_url, variants, args.users, args.sizes, args.repetitions, args.warmup)
        with psycopg.connect(database_url) as conn:
            server_version = conn.info.server_version
    target = "DATABASE_URL's server" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"
    print(
        f"{args.users} players x {len(GOALS)} goals seeded in {seed_s:.1f}s on {target} "
        f"(PostgreSQL {server_version // 10000}.{server_version % 10000}); {args.repetitions} timed flushes per "
        f"size and variant after {args.warmup} warm-up, fresh random entries each, variants interleaved; "
        f"time = client-side, entries in to outcomes fetched, committed; {os.cpu_count()} cores"
    )
    print(f"equivalence check: {check}")
    print()
    print(
        "| entries/flush | variant | median ms | p95 ms | rows updated/flush | rows/s (median) | median vs registry |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        reference = timings[(size, variants[0].name)].median_ms()
        for variant in variants:
            timing = timings[(size, variant.name)]
            rows = statistics.median(timing.rows_updated)
            print(
                f"| {size} | {variant.name} | {timing.median_ms():.1f} | {timing.p95_ms():.1f} | {rows:.0f} | "
                f"{rows / timing.median_ms() * 1000:,.0f} | {timing.median_ms() / reference:.2f}x |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000], help="entries per flush")
    parser.add_argument("--repetitions", type=int, default=20, help="timed flushes per size and variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed flushes per size and variant first")
    args = parser.parse_args()
    if max(args.sizes) > args.users:
        raise SystemExit("a flush cannot hold more distinct players than --users")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

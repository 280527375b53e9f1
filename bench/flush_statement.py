"""The flush statement on the all-active-500 catalog: `apply_event_updates` of this tree against a baseline tree's.

Every default goal of the all-active-500 catalog (bench/all_active_gameplay.py) is implied until written, and each
routed source feeds 100 goals, so one entry writes 100 rows. Two kinds of entry, flushed separately:

- `real`: the player's rows are all real (every later event of a (player, source) after the first flush);
- `implied`: the player is initialized and has no real row (the first event of a (player, source)).

The database is created for the run and dropped after it (DATABASE_URL's server when set, else an embedded
PostgreSQL; bench/flush_strategies.py). It records PLAYERS players of each kind. Each timed flush is one
`EXPLAIN (ANALYZE, BUFFERS, TIMING OFF)` of the statement in a transaction rolled back after it (so every flush
sees the same rows), on ENTRIES distinct random players with one random routed source each, the trees
alternating. Prints per kind, size and tree: the median and p95 execution time, microseconds per row written,
shared buffers hit, and the ratio to the baseline tree. `--plan` first prints each tree's plan (with timing) of
one flush of the largest size of each kind.

    python bench/flush_statement.py [--baseline-tree DIR] [--players 2000] [--sizes 25 200]
        [--repetitions 20] [--plan]

`--baseline-tree DIR` (repeatable): a tree holding an older `sql/` (`git archive main sql | tar -x -C DIR`);
the first one is the baseline of the ratios. Without it only this tree's statement runs.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from flush_strategies import REPO_ROOT, bench_database

from challengectl.loadtest.profiles import get_profile, user_id_of
from service.domain.buffer import Entry
from service.domain.routing import GoalRouting
from service.storage.arrays import with_array_literals
from service.storage.default_sets import default_goal_set
from service.storage.migrations import apply_migrations
from service.storage.registry import load_registry

NAMESPACE = "bench"
INITIALIZE_SQL = """
INSERT INTO user_initializations (user_id, namespace, default_set_id, initialized_at)
SELECT 'user-' || lpad(n::text, 6, '0'), %(namespace)s, %(set_id)s, %(at)s
  FROM generate_series(1, %(players)s) AS n
"""


@dataclass
class Runs:
    """The timed flushes of one (kind, size, tree)."""

    execution_ms: list[float] = field(default_factory=list)
    buffers_hit: list[int] = field(default_factory=list)

    def p95_ms(self) -> float:
        ordered = sorted(self.execution_ms)
        return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def seed(database_url: str, players: int) -> float:
    """Record the default set and 2 x `players` players; make the first `players` players' rows real."""
    catalog = get_profile("all-active-500").catalog()
    default_set = default_goal_set(catalog.default_goals)
    registry = load_registry()
    statement = registry.get("register_default_goal_set").sql
    # The `real` players' rows made real with the service's own statement (progress 0, as initialized).
    materialize = registry.get("materialize_implied_goals").sql
    goal_ids = [goal.goal_id for goal in catalog.default_goals]
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(statement, default_set.params())
        at = datetime.now(UTC) - timedelta(hours=1)
        conn.execute(
            INITIALIZE_SQL, {"namespace": NAMESPACE, "set_id": default_set.set_id, "at": at, "players": 2 * players}
        )
        with conn.cursor() as cursor:
            cursor.executemany(
                materialize, [{"user_id": user_id_of(n), "goal_ids": goal_ids} for n in range(1, players + 1)]
            )
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def entries(rng: random.Random, routing: GoalRouting, first_player: int, players: int, size: int) -> list[Entry]:
    """`size` entries of distinct players from first_player on, each of one random routed source."""
    sources = sorted({"login", *(f"stat:{code}" for code in ("enemy_kills", "games_played", "headshots", "wins"))})
    assert all(routing.routes(source) for source in sources)
    chosen = rng.sample(range(first_player, first_player + players), size)
    found = []
    for number in chosen:
        source = rng.choice(sources)
        entry = Entry(user_id_of(number), source, 0.0)
        entry.value = None if source == "login" else rng.randint(0, 999)
        entry.inc = 1
        found.append(entry)
    return found


def explain(conn: psycopg.Connection[Any], statement: str, params: dict[str, Any], analyze: str) -> Any:
    """The statement's EXPLAIN output, in a transaction rolled back after it."""
    with conn.transaction(force_rollback=True):
        return conn.execute(f"EXPLAIN ({analyze}) {statement}", params).fetchall()


def run(args: argparse.Namespace) -> None:
    trees = {
        f"baseline {tree.name}" if len(args.baseline_tree) > 1 else "baseline": tree for tree in args.baseline_tree
    }
    trees["this tree"] = REPO_ROOT
    statements = {
        name: load_registry(tree / "sql" / "queries.sql").get("apply_event_updates").sql for name, tree in trees.items()
    }
    routing = GoalRouting(get_profile("all-active-500").catalog())
    kinds = {"real": 1, "implied": args.players + 1}
    rng = random.Random(2026)
    results: dict[tuple[str, int, str], Runs] = {}
    with bench_database() as database_url:
        apply_migrations(database_url, application_name="challengectl-bench")
        seed_s = seed(database_url, args.players)
        with psycopg.connect(database_url, autocommit=True) as conn:
            server_version = conn.info.server_version
            if args.plan:
                for kind, first in kinds.items():
                    params = with_array_literals(
                        routing.statement_params(
                            entries(rng, routing, first, args.players, max(args.sizes)), datetime.now(UTC)
                        )
                    )
                    for name, statement in statements.items():
                        plan = explain(conn, statement, params, "ANALYZE, BUFFERS")
                        print(f"### {kind} entries, {max(args.sizes)} per flush, {name}\n\n```")
                        print("\n".join(line for (line,) in plan))
                        print("```\n")
            for size in args.sizes:
                for kind, first in kinds.items():
                    for repetition in range(args.warmup + args.repetitions):
                        params = with_array_literals(
                            routing.statement_params(
                                entries(rng, routing, first, args.players, size), datetime.now(UTC)
                            )
                        )
                        # Rotate the order, so that no tree always runs right after the same other one.
                        order = list(statements.items())
                        order = order[repetition % len(order) :] + order[: repetition % len(order)]
                        for name, statement in order:
                            (plan,) = explain(conn, statement, params, "ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON")[0]
                            if repetition < args.warmup:
                                continue
                            top = plan[0]
                            runs = results.setdefault((kind, size, name), Runs())
                            runs.execution_ms.append(top["Execution Time"])
                            runs.buffers_hit.append(top["Plan"]["Shared Hit Blocks"])
    target = "DATABASE_URL's server" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"
    print(
        f"{args.players} players with all 500 rows real + {args.players} initialized only, seeded in {seed_s:.1f} s on "
        f"{target} (PostgreSQL {server_version // 10000}); {args.repetitions} timed flushes per kind, size and tree "
        f"after {args.warmup} warm-up, trees alternating, each rolled back; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| entries | kind | tree | median ms | p95 ms | us/row | buffers hit | median vs baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for kind in kinds:
            reference = statistics.median(results[(kind, size, next(iter(statements)))].execution_ms)
            for name in statements:
                runs = results[(kind, size, name)]
                median = statistics.median(runs.execution_ms)
                rows = size * 100
                print(
                    f"| {size} | {kind} | {name} | {median:.1f} | {runs.p95_ms():.1f} | {1000 * median / rows:.1f} | "
                    f"{statistics.median(runs.buffers_hit):,.0f} | {median / reference:.2f}x |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        action="append",
        default=[],
        help="tree with the sql/ to compare against (repeatable)",
    )
    parser.add_argument("--players", type=int, default=2000, help="players of each kind")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 200], help="entries per flush")
    parser.add_argument("--repetitions", type=int, default=20, help="timed flushes per kind, size and tree")
    parser.add_argument("--warmup", type=int, default=2, help="untimed flushes per kind, size and tree first")
    parser.add_argument("--plan", action="store_true", help="print each tree's plan of one flush per kind first")
    args = parser.parse_args()
    if max(args.sizes) > args.players:
        raise SystemExit("a flush cannot hold more distinct players than --players")
    run(args)


if __name__ == "__main__":
    main()

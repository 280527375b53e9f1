"""CPU per player operation below the HTTP transport: the use case (`Players`) plus rendering (`ResponseWriter`),
on real PostgreSQL and Redis, one call at a time, in a worker process per run.

The HTTP numbers of `bench/player_data_path.py` add the transport (auth, ASGI layers, sockets) and swing with
the machine's load; this script isolates the data path that issue 10's per-request targets also pay, and it
compares trees in the same run with the runs interleaved (this tree, baseline, this tree, baseline, ...), so
background load hits both alike. CPU is the worker's `time.process_time()` (the client side of PostgreSQL and
Redis included, their servers not); `PG CPU` is the CPU of the worker's PostgreSQL backends (psutil on their
pids, so it needs the server on this machine); wall time is per call, sequential.

    python bench/player_usecases.py [--profile seed-m3|all-active-500] [--players 300] [--calls 300]
        [--repeat 2] [--baseline-tree DIR]

`--baseline-tree DIR`: a tree with an older `service/` and `sql/` (`git archive <commit> service sql | tar -x -C
DIR`). Needs DATABASE_URL (a server where it may create databases) and REDIS_URL. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import tree_runs

SCENARIOS = ("initialize_new", "initialize_returning", "challenges", "challenges_active", "set_active", "claim")


async def worker(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run every scenario against the service code on sys.path; return CPU and wall time per call (us)."""
    import service.usecases.players as players_module
    from challengectl.loadtest.profiles import get_profile
    from service.runtime.gc_policy import freeze_startup_objects
    from service.storage.cache import Cache, open_redis
    from service.storage.registry import load_registry
    from service.storage.store import PoolConfig, Queries, Store
    from service.transport.responses import ResponseWriter
    from service.usecases.players import Players
    from service.usecases.rewards import RewardConfig, RewardGranter

    if not Path(players_module.__file__).resolve().is_relative_to(Path(args.tree).resolve()):
        raise SystemExit(f"imported {players_module.__file__}, not the tree {args.tree}")
    catalog = get_profile(args.profile).catalog()
    # A fixed pool, so that the PostgreSQL backends whose CPU is measured stay the same processes.
    store = await Store.open(args.db, "service", PoolConfig(min_size=2, max_size=2))
    redis = open_redis(os.environ["REDIS_URL"], 8, 2000)
    cache = Cache(redis, args.prefix, catalog.fingerprint, 300, 604800, 100000, 1000)
    rewards = RewardGranter(RewardConfig())
    players = Players(catalog, store, Queries(load_registry()), cache, rewards, "bench", "log", 10000)
    writer = ResponseWriter(catalog)
    returning = [f"{args.prefix}-p{i:05d}" for i in range(args.players)]
    for user in returning:  # setup: new, then once more so that the cache holds their view
        await players.initialize(user)
    for user in returning:
        await players.initialize(user)
    # As `serve` does after startup (service/runtime/gc_policy.py): without it, every full collection would
    # traverse the setup's objects and charge the tree that allocates more for it.
    freeze_startup_objects()
    toggled = next(goal for goal in catalog.goals if not goal.default_assigned) if args.profile == "seed-m3" else None
    toggled = toggled or catalog.goals[-1]
    claimers = []
    if "claim" in args.scenarios:
        claimers = await completed_players(
            players, store, f"{args.prefix}-c", toggled, args.calls + min(20, args.calls)
        )

    def cycle(i: int) -> str:
        return returning[i % len(returning)]

    async def initialize_new(i: int) -> bytes:
        return writer.initialize(await players.initialize(f"{args.prefix}-n{i:05d}"))

    async def initialize_returning(i: int) -> bytes:
        return writer.initialize(await players.initialize(cycle(i)))

    async def challenges(i: int) -> bytes:
        return writer.challenge_list(await players.list_challenges(cycle(i), False))

    async def challenges_active(i: int) -> bytes:
        return writer.challenge_list(await players.list_challenges(cycle(i), True))

    async def set_active(i: int) -> bytes:
        result = await players.set_active(cycle(i), toggled.challenge_id, toggled.goal_id, i % 2 == 0)
        return writer.set_active(result)

    async def claim(i: int) -> bytes:  # each claimer once: the warm-up's after the measured ones
        claimer = claimers[i if i < 10_000 else args.calls + i - 10_000]
        return writer.claim(await players.claim(claimer, toggled.challenge_id, toggled.goal_id))

    calls = {
        "initialize_new": initialize_new,
        "initialize_returning": initialize_returning,
        "challenges": challenges,
        "challenges_active": challenges_active,
        "set_active": set_active,
        "claim": claim,
    }
    results: dict[str, dict[str, float]] = {}
    for scenario in args.scenarios:
        call = calls[scenario]
        for i in range(min(20, args.calls)):  # warm-up: prepared statements, scripts loaded
            await call(10_000 + i)
        walls = []
        backends = await backend_processes(args.db)
        db_started = backend_cpu(backends)
        cpu_started = time.process_time()
        for i in range(args.calls):
            started = time.perf_counter()
            await call(i)
            walls.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu_started
        results[scenario] = {
            "cpu_us": cpu / args.calls * 1e6,
            "db_cpu_us": (backend_cpu(backends) - db_started) / args.calls * 1e6,
            "wall_p50_us": statistics.median(walls) * 1e6,
        }
    await rewards.close()
    await cache.stop()
    await redis.aclose()
    await store.close()
    return results


async def completed_players(players: Any, store: Any, prefix: str, goal: Any, count: int) -> list[str]:
    """`count` new players whose `goal` is active and completed (claimable), for the claim scenario."""
    users = [f"{prefix}{i:05d}" for i in range(count)]
    for user in users:
        await players.set_active(user, goal.challenge_id, goal.goal_id, True)
    async with store.connection() as conn:
        await conn.execute(
            "UPDATE user_goal_progress SET status = 'completed', completed_at = now() WHERE user_id = ANY(%s)",
            [users],
        )
    return users


async def backend_processes(db: str) -> list[Any]:
    """The PostgreSQL backends of the worker's pool: every other session on its own bench database."""
    import psutil
    import psycopg

    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [psutil.Process(pid) for (pid,) in await cursor.fetchall()]


def backend_cpu(backends: list[Any]) -> float:
    """User + system CPU seconds of the backends so far."""
    return sum(sum(process.cpu_times()[:2]) for process in backends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="seed-m3", choices=("seed-m3", "all-active-500"))
    parser.add_argument("--players", type=int, default=300, help="returning players (initialized during setup)")
    parser.add_argument("--calls", type=int, default=300, help="measured calls per scenario and run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per tree, interleaved")
    parser.add_argument("--scenarios", type=lambda s: s.split(","), default=list(SCENARIOS))
    tree_runs.add_tree_options(parser)
    args = parser.parse_args()
    if tree_runs.ran_as_worker(args, worker):
        return
    admin_url = tree_runs.admin_database_url(parser)
    trees = tree_runs.trees(args)
    options = ["--profile", args.profile, "--players", str(args.players), "--calls", str(args.calls)]
    options += ["--scenarios", ",".join(args.scenarios)]
    stamp = os.getpid()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {label: [] for label in trees}
    for repetition in range(args.repeat):
        for index, (label, tree) in enumerate(trees.items()):
            name, prefix = f"bench_usecases_{stamp}_{repetition}_{index}", f"buc{stamp}r{repetition}t{index}"
            with tree_runs.fresh_database(admin_url, name, prefix) as db:
                runs[label].append(tree_runs.run_worker(__file__, tree, db, prefix, options))
            print(f"run {repetition + 1}/{args.repeat} of {label} done", file=sys.stderr)
    print(
        tree_runs.heading(
            f"{os.getloadavg()[0]:.1f}",
            f"profile {args.profile}, {args.players} returning players, {args.calls} calls per scenario and run, "
            f"{args.repeat} interleaved runs per tree (median of the runs shown)",
        )
    )
    print()
    compare = "baseline" in runs
    print(
        "| scenario | tree | CPU us/call | PG CPU us/call | wall p50 us |"
        + (" CPU vs baseline | PG CPU vs baseline |" if compare else "")
    )
    print("|---|---|---|---|---|" + ("---|---|" if compare else ""))
    for scenario in args.scenarios:
        medians = {
            label: {
                key: statistics.median(run[scenario][key] for run in results)
                for key in ("cpu_us", "db_cpu_us", "wall_p50_us")
            }
            for label, results in runs.items()
        }
        for label, values in medians.items():
            row = (
                f"| {scenario} | {label} | {values['cpu_us']:.0f} | {values['db_cpu_us']:.0f} |"
                f" {values['wall_p50_us']:.0f} |"
            )
            if compare:
                row += f" {values['cpu_us'] / medians['baseline']['cpu_us']:.2f}x |"
                row += f" {values['db_cpu_us'] / max(medians['baseline']['db_cpu_us'], 1e-9):.2f}x |"
            print(row)


if __name__ == "__main__":
    main()

"""What `Publish`'s CPU per event is made of below gRPC: a fixed cost per call (and its flush) and a cost per event.

A worker process runs the ingestion core (`EventIngestServicer.publish` on an `Ingestor`, commit acks) on real
PostgreSQL and Redis, with the example catalog and USERS players initialized first, and submits CALL_RATE
calls per second for SECONDS seconds, each a serialized `EventBatch` decoded as gRPC would (20 % logins, the
rest stat updates, unique ids, as `bench/events.py` sends). Its CPU (`time.process_time()`: the client side of
PostgreSQL and Redis included, their servers not) per call and per event, for each batch size: the CPU of
1-event calls is the fixed cost of a call and its flush, and the slope between batch sizes the cost of one
more event. The gRPC server's own per-call cost (`bench/grpc_floor.py`) and an idle `serve` process's come on
top in `bench/events.py`.

    python bench/publish_floor.py [--batches 1 100 500] [--call-rate 5] [--seconds 10] [--users 500]
        [--repeat 2] [--baseline-tree DIR] [--where]

`--where`: also the CPU per event of the main steps (`WHERE`: each inclusive of what it calls; `cpu_where.py`),
measured in the same runs, which the wrapping slows by ~1 us per wrapped call.

`--baseline-tree DIR`: a tree with an older `service/` and `sql/` (`git archive <commit> service sql | tar -x -C
DIR`), run interleaved with this one. Needs DATABASE_URL (a server where it may create databases) and
REDIS_URL. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import tree_runs
from cpu_where import CpuWhere

# The steps of a call and of its flush whose CPU `--where` reports (those a tree lacks are left out).
WHERE = [
    "service.transport.grpc_api:published_events",
    "service.usecases.events:Ingestor.submit",
    "service.usecases.events:Ingestor._plan",
    "service.usecases.events:Ingestor._admit",
    "service.storage.dedup:Deduplicator.begin",
    "service.usecases.events:Ingestor._buffer",
    "service.usecases.flusher:Flusher.flush_once",
    "service.domain.routing:GoalRouting.statement_params",
    "service.usecases.flusher:with_array_literals",
    "service.storage.store:Queries.rows",
    "service.usecases.events:Ingestor.entries_committed",
    "service.storage.cache:Cache.invalidate_many",
]

STAT_CODES = ("matches_played", "enemies_defeated", "objectives_captured", "matches_won", "headshots")
NAMESPACE = "bench"


def batches(users: list[str], size: int, count: int, seed: int) -> list[bytes]:
    """`count` serialized EventBatches of `size` events: 20 % logins, stat values growing per player and code."""
    from service.proto.challengectl.v1 import ingest_pb2

    rng = random.Random(seed)
    values: dict[tuple[str, str], int] = {}
    result = []
    for _ in range(count):
        batch = ingest_pb2.EventBatch(batch_id=str(uuid.uuid4()))
        for _ in range(size):
            user = users[rng.randrange(len(users))]
            event = batch.events.add(id=str(uuid.uuid4()), user_id=user, namespace=NAMESPACE)
            if rng.random() < 0.2:
                event.kind = ingest_pb2.EVENT_KIND_LOGIN
            else:
                code = rng.choice(STAT_CODES)
                value = values[(user, code)] = values.get((user, code), 0) + 2
                event.kind, event.stat_code, event.latest_value, event.inc = ingest_pb2.EVENT_KIND_STAT, code, value, 2
            event.timestamp.GetCurrentTime()
        result.append(batch.SerializeToString())
    return result


async def worker(args: argparse.Namespace) -> dict[str, float]:
    """Set up the ingestion core of the tree on sys.path, drive it, return its CPU per call and per event."""
    import service.usecases.events as events_module
    from service.config.resources import example_catalog_path
    from service.domain.catalog import load_catalog
    from service.proto.challengectl.v1 import ingest_pb2
    from service.runtime.gc_policy import freeze_startup_objects
    from service.storage.cache import Cache, open_redis
    from service.storage.registry import load_registry
    from service.storage.store import PoolConfig, Queries, Store
    from service.transport.grpc_api import EventIngestServicer
    from service.usecases.events import IngestConfig, Ingestor
    from service.usecases.players import Players
    from service.usecases.rewards import RewardConfig, RewardGranter

    if not Path(events_module.__file__).resolve().is_relative_to(Path(args.tree).resolve()):
        raise SystemExit(f"imported {events_module.__file__}, not the tree {args.tree}")
    where = CpuWhere(WHERE) if args.where else None
    catalog = load_catalog(example_catalog_path())
    store = await Store.open(args.db, "service", PoolConfig(min_size=2, max_size=4))
    redis = open_redis(os.environ["REDIS_URL"], 16, 2000)
    cache = Cache(redis, args.prefix, catalog.fingerprint, 300, 3600, 1000, 1000)
    cache.start()
    queries = Queries(load_registry())
    users = [f"{args.prefix}-p{i:05d}" for i in range(args.users)]
    players = Players(catalog, store, queries, cache, RewardGranter(RewardConfig()), NAMESPACE, "log", 10000)
    for user in users:
        await players.initialize(user)
    ingestor = Ingestor(IngestConfig(namespace=NAMESPACE, redis_key_prefix=args.prefix), catalog, store, queries, cache)
    await ingestor.start()
    servicer = EventIngestServicer(ingestor, 1000, "commit")
    warm_up = 5
    calls = batches(users, args.batch, warm_up + round(args.seconds * args.call_rate), args.seed)
    for raw in calls[:warm_up]:
        await servicer.publish(ingest_pb2.EventBatch.FromString(raw), None)
    freeze_startup_objects()
    interval_s = 1 / args.call_rate
    running = []
    if where is not None:
        where.on = True
    cpu_started, started = time.process_time(), time.perf_counter()
    for index, raw in enumerate(calls[warm_up:]):  # open model: one call every interval, whatever the acks
        running.append(asyncio.ensure_future(servicer.publish(ingest_pb2.EventBatch.FromString(raw), None)))
        await asyncio.sleep(max(0.0, started + (index + 1) * interval_s - time.perf_counter()))
    results = await asyncio.gather(*running)
    cpu_s = time.process_time() - cpu_started
    if where is not None:
        where.on = False
    accepted = sum(result.accepted for result in results)
    flushes = ingestor.buffer_stats()["flushes_total"]
    await ingestor.drain_and_stop(10)
    await cache.stop()
    await store.close()
    await redis.aclose()
    return {
        "calls": len(results),
        "events": len(results) * args.batch,
        "accepted": accepted,
        "flushes": flushes,
        "cpu_ms_per_call": cpu_s / len(results) * 1e3,
        "cpu_us_per_event": cpu_s / (len(results) * args.batch) * 1e6,
    } | {
        f"where {name}": seconds / (len(results) * args.batch) * 1e6
        for name, seconds in (where.totals.items() if where is not None else ())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100, 500], help="events per call")
    parser.add_argument("--call-rate", type=float, default=5, help="calls per second")
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds per run")
    parser.add_argument("--users", type=int, default=500, help="players initialized before the load")
    parser.add_argument("--repeat", type=int, default=2, help="runs per tree and batch size, interleaved")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--where", action="store_true", help="also the CPU per event of the main steps")
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    tree_runs.add_tree_options(parser)
    args = parser.parse_args()
    if tree_runs.ran_as_worker(args, worker):
        return
    admin_url = tree_runs.admin_database_url(parser)
    trees = tree_runs.trees(args)
    stamp = os.getpid()
    runs: dict[tuple[str, int], list[dict[str, float]]] = {(label, b): [] for label in trees for b in args.batches}
    loads = []
    for repetition in range(args.repeat):
        for batch in args.batches:
            for index, (label, tree) in enumerate(trees.items()):
                name, prefix = (
                    f"bench_publish_{stamp}_{repetition}_{batch}_{index}",
                    f"bpf{stamp}r{repetition}b{batch}t{index}",
                )
                options = ["--batch", str(batch), "--call-rate", str(args.call_rate), "--seconds", str(args.seconds)]
                options += ["--users", str(args.users), "--seed", str(args.seed)] + (["--where"] if args.where else [])
                with tree_runs.fresh_database(admin_url, name, prefix) as db:
                    loads.append(os.getloadavg()[0])
                    runs[(label, batch)].append(tree_runs.run_worker(__file__, tree, db, prefix, options))
                print(f"run {repetition + 1}/{args.repeat}, batch {batch}, {label} done", file=sys.stderr)
    print(
        tree_runs.heading(
            f"{min(loads):.1f}-{max(loads):.1f}",
            f"{args.call_rate:g} calls/s for {args.seconds:g} s per run, {args.users} players, commit acks, "
            f"{args.repeat} interleaved runs per tree and batch size (median shown)",
        )
    )
    print()
    compare = "baseline" in trees
    print(
        "| tree | events per call | flushes | CPU ms per call | CPU us per event |"
        + (" vs baseline |" if compare else "")
    )
    print("|---|---|---|---|---|" + ("---|" if compare else ""))
    medians: dict[tuple[str, int], dict[str, float]] = {
        key: {field: statistics.median(run.get(field, 0.0) for run in results) for field in results[0]}
        for key, results in runs.items()
    }
    for batch in args.batches:
        for label in trees:
            values = medians[(label, batch)]
            row = (
                f"| {label} | {batch} | {values['flushes']:.0f} | {values['cpu_ms_per_call']:.2f} |"
                f" {values['cpu_us_per_event']:.1f} |"
            )
            if compare:
                row += f" {values['cpu_us_per_event'] / medians[('baseline', batch)]['cpu_us_per_event']:.2f}x |"
            print(row)
    print()
    for label in trees:
        sizes = sorted(args.batches)
        if len(sizes) >= 2:
            low, high = medians[(label, sizes[0])], medians[(label, sizes[-1])]
            slope = (high["cpu_ms_per_call"] - low["cpu_ms_per_call"]) * 1e3 / (sizes[-1] - sizes[0])
            fixed = low["cpu_ms_per_call"] - slope * sizes[0] / 1e3
            print(f"- {label}: fixed {fixed:.2f} ms per call and its flush, {slope:.1f} us per further event")
    if args.where:
        print()
        print("\n".join(where_table(medians, list(trees), args.batches)))


def where_table(medians: dict[tuple[str, int], dict[str, float]], trees: list[str], sizes: list[int]) -> list[str]:
    """The `--where` table: CPU us per event of each step (inclusive) for every batch size and tree."""
    columns = [(label, size) for size in sizes for label in trees]
    lines = [
        "| step (inclusive), CPU us per event | "
        + " | ".join(f"{label}, {size} per call" for label, size in columns)
        + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in WHERE:
        step = name.partition(":")[2]
        values = [medians[column].get(f"where {step}") for column in columns]
        lines.append(f"| `{step}` | " + " | ".join("-" if v is None else f"{v:.2f}" for v in values) + " |")
    return lines


if __name__ == "__main__":
    main()

"""Event ingestion core (docs/events.md#validation, docs/events.md#guarantees, docs/rules.md E1–E18) against real PostgreSQL and Redis.

Tests drive `Ingestor` directly. Rows are seeded by SQL for users unique to each test. Faults are real:
a row lock held by another session (E15), a TCP proxy in front of PostgreSQL that refuses and drops
connections (E14), and a private redis-server that the test stops (E12).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio
from prometheus_client import REGISTRY
from psycopg.rows import dict_row
from redis.crc import key_slot

from service.config.settings import load_settings
from service.domain.buffer import Entry, Partition, fnv1a_32, partition_of, stat_source
from service.domain.catalog import Catalog, parse_catalog
from service.domain.errors import DomainError, Unavailable
from service.domain.routing import GoalRouting
from service.domain.rules import next_boundary, period_start
from service.storage.cache import Cache, active_key, event_key, open_redis, token_key
from service.storage.dedup import BEGIN_LUA, Deduplicator
from service.storage.migrations import apply_migrations
from service.storage.redis_pipe import PipelinedRedis
from service.storage.registry import load_registry
from service.storage.store import PoolConfig, Queries, Store
from service.transport.grpc_api import grpc_status
from service.usecases.events import (
    NOT_COMMITTED_MESSAGE,
    IncomingEvent,
    IngestConfig,
    Ingestor,
    SubmitResult,
)
from service.usecases.flusher import PartitionFlushState, group_due
from tests.servers import PrivateRedis

NS = "test-ns"
FAST_FLUSH_MS = 20
INT32_MAX = 2_147_483_647
INT32_MIN = -2_147_483_648


def _goal(
    goal_id: str,
    source: str,
    stat_code: str,
    target: int,
    mode: str = "absolute",
    rotation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    goal: dict[str, Any] = {
        "goalId": goal_id,
        "name": goal_id,
        "eventSource": source,
        "requirement": {"statCode": stat_code, "operator": ">=", "targetValue": target, "progressMode": mode},
        "reward": {"type": "ITEM", "rewardId": "r", "quantity": 1},
    }
    if rotation is not None:
        goal["rotation"] = {"enabled": True, "type": "global", "schedule": "daily", "onExpiry": rotation}
    return goal


CATALOG_JSON = {
    "challenges": [
        {
            "challengeId": "c1",
            "name": "C1",
            "goals": [
                _goal("kills-abs", "statistic", "kills", 10),
                _goal("kills-rel", "statistic", "kills", 5, "relative"),
                # A login goal labelled with the stat code of the statistic goals: routing must still keep them apart.
                _goal("login-abs", "login", "kills", 3),
                _goal("login-rel", "login", "logins", 1, "relative"),
                _goal(
                    "wins-reset", "statistic", "wins", 5, "relative", {"resetProgress": True, "allowReselection": False}
                ),
                _goal(
                    "wins-carry",
                    "statistic",
                    "wins",
                    5,
                    "relative",
                    {"resetProgress": False, "allowReselection": False},
                ),
                _goal(
                    "wins-reselect",
                    "statistic",
                    "wins",
                    5,
                    "relative",
                    {"resetProgress": False, "allowReselection": True},
                ),
            ],
        }
    ]
}

BUFFER_KEYS = {
    "ack_mode",
    "entries",
    "capacity",
    "peak_entries",
    "oldest_entry_age_ms",
    "pending_waiters",
    "partitions",
    "flushes_total",
    "flush_failures_total",
    "rows_updated_total",
    "flush_ms_p50",
    "flush_ms_p95",
    "flush_ms_max",
    "events",
}
PARTITION_KEYS = {
    "index",
    "entries",
    "last_flush_at",
    "last_flush_ms",
    "last_flush_entries",
    "last_flush_rows_updated",
    "last_flush_deferred",
}
EVENT_KEYS = {
    "accepted",
    "duplicate",
    "skipped_namespace",
    "skipped_no_goal",
    "skipped_negative",
    "rejected",
    "exhausted",
}


# --- fixtures ---------------------------------------------------------------------------------------


def make_cache(client: Any, prefix: str, catalog: Catalog) -> Cache:
    return Cache(
        client, prefix, catalog.fingerprint, cache_ttl_s=300, synced_ttl_s=3600, journal_max=1000, probe_interval_ms=100
    )


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return parse_catalog(json.dumps(CATALOG_JSON).encode(), "test-events.json")


@pytest.fixture(scope="module")
def migrated(pg_url: str) -> str:
    apply_migrations(pg_url)
    return pg_url


@pytest.fixture(scope="module")
def queries() -> Queries:
    return Queries(load_registry())


@pytest.fixture(scope="module")
async def store(migrated: str) -> AsyncIterator[Store]:
    opened = await Store.open(migrated, "flusher", PoolConfig(min_size=1, max_size=4))
    yield opened
    await opened.close()


@pytest.fixture(scope="module")
async def redis_client(redis_url: str) -> AsyncIterator[Any]:
    client = open_redis(redis_url, max_connections=16, timeout_ms=2000)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def cache(redis_client: Any, redis_prefix: str, catalog: Catalog) -> Cache:
    return make_cache(redis_client, redis_prefix, catalog)


@pytest.fixture(scope="module")
def base_config(redis_prefix: str) -> IngestConfig:
    return IngestConfig(
        namespace=NS,
        flush_interval_ms=FAST_FLUSH_MS,
        flush_workers=2,
        ack_timeout_ms=10_000,
        redis_key_prefix=redis_prefix,
        redis_probe_interval_ms=100,
    )


@pytest.fixture
async def db(migrated: str) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
    conn = await psycopg.AsyncConnection.connect(migrated, autocommit=True, row_factory=dict_row)
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def running(
    config: IngestConfig, catalog: Catalog, store: Store, queries: Queries, cache: Cache, start: bool = True
) -> AsyncIterator[Ingestor]:
    ingestor = Ingestor(config, catalog, store, queries, cache)
    if start:
        await ingestor.start()
    try:
        yield ingestor
    finally:
        await ingestor.drain_and_stop(10)


@pytest.fixture
def ingest(base_config: IngestConfig, catalog: Catalog, store: Store, queries: Queries, cache: Cache) -> Any:
    """`async with ingest(**overrides) as ingestor:` — an Ingestor on the shared store and cache."""

    def make(
        start: bool = True, cache_override: Cache | None = None, store_override: Store | None = None, **overrides: Any
    ) -> contextlib.AbstractAsyncContextManager[Ingestor]:
        return running(
            replace(base_config, **overrides), catalog, store_override or store, queries, cache_override or cache, start
        )

    return make


# --- helpers --------------------------------------------------------------------------------------


def new_user(label: str = "u") -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def new_id() -> str:
    return uuid.uuid4().hex


def login(user_id: str, event_id: str = "", namespace: str = NS, inc: float = 0.0) -> IncomingEvent:
    return IncomingEvent(event_id, user_id, namespace, "login", "", 0.0, inc, True, None)


def stat(
    user_id: str,
    code: str,
    value: float,
    inc: float = 0.0,
    event_id: str = "",
    namespace: str = NS,
    has_payload: bool = True,
    timestamp: float | None = None,
) -> IncomingEvent:
    return IncomingEvent(event_id, user_id, namespace, "stat", code, value, inc, has_payload, timestamp)


async def seed(db: psycopg.AsyncConnection[Any], user_id: str, goal_id: str, **columns: Any) -> None:
    """Insert a progress row (defaults: active, not_started, written a minute ago)."""
    written = datetime.now(UTC) - timedelta(minutes=1)
    values: dict[str, Any] = {
        "user_id": user_id,
        "goal_id": goal_id,
        "challenge_id": "c1",
        "namespace": NS,
        "progress": 0,
        "status": "not_started",
        "created_at": written,
        "updated_at": written,
        "is_active": True,
        "assigned_at": written,
    }
    values.update(columns)
    names = ", ".join(values)
    placeholders = ", ".join(f"%({name})s" for name in values)
    await db.execute(f"INSERT INTO user_goal_progress ({names}) VALUES ({placeholders})", values)


async def row(db: psycopg.AsyncConnection[Any], user_id: str, goal_id: str) -> dict[str, Any] | None:
    cursor = await db.execute(
        "SELECT * FROM user_goal_progress WHERE user_id = %s AND goal_id = %s", (user_id, goal_id)
    )
    return await cursor.fetchone()


async def rows_of(db: psycopg.AsyncConnection[Any], user_id: str) -> dict[str, dict[str, Any]]:
    cursor = await db.execute("SELECT * FROM user_goal_progress WHERE user_id = %s", (user_id,))
    return {found["goal_id"]: found for found in await cursor.fetchall()}


def waiting_calls(ingestor: Ingestor, count: int) -> Any:
    """A check for `eventually`: `count` calls wait for their commit (they have been admitted)."""

    async def check() -> bool:
        return ingestor.buffer_stats()["pending_waiters"] == count

    return check


async def eventually(check: Any, timeout_s: float = 5.0) -> None:
    """Poll the async predicate `check` until it holds."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def marker(redis_client: Any, prefix: str, user_id: str, event_id: str) -> bytes | None:
    return await redis_client.get(event_key(prefix, user_id, event_id))


# --- pure parts -------------------------------------------------------------------------------------


def test_fnv1a_32_matches_the_reference_values_and_picks_the_partition() -> None:
    assert fnv1a_32("") == 0x811C9DC5
    assert fnv1a_32("a") == 0xE40C292C
    assert fnv1a_32("foobar") == 0xBF9CF968
    assert partition_of("foobar", 4) == 0xBF9CF968 % 4


def test_routing_names_the_source_of_each_routed_stat_code(catalog: Catalog) -> None:
    routing = GoalRouting(catalog)
    # The login goals (one labelled "kills", one "logins") feed the login source, not a stat code.
    assert routing.routed_stat_sources() == {"kills": stat_source("kills"), "wins": stat_source("wins")}


def test_merge_back_keeps_the_newer_value_adds_increments_and_puts_old_entries_first() -> None:
    partition = Partition(0, capacity=10)
    older = Entry("u1", "stat:kills", first_accepted=1.0)
    older.add_stat(5, 2)
    older.event_keys.append(("u1", "e1"))
    older_login = Entry("u2", "login", first_accepted=1.5)
    older_login.add_login()
    older_login.add_login()
    newer = partition.entries[("u1", "stat:kills")] = Entry("u1", "stat:kills", first_accepted=2.0)
    newer.add_stat(9, 4)
    newer.event_keys.append(("u1", "e2"))
    newer_login = partition.entries[("u2", "login")] = Entry("u2", "login", first_accepted=2.5)
    newer_login.add_login()
    unrelated = partition.entries[("u3", "login")] = Entry("u3", "login", first_accepted=3.0)
    unrelated.add_login()

    absorbed = partition.merge_back([older, older_login])

    assert absorbed == [(older, newer), (older_login, newer_login)]
    assert (newer.value, newer.inc, newer.events, newer.first_accepted) == (9, 6, 2, 1.0)
    assert newer.event_keys == [("u1", "e1"), ("u1", "e2")]
    assert (newer_login.value, newer_login.inc) == (None, 3)
    assert list(partition.entries) == [("u1", "stat:kills"), ("u2", "login"), ("u3", "login")]


def test_merge_back_keeps_the_value_with_the_newer_event_time_when_both_are_known() -> None:
    partition = Partition(0, capacity=10)
    retried = Entry("u1", "stat:kills", first_accepted=1.0)
    retried.add_stat(12, 2, at=200.0)
    partition.entries[("u1", "stat:kills")] = arrived_later = Entry("u1", "stat:kills", first_accepted=2.0)
    arrived_later.add_stat(10, 1, at=100.0)
    arrived_later.add_stat(7, 1)  # no event time: arrival order, and the known time stays
    partition.merge_back([retried])
    assert (arrived_later.value, arrived_later.value_at, arrived_later.inc) == (12, 200.0, 4)


def test_config_from_settings_takes_the_ingestion_settings(tmp_path: Path) -> None:
    environ = {
        "XDG_CONFIG_HOME": str(tmp_path),
        "CHALLENGE_ACK_MODE": "buffered",
        "CHALLENGE_FLUSH_WORKERS": "3",
        "CHALLENGE_BUFFER_MAX_ENTRIES": "10",
        "CHALLENGE_DEDUP_PENDING_TTL_S": "9",
        "AB_NAMESPACE": "ns-x",
    }
    config = IngestConfig.from_settings(load_settings(environ=environ))
    assert (config.namespace, config.ack_mode, config.flush_workers, config.dedup_pending_ttl_s) == (
        "ns-x",
        "buffered",
        3,
        9,
    )
    assert (config.flush_interval_ms, config.ack_timeout_ms, config.redis_key_prefix) == (50, 10_000, "ch")
    assert config.partition_capacity == 4  # 10 entries over 3 partitions, rounded up


def test_validation_rejects_each_invalid_event_with_its_reason() -> None:
    from service.usecases.events import validate_event

    good = stat("u1", "kills", 1, 1)
    cases = {
        "user_id is required": good._replace(user_id=""),
        "user_id is invalid (at most 100 characters, no control characters, '{' or '}')": good._replace(user_id="a{b"),
        "kind is required": good._replace(kind=""),
        "payload is required for a stat event": good._replace(has_payload=False),
        "stat_code is required for a stat event": good._replace(stat_code=""),
        "id is longer than 200 characters": good._replace(id="x" * 201),
        "latest_value must be a finite number": good._replace(latest_value=float("nan")),
        "inc must be a finite number": good._replace(inc=float("-inf")),
        "latest_value is outside the int32 range after truncation": good._replace(latest_value=2_147_483_648.0),
        "inc is outside the int32 range after truncation": good._replace(inc=-2_147_483_649.5),
    }
    for reason, event in cases.items():
        assert validate_event(event) == reason
        assert validate_event(tuple(event)) == reason  # Publish's plain field tuples
    for valid in (
        good,
        good._replace(user_id="u" * 100),
        good._replace(id="x" * 200),
        good._replace(latest_value=2_147_483_647.9, inc=-2_147_483_648.9),
        login("u1")._replace(inc=float("nan")),
    ):
        assert validate_event(valid) is None
    assert validate_event(good._replace(user_id="u" * 101)) is not None
    assert validate_event(good._replace(user_id="a\x07b")) is not None


# --- E1–E8: the effect of events on rows ---------------------------------------------------------------


async def test_e1_absolute_stat_goal_takes_the_latest_value_and_stays_completed(ingest: Any, db: Any) -> None:
    user = new_user()
    await seed(db, user, "kills-abs")
    async with ingest() as ingestor:
        result = await ingestor.submit([stat(user, "kills", 4, 4)], "publish")
        assert result == SubmitResult(1, 0, 0, [], True)
        first = await row(db, user, "kills-abs")
        assert (first["progress"], first["status"], first["completed_at"]) == (4, "in_progress", None)

        await ingestor.submit([stat(user, "kills", 6, 2)], "ags_stat")
        assert (await row(db, user, "kills-abs"))["progress"] == 6  # overwritten, never summed

        await ingestor.submit([stat(user, "kills", 12, 6)], "publish")
        done = await row(db, user, "kills-abs")
        assert (done["progress"], done["status"]) == (12, "completed")  # above the target is kept
        assert done["completed_at"] is not None

        await ingestor.submit([stat(user, "kills", 3, 0)], "publish")
        after = await row(db, user, "kills-abs")
        assert (after["progress"], after["status"], after["completed_at"]) == (3, "completed", done["completed_at"])


async def test_e2_absolute_login_goal_counts_one_per_login_whatever_its_inc(ingest: Any, db: Any) -> None:
    user = new_user()
    await seed(db, user, "login-abs")
    async with ingest() as ingestor:
        await ingestor.submit([login(user, inc=100)], "ags_login")
        assert (await row(db, user, "login-abs"))["progress"] == 1
        await ingestor.submit([login(user), login(user)], "publish")
        final = await row(db, user, "login-abs")
    assert (final["progress"], final["status"]) == (3, "completed")


async def test_e3_skipped_events_are_acknowledged_without_effect(ingest: Any, db: Any) -> None:
    user = new_user()
    await seed(db, user, "kills-abs", progress=2, status="in_progress")
    async with ingest() as ingestor:
        before = ingestor.buffer_stats()["events"]
        result = await ingestor.submit(
            [
                stat(user, "kills", -1, 1),  # negative value
                stat(user, "kills", 7, 7, namespace="other"),  # foreign namespace
                stat(user, "no-such-stat", 7, 7),  # no goal routed
            ],
            "publish",
        )
        assert result == SubmitResult(0, 0, 3, [], True)
        on_message = await ingestor.submit([stat(user, "kills", 7, 7, namespace="")], "ags_stat")
        assert on_message.skipped == 1  # OnMessage: an empty namespace is a foreign one
        after = ingestor.buffer_stats()["events"]
    assert (await row(db, user, "kills-abs"))["progress"] == 2
    assert after["skipped_negative"] - before["skipped_negative"] == 1
    assert after["skipped_namespace"] - before["skipped_namespace"] == 2
    assert after["skipped_no_goal"] - before["skipped_no_goal"] == 1
    assert after["accepted"] == before["accepted"]


async def test_e4_invalid_events_are_rejected_individually_and_valid_ones_processed(ingest: Any, db: Any) -> None:
    user = new_user()
    await seed(db, user, "kills-abs")
    async with ingest() as ingestor:
        result = await ingestor.submit(
            [
                stat("", "kills", 1, 1, event_id="a"),
                stat(user, "kills", float("inf"), 1, event_id="b"),
                IncomingEvent("c", user, NS, "", "", 0, 0, True, None),
                stat(user, "kills", INT32_MAX, INT32_MIN),  # boundary values are accepted
                stat(user, "kills", 1, 1, has_payload=False, event_id="d"),
            ],
            "publish",
        )
    assert (result.accepted, result.duplicates, result.skipped) == (1, 0, 0)
    assert result.rejected == [
        (0, "a", "user_id is required"),
        (1, "b", "latest_value must be a finite number"),
        (2, "c", "kind is required"),
        (4, "d", "payload is required for a stat event"),
    ]
    assert (await row(db, user, "kills-abs"))["progress"] == INT32_MAX


async def test_e4_an_oversized_batch_fails_as_a_whole(ingest: Any) -> None:
    async with ingest(ingest_max_batch=2) as ingestor:
        with pytest.raises(DomainError) as failure:
            await ingestor.submit([login(new_user())] * 3, "publish")
        assert (grpc_status(failure.value).name, failure.value.message) == (
            "INVALID_ARGUMENT",
            "batch too large (3 > 2)",
        )
        assert await ingestor.submit([], "publish") == SubmitResult(0, 0, 0, [], True)


async def test_e5_routing_follows_the_event_source_strictly(ingest: Any, db: Any) -> None:
    user = new_user()
    await seed(db, user, "kills-abs")
    await seed(db, user, "login-abs")  # its statCode is "kills" too
    async with ingest() as ingestor:
        await ingestor.submit([stat(user, "kills", 2, 2)], "publish")
        rows = await rows_of(db, user)
        assert (rows["kills-abs"]["progress"], rows["login-abs"]["progress"]) == (2, 0)
        await ingestor.submit([login(user)], "publish")
        rows = await rows_of(db, user)
    assert (rows["kills-abs"]["progress"], rows["login-abs"]["progress"]) == (2, 1)


async def test_e6_events_never_create_rows_and_skip_inactive_and_claimed_rows(ingest: Any, db: Any) -> None:
    nobody, user = new_user("none"), new_user()
    claimed_at = datetime.now(UTC) - timedelta(hours=1)
    await seed(db, user, "kills-abs", is_active=False, progress=1, status="in_progress")
    await seed(
        db,
        user,
        "kills-rel",
        progress=9,
        baseline_value=1,
        status="claimed",
        completed_at=claimed_at,
        claimed_at=claimed_at,
    )
    untouched = await rows_of(db, user)
    async with ingest() as ingestor:
        result = await ingestor.submit([stat(nobody, "kills", 5, 5), stat(user, "kills", 50, 10)], "publish")
        assert result.accepted == 2
        assert await rows_of(db, nobody) == {}
        assert await rows_of(db, user) == untouched  # not even updated_at moved

        await db.execute(
            "UPDATE user_goal_progress SET is_active = true WHERE user_id = %s AND goal_id = 'kills-abs'", (user,)
        )
        assert (await row(db, user, "kills-abs"))["progress"] == 1  # activation replays nothing
        await ingestor.submit([stat(user, "kills", 51, 1)], "publish")
    rows = await rows_of(db, user)
    assert rows["kills-abs"]["progress"] == 51
    assert rows["kills-rel"] == untouched["kills-rel"]


async def test_e7_relative_goals_start_their_window_at_the_first_event(ingest: Any, db: Any) -> None:
    small, exact, logins = new_user("small"), new_user("exact"), new_user("login")
    await seed(db, small, "kills-rel")
    await seed(db, exact, "kills-rel")
    await seed(db, logins, "login-rel", progress=41)
    async with ingest() as ingestor:
        await ingestor.submit([stat(small, "kills", 100, 4), stat(exact, "kills", 100, 5), login(logins)], "publish")
    first_small = await row(db, small, "kills-rel")
    assert (first_small["baseline_value"], first_small["progress"], first_small["status"]) == (96, 100, "in_progress")
    first_exact = await row(db, exact, "kills-rel")
    assert (first_exact["baseline_value"], first_exact["status"]) == (95, "completed")
    relative_login = await row(db, logins, "login-rel")
    assert (relative_login["progress"], relative_login["baseline_value"], relative_login["status"]) == (
        42,
        41,
        "completed",
    )


async def test_e8_merged_events_give_the_same_result_as_one_by_one(ingest: Any, db: Any) -> None:
    merged, single = new_user("merged"), new_user("single")
    for user in (merged, single):
        await seed(db, user, "kills-rel")
        await seed(db, user, "kills-abs")
        await seed(db, user, "login-abs")
    sequence = [(10, 2), (11, 1), (12, 1)]
    async with ingest(start=False, ack_mode="buffered") as ingestor:
        for value, inc in sequence:
            await ingestor.submit([stat(merged, "kills", value, inc)], "publish")
        for _ in range(2):
            await ingestor.submit([login(merged)], "ags_login")
        stats = ingestor.buffer_stats()
        assert stats["entries"] == 2  # one per (user, source)
        await ingestor.start()
        await eventually(lambda: _flushed(ingestor))
    flushed = ingestor.buffer_stats()
    assert flushed["flushes_total"] == 1 and flushed["rows_updated_total"] == 3
    async with ingest() as ingestor:
        for value, inc in sequence:
            await ingestor.submit([stat(single, "kills", value, inc)], "publish")
        for _ in range(2):
            await ingestor.submit([login(single)], "ags_login")
    merged_rows, single_rows = await rows_of(db, merged), await rows_of(db, single)
    for goal_id in ("kills-rel", "kills-abs", "login-abs"):
        keys = ("progress", "baseline_value", "status")
        assert [merged_rows[goal_id][k] for k in keys] == [single_rows[goal_id][k] for k in keys], goal_id
    assert (merged_rows["kills-rel"]["baseline_value"], merged_rows["kills-rel"]["status"]) == (8, "in_progress")
    assert merged_rows["login-abs"]["progress"] == 2


async def test_a_negative_increment_does_not_freeze_a_relative_goal(ingest: Any, db: Any) -> None:
    """(latest, inc) = (5, -100), (8, 3), (11, 3): the stat went down, then gained 6; the goal (target 5) completes,
    one call at a time and merged in one flush alike."""
    single, merged = new_user("single"), new_user("merged")
    for user in (single, merged):
        await seed(db, user, "kills-rel")
    sequence = [(5, -100), (8, 3), (11, 3)]
    async with ingest() as ingestor:
        for value, inc in sequence:
            await ingestor.submit([stat(single, "kills", value, inc)], "ags_stat")
    async with ingest(start=False, ack_mode="buffered") as ingestor:
        for value, inc in sequence:
            await ingestor.submit([stat(merged, "kills", value, inc)], "ags_stat")
    for user in (single, merged):
        goal = await row(db, user, "kills-rel")
        assert (goal["baseline_value"], goal["progress"], goal["status"]) == (5, 11, "completed"), user


async def test_a_late_stat_value_never_replaces_a_newer_one_by_event_time(ingest: Any, db: Any) -> None:
    buffered, flushed, untimed, future = new_user("buffered"), new_user("flushed"), new_user("untimed"), new_user("fut")
    for user in (buffered, flushed, untimed, future):
        await seed(db, user, "kills-abs")
        await seed(db, user, "kills-rel")
    now = time.time()
    newer, older = now - 10, now - 20
    # Both in one entry: the newer value stays, the increments still add up (baseline 12 - 2 - 2).
    async with ingest(start=False, ack_mode="buffered") as ingestor:
        await ingestor.submit([stat(buffered, "kills", 12, 2, timestamp=newer)], "ags_stat")
        await ingestor.submit([stat(buffered, "kills", 10, 2, timestamp=older)], "ags_stat")
    # In separate flushes: the committed row remembers the event time of its value.
    async with ingest() as ingestor:
        await ingestor.submit([stat(flushed, "kills", 12, 2, timestamp=newer)], "ags_stat")
        await ingestor.submit([stat(flushed, "kills", 10, 2, timestamp=older)], "ags_stat")
        # Without timestamps, arrival order decides, as before.
        await ingestor.submit([stat(untimed, "kills", 12, 2)], "ags_stat")
        await ingestor.submit([stat(untimed, "kills", 10, 2)], "ags_stat")
        # A sender's clock an hour ahead counts as "now": it cannot hold the value for an hour.
        await ingestor.submit([stat(future, "kills", 12, 2, timestamp=now + 3600)], "ags_stat")
        await ingestor.submit([stat(future, "kills", 10, 2, timestamp=time.time() + 1)], "ags_stat")
    assert (await row(db, buffered, "kills-abs"))["progress"] == 12
    assert (await row(db, buffered, "kills-rel"))["baseline_value"] == 8
    late = await row(db, flushed, "kills-abs")
    assert (late["progress"], late["value_event_at"]) == (12, datetime.fromtimestamp(newer, UTC))
    assert (await row(db, untimed, "kills-abs"))["progress"] == 10
    assert (await row(db, future, "kills-abs"))["progress"] == 10


async def _flushed(ingestor: Ingestor) -> bool:
    stats = ingestor.buffer_stats()
    return stats["entries"] == 0 and stats["flushes_total"] >= 1


# --- E9–E11, docs/events.md#ack-modes: ack modes ------------------------------------------------------------------------


async def test_e9_e11_buffered_mode_returns_before_the_commit_and_the_flush_follows_by_itself(
    ingest: Any,
    db: Any,
) -> None:
    user = new_user()
    await seed(db, user, "kills-abs")
    async with ingest(start=False, ack_mode="buffered") as ingestor:
        result = await ingestor.submit([stat(user, "kills", 3, 3)], "publish")
        assert result == SubmitResult(1, 0, 0, [], False)
        assert (await row(db, user, "kills-abs"))["progress"] == 0  # returned before any flush
        await ingestor.start()

        async def visible() -> bool:
            return (await row(db, user, "kills-abs"))["progress"] == 3

        await eventually(visible)


async def test_commit_mode_times_out_with_unavailable_and_the_events_are_still_committed(
    ingest: Any,
    db: Any,
    redis_client: Any,
    redis_prefix: str,
) -> None:
    user, event_id = new_user(), new_id()
    await seed(db, user, "login-abs")
    async with ingest(start=False, ack_timeout_ms=100) as ingestor:
        with pytest.raises(DomainError) as failure:
            await ingestor.submit([login(user, event_id)], "publish")
        assert (grpc_status(failure.value).name, failure.value.message) == ("UNAVAILABLE", NOT_COMMITTED_MESSAGE)
        with pytest.raises(DomainError):  # the client's deadline caps the wait too
            await ingestor.submit([login(new_user())], "publish", deadline=time.monotonic() + 0.05)
        await ingestor.start()
        await eventually(lambda: _flushed(ingestor))
        assert (await row(db, user, "login-abs"))["progress"] == 1
        retry = await ingestor.submit([login(user, event_id)], "publish")
    assert (retry.accepted, retry.duplicates) == (0, 1)
    assert await marker(redis_client, redis_prefix, user, event_id) == b"d"
    assert (await row(db, user, "login-abs"))["progress"] == 1


# --- E12: de-duplication ----------------------------------------------------------------------------


async def test_e12_a_replayed_id_has_no_further_effect(
    ingest: Any, db: Any, redis_client: Any, redis_prefix: str
) -> None:
    user, event_id = new_user(), new_id()
    await seed(db, user, "login-abs")
    async with ingest() as ingestor:
        first = await ingestor.submit([login(user, event_id), login(user, event_id)], "publish")
        assert (first.accepted, first.duplicates) == (1, 1)  # a repeat within the call
        assert await marker(redis_client, redis_prefix, user, event_id) == b"d"
        ttl_ms = await redis_client.pttl(event_key(redis_prefix, user, event_id))
        assert 86_000_000 < ttl_ms <= 86_400_000
        replay = await ingestor.submit([login(user, event_id)], "ags_login")
        assert (replay.accepted, replay.duplicates) == (0, 1)
        other_user = await ingestor.submit([login(new_user(), event_id)], "publish")
        assert other_user.accepted == 1  # ids are per user
    assert (await row(db, user, "login-abs"))["progress"] == 1


async def test_e12_a_duplicate_of_a_pending_event_waits_for_the_original(
    ingest: Any,
    db: Any,
    redis_client: Any,
    redis_prefix: str,
) -> None:
    user, event_id = new_user(), new_id()
    await seed(db, user, "login-abs")
    async with ingest(start=False) as ingestor:
        original = asyncio.create_task(ingestor.submit([login(user, event_id)], "ags_login"))
        await eventually(waiting_calls(ingestor, 1))
        duplicate = asyncio.create_task(ingestor.submit([login(user, event_id)], "publish"))
        await eventually(waiting_calls(ingestor, 2))
        assert not original.done() and not duplicate.done()
        assert ingestor.buffer_stats()["pending_waiters"] == 2
        assert await marker(redis_client, redis_prefix, user, event_id) == b"p"
        await ingestor.start()
        assert (await original).accepted == 1
        assert (await duplicate) == SubmitResult(0, 1, 0, [], True)
    assert (await row(db, user, "login-abs"))["progress"] == 1


async def test_e12_buffered_duplicate_of_a_pending_event_returns_at_once(ingest: Any, db: Any) -> None:
    user, event_id = new_user(), new_id()
    await seed(db, user, "login-abs")
    async with ingest(start=False, ack_mode="buffered") as ingestor:
        assert (await ingestor.submit([login(user, event_id)], "publish")).accepted == 1
        assert (await ingestor.submit([login(user, event_id)], "publish")).duplicates == 1
    assert (await row(db, user, "login-abs"))["progress"] == 1


async def test_e12_an_id_pending_in_another_process_fails_a_commit_call_and_clears_its_markers(
    ingest: Any,
    db: Any,
    redis_client: Any,
    redis_prefix: str,
) -> None:
    user, elsewhere, fresh = new_user(), new_id(), new_id()
    await seed(db, user, "login-abs")
    await redis_client.set(event_key(redis_prefix, user, elsewhere), "p", px=60_000)
    async with ingest() as ingestor:
        with pytest.raises(DomainError) as failure:
            await ingestor.submit([login(user, fresh), login(user, elsewhere)], "publish")
        assert (grpc_status(failure.value).name, failure.value.message) == (
            "UNAVAILABLE",
            f"event {elsewhere} is in flight; retry later",
        )
        assert await marker(redis_client, redis_prefix, user, fresh) is None
    async with ingest(ack_mode="buffered") as ingestor:
        result = await ingestor.submit([login(user, fresh), login(user, elsewhere)], "publish")
        assert (result.accepted, result.duplicates) == (1, 1)
    assert (await row(db, user, "login-abs"))["progress"] == 1


async def test_e12_with_redis_down_the_lru_deduplicates_within_the_process(
    ingest: Any,
    db: Any,
    private_redis: PrivateRedis,
    catalog: Catalog,
    redis_prefix: str,
) -> None:
    user, during, before = new_user(), new_id(), new_id()
    await seed(db, user, "login-abs")
    client = open_redis(private_redis.url, max_connections=8, timeout_ms=200)
    outage_cache = make_cache(client, redis_prefix, catalog)
    lru_duplicates_before = sample("challenge_dedup_total", backend="lru", result="duplicate")
    try:
        async with ingest(cache_override=outage_cache) as ingestor:
            await ingestor.submit([login(user, before)], "publish")
            private_redis.stop()
            first = await ingestor.submit([login(user, during)], "publish")
            replay = await ingestor.submit([login(user, during), login(user, before)], "publish")
            assert first.accepted == 1
            # `before` was de-duplicated by Redis, which is gone: only this process's LRU still knows `during`.
            assert (replay.accepted, replay.duplicates) == (1, 1)
            assert (await row(db, user, "login-abs"))["progress"] == 3

            assert sample("challenge_dedup_total", backend="lru", result="duplicate") - lru_duplicates_before == 1
            private_redis.start()

            async def redis_asked_again() -> bool:
                after = await ingestor.submit([login(user, during)], "publish")
                assert (after.accepted, after.duplicates) == (0, 1)  # the LRU is consulted alongside Redis
                return await client.get(event_key(redis_prefix, user, during)) == b"d"

            # Once the retry interval (redis_probe_interval_ms) has passed, Redis is asked again.
            await eventually(redis_asked_again)
    finally:
        await client.aclose()
    assert (await row(db, user, "login-abs"))["progress"] == 3


async def test_pending_markers_are_renewed_while_their_events_stay_buffered(
    ingest: Any,
    db: Any,
    redis_client: Any,
    redis_prefix: str,
) -> None:
    user, event_id = new_user(), new_id()
    await seed(db, user, "login-abs")
    async with ingest(ack_mode="buffered", flush_interval_ms=60_000, dedup_pending_ttl_s=1) as ingestor:
        # The flushers' tasks run their first (empty) round at their first step, before this task resumes;
        # the event then stays buffered for flush_interval_ms.
        await asyncio.sleep(0)
        await ingestor.submit([login(user, event_id)], "publish")
        key = event_key(redis_prefix, user, event_id)
        first_expiry_ms = time.monotonic() * 1000 + await redis_client.pttl(key)

        async def renewed() -> bool:  # renewal runs every dedup_pending_ttl_s / 3 and pushes the expiry back
            assert await redis_client.get(key) == b"p"
            return time.monotonic() * 1000 + await redis_client.pttl(key) > first_expiry_ms + 100

        await eventually(renewed)
        assert ingestor.buffer_stats()["entries"] == 1
    assert await redis_client.get(key) == b"d"


# --- E13: backpressure ------------------------------------------------------------------------------


async def test_e13_a_full_buffer_rejects_the_whole_call_and_clears_its_markers(
    ingest: Any,
    db: Any,
    redis_client: Any,
    redis_prefix: str,
) -> None:
    users = [new_user() for _ in range(4)]
    for user in users:
        await seed(db, user, "login-abs")
    ids = [new_id() for _ in users]
    async with ingest(
        start=False, ack_mode="buffered", flush_workers=1, buffer_max_entries=2, buffer_full_wait_ms=50
    ) as ingestor:
        await ingestor.submit([login(users[0], ids[0]), login(users[1], ids[1])], "publish")
        with pytest.raises(DomainError) as failure:
            await ingestor.submit([login(users[2], ids[2]), login(users[0]), login(users[3], ids[3])], "publish")
        assert (grpc_status(failure.value).name, failure.value.message) == (
            "RESOURCE_EXHAUSTED",
            "event buffer full (2/2); retry with backoff",
        )
        stats = ingestor.buffer_stats()
        assert stats["entries"] == 2 and stats["events"]["exhausted"] == 3
        assert await marker(redis_client, redis_prefix, users[2], ids[2]) is None
        assert await marker(redis_client, redis_prefix, users[3], ids[3]) is None
        assert (await ingestor.submit([login(users[0])], "publish")).accepted == 1  # merging needs no room

        await ingestor.start()
        retry = await ingestor.submit([login(users[2], ids[2]), login(users[3], ids[3])], "publish")
        assert retry.accepted == 2
    counts = [(await row(db, user, "login-abs"))["progress"] for user in users]
    assert counts == [2, 1, 1, 1]


# --- E14: database outage ---------------------------------------------------------------------------


class TcpProxy:
    """A TCP proxy in front of PostgreSQL. `down()` drops every connection and refuses new ones.
    A target host that is a directory is a Unix-socket server (the embedded PostgreSQL listens only there)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.is_up = True
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_up:
            writer.close()
            return
        try:
            host, port = self.target
            if host.startswith("/"):
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    def down(self) -> None:
        self.is_up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def up(self) -> None:
        self.is_up = True

    async def close(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_e14_with_the_database_down_entries_are_kept_merged_and_committed_after_recovery(
    ingest: Any,
    db: Any,
    migrated: str,
) -> None:
    """Calls admitted before the outage is known are answered UNAVAILABLE as soon as it is (not at their
    deadline) while their entries stay buffered and merged; calls arriving while PostgreSQL is known
    down are refused before admission; after recovery everything buffered is committed, and a retry
    with the same ids counts once (docs/events.md#flush-failure-and-retry)."""
    logins, stats_user = new_user("logins"), new_user("stats")
    await seed(db, logins, "login-abs")
    await seed(db, stats_user, "kills-abs")
    params = psycopg.conninfo.conninfo_to_dict(migrated)
    proxy = TcpProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    await proxy.start()
    proxied = psycopg.conninfo.make_conninfo(migrated, host="127.0.0.1", port=proxy.port)
    outage_store = await Store.open(proxied, "flusher", PoolConfig(min_size=1, max_size=2, timeout_ms=300))
    login_ids = [new_id(), new_id()]
    try:
        async with ingest(store_override=outage_store, ack_timeout_ms=30_000) as ingestor:
            proxy.down()
            calls = [
                asyncio.create_task(ingestor.submit([login(logins, event_id)], "ags_login")) for event_id in login_ids
            ]
            calls += [
                asyncio.create_task(ingestor.submit([stat(stats_user, "kills", value, 1)], "publish"))
                for value in (3, 8)
            ]
            started = time.monotonic()
            outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=10)
            assert time.monotonic() - started < 5, "released when the outage was known, not at the deadline"
            assert all(
                isinstance(outcome, DomainError) and grpc_status(outcome).name == "UNAVAILABLE" for outcome in outcomes
            )
            assert {outcome.message for outcome in outcomes} == {NOT_COMMITTED_MESSAGE}
            assert outage_store.availability.is_down

            async def kept() -> bool:  # a snapshot whose flush is still failing is back in its partition
                stats = ingestor.buffer_stats()
                return stats["flush_failures_total"] >= 1 and stats["entries"] == 2

            await eventually(kept)

            with pytest.raises(DomainError) as refused:
                await ingestor.submit([login(logins, new_id())], "ags_login")
            assert grpc_status(refused.value).name == "UNAVAILABLE"
            assert refused.value.message.startswith("PostgreSQL unavailable")
            await eventually(kept)  # refused before admission: still the two entries

            proxy.up()

            async def committed() -> bool:
                return ingestor.buffer_stats()["entries"] == 0 and ingestor.flusher_failing_since is None

            await eventually(committed, timeout_s=10)
            # The ids' markers turn done just after the commit; until then a retry is told the event is in flight.
            retries: list[Any] = []

            async def retry_answered() -> bool:
                try:
                    retries.append(await ingestor.submit([login(logins, login_ids[0])], "ags_login"))
                except Unavailable as in_flight:
                    assert in_flight.error_code == "EVENT_IN_FLIGHT"
                    return False
                return True

            await eventually(retry_answered)
            assert (retries[0].accepted, retries[0].duplicates) == (0, 1)
    finally:
        await outage_store.close()
        await proxy.close()
    assert (await row(db, logins, "login-abs"))["progress"] == 2  # no login lost, the retry not counted
    assert (await row(db, stats_user, "kills-abs"))["progress"] == 8  # the last to arrive wins


# --- E15: a claim's row lock ---------------------------------------------------------------------------


async def test_e15_a_locked_row_defers_its_entry_without_blocking_other_users(
    ingest: Any,
    db: Any,
    migrated: str,
    redis_client: Any,
    redis_prefix: str,
) -> None:
    claimer, other, event_id = new_user("claimer"), new_user("other"), new_id()
    completed_at = datetime.now(UTC) - timedelta(minutes=5)
    await seed(db, claimer, "kills-abs", progress=10, status="completed", completed_at=completed_at)
    await seed(db, claimer, "kills-rel")
    await seed(db, other, "kills-abs")
    claim = await psycopg.AsyncConnection.connect(migrated, autocommit=True)
    try:
        async with ingest() as ingestor:
            await claim.execute("BEGIN")
            await claim.execute(
                "SELECT * FROM user_goal_progress WHERE user_id = %s AND goal_id = 'kills-abs' FOR UPDATE", (claimer,)
            )
            held = asyncio.create_task(ingestor.submit([stat(claimer, "kills", 20, 2, event_id=event_id)], "publish"))
            assert (await ingestor.submit([stat(other, "kills", 4, 4)], "publish")).accepted == 1
            assert (await row(db, other, "kills-abs"))["progress"] == 4  # the flush did not wait

            async def deferred() -> bool:
                return any(p["last_flush_deferred"] for p in ingestor.buffer_stats()["partitions"])

            await eventually(deferred)
            assert not held.done()
            assert (await row(db, claimer, "kills-rel"))["progress"] == 0  # deferred as a whole
            await claim.execute(
                "UPDATE user_goal_progress SET status = 'claimed', claimed_at = now() "
                "WHERE user_id = %s AND goal_id = 'kills-abs'",
                (claimer,),
            )
            await claim.execute("COMMIT")
            assert (await asyncio.wait_for(held, timeout=5)).accepted == 1
    finally:
        await claim.close()
    rows = await rows_of(db, claimer)
    assert (rows["kills-abs"]["status"], rows["kills-abs"]["progress"]) == ("claimed", 10)  # frozen
    assert (rows["kills-rel"]["progress"], rows["kills-rel"]["baseline_value"]) == (20, 18)
    assert await marker(redis_client, redis_prefix, claimer, event_id) == b"d"


async def test_a_flush_racing_another_writers_insert_of_an_implied_row_applies_at_the_next_tick(
    ingest: Any, db: Any, migrated: str
) -> None:
    user, set_id = new_user("implied"), uuid.uuid4().hex
    await db.execute(
        "INSERT INTO default_goal_sets (set_id, goal_id, challenge_id) VALUES (%s, 'kills-abs', 'c1'), (%s, 'kills-rel', 'c1')",
        (set_id, set_id),
    )
    await db.execute(
        "INSERT INTO user_initializations (user_id, namespace, default_set_id, initialized_at) VALUES (%s, %s, %s, %s)",
        (user, NS, set_id, datetime.now(UTC) - timedelta(minutes=1)),
    )
    writer = await psycopg.AsyncConnection.connect(migrated, autocommit=True)
    try:
        async with ingest() as ingestor:
            # Another writer (a set-active) makes kills-rel real and has not committed when the flush inserts it.
            await writer.execute("BEGIN")
            await writer.execute(
                "INSERT INTO user_goal_progress SELECT * FROM implied_goal_progress "
                "WHERE user_id = %s AND goal_id = 'kills-rel'",
                (user,),
            )
            held = asyncio.create_task(ingestor.submit([stat(user, "kills", 20, 2)], "publish"))

            async def flush_waits_on_the_writer() -> bool:
                cursor = await db.execute(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND query LIKE %s",
                    ("WITH entry AS%",),  # the flush statement (pg_stat_activity keeps its first 1 kB)
                )
                return bool((await cursor.fetchone())["n"])

            await eventually(flush_waits_on_the_writer)
            await writer.execute("COMMIT")
            assert (await asyncio.wait_for(held, timeout=5)).accepted == 1
            assert ingestor.buffer_stats()["flush_failures_total"] == 0
    finally:
        await writer.close()
    rows = await rows_of(db, user)
    assert rows["kills-abs"]["progress"] == 20
    assert (rows["kills-rel"]["progress"], rows["kills-rel"]["baseline_value"]) == (20, 18)  # applied once


# --- E16: bursts and ordering -------------------------------------------------------------------------


async def test_e16_a_burst_for_many_users_lands_and_the_last_value_to_arrive_wins(ingest: Any, db: Any) -> None:
    users = [new_user("burst") for _ in range(150)]
    await db.execute(
        "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace) "
        "SELECT unnest(%s::text[]), 'kills-abs', 'c1', %s",
        (users, NS),
    )
    await db.execute(
        "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace) "
        "SELECT unnest(%s::text[]), 'login-abs', 'c1', %s",
        (users, NS),
    )
    # Per user, in arrival order: values 7, 30, 12 (out of order) and two logins.
    waves = [[stat(user, "kills", value, 1, event_id=new_id()) for user in users] for value in (7, 30, 12)]
    waves.insert(1, [login(user, new_id()) for user in users])
    waves.append([login(user, new_id()) for user in users])
    async with ingest(flush_workers=4, flush_batch_max=64) as ingestor:
        for wave in waves:
            results = await asyncio.gather(
                *(ingestor.submit(wave[i : i + 50], "publish") for i in range(0, len(wave), 50))
            )
            assert sum(result.accepted for result in results) == len(users)
        stats = ingestor.buffer_stats()
    cursor = await db.execute(
        "SELECT goal_id, progress, count(*) AS n FROM user_goal_progress WHERE user_id = ANY(%s) "
        "GROUP BY goal_id, progress ORDER BY goal_id",
        (users,),
    )
    assert await cursor.fetchall() == [
        {"goal_id": "kills-abs", "progress": 12, "n": len(users)},
        {"goal_id": "login-abs", "progress": 2, "n": len(users)},
    ]
    assert stats["rows_updated_total"] >= 2 * len(users)
    assert sum(p["last_flush_entries"] > 0 for p in stats["partitions"]) == 4  # every partition was used


def test_due_partitions_are_grouped_into_flushes_of_at_most_combine_max_entries() -> None:
    states = []
    for index, size in enumerate((3, 4, 200, 2, 600)):
        partition = Partition(index, capacity=1000)
        for n in range(size):
            partition.entries[(f"u{n}", "login")] = Entry(f"u{n}", "login", 0.0)
        states.append(PartitionFlushState(partition))

    def indexes(groups: list[list[PartitionFlushState]]) -> list[list[int]]:
        return [[state.partition.index for state in group] for group in groups]

    assert indexes(group_due(states, batch_max=5000, combine_max=500)) == [[0, 1, 2, 3], [4]]
    assert indexes(group_due(states, batch_max=5000, combine_max=7)) == [[0, 1], [2], [3], [4]]
    assert indexes(group_due(states, batch_max=5000, combine_max=0)) == [[0], [1], [2], [3], [4]]
    # A partition counts with at most batch_max entries (what its snapshot takes).
    assert indexes(group_due(states, batch_max=100, combine_max=500)) == [[0, 1, 2, 3, 4]]


def test_a_snapshot_takes_the_oldest_entries_while_their_rows_fit_the_budget_and_at_least_one() -> None:
    partition = Partition(0, capacity=100)
    for n, source in enumerate(("a", "b", "a", "b", "a")):
        partition.entries[(f"u{n}", source)] = Entry(f"u{n}", source, 0.0)
    rows = {"a": 3, "b": 4}.__getitem__

    def weight(entry: Entry) -> int:
        return rows(entry.source)

    assert [e.user_id for e in partition.take_snapshot(10, weight, 2)] == ["u0"]  # 3 rows > 2: still one
    assert [e.user_id for e in partition.take_snapshot(10, weight, 8)] == ["u1", "u2"]  # 4 + 3; + 4 > 8
    assert [e.user_id for e in partition.take_snapshot(1, weight, 100)] == ["u3"]  # the entry limit holds too
    assert [e.user_id for e in partition.take_snapshot(10)] == ["u4"]


async def test_a_flush_takes_entries_while_the_rows_their_sources_feed_fit_flush_rows_max(ingest: Any, db: Any) -> None:
    users = [new_user("rows") for _ in range(3)]
    for user in users:
        await seed(db, user, "kills-abs")
        await seed(db, user, "kills-rel")
    # A kills entry feeds 2 goals: 3 entries are 6 rows, 2 statements of at most 4 rows.
    async with ingest(flush_workers=1, flush_rows_max=4, start=False) as ingestor:
        call = asyncio.create_task(ingestor.submit([stat(user, "kills", 7, 7) for user in users], "publish"))
        await eventually(waiting_calls(ingestor, 1))
        await ingestor.start()
        assert (await call).accepted == 3
        stats = ingestor.buffer_stats()
    assert (stats["flushes_total"], stats["rows_updated_total"]) == (2, 6)
    assert stats["partitions"][0]["last_flush_entries"] == 1
    for user in users:
        assert [(await row(db, user, g) or {}).get("progress") for g in ("kills-abs", "kills-rel")] == [7, 7]


def users_of_every_partition(partitions: int) -> list[str]:
    """One new user per partition."""
    found: dict[int, str] = {}
    while len(found) < partitions:
        user = new_user("part")
        found.setdefault(partition_of(user, partitions), user)
    return [found[index] for index in range(partitions)]


@pytest.mark.parametrize(("combine_max", "statements"), [(500, 1), (0, 4)])
async def test_partitions_due_at_one_tick_flush_in_one_statement_up_to_flush_combine_max(
    ingest: Any, db: Any, combine_max: int, statements: int
) -> None:
    users = users_of_every_partition(4)
    for user in users:
        await seed(db, user, "login-abs")
    async with ingest(flush_workers=4, flush_combine_max=combine_max) as ingestor:
        result = await ingestor.submit([login(user, new_id()) for user in users], "publish")
        stats = ingestor.buffer_stats()
    assert result.accepted == 4 and result.committed
    assert stats["flushes_total"] == statements and stats["rows_updated_total"] == 4
    assert [p["last_flush_entries"] for p in stats["partitions"]] == [1, 1, 1, 1]
    for user in users:
        assert (await row(db, user, "login-abs") or {}).get("progress") == 1


async def test_e16_concurrent_calls_of_one_user_are_admitted_in_arrival_order(ingest: Any, db: Any) -> None:
    user = new_user()
    await seed(db, user, "kills-abs")
    async with ingest(start=False) as ingestor:
        # Ids force a Redis round trip per call; admission still follows the order of the calls.
        calls = [
            asyncio.create_task(ingestor.submit([stat(user, "kills", value, 1, event_id=new_id())], "publish"))
            for value in (5, 9, 1, 4)
        ]
        await eventually(waiting_calls(ingestor, 4))
        await ingestor.start()
        await asyncio.gather(*calls)
    assert (await row(db, user, "kills-abs"))["progress"] == 4


# --- E17: read-your-writes ---------------------------------------------------------------------------


async def test_e17_the_cache_is_invalidated_before_the_ack(
    ingest: Any, db: Any, redis_client: Any, redis_prefix: str
) -> None:
    user, bystander = new_user(), new_user("bystander")
    await seed(db, user, "kills-abs")
    for someone in (user, bystander):
        await redis_client.set(token_key(redis_prefix, someone), "old-token")
        await redis_client.set(active_key(redis_prefix, someone), "{}")
    async with ingest() as ingestor:
        await ingestor.submit([stat(user, "kills", 3, 3), stat(bystander, "kills", 3, 3)], "publish")
        token = await redis_client.get(token_key(redis_prefix, user))
        assert token not in (None, b"old-token")
        assert await redis_client.exists(active_key(redis_prefix, user)) == 0
        # A user without rows had nothing applied: no invalidation needed.
        assert await redis_client.get(token_key(redis_prefix, bystander)) == b"old-token"


async def test_after_a_flush_invalidation_and_done_markers_take_one_redis_round_trip(
    ingest: Any, db: Any, redis_client: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, event_id = new_user(), new_id()
    await seed(db, user, "kills-abs")
    await redis_client.set(token_key(redis_prefix, user), "old-token")
    round_trips: list[int | str] = []
    execute = redis.asyncio.client.Pipeline.execute
    immediate = redis.asyncio.client.Pipeline.immediate_execute_command

    async def counted(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        round_trips.append(len(pipe.command_stack))
        return await execute(pipe, *args, **kwargs)

    async def counted_immediate(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        round_trips.append(str(args[0]))  # e.g. the SCRIPT EXISTS redis-py sends before a pipeline of Scripts
        return await immediate(pipe, *args, **kwargs)

    pipe_execute_many = PipelinedRedis.execute_many

    async def counted_many_on_pipe(pipe: PipelinedRedis, commands: Any) -> Any:
        round_trips.append(f"pipe {' + '.join(str(command[0]) for command in commands)}")
        return await pipe_execute_many(pipe, commands)

    async with ingest(flush_workers=1) as ingestor:
        monkeypatch.setattr(redis.asyncio.client.Pipeline, "execute", counted)
        monkeypatch.setattr(redis.asyncio.client.Pipeline, "immediate_execute_command", counted_immediate)
        monkeypatch.setattr(PipelinedRedis, "execute_many", counted_many_on_pipe)
        await ingestor.submit([stat(user, "kills", 3, 3, event_id=event_id)], "publish")
        monkeypatch.undo()
    # Over the cache's pipelined connection: the marker lookup at acceptance, then one write after the flush
    # with the invalidation script and the done markers (no redis-py pipeline).
    assert round_trips == ["pipe EVALSHA", "pipe EVALSHA + EVALSHA"]
    assert await redis_client.get(token_key(redis_prefix, user)) not in (None, b"old-token")
    assert await marker(redis_client, redis_prefix, user, event_id) == b"d"


async def test_lookups_of_calls_arriving_while_one_is_in_flight_share_one_pipeline(
    ingest: Any, db: Any, redis_client: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = [new_user("co") for _ in range(20)]
    for user in users:
        await seed(db, user, "kills-abs")
    ids = [new_id() for _ in users]
    begin_sha = hashlib.sha1(BEGIN_LUA.encode()).hexdigest()
    lookups: list[int] = []
    execute_many = PipelinedRedis.execute_many

    async def counted(pipe: PipelinedRedis, commands: Any) -> Any:
        lookups.extend(command[2] for command in commands if command[:2] == ("EVALSHA", begin_sha))  # numkeys
        return await execute_many(pipe, commands)

    async with ingest() as ingestor:
        monkeypatch.setattr(PipelinedRedis, "execute_many", counted)
        results = await asyncio.gather(
            *(
                ingestor.submit([stat(user, "kills", 5, 5, event_id)], "ags_stat")
                for user, event_id in zip(users, ids, strict=True)
            )
        )
        replay = await ingestor.submit([stat(users[0], "kills", 5, 5, ids[0])], "ags_stat")
        monkeypatch.undo()
    # The first call's lookup goes alone; the 19 that arrived meanwhile share the next script call.
    assert lookups[:2] == [1, 19]
    assert [result.accepted for result in results] == [1] * 20 and replay.duplicates == 1
    for user in users:
        assert (await row(db, user, "kills-abs") or {}).get("progress") == 5


async def test_markers_survive_a_server_that_lost_its_scripts(
    ingest: Any, db: Any, private_redis: PrivateRedis, catalog: Catalog, redis_prefix: str
) -> None:
    user, first, second = new_user(), new_id(), new_id()
    await seed(db, user, "login-abs")
    client = open_redis(private_redis.url, max_connections=8, timeout_ms=2000)
    try:
        async with ingest(cache_override=make_cache(client, redis_prefix, catalog)) as ingestor:
            await ingestor.submit([login(user, first)], "publish")
            await client.script_flush()  # a restarted server: every EVALSHA answers NOSCRIPT until loaded
            await client.set(token_key(redis_prefix, user), "old-token")
            result = await ingestor.submit([login(user, second)], "publish")
            assert await client.get(token_key(redis_prefix, user)) not in (None, b"old-token")
            replay = await ingestor.submit([login(user, first), login(user, second)], "publish")
        assert (result.accepted, replay.duplicates) == (1, 2)
        assert [await marker(client, redis_prefix, user, event_id) for event_id in (first, second)] == [b"d", b"d"]
    finally:
        await client.aclose()
    assert (await row(db, user, "login-abs") or {}).get("progress") == 2


def test_marker_scripts_take_a_whole_batch_or_on_a_cluster_one_hash_slot_per_call() -> None:
    dedup = Deduplicator(None, "ch", 60, 86_400, 10, 1.0)
    keys = [("alice", "1"), ("bob", "2"), ("alice", "3"), ("carol", "4")]
    assert dedup._script_calls(keys) == [[0, 1, 2, 3]]
    dedup._cluster = True
    slots = {user: key_slot(event_key("ch", user, "x").encode()) for user in ("alice", "bob", "carol")}
    assert len(set(slots.values())) == 3
    assert dedup._script_calls(keys) == [[0, 2], [1], [3]]


# --- E18: shutdown drain ------------------------------------------------------------------------------


async def test_e18_drain_flushes_everything_and_answers_the_waiting_calls(
    base_config: IngestConfig,
    catalog: Catalog,
    store: Store,
    queries: Queries,
    cache: Cache,
    db: Any,
) -> None:
    users = [new_user() for _ in range(3)]
    for user in users:
        await seed(db, user, "login-abs")
    ingestor = Ingestor(replace(base_config, flush_interval_ms=60_000), catalog, store, queries, cache)
    await ingestor.start()
    calls = [asyncio.create_task(ingestor.submit([login(user)], "publish")) for user in users]
    await eventually(waiting_calls(ingestor, len(users)))
    assert not any(call.done() for call in calls)  # the interval is far away
    assert await ingestor.drain_and_stop(10) == 0
    assert all(call.done() and call.result().accepted == 1 for call in calls)
    assert [(await row(db, user, "login-abs"))["progress"] for user in users] == [1, 1, 1]
    with pytest.raises(DomainError) as failure:
        await ingestor.submit([login(users[0])], "publish")
    assert (grpc_status(failure.value).name, failure.value.message) == ("UNAVAILABLE", "service is shutting down")


async def test_e18_entries_left_at_the_drain_timeout_are_counted_and_their_callers_get_unavailable(
    ingest: Any,
    db: Any,
    migrated: str,
    base_config: IngestConfig,
    catalog: Catalog,
    store: Store,
    queries: Queries,
    cache: Cache,
) -> None:
    user = new_user()
    await seed(db, user, "login-abs")
    lock = await psycopg.AsyncConnection.connect(migrated, autocommit=True)
    try:
        await lock.execute("BEGIN")
        await lock.execute("SELECT 1 FROM user_goal_progress WHERE user_id = %s FOR UPDATE", (user,))
        ingestor = Ingestor(base_config, catalog, store, queries, cache)
        await ingestor.start()
        call = asyncio.create_task(ingestor.submit([login(user)], "publish"))
        await eventually(waiting_calls(ingestor, 1))
        assert await ingestor.drain_and_stop(0.3) == 1
        with pytest.raises(DomainError) as failure:
            await call
        assert (grpc_status(failure.value).name, failure.value.message) == ("UNAVAILABLE", NOT_COMMITTED_MESSAGE)
    finally:
        await lock.close()
    assert (await row(db, user, "login-abs"))["progress"] == 0


# --- rotation through the flush (docs/events.md#flush) -----------------------------------------------------------------


async def test_rotation_reset_carry_over_and_reopen_through_the_flush(ingest: Any, db: Any) -> None:
    user = new_user()
    now = datetime.now(UTC)
    stale = period_start("daily", now) - timedelta(days=2)
    earlier = stale - timedelta(hours=1)
    await seed(
        db,
        user,
        "wins-reset",
        progress=10,
        baseline_value=0,
        status="completed",
        completed_at=earlier,
        updated_at=stale,
        expires_at=stale,
    )
    await seed(
        db, user, "wins-carry", progress=4, baseline_value=2, status="in_progress", updated_at=stale, expires_at=stale
    )
    await seed(
        db,
        user,
        "wins-reselect",
        progress=9,
        baseline_value=1,
        status="claimed",
        completed_at=earlier,
        claimed_at=earlier,
        updated_at=stale,
        expires_at=stale,
    )
    async with ingest() as ingestor:
        await ingestor.submit([stat(user, "wins", 13, 2)], "publish")
    rows = await rows_of(db, user)
    flush_time = rows["wins-reset"]["updated_at"]
    expected_expiry = next_boundary("daily", flush_time)
    reset = rows["wins-reset"]
    assert (reset["progress"], reset["baseline_value"], reset["status"], reset["completed_at"]) == (
        13,
        11,
        "in_progress",
        None,
    )  # a new window, counting only this event's increment
    carry = rows["wins-carry"]
    assert (carry["progress"], carry["baseline_value"], carry["status"]) == (13, 2, "completed")
    reopened = rows["wins-reselect"]
    assert (
        reopened["progress"],
        reopened["baseline_value"],
        reopened["status"],
        reopened["claimed_at"],
        reopened["completed_at"],
    ) == (13, 11, "not_started", None, None)
    assert {r["expires_at"] for r in rows.values()} == {expected_expiry}
    assert {r["updated_at"] for r in rows.values()} == {flush_time}


# --- /admin/buffer -----------------------------------------------------------------------------------


async def test_buffer_stats_have_exactly_the_spec_keys_and_count_what_happened(ingest: Any, db: Any) -> None:
    user = new_user()
    await seed(db, user, "login-abs")
    accepted_before = sample("challenge_events_total", origin="publish", outcome="accepted")
    negative_before = sample("challenge_events_total", origin="publish", outcome="skipped_negative")
    ages_before = sample("challenge_event_age_seconds_count")
    flushes_before = sample("challenge_flush_duration_seconds_count")
    async with ingest(flush_workers=3, buffer_max_entries=10) as ingestor:
        idle = ingestor.buffer_stats()
        assert set(idle) == BUFFER_KEYS and set(idle["events"]) == EVENT_KEYS
        assert [set(p) for p in idle["partitions"]] == [PARTITION_KEYS] * 3
        assert (idle["ack_mode"], idle["capacity"], idle["entries"], idle["flushes_total"]) == ("commit", 12, 0, 0)
        await ingestor.submit(
            [login(user), stat(user, "kills", -5, 0), stat(user, "kills", 1, 1, timestamp=time.time() - 1)], "publish"
        )
        stats = ingestor.buffer_stats()
    assert stats["events"]["accepted"] == 2 and stats["events"]["skipped_negative"] == 1
    assert sample("challenge_events_total", origin="publish", outcome="accepted") - accepted_before == 2
    assert sample("challenge_events_total", origin="publish", outcome="skipped_negative") - negative_before == 1
    assert sample("challenge_event_age_seconds_count") - ages_before == 1
    assert sample("challenge_flush_duration_seconds_count") - flushes_before == stats["flushes_total"]
    assert stats["flushes_total"] >= 1 and stats["rows_updated_total"] == 1
    assert stats["peak_entries"] >= 1 and stats["pending_waiters"] == 0
    assert 0 < stats["flush_ms_p50"] <= stats["flush_ms_p95"] <= stats["flush_ms_max"]
    flushed = [p for p in stats["partitions"] if p["last_flush_at"]]
    assert flushed and flushed[0]["last_flush_at"].endswith("Z") and flushed[0]["last_flush_rows_updated"] == 1


async def test_buffer_oldest_entry_age_and_peak_follow_the_buffer(ingest: Any, db: Any) -> None:
    async with ingest(start=False, ack_mode="buffered") as ingestor:
        await ingestor.submit([login(new_user()), login(new_user())], "publish")

        async def aged() -> bool:
            return ingestor.buffer_stats()["oldest_entry_age_ms"] >= 40

        await eventually(aged)
        stats = ingestor.buffer_stats()
        assert stats["entries"] == 2 and stats["peak_entries"] == 2
        await ingestor.start()
        await eventually(lambda: _flushed(ingestor))
        ingestor.reset_peaks()
        assert ingestor.buffer_stats()["peak_entries"] == 0


async def test_an_error_reply_to_marking_ids_done_falls_back_to_the_lru_instead_of_raising(
    redis_client: Any, redis_prefix: str
) -> None:
    # A done TTL of 0 makes every SET ... PX in the script fail on the server: an error reply inside the
    # pipeline (as a cluster node going away gives), not a connection error.
    dedup = Deduplicator(redis_client, redis_prefix, 60, 0, 10, 1.0)
    key = (new_user(), new_id())
    await dedup.mark_done([key])  # raised the error reply before the fix, out of the flusher's settle task
    assert not dedup.redis_usable  # in the outage back-off: the LRU de-duplicates until Redis is retried


async def test_an_idle_flusher_sleeps_until_admission_then_flushes_at_a_tick(ingest: Any, db: Any) -> None:
    user = new_user()
    await seed(db, user, "kills-abs")
    async with ingest() as ingestor:
        await asyncio.sleep(FAST_FLUSH_MS * 3 / 1000)
        assert ingestor._flusher._idle  # nothing buffered, nothing in flight: no ticks
        result = await asyncio.wait_for(ingestor.submit([stat(user, "kills", 4, 4, new_id())], "publish"), 5)
        assert result.accepted == 1 and result.committed
        assert (await row(db, user, "kills-abs") or {}).get("progress") == 4
        await asyncio.sleep(FAST_FLUSH_MS * 3 / 1000)
        assert ingestor._flusher._idle

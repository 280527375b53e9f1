"""The PostgreSQL pool against real PostgreSQL: session settings, stats, ping and failure mapping."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator

import psycopg
import pytest

from service.storage.migrations import apply_migrations, discover_migrations
from service.storage.registry import NamedQuery, load_registry
from service.storage.store import (
    PoolConfig,
    Store,
    StoreUnavailable,
    describe_target,
    open_pool,
    warm_connection,
)
from service.usecases.players import PLAYER_STATEMENTS

SMALL = PoolConfig(min_size=1, max_size=3, timeout_ms=2000, statement_timeout_ms=1234, open_timeout_s=5)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(pg_url, "service", SMALL)
    try:
        yield opened
    finally:
        await opened.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("role", ["service", "flusher", "cli"])
async def test_pooled_sessions_are_named_by_role_in_pg_stat_activity(pg_url: str, role: str) -> None:
    pool = await open_pool(pg_url, role, SMALL)
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            assert await cursor.fetchone() == (f"challengectl-{role}",)
    finally:
        await pool.close()


async def test_sessions_run_in_utc_with_the_statement_timeout_from_startup_options(store: Store) -> None:
    async with store.connection() as conn:
        cursor = await conn.execute(
            "SELECT name, setting, source FROM pg_settings"
            " WHERE name IN ('TimeZone', 'statement_timeout') ORDER BY name"
        )
        # source 'client' means the startup packet set them: no SET round trip per session.
        assert await cursor.fetchall() == [
            ("TimeZone", "UTC", "client"),
            ("statement_timeout", "1234", "client"),
        ]
        timezone = await (await conn.execute("SHOW TimeZone")).fetchone()
        assert timezone == ("UTC",)


async def test_options_already_in_the_conninfo_are_kept(pg_url: str) -> None:
    with_options = psycopg.conninfo.make_conninfo(pg_url, options="-c work_mem=8MB")
    pool = await open_pool(with_options, "cli", SMALL)
    try:
        async with pool.connection() as conn:
            assert await (await conn.execute("SHOW work_mem")).fetchone() == ("8MB",)
            assert await (await conn.execute("SHOW TimeZone")).fetchone() == ("UTC",)
    finally:
        await pool.close()


async def test_unknown_role_is_rejected(pg_url: str) -> None:
    with pytest.raises(ValueError, match="worker"):
        await open_pool(pg_url, "worker", SMALL)


async def test_stats_use_the_admin_pool_keys_and_count_use(store: Store) -> None:
    before = store.stats()
    assert {
        "min_size",
        "max_size",
        "size",
        "in_use",
        "idle",
        "waiting",
        "utilisation",
        "acquire_count",
        "acquire_timeouts",
        "connections_created",
        "connection_errors",
    } <= set(before)
    assert (before["min_size"], before["max_size"]) == (1, 3)

    async with store.connection():
        during = store.stats()
    assert during["in_use"] == before["in_use"] + 1
    assert during["utilisation"] == during["in_use"] / 3
    assert during["acquire_count"] == before["acquire_count"] + 1
    assert during["connections_created"] >= 1
    assert during["connection_errors"] == 0


async def test_ping_returns_the_latency_in_ms(store: Store) -> None:
    latency_ms = await store.ping(timeout_s=1.0)
    assert isinstance(latency_ms, float) and latency_ms > 0


async def test_schema_version_reads_the_highest_applied_migration(fresh_db: str) -> None:
    store = await Store.open(fresh_db, "service", SMALL)
    try:
        assert await store.schema_version() is None
        apply_migrations(fresh_db)
        assert await store.schema_version() == max(m.version for m in discover_migrations())
    finally:
        await store.close()


async def test_acquire_timeout_is_store_unavailable_and_counted(pg_url: str) -> None:
    store = await Store.open(pg_url, "service", PoolConfig(min_size=1, max_size=1, open_timeout_s=5))
    try:
        async with store.connection():
            with pytest.raises(StoreUnavailable, match="no pooled connection free within 0.1 s"):
                async with store.connection(timeout_s=0.1):
                    pass
        assert store.stats()["acquire_timeouts"] == 1
    finally:
        await store.close()


async def test_statement_timeout_is_store_unavailable(pg_url: str) -> None:
    store = await Store.open(pg_url, "service", PoolConfig(min_size=1, max_size=1, statement_timeout_ms=50))
    try:
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            async with store.connection() as conn:
                await conn.execute("SELECT pg_sleep(1)")
        # The pool recovered the connection: the next statement works.
        assert await store.ping() > 0
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("errcode", "error_class"),
    [
        ("serialization_failure", psycopg.errors.SerializationFailure),
        ("deadlock_detected", psycopg.errors.DeadlockDetected),
    ],
)
async def test_retryable_class_40_errors_pass_through_for_the_caller(
    store: Store, errcode: str, error_class: type[psycopg.Error]
) -> None:
    with pytest.raises(error_class):
        async with store.connection() as conn:
            await conn.execute(f"DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = '{errcode}'; END $$")


async def test_closed_port_raises_store_unavailable_naming_the_target_without_the_password() -> None:
    port = _closed_port()
    conninfo = f"postgresql://postgres:hunter2-secret@127.0.0.1:{port}/somedb"

    with pytest.raises(StoreUnavailable) as raised:
        await open_pool(conninfo, "service", PoolConfig(min_size=1, open_timeout_s=0.5))

    message = str(raised.value)
    assert f"127.0.0.1:{port}/somedb" in message
    assert "refused" in message.lower()
    assert "hunter2-secret" not in message
    assert raised.value.target == f"127.0.0.1:{port}/somedb"


async def test_ping_after_close_is_store_unavailable(pg_url: str) -> None:
    store = await Store.open(pg_url, "cli", SMALL)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.ping(), timeout=5)


def test_describe_target_reads_urls_and_keyword_strings() -> None:
    assert describe_target("postgresql://u:pw@db.internal:6543/game") == "db.internal:6543/game"
    assert describe_target("host=10.0.0.5 port=5433 dbname=game user=u password=pw") == "10.0.0.5:5433/game"


async def test_every_player_statement_plans_on_a_new_connection_and_nothing_is_written(fresh_db: str) -> None:
    apply_migrations(fresh_db)
    registry = load_registry()
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        planned = await warm_connection(conn, [registry.get(name) for name in PLAYER_STATEMENTS])
        # None skipped: the sample parameters fit every statement's declared types.
        assert planned == len(PLAYER_STATEMENTS)
        counts = await conn.execute(
            "SELECT (SELECT count(*) FROM user_initializations), (SELECT count(*) FROM default_goal_sets),"
            " (SELECT count(*) FROM user_goal_progress), (SELECT count(*) FROM reward_grants)"
        )
        assert await counts.fetchone() == (0, 0, 0, 0)


async def test_the_pool_warms_each_new_connection_and_a_failing_statement_only_logs(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    broken = NamedQuery("broken", "read", (), "SELECT * FROM no_such_table", None, "")
    config = dataclasses.replace(SMALL, warm_statements=(broken,))
    with caplog.at_level(logging.WARNING, logger="service.storage.store"):
        pool = await open_pool(pg_url, "service", config)
        try:
            async with pool.connection() as conn:  # the connection is still handed out
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        finally:
            await pool.close()
    assert any("planning broken on a new connection failed" in record.getMessage() for record in caplog.records)


async def test_a_connection_beyond_min_size_opened_for_a_waiting_request_is_not_warmed(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    broken = NamedQuery("broken", "read", (), "SELECT * FROM no_such_table", None, "")
    config = dataclasses.replace(SMALL, min_size=1, max_size=2, warm_statements=(broken,))
    with caplog.at_level(logging.WARNING, logger="service.storage.store"):
        pool = await open_pool(pg_url, "service", config)  # its first connection: warmed, nobody waits
        try:
            async with pool.connection(), pool.connection() as second:  # the second grows the pool for a waiter
                assert await (await second.execute("SELECT 1")).fetchone() == (1,)
        finally:
            await pool.close()
    warmed = [record for record in caplog.records if "planning broken" in record.getMessage()]
    assert len(warmed) == 1

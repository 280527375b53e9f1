"""The checks of `challengectl doctor` (docs/cli.md#commands doctor table, docs/diagnostics.md): each one is a small async
function that observes one thing and returns a `CheckResult` (id, status, observed value, hint).
Nothing here renders; `challengectl.commands.doctor` prints the results.

The checks share one `Diagnosis`: the settings, the service clients and the connections opened so far
(one PostgreSQL session with the service's session options, one Redis client, the service's admin
answers). Nothing is started: without a configured URL, the servers of a running embedded `serve` are
used, and with neither the check fails. Every network operation is bounded by `OPERATION_TIMEOUT_S`,
so a run against dead dependencies ends in seconds.

    async with Diagnosis(settings, clients) as diagnosis:
        results = await run_checks(diagnosis, skip={"pg-stat-statements"})
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from challengectl.bottleneck import ServiceSessions, diagnose, pool_snapshot_evidence
from challengectl.cli_queries import fetch_all_async, fetch_one_async, fetch_values_async
from challengectl.connections import service_database_url, service_redis_url
from challengectl.errors import EXIT_UNAVAILABLE, CliError
from challengectl.expected_indexes import EXPECTED_INDEXES, PROGRESS_TABLE, ExpectedIndex
from challengectl.ratios import hit_ratio
from service.config.resolution import resolve_catalog_path, validate_settings
from service.config.settings import (
    Settings,
    SettingsError,
    connections_per_instance,
    service_processes,
)
from service.domain.catalog import Catalog, CatalogError, grouped_warnings, load_catalog

if TYPE_CHECKING:
    import psycopg
    import redis.asyncio as redis_asyncio

    from challengectl.client import Clients

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"

# Every connect, query, PING and HTTP/gRPC call of a check; libpq's connect_timeout counts whole seconds.
OPERATION_TIMEOUT_S = 2.0
# A check that has not finished by then is reported as failed, whatever it was waiting for.
CHECK_DEADLINE_S = 6.0

POSTGRES_SLOW_MS = 100.0
CLOCK_SKEW_LIMIT_S = 1.0
HEADROOM_WARN, HEADROOM_FAIL = 0.80, 0.95
CACHE_RATIO_WARN = 0.90
BUFFER_WARN, BUFFER_FAIL = 0.50, 0.90
STALLED_ENTRY_MS = 60_000.0
UTC_NAMES = ("UTC", "Etc/UTC")


@dataclass(frozen=True)
class CatalogRows:
    """Progress rows of one goal that the catalog does not know, or knows under another challenge."""

    goal_id: str
    challenge_id: str
    catalog_challenge_id: str | None
    row_count: int


@dataclass(frozen=True)
class StatementStatsStatus:
    preload_libraries: str
    version: str | None  # None: the extension is not created in this database


@dataclass(frozen=True)
class ServerClock:
    timezone: str
    server_now: datetime


HINT_PG_STAT_STATEMENTS = (
    "add pg_stat_statements to shared_preload_libraries and run CREATE EXTENSION pg_stat_statements"
)
HINT_SERVICE = (
    "is the service running? start it with 'challengectl serve', or set --api-url, --grpc-addr and --admin-url"
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: `status` is pass, warn, fail or skip (not applicable, or not
    checkable because what it needs is down, which another row reports); `observed` is what was seen,
    `hint` the next step (empty when there is nothing to do)."""

    id: str
    status: str
    observed: str
    hint: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": CHECK_NAMES[self.id],
            "status": self.status,
            "observed": self.observed,
            "hint": self.hint or None,
        }


class SkipCheck(Exception):
    """Raised inside a check that cannot run; the message says why (it becomes a `skip` row)."""


def warn_if(condition: bool, check_id: str, observed: str, hint: str) -> CheckResult:
    """WARN with `hint` when `condition` holds, else PASS; `observed` either way."""
    return CheckResult(check_id, WARN, observed, hint) if condition else CheckResult(check_id, PASS, observed)


class Unreachable(Exception):
    """A dependency that cannot be used; the message is a short reason without secrets. `unavailable`
    is False when it answered but refused (e.g. the admin token was rejected)."""

    def __init__(self, reason: str, unavailable: bool = True) -> None:
        super().__init__(reason)
        self.unavailable = unavailable


class Diagnosis:
    """What the checks of one doctor run share, opened lazily and at most once: the database session
    (service session options, short statement timeout), the Redis client, the catalog, and the
    service's admin answers. Failures are remembered, so a dead dependency costs one timeout."""

    def __init__(self, settings: Settings, clients: Clients) -> None:
        self.settings = settings
        self.clients = clients
        self._shared_opened: dict[str, Any] = {}
        self._shared_errors: dict[str, str] = {}
        self._catalog: Catalog | None = None
        self._catalog_error: CatalogError | None = None
        self._admin: dict[str, Any] = {}
        self._admin_errors: dict[str, CliError] = {}
        self.readiness: dict[str, Any] | None = None

    async def __aenter__(self) -> Diagnosis:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if "database" in self._shared_opened:
            await self._shared_opened["database"].close()
        if "redis" in self._shared_opened:
            await self._shared_opened["redis"].aclose()

    # --- where the dependencies are -------------------------------------------------------------

    async def database_url(self) -> str | None:
        """The configured database, else a running embedded serve's; None when there is neither."""
        return await asyncio.to_thread(service_database_url, self.settings)

    async def redis_url(self) -> str | None:
        """The configured Redis, else a running embedded serve's; None when there is neither."""
        return await asyncio.to_thread(service_redis_url, self.settings)

    def no_database_reason(self) -> str:
        return self._not_running("database", "DATABASE_URL")

    def no_redis_reason(self) -> str:
        return self._not_running("Redis", "REDIS_URL")

    def _not_running(self, what: str, variable: str) -> str:
        return (
            f"no running service {what}: {variable} is unset and no embedded serve runs in "
            f"{self.settings.resolved_data_dir()}"
        )

    # --- shared connections ---------------------------------------------------------------------

    async def database(self) -> psycopg.AsyncConnection:
        """The PostgreSQL session, opened with the service's session options; raises Unreachable."""
        connection: psycopg.AsyncConnection = await self._shared(
            "database", self.database_url, self.no_database_reason, _open_database
        )
        return connection

    async def redis(self) -> redis_asyncio.Redis:
        """A Redis client that has answered PING; raises Unreachable."""
        client: redis_asyncio.Redis = await self._shared("redis", self.redis_url, self.no_redis_reason, _open_redis)
        return client

    async def _shared(
        self,
        name: str,
        url_of: Callable[[], Awaitable[str | None]],
        missing: Callable[[], str],
        open_: Callable[[str], Awaitable[Any]],
    ) -> Any:
        """The connection `name`, opened once; its first failure (no URL, or `open_` raising
        Unreachable) is remembered and raised again."""
        if name in self._shared_opened:
            return self._shared_opened[name]
        if name not in self._shared_errors:
            url = await url_of()
            try:
                if url is None:
                    raise Unreachable(missing())
                self._shared_opened[name] = await open_(url)
                return self._shared_opened[name]
            except Unreachable as exc:
                self._shared_errors[name] = str(exc)
        raise Unreachable(self._shared_errors[name])

    def catalog(self) -> Catalog:
        """The catalog the service would load (same resolution as `serve`); raises CatalogError."""

        if self._catalog_error is not None:
            raise self._catalog_error
        if self._catalog is None:
            try:
                self._catalog = load_catalog(resolve_catalog_path(self.settings))
            except CatalogError as exc:
                self._catalog_error = exc
                raise
        return self._catalog

    async def admin(self, path: str) -> dict[str, Any]:
        """The JSON body of an admin GET (cached); raises Unreachable with the client's message."""
        if path in self._admin:
            return self._admin[path]
        if path not in self._admin_errors:
            try:
                body = await self.clients.admin.get(path)
            except CliError as exc:
                self._admin_errors[path] = exc
            else:
                if isinstance(body, dict):
                    self._admin[path] = body
                    return body
                self._admin_errors[path] = CliError(f"unexpected {path} body from the admin API")
        error = self._admin_errors[path]
        raise Unreachable(error.message, unavailable=error.exit_code == EXIT_UNAVAILABLE)


async def need_database(diagnosis: Diagnosis) -> psycopg.AsyncConnection:
    """The database session, or SkipCheck when it is unreachable (the `postgres` row says why)."""
    try:
        return await diagnosis.database()
    except Unreachable:
        raise SkipCheck("not checked: PostgreSQL unreachable") from None


async def need_admin(diagnosis: Diagnosis, path: str) -> dict[str, Any]:
    """The admin JSON at `path`, or SkipCheck when the admin API does not answer (the `service` row says why)."""
    try:
        return await diagnosis.admin(path)
    except Unreachable as exc:
        reason = "unreachable" if exc.unavailable else f"refused: {exc}"
        raise SkipCheck(f"not checked: the service's admin API is {reason}") from None


# --- the checks -----------------------------------------------------------------------------------


async def check_settings(diagnosis: Diagnosis) -> CheckResult:
    """Settings pass the service's startup refusals and the catalog is valid; catalog warnings warn."""

    try:
        validate_settings(diagnosis.settings)
    except SettingsError as exc:
        return CheckResult(
            "settings", FAIL, str(exc), "see 'challengectl config show' for every setting and its source"
        )
    try:
        catalog = diagnosis.catalog()
    except CatalogError as exc:
        return CheckResult(
            "settings",
            FAIL,
            f"catalog has {len(exc.errors)} error(s), first: {exc.errors[0]}",
            "run 'challengectl config validate' for every error",
        )
    summary = (
        f"catalog {catalog.path}: {len(catalog.challenges)} challenges, {len(catalog.goals_by_id)} goals, "
        f"fingerprint {catalog.fingerprint}"
    )
    if catalog.warnings:
        return CheckResult(
            "settings",
            WARN,
            f"{summary}; {len(catalog.warnings)} warning(s), first: {grouped_warnings(catalog.warnings)[0]}",
            "run 'challengectl config validate' for every warning",
        )
    return CheckResult("settings", PASS, f"valid; {summary}")


async def _open_database(url: str) -> psycopg.AsyncConnection:
    """A session with the service's session options, bounded by OPERATION_TIMEOUT_S; raises Unreachable."""
    import psycopg

    from challengectl import database
    from service.storage.store import describe_target, short_reason

    try:
        return await asyncio.wait_for(
            database.connect_async(url, int(OPERATION_TIMEOUT_S * 1000), OPERATION_TIMEOUT_S),
            OPERATION_TIMEOUT_S + 1,
        )
    except TimeoutError:
        raise Unreachable(f"{describe_target(url)} did not answer within {OPERATION_TIMEOUT_S:g} s") from None
    except psycopg.Error as exc:
        raise Unreachable(f"{describe_target(url)}: {short_reason(exc, url)}") from None


async def _open_redis(url: str) -> redis_asyncio.Redis:
    """A client that has answered PING, without retries; raises Unreachable."""
    import redis.asyncio as redis_asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError

    client = redis_asyncio.Redis.from_url(
        url, socket_connect_timeout=OPERATION_TIMEOUT_S, socket_timeout=OPERATION_TIMEOUT_S, retry=Retry(NoBackoff(), 0)
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise Unreachable(_first_line(exc)) from None
    return client


async def check_postgres(diagnosis: Diagnosis) -> CheckResult:
    """PostgreSQL answers; its version; the best of three `SELECT 1` round trips under 100 ms."""
    try:
        conn = await diagnosis.database()
    except Unreachable as exc:
        return CheckResult(
            "postgres",
            FAIL,
            f"unreachable: {exc}",
            "check that PostgreSQL runs, and --database-url / DATABASE_URL (or start 'challengectl serve')",
        )
    from challengectl.pg_diagnostics import server_version_async

    version = await server_version_async(conn)
    round_trips = []
    for _ in range(3):
        started = time.perf_counter()
        await fetch_values_async(conn, "cli_ping")
        round_trips.append((time.perf_counter() - started) * 1000)
    best = min(round_trips)
    return warn_if(
        best >= POSTGRES_SLOW_MS,
        "postgres",
        f"PostgreSQL {version.split()[0]}, round trip {best:.1f} ms",
        "every request pays this latency: check the network path to the database and its load "
        "('challengectl db activity')",
    )


async def check_migrations(diagnosis: Diagnosis) -> CheckResult:
    """Every migration of this build is applied, with matching checksums and no unknown version."""
    from service.storage.migrations import MigrationError, migration_status

    await need_database(diagnosis)
    url = await diagnosis.database_url()
    assert url is not None  # need_database succeeded
    try:
        status = await asyncio.to_thread(migration_status, url)
    except MigrationError as exc:
        return CheckResult("migrations", FAIL, str(exc), "see 'challengectl db migrate --status'")
    problems = []
    if status.foreign_table:
        problems.append("schema_migrations has a foreign shape (" + ", ".join(status.foreign_columns) + ")")
    if status.pending:
        problems.append("pending " + ", ".join(f"{m.version:04d}_{m.name}" for m in status.pending))
    if status.checksum_mismatches:
        problems.append("checksum mismatch " + ", ".join(f"{v:04d}" for v in status.checksum_mismatches))
    if status.unknown_versions:
        problems.append(
            "unknown versions "
            + ", ".join(f"{v:04d}" for v in status.unknown_versions)
            + " (the database is newer than this build)"
        )
    if problems:
        hint = (
            "apply them with 'challengectl db migrate'"
            if status.pending and not status.refused
            else "see 'challengectl db migrate --status'; the service refuses to start on this database"
        )
        return CheckResult("migrations", FAIL, "; ".join(problems), hint)
    latest = max(status.applied, default=0)
    return CheckResult("migrations", PASS, f"all {len(status.applied)} applied (schema version {latest})")


async def check_catalog_rows(diagnosis: Diagnosis) -> CheckResult:
    """Rows whose goal left the catalog, or whose challenge_id differs from the catalog's, warn."""
    from psycopg import errors as pg_errors

    try:
        catalog = diagnosis.catalog()
    except CatalogError:
        raise SkipCheck("not checked: the catalog is invalid") from None
    conn = await need_database(diagnosis)
    if not await _progress_table_exists(conn):
        raise SkipCheck(f"not checked: table {PROGRESS_TABLE} does not exist (migrations pending)")
    goals = list(catalog.goals_by_id.values())
    params = {"goal_ids": [goal.goal_id for goal in goals], "challenge_ids": [goal.challenge_id for goal in goals]}
    try:
        rows = await fetch_all_async(conn, "cli_catalog_rows", CatalogRows, params)
    except pg_errors.QueryCanceled:
        return CheckResult(
            "catalog-rows",
            WARN,
            f"not verified: the scan of {PROGRESS_TABLE} took longer than {OPERATION_TIMEOUT_S:g} s",
            "run the check when the database is less busy",
        )
    if not rows:
        return CheckResult("catalog-rows", PASS, f"every row matches the catalog ({len(goals)} goals)")
    findings = []
    for row in rows:
        if row.catalog_challenge_id is None:
            findings.append(f"{row.row_count} row(s) of goal '{row.goal_id}' (not in the catalog)")
        else:
            findings.append(
                f"{row.row_count} row(s) of goal '{row.goal_id}' under challenge '{row.challenge_id}' "
                f"(catalog: '{row.catalog_challenge_id}')"
            )
    return CheckResult(
        "catalog-rows",
        WARN,
        "; ".join(findings[:5]) + ("; ..." if len(findings) > 5 else ""),
        "rows of removed goals stay unused (docs/catalog.md#questions-that-come-up); a goal cannot move to another challenge: "
        "restore it in the catalog or give the goal a new id",
    )


def _create_statement(index: ExpectedIndex) -> str:
    """The one statement that creates an expected index from scratch, for a hint. Doctor's hint names a
    plain index without IF NOT EXISTS, so it is spelled from the definition's parts."""
    if index.primary:
        return index.create_sql
    where = f" WHERE {index.predicate}" if index.predicate else ""
    return f"CREATE INDEX CONCURRENTLY {index.index_name} ON {index.table_name} ({', '.join(index.columns)}){where}"


async def check_indexes(diagnosis: Diagnosis) -> CheckResult:
    """The docs/data-model.md#indexes indexes are present, valid and defined as specified (else fail); an index duplicating
    another (the primary key counts) or an unused extra index warns."""
    from challengectl.pg_diagnostics import (
        duplicate_indexes,
        expected_index_status,
        project_indexes_async,
        unused_indexes,
    )

    conn = await need_database(diagnosis)
    if not await _progress_table_exists(conn):
        return CheckResult(
            "indexes",
            FAIL,
            f"table {PROGRESS_TABLE} does not exist",
            "apply the migrations with 'challengectl db migrate'",
        )
    indexes = await project_indexes_async(conn, (PROGRESS_TABLE,))
    by_name = {index.index_name: index for index in indexes}
    expected_by_name = {expected.index_name: expected for expected in EXPECTED_INDEXES}
    failures, fixes = [], []
    for status in expected_index_status(indexes):
        name, expected = status.index_name, expected_by_name[status.index_name]
        if status.status == "missing":
            failures.append(f"{name} missing")
            fixes.append(_create_statement(expected))
        elif status.status == "invalid":
            failures.append(f"{name} INVALID (a failed concurrent build)")
            fixes.append(f"REINDEX INDEX CONCURRENTLY {name}")
        elif status.status == "different":
            found = by_name[name]
            shape = f"({', '.join(found.columns)})" + (f" WHERE {found.predicate}" if found.predicate else "")
            failures.append(f"{name} is defined as {shape}")
            fixes.append(f"DROP INDEX CONCURRENTLY {name}; {_create_statement(expected)}")
    if failures:
        return CheckResult("indexes", FAIL, "; ".join(failures), "; ".join(fixes))
    expected_names = set(expected_by_name)
    duplicates = {
        duplicate.index_name: duplicate
        for duplicate in duplicate_indexes(indexes)
        if duplicate.index_name not in expected_names
    }
    unused = {index.index_name for index in unused_indexes(indexes)}
    warnings = []
    for index in indexes:
        described = f"{index.index_name} ({', '.join(index.columns)})"
        if index.index_name in duplicates:
            warnings.append((index.index_name, f"{described} duplicates {duplicates[index.index_name].duplicate_of}"))
        elif index.index_name in unused:
            warnings.append((index.index_name, f"{described} is unused (0 scans)"))
    if warnings:
        drops = "; ".join(f"DROP INDEX CONCURRENTLY {name}" for name, _ in warnings)
        return CheckResult(
            "indexes",
            WARN,
            "; ".join(text for _, text in warnings),
            f"{drops} (docs/data-model.md#indexes: no index may duplicate the primary key; "
            "'challengectl db indexes' shows the statistics)",
        )
    return CheckResult("indexes", PASS, f"expected present and valid: {', '.join(sorted(expected_names))}")


async def check_pg_stat_statements(diagnosis: Diagnosis) -> CheckResult:
    """pg_stat_statements is preloaded and created in this database."""
    conn = await need_database(diagnosis)
    status = await fetch_one_async(conn, "cli_statement_stats_status", StatementStatsStatus)
    assert status is not None  # the statement always yields one row
    preload, version = status.preload_libraries, status.version
    preloaded = "pg_stat_statements" in [name.strip().strip('"') for name in preload.split(",")]
    if not preloaded:
        return CheckResult(
            "pg-stat-statements", WARN, "missing: not in shared_preload_libraries", HINT_PG_STAT_STATEMENTS
        )
    if version is None:
        return CheckResult(
            "pg-stat-statements",
            WARN,
            "preloaded, but the extension is not created in this database",
            "run CREATE EXTENSION pg_stat_statements",
        )
    return CheckResult("pg-stat-statements", PASS, f"available (version {version})")


async def check_headroom(diagnosis: Diagnosis) -> CheckResult:
    """Server connections in use against the usable connections (`pg_diagnostics.ConnectionLimits`), with the
    configured pools of one instance (processes × db_pool_max, plus the flusher's)."""
    from challengectl.pg_diagnostics import connection_limits_async

    conn = await need_database(diagnosis)
    limits = await connection_limits_async(conn)
    max_connections, in_use = limits.max_connections, limits.client_sessions
    reserved = max_connections - limits.usable
    usable = max(1, limits.usable)
    share = in_use / usable
    pools = await _pool_math(diagnosis)
    observed = (
        f"{in_use} of {usable} connections in use ({share:.0%}; max_connections {max_connections}, "
        f"{reserved} reserved); {pools.text}"
    )
    hint = (
        "raise max_connections, lower db_pool_max, or pool through PgBouncer; "
        "'challengectl pool' shows who holds the connections"
    )
    if share >= HEADROOM_FAIL:
        return CheckResult("headroom", FAIL, observed, hint)
    if share >= HEADROOM_WARN:
        return CheckResult("headroom", WARN, observed, hint)
    if pools.total > usable:
        return CheckResult(
            "headroom",
            WARN,
            observed + f": above the {usable} usable connections",
            "lower db_pool_max (or workers), or raise max_connections",
        )
    return CheckResult("headroom", PASS, observed)


async def check_pool_pressure(diagnosis: Diagnosis) -> CheckResult:
    """The service's PostgreSQL pool now, by the load-test findings' rule (`challengectl.bottleneck`): no
    pressure passes; waits while PostgreSQL runs few of the pool's sessions, or PostgreSQL-side waits, warn
    with what would help (raising db_pool_max only when PostgreSQL is busy with them and has headroom)."""
    pool = (await need_admin(diagnosis, "/admin/pool")).get("db", {})
    from challengectl.pg_diagnostics import connection_limits_async

    conn = await need_database(diagnosis)
    sessions = await fetch_one_async(conn, "cli_service_sessions", ServiceSessions)
    limits = await connection_limits_async(conn)
    assert sessions is not None  # an aggregate always yields one row
    active = sessions.active
    verdicts = diagnose(pool_snapshot_evidence(pool, active, sessions.waiting, limits.free))
    if verdicts:
        return CheckResult("pool", WARN, verdicts[0].finding, verdicts[0].advice)
    return CheckResult(
        "pool",
        PASS,
        f"{pool.get('in_use', '?')} of {pool.get('max_size', '?')} checked out, {pool.get('waiting', 0)} waiting; "
        f"{active} service session(s) active in PostgreSQL",
    )


@dataclass(frozen=True)
class PoolMath:
    total: int
    text: str


async def _pool_math(diagnosis: Diagnosis) -> PoolMath:
    """One instance's PostgreSQL pools, from the running service's configuration when it answers,
    else from the local settings: processes × db_pool_max + flush_workers (the flusher's pool)."""
    source = "service"
    try:
        config = await diagnosis.admin("/admin/config")
        values = {name: int(_setting_value(config, name)) for name in ("workers", "db_pool_max", "flush_workers")}
    except (Unreachable, TypeError, ValueError):
        source = "local settings"
        values = {name: int(getattr(diagnosis.settings, name)) for name in ("workers", "db_pool_max", "flush_workers")}
    processes = service_processes(values["workers"])
    total = connections_per_instance(values["workers"], values["db_pool_max"], values["flush_workers"])
    text = (
        f"pools per instance ({source}): {processes} process(es) × db_pool_max {values['db_pool_max']} "
        f"+ {values['flush_workers']} flusher = {total}"
    )
    return PoolMath(total, text)


def _setting_value(config: dict[str, Any], name: str) -> Any:
    entry = config.get(name)
    return entry.get("value") if isinstance(entry, dict) else entry


async def check_time(diagnosis: Diagnosis) -> CheckResult:
    """TimeZone is UTC on a session opened with the service's options; clock skew to the database ≤ 1 s."""
    conn = await need_database(diagnosis)
    before = time.time()
    clock = await fetch_one_async(conn, "cli_clock", ServerClock)
    after = time.time()
    assert clock is not None  # the statement always yields one row
    zone, server_now = clock.timezone, clock.server_now
    local_now = datetime.fromtimestamp((before + after) / 2, UTC)
    skew_s = (server_now - local_now).total_seconds()
    observed = f"TimeZone {zone}, clock skew {round(skew_s * 1000):+d} ms (±{round((after - before) * 500)} ms)"
    if zone not in UTC_NAMES:
        return CheckResult(
            "time",
            WARN,
            observed,
            "service sessions must run in UTC: remove the TimeZone override from the URL's options or PGOPTIONS",
        )
    if abs(skew_s) > CLOCK_SKEW_LIMIT_S:
        return CheckResult(
            "time",
            WARN,
            observed,
            "synchronise this host and the database host with NTP (rotation boundaries use the service's clock)",
        )
    return CheckResult("time", PASS, observed)


async def check_redis(diagnosis: Diagnosis) -> CheckResult:
    """Redis answers PING (skipped with the cache disabled); unreachable warns with readyz_redis=optional."""
    if diagnosis.settings.cache_disabled():
        raise SkipCheck("cache disabled (redis_url=disabled)")
    try:
        client = await diagnosis.redis()
    except Unreachable as exc:
        if diagnosis.settings.readyz_redis == "optional":
            return CheckResult(
                "redis",
                WARN,
                f"unreachable: {exc}",
                "the service serves from PostgreSQL meanwhile (readyz_redis=optional); "
                "check that Redis runs, and --redis-url / REDIS_URL",
            )
        return CheckResult(
            "redis",
            FAIL,
            f"unreachable: {exc}",
            "check that Redis runs, and --redis-url / REDIS_URL (or REDIS_URL=disabled to run without a cache)",
        )
    started = time.perf_counter()
    await client.ping()
    ping_ms = (time.perf_counter() - started) * 1000
    info = await client.info("server")
    return CheckResult("redis", PASS, f"Redis {info.get('redis_version')}, PING {ping_ms:.1f} ms")


async def check_redis_eviction(diagnosis: Diagnosis) -> CheckResult:
    """maxmemory-policy volatile-* passes; noeviction and allkeys-* warn."""
    if diagnosis.settings.cache_disabled():
        raise SkipCheck("cache disabled (redis_url=disabled)")
    try:
        client = await diagnosis.redis()
    except Unreachable:
        raise SkipCheck("not checked: Redis unreachable") from None
    memory = await client.info("memory")
    policy = str(memory.get("maxmemory_policy"))
    limit = int(memory.get("maxmemory") or 0)
    observed = f"maxmemory-policy {policy}, maxmemory {_human_bytes(limit) if limit else 'unlimited'}"
    if policy.startswith("volatile-"):
        return CheckResult("redis-eviction", PASS, observed)
    if policy.startswith("allkeys-"):
        return CheckResult(
            "redis-eviction",
            WARN,
            observed,
            "allkeys-* can evict the users' cache tokens (keys without a TTL), breaking read-your-writes; "
            "use maxmemory-policy volatile-lru",
        )
    return CheckResult(
        "redis-eviction",
        WARN,
        observed,
        "with noeviction a full Redis refuses writes and the cache degrades; "
        "set maxmemory and maxmemory-policy volatile-lru",
    )


async def check_service(diagnosis: Diagnosis) -> CheckResult:
    """REST `/readyz` answers 200, gRPC health says SERVING, and the admin API answers."""
    parts = await asyncio.gather(_rest_readiness(diagnosis), _grpc_health(diagnosis), _admin_reachable(diagnosis))
    observed = ", ".join(part.text for part in parts)
    if all(part.ok for part in parts):
        return CheckResult("service", PASS, observed)
    if any(part.unreachable for part in parts):
        hint = HINT_SERVICE
    elif not parts[2].ok:
        hint = "set CHALLENGE_ADMIN_TOKEN to the service's admin_token"
    else:
        hint = "the service is not ready: the rows above name the failing dependency"
    return CheckResult("service", FAIL, observed, hint)


@dataclass(frozen=True)
class ServicePart:
    ok: bool
    text: str
    unreachable: bool = False


async def _rest_readiness(diagnosis: Diagnosis) -> ServicePart:
    try:
        response = await diagnosis.clients.api.send("GET", "/readyz", accept=(503,))
    except CliError as exc:
        return ServicePart(False, f"REST: {exc.message}", unreachable=exc.exit_code == EXIT_UNAVAILABLE)
    body = response.body if isinstance(response.body, dict) else {}
    diagnosis.readiness = body
    if response.status == 200:
        return ServicePart(True, "REST /readyz 200")
    return ServicePart(False, f"REST /readyz {response.status} ({body.get('message', 'not ready')})")


async def _grpc_health(diagnosis: Diagnosis) -> ServicePart:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = diagnosis.settings.grpc_addr
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=OPERATION_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            unreachable = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            return ServicePart(False, f"gRPC health at {target}: {exc.code().name}", unreachable)
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return ServicePart(answer.status == health_pb2.HealthCheckResponse.SERVING, f"gRPC {state}")


async def _admin_reachable(diagnosis: Diagnosis) -> ServicePart:
    try:
        await diagnosis.admin("/admin/config")
    except Unreachable as exc:
        return ServicePart(False, f"admin: {exc}", unreachable=exc.unavailable)
    return ServicePart(True, "admin reachable")


async def check_cache_ratio(diagnosis: Diagnosis) -> CheckResult:
    """The service's cache hit ratio (/admin/cache): ≥ 90 % passes, lower warns, no traffic passes."""
    stats = await need_admin(diagnosis, "/admin/cache")
    if not stats.get("enabled", True):
        raise SkipCheck("cache disabled in the service")
    hits, misses = int(stats.get("hits") or 0), int(stats.get("misses") or 0)
    if stats.get("bypass"):
        return CheckResult(
            "cache-ratio",
            WARN,
            f"cache bypassed (Redis unhealthy); {hits} hits, {misses} misses",
            "check the redis row; the service reads from PostgreSQL meanwhile",
        )
    ratio = hit_ratio(hits, misses)
    if ratio is None:
        return CheckResult("cache-ratio", PASS, "no traffic")
    return warn_if(
        ratio < CACHE_RATIO_WARN,
        "cache-ratio",
        f"{ratio:.1%} ({hits} hits, {misses} misses)",
        "normal right after a start or a 'cache flush'; otherwise check evictions and cache_ttl_s "
        "('challengectl cache stats')",
    )


async def check_buffer(diagnosis: Diagnosis) -> CheckResult:
    """The event buffer's fill (/admin/buffer): < 50 % passes, ≥ 50 % warns, ≥ 90 % fails; failing
    flushes fail too (the flusher failing now per readiness, or entries stuck for over a minute while
    flushes have failed: the admin counters carry no failure time)."""
    stats = await need_admin(diagnosis, "/admin/buffer")
    entries, capacity = int(stats.get("entries") or 0), max(1, int(stats.get("capacity") or 1))
    failures = int(stats.get("flush_failures_total") or 0)
    oldest_ms = float(stats.get("oldest_entry_age_ms") or 0.0)
    share = entries / capacity
    observed = (
        f"{entries} of {capacity} entries ({share:.0%}), {stats.get('flushes_total', 0)} flushes, "
        f"{failures} flush failures since start"
    )
    flusher = ((diagnosis.readiness or {}).get("checks") or {}).get("flusher") or {}
    if flusher.get("ok") is False or (failures and oldest_ms > STALLED_ENTRY_MS):
        return CheckResult(
            "buffer",
            FAIL,
            observed + f"; flushes failing (oldest entry {oldest_ms / 1000:.0f} s)",
            "check PostgreSQL (the postgres and headroom rows) and the service's log",
        )
    if share >= BUFFER_FAIL:
        return CheckResult(
            "buffer",
            FAIL,
            observed,
            "flushes cannot keep up: check flush_ms_p95 in /admin/buffer, database load, and raise flush_workers",
        )
    if share >= BUFFER_WARN:
        return CheckResult("buffer", WARN, observed, "the buffer is filling: check database load and flush_workers")
    return CheckResult("buffer", PASS, observed)


async def check_jwt_secret(diagnosis: Diagnosis) -> CheckResult:
    """The HS256 secret file in use has mode 0600 or stricter; skipped when no file is in use."""
    from service.transport.auth import SECRET_FILE_NAME

    settings = diagnosis.settings
    if settings.auth == "none":
        raise SkipCheck("auth=none: no JWT secret")
    if settings.jwt_secret_file:
        path = Path(settings.jwt_secret_file).expanduser()
    elif settings.jwt_secret or settings.jwt_jwks_url:
        raise SkipCheck("no secret file in use (" + ("jwt_secret" if settings.jwt_secret else "JWKS") + ")")
    else:
        path = settings.resolved_data_dir() / SECRET_FILE_NAME
        if not path.exists():
            raise SkipCheck("no secret file in use")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        return CheckResult(
            "jwt-secret", FAIL, f"{path}: {exc.strerror or exc}", "check --jwt-secret-file / CHALLENGE_JWT_SECRET_FILE"
        )
    if mode & 0o077:
        return CheckResult("jwt-secret", FAIL, f"{path} has mode {mode:04o}", f"chmod 600 {path}")
    return CheckResult("jwt-secret", PASS, f"{path} has mode {mode:04o}")


# --- the table and the runner ---------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    id: str
    name: str
    run: Callable[[Diagnosis], Awaitable[CheckResult]]


CHECKS: tuple[Check, ...] = (
    Check("settings", "settings and catalog", check_settings),
    Check("postgres", "PostgreSQL", check_postgres),
    Check("migrations", "migrations", check_migrations),
    Check("catalog-rows", "catalog vs rows", check_catalog_rows),
    Check("indexes", "indexes", check_indexes),
    Check("pg-stat-statements", "pg_stat_statements", check_pg_stat_statements),
    Check("headroom", "connection headroom", check_headroom),
    Check("pool", "service DB pool pressure", check_pool_pressure),
    Check("time", "time", check_time),
    Check("redis", "Redis", check_redis),
    Check("redis-eviction", "Redis eviction policy", check_redis_eviction),
    Check("service", "REST /readyz, gRPC health, admin", check_service),
    Check("cache-ratio", "cache hit ratio (service)", check_cache_ratio),
    Check("buffer", "event buffer", check_buffer),
    Check("jwt-secret", "JWT secret file", check_jwt_secret),
)
CHECK_IDS = tuple(check.id for check in CHECKS)
CHECK_NAMES = {check.id: check.name for check in CHECKS}


async def run_check(check: Check, diagnosis: Diagnosis) -> CheckResult:
    """Run one check within CHECK_DEADLINE_S; a dependency failing mid-check is a failed row."""
    import psycopg
    from redis.exceptions import RedisError

    from service.storage.store import short_reason

    try:
        return await asyncio.wait_for(check.run(diagnosis), CHECK_DEADLINE_S)
    except SkipCheck as skipped:
        return CheckResult(check.id, SKIP, str(skipped))
    except TimeoutError:
        return CheckResult(
            check.id,
            FAIL,
            f"no answer within {CHECK_DEADLINE_S:g} s",
            "the dependency is overloaded or hanging; rerun with --debug",
        )
    except psycopg.Error as exc:
        return CheckResult(check.id, FAIL, f"PostgreSQL error: {short_reason(exc)}", "rerun with --debug")
    except (RedisError, OSError) as exc:
        return CheckResult(check.id, FAIL, f"Redis error: {_first_line(exc)}", "rerun with --debug")


async def run_checks(diagnosis: Diagnosis, skip: Collection[str] = ()) -> list[CheckResult]:
    """Every check of the table in order, except those in `skip`."""
    return [await run_check(check, diagnosis) for check in CHECKS if check.id not in skip]


async def _progress_table_exists(conn: psycopg.AsyncConnection) -> bool:
    return bool(await fetch_values_async(conn, "cli_existing_tables", {"tables": [PROGRESS_TABLE]}))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"

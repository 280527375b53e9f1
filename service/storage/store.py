"""PostgreSQL connection pool of the service: opening, session settings, health probe and stats.

Every pooled session runs with `TimeZone=UTC` and the configured `statement_timeout`, passed as libpq
startup options so that no extra round trip is spent on session setup (docs/data-model.md#time, docs/configuration.md#service-settings). By default
the pool's connections are in autocommit mode: a single-statement read or write is one round trip
(no BEGIN/COMMIT), and multi-statement work opens an explicit `conn.transaction()`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from prometheus_client import Histogram
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service.storage.availability import Availability
from service.storage.registry import NamedQuery, Registry
from service.telemetry.metrics import LATENCY_BUCKETS
from service.telemetry.pool_stats import PoolUsage

POOL_ROLES = ("service", "flusher", "cli")

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """PostgreSQL cannot be reached or did not answer in time.

    The message names the target (host, port, database; never the password) and a short reason.
    """

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"PostgreSQL {target} unavailable: {reason}")
        self.target = target
        self.reason = reason


@dataclass(frozen=True)
class PoolConfig:
    """Sizing and timeouts of one pool (docs/configuration.md#service-settings `db_pool_*`, `db_statement_timeout_ms`, `db_conn_*`)."""

    min_size: int = 2
    max_size: int = 20
    timeout_ms: int = 2000
    statement_timeout_ms: int = 5000
    max_lifetime_s: float = 300
    max_idle_s: float = 300
    # How long open_pool waits for min_size connections before giving up; the caller retries.
    open_timeout_s: float = 5.0
    # How long the pool keeps retrying a lost connection (with growing pauses) before dropping the
    # attempt; afterwards it regrows on demand, at once, instead of at the next pause of a long backoff.
    reconnect_timeout_s: float = 2.0
    autocommit: bool = True
    # Statements planned once on each of the min_size connections before the pool hands it out (`warm_connection`).
    warm_statements: tuple[NamedQuery, ...] = ()


def describe_target(conninfo: str) -> str:
    """`host:port/dbname` of a libpq conninfo or URL, with libpq's environment defaults; no secrets."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "(unparseable connection string)"
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    user = params.get("user") or os.environ.get("PGUSER") or ""
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user or "(default)")
    return f"{host}:{port}/{dbname}"


def short_reason(error: BaseException, conninfo: str | None = None) -> str:
    """The first meaningful line of a driver error, with the password of `conninfo` redacted."""
    diag = getattr(error, "diag", None)
    primary = diag.message_primary if diag is not None else None
    text = primary or str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    # Client-side libpq errors read "connection failed: connection to server at ... failed: <why>";
    # the target is reported separately, so keep the why.
    if primary is None and "failed:" in reason:
        reason = reason.rsplit("failed:", 1)[1].strip() or reason
    password = _password_of(conninfo) if conninfo else None
    if password:
        reason = reason.replace(password, "****")
    return reason


def _is_transaction_rollback(error: psycopg.Error) -> bool:
    """SQLSTATE class 40 (serialization failure, deadlock): retryable, not an outage.

    psycopg does not derive every class-40 error from TransactionRollback, so test the code itself.
    """
    return (error.sqlstate or "").startswith("40")


def _password_of(conninfo: str) -> str | None:
    try:
        value = conninfo_to_dict(conninfo).get("password")
    except psycopg.ProgrammingError:
        return None
    return str(value) if value else None


def session_options(conninfo: str, statement_timeout_ms: int | None = None) -> str:
    """libpq `options` setting the session's TimeZone (and statement_timeout when given).

    They are appended to any options the conninfo already has, so an operator's own settings survive.
    """
    existing = str(conninfo_to_dict(conninfo).get("options") or "").strip()
    ours = "-c TimeZone=UTC"
    if statement_timeout_ms is not None:
        ours += f" -c statement_timeout={int(statement_timeout_ms)}"
    return f"{existing} {ours}".strip()


async def open_pool(conninfo: str, role: str, config: PoolConfig) -> AsyncConnectionPool:
    """Open a pool for `role` (`service`, `flusher`, `cli`) and wait until min_size connections exist.

    Sessions are named `challengectl-<role>` in pg_stat_activity. Raises StoreUnavailable, naming
    host/port/database and the driver's reason, when the pool is not ready within
    `config.open_timeout_s`.
    """
    if role not in POOL_ROLES:
        raise ValueError(f"unknown pool role {role!r}; expected one of {', '.join(POOL_ROLES)}")
    target = describe_target(conninfo)
    connect_kwargs: dict[str, Any] = {
        "application_name": f"challengectl-{role}",
        "options": session_options(conninfo, config.statement_timeout_ms),
        "autocommit": config.autocommit,
    }
    if "connect_timeout" not in conninfo_to_dict(conninfo):
        # libpq rounds values below 2 s up to 2 s; an unanswered SYN must not outlive the open timeout.
        connect_kwargs["connect_timeout"] = max(2, round(config.open_timeout_s))
    statements = config.warm_statements

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        # Only the min_size connections: one beyond them is opened for a burst (the requests it was opened for
        # want it now, and its 12 ms of planning would add to the burst's database load).
        stats = pool.get_stats()
        if stats.get("pool_size", 0) <= config.min_size and not stats.get("requests_waiting", 0):
            await warm_connection(conn, statements)

    pool = AsyncConnectionPool(
        conninfo,
        kwargs=connect_kwargs,
        configure=configure if statements else None,
        min_size=config.min_size,
        max_size=config.max_size,
        timeout=config.timeout_ms / 1000,
        max_lifetime=config.max_lifetime_s,
        max_idle=config.max_idle_s,
        reconnect_timeout=config.reconnect_timeout_s,
        name=f"challengectl-{role}",
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=config.open_timeout_s)
    except PoolTimeout:
        # The pool only says "initialization incomplete"; one direct attempt tells the on-call why.
        reason = await _probe_connection_failure(conninfo, connect_kwargs)
        raise StoreUnavailable(target, f"no connection within {config.open_timeout_s:g} s ({reason})") from None
    except psycopg.Error as error:
        await pool.close()
        raise StoreUnavailable(target, short_reason(error, conninfo)) from None
    return pool


# A value of each declared parameter type, for planning a statement without running it.
_SAMPLE_VALUES: dict[str, Any] = {
    "text": "",
    "bigint": 0,
    "integer": 0,
    "boolean": False,
    "timestamptz": datetime(2000, 1, 1, tzinfo=UTC),
}


def _sample_params(statement: NamedQuery) -> dict[str, Any]:
    """A parameter of the declared type for each placeholder (an array type gets an empty list)."""
    return {param.name: [] if param.type.endswith("[]") else _SAMPLE_VALUES[param.type] for param in statement.params}


async def warm_connection(conn: psycopg.AsyncConnection[Any], statements: Sequence[NamedQuery]) -> int:
    """Plan each statement once (`EXPLAIN`: nothing runs, nothing is written); returns how many were planned.

    A new backend loads the catalog entries of every table, index and view a statement touches the first
    time it plans it: several ms for the player statements, paid by the first requests on that connection
    when the pool grows under a burst (bench/README.md, "The new-player wave"). Done here, in the pool's
    `configure` step (for the pool's `min_size` connections, while no request waits), the cost falls before
    the connection serves anyone. A statement that fails to plan is skipped: warming never fails a connection.
    """
    planned = 0
    for statement in statements:
        try:
            await conn.execute(f"EXPLAIN {statement.sql}", _sample_params(statement))
            planned += 1
        except psycopg.Error as error:
            log.warning("planning %s on a new connection failed: %s", statement.name, short_reason(error))
    return planned


async def _probe_connection_failure(conninfo: str, connect_kwargs: dict[str, Any]) -> str:
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, **connect_kwargs)
    except psycopg.Error as error:
        return short_reason(error, conninfo)
    await conn.close()
    return "the server accepted a direct connection; the pool could not reach min_size in time"


class Store:
    """The service's handle on one PostgreSQL pool: connections, readiness probes, stats and shutdown."""

    def __init__(self, pool: AsyncConnectionPool, availability: Availability | None = None) -> None:
        """`availability`: share another Store's, when both pools reach the same server."""
        self.pool = pool
        self.target = describe_target(pool.conninfo if isinstance(pool.conninfo, str) else "")
        self.usage = PoolUsage()
        self.availability = availability or Availability(self._probe, self._reason, lambda: not pool.closed)
        self._owns_availability = availability is None
        self.availability.on_recovery(pool.check)

    @classmethod
    async def open(cls, conninfo: str, role: str, config: PoolConfig) -> Store:
        """Open a pool (see `open_pool`) and wrap it."""
        return cls(await open_pool(conninfo, role, config))

    @asynccontextmanager
    async def connection(self, timeout_s: float | None = None) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection; an acquire timeout or a lost server raises StoreUnavailable.

        Database errors other than connectivity ones pass through: constraint violations, and
        deadlocks and serialization failures, which the caller may retry once (docs/rules.md#batch-select).
        """
        if self.availability.down_reason is not None:
            raise StoreUnavailable(self.target, self.availability.down_reason)
        started = time.perf_counter()
        try:
            async with self.pool.connection(timeout=timeout_s) as conn:
                self.usage.acquired(time.perf_counter() - started)
                try:
                    yield conn
                finally:
                    self.usage.released()
        except PoolTimeout:
            self.availability.suspect()
            waited = timeout_s if timeout_s is not None else self.pool.timeout
            raise StoreUnavailable(self.target, f"no pooled connection free within {waited:g} s") from None
        except psycopg.OperationalError as error:
            if _is_transaction_rollback(error):
                raise
            self.availability.suspect(connection_lost=True)
            raise StoreUnavailable(self.target, self._reason(error)) from None

    async def _probe(self) -> None:
        """One direct connection and `SELECT 1` (availability probe). A server that answers with an
        error other than "cannot connect now" (57P..., starting up or shutting down) is reachable: a
        full `max_connections` is overload, not an outage."""
        try:
            kwargs = self.pool.kwargs if isinstance(self.pool.kwargs, dict) else {}
            assert isinstance(self.pool.conninfo, str)  # open_pool always passes the URL itself
            conn = await psycopg.AsyncConnection.connect(self.pool.conninfo, **kwargs)
        except psycopg.Error as error:
            if error.sqlstate is None or error.sqlstate.startswith("57P"):
                raise
            return
        try:
            await conn.execute("SELECT 1")
        finally:
            await conn.close()

    def _reason(self, error: BaseException) -> str:
        return short_reason(error, self.pool.conninfo if isinstance(self.pool.conninfo, str) else None)

    async def ping(self, timeout_s: float = 1.0) -> float:
        """Run `SELECT 1` through the pool; return the latency in ms (acquire included)."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                async with self.connection(timeout_s=timeout_s) as conn:
                    await conn.execute("SELECT 1")
        except TimeoutError:
            raise StoreUnavailable(self.target, f"no answer to SELECT 1 within {timeout_s:g} s") from None
        return (time.perf_counter() - started) * 1000

    async def schema_version(self, timeout_s: float = 1.0) -> int | None:
        """Highest version recorded in `schema_migrations` (readiness); None before any migration."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self.connection(timeout_s=timeout_s) as conn:
                    cursor = await conn.execute("SELECT max(version) FROM schema_migrations")
                    row = await cursor.fetchone()
        except pg_errors.UndefinedTable:
            return None
        except TimeoutError:
            raise StoreUnavailable(self.target, f"no answer from schema_migrations within {timeout_s:g} s") from None
        return row[0] if row else None

    def stats(self) -> dict[str, float | int]:
        """The pool's numbers under the `db` keys of `/admin/pool` (docs/http-api.md#admin-and-metrics): psycopg_pool's stats,
        plus `peak_in_use` and the acquire-wait percentiles that this Store measures (`self.usage`).

        `acquire_timeouts` counts failed acquires (timeouts; the pool queue is unbounded, so never
        "too many requests"). The peak is never below the current `in_use`.
        """
        raw = self.pool.get_stats()
        size = raw.get("pool_size", 0)
        idle = raw.get("pool_available", 0)
        max_size = raw.get("pool_max", self.pool.max_size)
        in_use = max(size - idle, 0)
        attempts = raw.get("connections_num", 0)
        connection_errors = raw.get("connections_errors", 0)
        return {
            "min_size": raw.get("pool_min", self.pool.min_size),
            "max_size": max_size,
            "size": size,
            "in_use": in_use,
            "idle": idle,
            "waiting": raw.get("requests_waiting", 0),
            "utilisation": in_use / max_size if max_size else 0.0,
            **self.usage.snapshot(in_use),
            "acquire_count": raw.get("requests_num", 0),
            "acquire_wait_ms_total": raw.get("requests_wait_ms", 0),
            "acquire_timeouts": raw.get("requests_errors", 0),
            "connections_created": attempts - connection_errors,
            "connection_errors": connection_errors,
            "connections_lost": raw.get("connections_lost", 0),
        }

    def waiting_at_max_size(self) -> int:
        """Requests queued for a connection while the pool is at its max size; 0 while it can still grow,
        since those requests wait only for a connection being opened (admission control reads this)."""
        stats = self.pool.get_stats()
        if stats.get("pool_size", 0) < self.pool.max_size:
            return 0
        return stats.get("requests_waiting", 0)

    def reset_peaks(self) -> None:
        """Restart `peak_in_use` from the connections in use now (`POST /admin/reset-peaks`)."""
        self.usage.reset_peak()

    async def close(self) -> None:
        """Stop the availability probe; close the pool and every connection it holds."""
        if self._owns_availability:
            await self.availability.close()
        await self.pool.close()


QUERY_SECONDS = Histogram(
    "challenge_db_query_duration_seconds",
    "Duration of each named query",
    ["query"],
    buckets=LATENCY_BUCKETS,
)


def _has_rows(cursor: psycopg.AsyncCursor[Any]) -> bool:
    """Whether the last statement returned a result set (a SELECT or `RETURNING`, even with no rows)."""
    result = cursor.pgresult
    return result is not None and result.status == pq.ExecStatus.TUPLES_OK


# psycopg parses a statement's `%(name)s` placeholders on every execute and caches the result only for texts of at
# most this many bytes; a longer statement (the flush's, ~9 kB: ~50-110 us of CPU per execute, `bench/README.md`) is
# converted once to `$n` placeholders and run on a raw cursor, which sends it as it is.
PSYCOPG_QUERY_CACHE_MAX = 4096


class Queries:
    """Runs the statements of the named-query registry by name, binding parameters only (docs/data-model.md#named-queries),
    and records each statement's duration under its name."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._sql = {query.name: query.sql for query in registry}
        self._numbered = {
            query.name: query.numbered() for query in registry if len(query.sql) > PSYCOPG_QUERY_CACHE_MAX
        }
        self._timers = {name: QUERY_SECONDS.labels(name) for name in self._sql}

    async def rows(
        self,
        conn: psycopg.AsyncConnection,
        name: str,
        params: Mapping[str, Any],
        row_factory: Any = dict_row,
    ) -> list[Any]:
        """All rows of the named statement (dicts by default; pass `class_row(T)` for typed rows)."""
        started = time.perf_counter()
        numbered = self._numbered.get(name)
        cursor = (
            conn.cursor(row_factory=row_factory)
            if numbered is None
            else psycopg.AsyncRawCursor(conn, row_factory=row_factory)
        )
        async with cursor:
            if numbered is None:
                await cursor.execute(self._statement(name), params)
            else:
                await cursor.execute(numbered[0], [params[param] for param in numbered[1]])
            # The result's status rather than `description`, which builds a Column object per column on every call.
            result = await cursor.fetchall() if _has_rows(cursor) else []
        self._timers[name].observe(time.perf_counter() - started)
        return result

    async def one(
        self, conn: psycopg.AsyncConnection, name: str, params: Mapping[str, Any], row_factory: Any = dict_row
    ) -> Any | None:
        """The first row of the named statement, or None."""
        found = await self.rows(conn, name, params, row_factory)
        return found[0] if found else None

    def _statement(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            self.registry.get(name)  # raises UnknownQueryError with the close matches
            raise

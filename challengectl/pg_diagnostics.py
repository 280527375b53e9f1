"""PostgreSQL data access for `challengectl db activity|queries|indexes|tables` (docs/diagnostics.md#postgresql): the SQL,
the reads, and typed records for their rows. Rendering lives in `challengectl/commands/db.py`.

SQL is composed only from the constant fragments of this module and identifiers quoted with
`psycopg.sql`; every value is a bound parameter. Everything here reads, except the three destructive
actions the CLI confirms first (docs/cli.md#destructive-actions): `signal_backend` (cancel/terminate),
`reset_statement_stats` and `create_suggested_index`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from challengectl.expected_indexes import EXPECTED_INDEXES, PROGRESS_TABLE, ExpectedIndex, IndexKey, is_covered_by

PROJECT_TABLES = (PROGRESS_TABLE, "reward_grants")
QUERY_TEXT_CHARS = 200


# --- server ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """Server settings and database-wide numbers (docs/diagnostics.md#postgresql "Server settings", "Sizes", cache hit)."""

    server_version: str
    server_version_num: int
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int  # PostgreSQL 16+; 0 before
    shared_buffers: str
    work_mem: str
    shared_preload_libraries: str | None  # None: the role may not read it
    timezone: str
    database: str
    database_size_bytes: int
    blks_hit: int
    blks_read: int
    stats_reset: datetime | None

    @property
    def usable_connections(self) -> int:
        return usable_connections(self.max_connections, self.superuser_reserved_connections, self.reserved_connections)

    @property
    def cache_hit_pct(self) -> float | None:
        return hit_pct(self.blks_hit, self.blks_read)


def usable_connections(max_connections: int, superuser_reserved: int, reserved: int) -> int:
    """Connections open to ordinary roles such as the service's, the one formula of every report:
    `max_connections − superuser_reserved_connections − reserved_connections`."""
    return max_connections - superuser_reserved - reserved


# The connection limits as columns, for the statements that report usable connections.
CONNECTION_LIMIT_COLUMNS = """current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       coalesce(current_setting('reserved_connections', true), '0')::int AS reserved_connections"""


_SERVER_INFO = f"""
SELECT current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       {CONNECTION_LIMIT_COLUMNS},
       current_setting('shared_buffers') AS shared_buffers,
       current_setting('work_mem') AS work_mem,
       (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries') AS shared_preload_libraries,
       current_setting('TimeZone') AS timezone,
       current_database() AS database,
       pg_database_size(current_database()) AS database_size_bytes,
       coalesce(d.blks_hit, 0) AS blks_hit,
       coalesce(d.blks_read, 0) AS blks_read,
       d.stats_reset
FROM (SELECT 1) AS one
LEFT JOIN pg_stat_database d ON d.datname = current_database()
"""


def server_info(conn: psycopg.Connection) -> ServerInfo:
    """Version, connection limits, memory settings, preload libraries, database size and block hits."""
    with conn.cursor(row_factory=class_row(ServerInfo)) as cur:
        row = cur.execute(_SERVER_INFO).fetchone()
    assert row is not None  # the statement always yields one row
    return row


def hit_pct(hit: int | None, read: int | None) -> float | None:
    """`100 × hit / (hit + read)`, or None when nothing was read at all."""
    total = (hit or 0) + (read or 0)
    return round(100.0 * (hit or 0) / total, 2) if total else None


# --- activity -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionCount:
    """Client sessions of the current database with one state and one application_name."""

    state: str
    application_name: str
    connections: int
    waiting_on_client: int


@dataclass(frozen=True)
class ConnectionSummary:
    """Sessions of the current database by state and application, and the server-wide total."""

    groups: list[ConnectionCount]
    in_database: int
    on_server: int


_CONNECTIONS_BY_STATE = """
SELECT coalesce(state, 'unknown') AS state,
       coalesce(application_name, '') AS application_name,
       count(*)::int AS connections,
       (count(*) FILTER (WHERE wait_event_type = 'Client'))::int AS waiting_on_client
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
GROUP BY 1, 2
ORDER BY 3 DESC, 1, 2
"""

_CONNECTIONS_ON_SERVER = "SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend'"


def connection_summary(conn: psycopg.Connection) -> ConnectionSummary:
    """Counts by `state` and `application_name` (incl. waiting on the client) and the server total."""
    with conn.cursor(row_factory=class_row(ConnectionCount)) as cur:
        groups = cur.execute(_CONNECTIONS_BY_STATE).fetchall()
    on_server = conn.execute(_CONNECTIONS_ON_SERVER).fetchone()
    return ConnectionSummary(
        groups=groups,
        in_database=sum(group.connections for group in groups),
        on_server=int(on_server[0]) if on_server else 0,
    )


@dataclass(frozen=True)
class SessionActivity:
    """One backend of `pg_stat_activity`; `duration_ms` runs from `query_start`, or from `xact_start`
    for a session idle in a transaction; `query` is cut to 200 characters."""

    pid: int
    usename: str | None
    application_name: str | None
    client_addr: str | None
    state: str | None
    wait_event_type: str | None
    wait_event: str | None
    duration_ms: float | None
    query: str | None


_SESSION_COLUMNS = f"""
SELECT pid, usename::text AS usename, application_name, host(client_addr) AS client_addr, state,
       wait_event_type, wait_event,
       (1000 * extract(epoch FROM now() - CASE WHEN state LIKE 'idle in transaction%%' THEN xact_start
                                               ELSE query_start END))::float8 AS duration_ms,
       left(query, {QUERY_TEXT_CHARS}) AS query
FROM pg_stat_activity
"""

_LONG_RUNNING = f"""
SELECT * FROM ({_SESSION_COLUMNS}
  WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
    AND CASE WHEN %(state)s::text IS NULL THEN state IS DISTINCT FROM 'idle' ELSE state = %(state)s END
) AS sessions
WHERE coalesce(duration_ms, 0) >= %(min_duration_ms)s
ORDER BY duration_ms DESC NULLS LAST, pid
"""


def long_running(conn: psycopg.Connection, min_duration_ms: float, state: str | None = None) -> list[SessionActivity]:
    """Sessions other than this one, running at least `min_duration_ms`, longest first: the non-idle
    ones, or those in `state` when given."""
    with conn.cursor(row_factory=class_row(SessionActivity)) as cur:
        return cur.execute(_LONG_RUNNING, {"state": state, "min_duration_ms": min_duration_ms}).fetchall()


def find_backend(conn: psycopg.Connection, pid: int) -> SessionActivity | None:
    """The backend with process id `pid` (any database), or None."""
    with conn.cursor(row_factory=class_row(SessionActivity)) as cur:
        return cur.execute(_SESSION_COLUMNS + "WHERE pid = %(pid)s", {"pid": pid}).fetchone()


@dataclass(frozen=True)
class BlockedSession:
    """A backend waiting for a lock: the ungranted lock (mode, type, relation, wait so far) and the
    pids `pg_blocking_pids` names as its blockers."""

    pid: int
    usename: str | None
    application_name: str | None
    state: str | None
    wait_event_type: str | None
    wait_event: str | None
    query_ms: float | None
    lock_wait_ms: float | None
    lock_mode: str | None
    lock_type: str | None
    relation: str | None
    query: str | None
    blocker_pids: list[int]


@dataclass(frozen=True)
class BlockerSession:
    """A backend that holds a lock others wait for; `blocked_by` is non-empty when it waits as well."""

    pid: int
    usename: str | None
    application_name: str | None
    state: str | None
    xact_age_ms: float | None
    query: str | None
    blocked_by: list[int]


# `pg_locks.waitstart` exists from PostgreSQL 14; before that the wait is timed from the state change.
_WAITSTART = sql.SQL("waitstart")
_NO_WAITSTART = sql.SQL("NULL::timestamptz")

_BLOCKED_SESSIONS = """
SELECT a.pid, a.usename::text AS usename, a.application_name, a.state, a.wait_event_type, a.wait_event,
       (1000 * extract(epoch FROM now() - a.query_start))::float8 AS query_ms,
       (1000 * extract(epoch FROM now() - coalesce(waiting.waitstart, a.state_change)))::float8 AS lock_wait_ms,
       waiting.mode AS lock_mode, waiting.locktype AS lock_type,
       coalesce(waiting.relation, tuple_lock.relation)::regclass::text AS relation,
       left(a.query, {query_chars}) AS query,
       pg_blocking_pids(a.pid) AS blocker_pids
FROM pg_stat_activity a
LEFT JOIN LATERAL (
  SELECT l.mode, l.locktype, l.relation, {waitstart} AS waitstart
  FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted LIMIT 1
) AS waiting ON true
-- A row-lock wait is on the holder's transaction id; the tuple lock names the table.
LEFT JOIN LATERAL (
  SELECT l.relation FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'tuple' LIMIT 1
) AS tuple_lock ON true
WHERE a.datname = current_database() AND cardinality(pg_blocking_pids(a.pid)) > 0
ORDER BY lock_wait_ms DESC NULLS LAST, a.pid
"""

_BLOCKERS = f"""
SELECT pid, usename::text AS usename, application_name, state,
       (1000 * extract(epoch FROM now() - xact_start))::float8 AS xact_age_ms,
       left(query, {QUERY_TEXT_CHARS}) AS query,
       pg_blocking_pids(pid) AS blocked_by
FROM pg_stat_activity
WHERE pid = ANY(%(pids)s)
ORDER BY pid
"""


def blocked_sessions_sql(server_version_num: int) -> sql.Composed:
    """The blocked-sessions statement for a server version (lock wait start from PostgreSQL 14)."""
    waitstart = _WAITSTART if server_version_num >= 140000 else _NO_WAITSTART
    return sql.SQL(_BLOCKED_SESSIONS).format(waitstart=waitstart, query_chars=sql.Literal(QUERY_TEXT_CHARS))


def blocking_chains(
    conn: psycopg.Connection, server_version_num: int
) -> tuple[list[BlockedSession], dict[int, BlockerSession]]:
    """Every blocked backend of the current database, and every backend blocking one, by pid."""
    with conn.cursor(row_factory=class_row(BlockedSession)) as cur:
        blocked = cur.execute(blocked_sessions_sql(server_version_num)).fetchall()
    pids = sorted({pid for session in blocked for pid in session.blocker_pids})
    if not pids:
        return blocked, {}
    with conn.cursor(row_factory=class_row(BlockerSession)) as cur:
        blockers = cur.execute(_BLOCKERS, {"pids": pids}).fetchall()
    return blocked, {blocker.pid: blocker for blocker in blockers}


SIGNALS = {
    "cancel": sql.SQL("SELECT pg_cancel_backend(%(pid)s)"),
    "terminate": sql.SQL("SELECT pg_terminate_backend(%(pid)s)"),
}


def signal_backend(conn: psycopg.Connection, pid: int, action: str) -> bool:
    """Destructive: `pg_cancel_backend` (action `cancel`) or `pg_terminate_backend` (`terminate`).
    Returns what PostgreSQL returned (False: the signal was not sent)."""
    row = conn.execute(SIGNALS[action], {"pid": pid}).fetchone()
    return bool(row and row[0])


# --- pg_stat_statements ---------------------------------------------------------------------------


class StatementStatsUnavailable(Exception):
    """pg_stat_statements cannot be read here: not created in this database, or not preloaded."""


@dataclass(frozen=True)
class StatementColumns:
    """The pg_stat_statements columns that were renamed across PostgreSQL versions."""

    total: str
    mean: str
    min: str
    max: str
    stddev: str
    total_plan: str | None
    read_time: str | None
    write_time: str | None


def statement_columns(view_columns: Collection[str]) -> StatementColumns:
    """The column set of the installed view, from its actual column names (docs/diagnostics.md#postgresql): `*_exec_time`
    (PostgreSQL ≥ 13) or `*_time` (≤ 12); `shared_blk_*_time` (≥ 17) or `blk_*_time`."""
    names = set(view_columns)
    if "total_exec_time" in names:
        timing = ("total_exec_time", "mean_exec_time", "min_exec_time", "max_exec_time", "stddev_exec_time")
    elif "total_time" in names:
        timing = ("total_time", "mean_time", "min_time", "max_time", "stddev_time")
    else:
        raise StatementStatsUnavailable("the pg_stat_statements view has neither total_exec_time nor total_time")
    read_time = next((c for c in ("shared_blk_read_time", "blk_read_time") if c in names), None)
    write_time = next((c for c in ("shared_blk_write_time", "blk_write_time") if c in names), None)
    return StatementColumns(
        *timing,
        total_plan="total_plan_time" if "total_plan_time" in names else None,
        read_time=read_time,
        write_time=write_time,
    )


@dataclass(frozen=True)
class StatementStatsView:
    """Where the extension lives and the column set of its view."""

    schema: str
    version: str
    columns: StatementColumns


@dataclass(frozen=True)
class StatementStats:
    """One pg_stat_statements entry of the current database; times in milliseconds; `share_pct` of the
    database's total execution time; `query_name` is the registry name the text matches, if any."""

    queryid: int | None
    calls: int
    total_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    stddev_ms: float
    total_plan_ms: float | None
    rows: int
    share_pct: float | None
    shared_blks_hit: int
    shared_blks_read: int
    io_ms: float | None
    query: str
    query_name: str | None = None


STATEMENT_ORDERS = ("total", "mean", "calls", "rows", "io")
_ORDER_BY = {
    "total": sql.SQL("total_ms DESC"),
    "mean": sql.SQL("mean_ms DESC"),
    "calls": sql.SQL("calls DESC"),
    "rows": sql.SQL("rows DESC"),
    # I/O time needs track_io_timing; blocks read from outside shared buffers break the ties (and the zeros).
    "io": sql.SQL("io_ms DESC NULLS LAST, shared_blks_read DESC"),
}

_EXTENSION = """
SELECT n.nspname AS schema, e.extversion AS version
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'pg_stat_statements'
"""

_VIEW_COLUMNS = """
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = to_regclass(format('%%I.pg_stat_statements', %(schema)s::text)) AND a.attnum > 0
  AND NOT a.attisdropped
"""

_TOP_STATEMENTS = """
WITH stats AS (
  SELECT * FROM {view} s WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT s.queryid, s.calls, s.{total} AS total_ms, s.{mean} AS mean_ms, s.{min} AS min_ms, s.{max} AS max_ms,
       s.{stddev} AS stddev_ms, {total_plan} AS total_plan_ms, s.rows,
       (100 * s.{total} / nullif((SELECT sum(t.{total}) FROM stats t), 0))::float8 AS share_pct,
       s.shared_blks_hit, s.shared_blks_read, {io_time} AS io_ms, s.query
FROM stats s
WHERE s.calls >= %(min_calls)s
  AND (%(filter)s::text IS NULL OR strpos(lower(s.query), lower(%(filter)s::text)) > 0)
ORDER BY {order}, s.queryid
LIMIT %(limit)s
"""


def top_statements_sql(schema: str, columns: StatementColumns, order: str) -> sql.Composed:
    """The top-statements query for the view in `schema` with its column set, ordered by `order`
    (one of STATEMENT_ORDERS); parameters `min_calls`, `filter` (NULL: no filter) and `limit`."""
    io_parts = [
        sql.SQL("s.{}").format(sql.Identifier(name)) for name in (columns.read_time, columns.write_time) if name
    ]
    io_time = sql.SQL(" + ").join(io_parts) if io_parts else sql.SQL("NULL::float8")
    total_plan = (
        sql.SQL("s.{}").format(sql.Identifier(columns.total_plan)) if columns.total_plan else sql.SQL("NULL::float8")
    )
    return sql.SQL(_TOP_STATEMENTS).format(
        view=sql.Identifier(schema, "pg_stat_statements"),
        total=sql.Identifier(columns.total),
        mean=sql.Identifier(columns.mean),
        min=sql.Identifier(columns.min),
        max=sql.Identifier(columns.max),
        stddev=sql.Identifier(columns.stddev),
        total_plan=total_plan,
        io_time=io_time,
        order=_ORDER_BY[order],
    )


def statement_stats_view(conn: psycopg.Connection) -> StatementStatsView:
    """The installed pg_stat_statements; `StatementStatsUnavailable` when it is not created here."""
    row = conn.execute(_EXTENSION).fetchone()
    if row is None:
        database = conn.info.dbname
        raise StatementStatsUnavailable(f"the pg_stat_statements extension is not created in database {database}")
    schema, version = row
    names = [name for (name,) in conn.execute(_VIEW_COLUMNS, {"schema": schema}).fetchall()]
    return StatementStatsView(schema=schema, version=version, columns=statement_columns(names))


def top_statements(
    conn: psycopg.Connection,
    view: StatementStatsView,
    *,
    order: str,
    limit: int,
    min_calls: int = 0,
    text_filter: str | None = None,
) -> list[StatementStats]:
    """The top `limit` statements of the current database by `order`; `StatementStatsUnavailable`
    when the library is not loaded (`shared_preload_libraries`)."""
    statement = top_statements_sql(view.schema, view.columns, order)
    params = {"min_calls": min_calls, "filter": text_filter or None, "limit": limit}
    try:
        with conn.cursor(row_factory=class_row(StatementStats)) as cur:
            return cur.execute(statement, params).fetchall()
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise StatementStatsUnavailable(
            "pg_stat_statements is created but not loaded: it is missing from shared_preload_libraries"
        ) from None


def reset_statement_stats(conn: psycopg.Connection, view: StatementStatsView) -> None:
    """Destructive: `pg_stat_statements_reset()`, which clears the statistics of every database and
    every consumer of the view."""
    try:
        conn.execute(sql.SQL("SELECT {}()").format(sql.Identifier(view.schema, "pg_stat_statements_reset")))
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise StatementStatsUnavailable(
            "pg_stat_statements is created but not loaded: it is missing from shared_preload_libraries"
        ) from None


_PLACEHOLDER = re.compile(r"%(?:(%)|\((\w+)\)[sbt])")
_WHITESPACE = re.compile(r"\s+")


def normalise_sql(text: str) -> str:
    """Statement text with whitespace runs collapsed and no trailing `;`, for comparing texts."""
    return _WHITESPACE.sub(" ", text).strip().rstrip(";").strip()


def as_server_text(statement: str) -> str:
    """A registry statement as the server sees it: psycopg sends `%(name)s` as `$n`, numbered in
    order of first appearance, and `%%` as `%`."""
    numbers: dict[str, int] = {}

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "%"
        return f"${numbers.setdefault(match.group(2), len(numbers) + 1)}"

    return _PLACEHOLDER.sub(substitute, statement)


def label_statements(stats: Iterable[StatementStats], named_sql: Mapping[str, str]) -> list[StatementStats]:
    """`stats` with `query_name` set where the text equals a named statement (`named_sql`: name → SQL
    as written in the registry) after placeholder conversion and whitespace normalisation."""
    by_text = {normalise_sql(as_server_text(text)): name for name, text in named_sql.items()}
    return [replace(entry, query_name=by_text.get(normalise_sql(entry.query))) for entry in stats]


# --- indexes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexInfo:
    """One index of a project table: definition parts for comparisons, validity, usage and size."""

    table_name: str
    index_name: str
    columns: list[str]
    include_columns: list[str]
    opclasses: list[int]
    collations: list[int]
    access_method: str
    predicate: str | None
    expressions: str | None
    is_primary: bool
    is_unique: bool
    is_valid: bool
    constraint_name: str | None
    idx_scan: int
    idx_tup_read: int
    idx_tup_fetch: int
    size_bytes: int
    definition: str

    @property
    def key(self) -> IndexKey:
        """The parts the docs/data-model.md#indexes duplicate rule compares."""
        return IndexKey(
            columns=tuple(self.columns),
            opclasses=tuple(str(oid) for oid in self.opclasses),
            collations=tuple(str(oid) for oid in self.collations),
            unique=self.is_unique,
            access_method=self.access_method,
            predicate=self.predicate,
            expressions=self.expressions,
            include_columns=tuple(self.include_columns),
        )


_INDEXES = """
SELECT t.relname::text AS table_name, ic.relname::text AS index_name,
       ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true) FROM generate_series(1, i.indnkeyatts) k) AS columns,
       ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)
             FROM generate_series(i.indnkeyatts + 1, i.indnatts) k) AS include_columns,
       ARRAY(SELECT i.indclass[k]::int8 FROM generate_series(0, i.indnkeyatts - 1) k) AS opclasses,
       ARRAY(SELECT i.indcollation[k]::int8 FROM generate_series(0, i.indnkeyatts - 1) k) AS collations,
       am.amname::text AS access_method,
       pg_get_expr(i.indpred, i.indrelid, true) AS predicate,
       pg_get_expr(i.indexprs, i.indrelid, true) AS expressions,
       i.indisprimary AS is_primary, i.indisunique AS is_unique, i.indisvalid AS is_valid,
       (SELECT c.conname::text FROM pg_constraint c
        WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
        LIMIT 1) AS constraint_name,
       coalesce(s.idx_scan, 0) AS idx_scan, coalesce(s.idx_tup_read, 0) AS idx_tup_read,
       coalesce(s.idx_tup_fetch, 0) AS idx_tup_fetch,
       pg_relation_size(i.indexrelid) AS size_bytes,
       pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_am am ON am.oid = ic.relam
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
WHERE i.indrelid IN (SELECT to_regclass(name) FROM unnest(%(tables)s::text[]) AS name)
ORDER BY t.relname, ic.relname
"""


def project_indexes(conn: psycopg.Connection, tables: Sequence[str] = PROJECT_TABLES) -> list[IndexInfo]:
    """Every index of `tables` (resolved through the search_path), by table and name."""
    with conn.cursor(row_factory=class_row(IndexInfo)) as cur:
        return cur.execute(_INDEXES, {"tables": list(tables)}).fetchall()


async def project_indexes_async(
    conn: psycopg.AsyncConnection[Any], tables: Sequence[str] = PROJECT_TABLES
) -> list[IndexInfo]:
    """`project_indexes` on an asynchronous connection (doctor's session)."""
    async with conn.cursor(row_factory=class_row(IndexInfo)) as cur:
        await cur.execute(_INDEXES, {"tables": list(tables)})
        return await cur.fetchall()


@dataclass(frozen=True)
class StatsAge:
    """How long the usage counters have been accumulating: since `stats_reset` of the database, or at
    least since the server started when they were never reset."""

    stats_reset: datetime | None
    since: datetime
    age_s: float


_STATS_AGE = """
SELECT d.stats_reset, coalesce(d.stats_reset, pg_postmaster_start_time()) AS since,
       extract(epoch FROM now() - coalesce(d.stats_reset, pg_postmaster_start_time()))::float8 AS age_s
FROM (SELECT 1) AS one LEFT JOIN pg_stat_database d ON d.datname = current_database()
"""


def stats_age(conn: psycopg.Connection) -> StatsAge:
    """The age of the current database's statistics (`pg_stat_database.stats_reset`)."""
    with conn.cursor(row_factory=class_row(StatsAge)) as cur:
        row = cur.execute(_STATS_AGE).fetchone()
    assert row is not None  # the statement always yields one row
    return row


def unused_indexes(indexes: Iterable[IndexInfo], expected: Sequence[ExpectedIndex] | None = None) -> list[IndexInfo]:
    """Never-scanned indexes that nothing else needs: not primary, not unique, backing no constraint,
    and not one of the expected indexes (docs/data-model.md#indexes reports those separately)."""
    wanted = {(index.table_name, index.index_name) for index in (EXPECTED_INDEXES if expected is None else expected)}
    return [
        index
        for index in indexes
        if index.idx_scan == 0
        and not index.is_primary
        and not index.is_unique
        and index.constraint_name is None
        and (index.table_name, index.index_name) not in wanted
    ]


@dataclass(frozen=True)
class DuplicateIndex:
    """`index_name` is made redundant by `duplicate_of`, whose leading key columns equal its own."""

    table_name: str
    index_name: str
    columns: list[str]
    duplicate_of: str
    duplicate_of_columns: list[str]
    duplicate_of_primary: bool
    same_columns: bool
    size_bytes: int


def _is_covered_by(candidate: IndexInfo, other: IndexInfo) -> bool:
    """Whether `other`, on the same table, serves every lookup `candidate` serves (docs/diagnostics.md#postgresql duplicate rule)."""
    return candidate.table_name == other.table_name and is_covered_by(candidate.key, other.key)


def duplicate_indexes(
    indexes: Sequence[IndexInfo], expected: Sequence[ExpectedIndex] | None = None
) -> list[DuplicateIndex]:
    """Indexes whose key columns are a leading prefix of (or equal to) another index's on the same
    table, with the same operator classes, collations and predicate, and that are not unique. The
    primary key counts as the other index. Of two identical plain indexes only one is reported: not
    the `expected` one, else the later name."""
    wanted = {(index.table_name, index.index_name) for index in (EXPECTED_INDEXES if expected is None else expected)}
    # Name the primary key (then a unique index, an expected one, the widest) as the one to keep.
    preferred = sorted(
        indexes,
        key=lambda index: (
            not index.is_primary,
            not index.is_unique,
            (index.table_name, index.index_name) not in wanted,
            -len(index.columns),
            index.index_name,
        ),
    )
    rank = {id(index): position for position, index in enumerate(preferred)}
    found = []
    for candidate in indexes:
        for other in preferred:
            if other is candidate or not _is_covered_by(candidate, other):
                continue
            same = len(candidate.columns) == len(other.columns)
            # Identical plain indexes cover each other: report only the one less preferred to keep.
            if same and _is_covered_by(other, candidate) and rank[id(candidate)] < rank[id(other)]:
                continue
            found.append(
                DuplicateIndex(
                    table_name=candidate.table_name,
                    index_name=candidate.index_name,
                    columns=candidate.columns,
                    duplicate_of=other.index_name,
                    duplicate_of_columns=other.columns,
                    duplicate_of_primary=other.is_primary,
                    same_columns=same,
                    size_bytes=candidate.size_bytes,
                )
            )
            break
    return found


@dataclass(frozen=True)
class ExpectedIndexStatus:
    """Whether an expected index is `present`, `missing`, `invalid` (a failed concurrent build) or
    `different` (same name, other definition); `actual_definition` is what the server has."""

    index_name: str
    table_name: str
    expected_definition: str
    status: str
    valid: bool | None
    actual_definition: str | None


def expected_index_status(
    indexes: Sequence[IndexInfo], expected: Sequence[ExpectedIndex] = EXPECTED_INDEXES
) -> list[ExpectedIndexStatus]:
    """The state of each expected index among the table's actual `indexes`."""
    by_name = {(index.table_name, index.index_name): index for index in indexes}
    statuses = []
    for wanted in expected:
        actual = by_name.get((wanted.table_name, wanted.index_name))
        if actual is None:
            status = "missing"
        elif not actual.is_valid:
            status = "invalid"
        elif (
            tuple(actual.columns) != wanted.columns
            or actual.predicate != wanted.predicate
            or actual.is_primary != wanted.primary
            or actual.include_columns
        ):
            status = "different"
        else:
            status = "present"
        statuses.append(
            ExpectedIndexStatus(
                index_name=wanted.index_name,
                table_name=wanted.table_name,
                expected_definition=wanted.definition,
                status=status,
                valid=None if actual is None else actual.is_valid,
                actual_definition=None if actual is None else actual.definition,
            )
        )
    return statuses


@dataclass(frozen=True)
class IndexSuggestion:
    """Statements that restore an expected index; `reason` says why it is suggested."""

    index_name: str
    table_name: str
    reason: str
    statements: tuple[str, ...]


def suggest_indexes(
    statuses: Sequence[ExpectedIndexStatus], expected: Sequence[ExpectedIndex] = EXPECTED_INDEXES
) -> list[IndexSuggestion]:
    """For each missing expected index its `CREATE INDEX CONCURRENTLY IF NOT EXISTS` statement(s);
    an invalid one is dropped first (IF NOT EXISTS would keep the broken index)."""
    wanted = {index.index_name: index for index in expected}
    suggestions = []
    for status in statuses:
        target = wanted[status.index_name]
        if status.status == "missing":
            suggestions.append(
                IndexSuggestion(
                    target.index_name,
                    target.table_name,
                    f"expected index missing (used by {target.used_by})",
                    target.create_statements,
                )
            )
        elif status.status == "invalid" and not target.primary:
            suggestions.append(
                IndexSuggestion(
                    target.index_name,
                    target.table_name,
                    "expected index is INVALID (a failed concurrent build)",
                    (f"DROP INDEX CONCURRENTLY IF EXISTS {target.index_name}", *target.create_statements),
                )
            )
    return suggestions


def create_suggested_index(conn: psycopg.Connection, suggestion: IndexSuggestion) -> None:
    """Destructive: run a suggestion's statements, one at a time, outside any transaction (CREATE INDEX
    CONCURRENTLY refuses to run inside one). The texts are this module's constants."""
    for statement in suggestion.statements:
        conn.execute(sql.SQL(statement))  # constant text from EXPECTED_INDEXES


# --- tables ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableStats:
    """Sizes, row estimates, scans, writes, vacuum/analyze history and block hits of one table."""

    table_name: str
    total_bytes: int
    table_bytes: int
    indexes_bytes: int
    toast_bytes: int
    estimated_rows: int | None
    live_rows: int
    dead_rows: int
    dead_pct: float | None
    seq_scan: int
    seq_tup_read: int
    idx_scan: int
    idx_tup_fetch: int
    n_tup_ins: int
    n_tup_upd: int
    n_tup_hot_upd: int
    hot_update_pct: float | None
    n_tup_del: int
    n_mod_since_analyze: int
    last_vacuum: datetime | None
    last_autovacuum: datetime | None
    last_analyze: datetime | None
    last_autoanalyze: datetime | None
    vacuum_count: int
    autovacuum_count: int
    analyze_count: int
    autoanalyze_count: int
    heap_blks_hit: int
    heap_blks_read: int
    idx_blks_hit: int
    idx_blks_read: int

    @property
    def heap_hit_pct(self) -> float | None:
        return hit_pct(self.heap_blks_hit, self.heap_blks_read)

    @property
    def index_hit_pct(self) -> float | None:
        return hit_pct(self.idx_blks_hit, self.idx_blks_read)

    @property
    def bytes_per_row(self) -> float | None:
        rows = self.estimated_rows or self.live_rows
        return round(self.table_bytes / rows, 1) if rows else None


_TABLES = """
SELECT c.relname::text AS table_name,
       pg_total_relation_size(c.oid) AS total_bytes, pg_table_size(c.oid) AS table_bytes,
       pg_indexes_size(c.oid) AS indexes_bytes,
       CASE WHEN c.reltoastrelid = 0 THEN 0 ELSE pg_total_relation_size(c.reltoastrelid) END AS toast_bytes,
       -- reltuples is -1 before the first VACUUM/ANALYZE (PostgreSQL 14+): no estimate yet.
       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::int8 END AS estimated_rows,
       coalesce(s.n_live_tup, 0) AS live_rows, coalesce(s.n_dead_tup, 0) AS dead_rows,
       round(100.0 * s.n_dead_tup / nullif(s.n_live_tup + s.n_dead_tup, 0), 2)::float8 AS dead_pct,
       coalesce(s.seq_scan, 0) AS seq_scan, coalesce(s.seq_tup_read, 0) AS seq_tup_read,
       coalesce(s.idx_scan, 0) AS idx_scan, coalesce(s.idx_tup_fetch, 0) AS idx_tup_fetch,
       coalesce(s.n_tup_ins, 0) AS n_tup_ins, coalesce(s.n_tup_upd, 0) AS n_tup_upd,
       coalesce(s.n_tup_hot_upd, 0) AS n_tup_hot_upd,
       round(100.0 * s.n_tup_hot_upd / nullif(s.n_tup_upd, 0), 2)::float8 AS hot_update_pct,
       coalesce(s.n_tup_del, 0) AS n_tup_del, coalesce(s.n_mod_since_analyze, 0) AS n_mod_since_analyze,
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
       coalesce(s.vacuum_count, 0) AS vacuum_count, coalesce(s.autovacuum_count, 0) AS autovacuum_count,
       coalesce(s.analyze_count, 0) AS analyze_count, coalesce(s.autoanalyze_count, 0) AS autoanalyze_count,
       coalesce(io.heap_blks_hit, 0) AS heap_blks_hit, coalesce(io.heap_blks_read, 0) AS heap_blks_read,
       coalesce(io.idx_blks_hit, 0) AS idx_blks_hit, coalesce(io.idx_blks_read, 0) AS idx_blks_read
FROM pg_class c
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
LEFT JOIN pg_statio_user_tables io ON io.relid = c.oid
WHERE c.oid IN (SELECT to_regclass(name) FROM unnest(%(tables)s::text[]) AS name)
ORDER BY c.relname
"""


def existing_tables(conn: psycopg.Connection, tables: Sequence[str] = PROJECT_TABLES) -> list[str]:
    """Those of `tables` that exist (resolved through the search_path)."""
    rows = conn.execute(
        "SELECT name FROM unnest(%(tables)s::text[]) AS name WHERE to_regclass(name) IS NOT NULL",
        {"tables": list(tables)},
    ).fetchall()
    return [name for (name,) in rows]


def table_stats(conn: psycopg.Connection, tables: Sequence[str] = PROJECT_TABLES) -> list[TableStats]:
    """Statistics of those of `tables` that exist (resolved through the search_path)."""
    with conn.cursor(row_factory=class_row(TableStats)) as cur:
        return cur.execute(_TABLES, {"tables": list(tables)}).fetchall()


@dataclass(frozen=True)
class ExactCount:
    """`COUNT(*)` and `COUNT(DISTINCT user_id)` of one table."""

    table_name: str
    rows: int
    distinct_users: int


def exact_count(conn: psycopg.Connection, table: str) -> ExactCount:
    """Real counts for `table` (a full scan, bounded by the session's statement timeout)."""
    statement = sql.SQL(
        "SELECT %(table)s::text AS table_name, count(*) AS rows, count(DISTINCT user_id) AS distinct_users FROM {}"
    ).format(sql.Identifier(table))
    with conn.cursor(row_factory=class_row(ExactCount)) as cur:
        row = cur.execute(statement, {"table": table}).fetchone()
    assert row is not None  # an aggregate always yields one row
    return row


# Lower bounds of the goals-per-user buckets (docs/diagnostics.md#postgresql): 1, 2–5, 6–10, …, 201–500, > 500.
HISTOGRAM_BOUNDS = (1, 2, 6, 11, 21, 51, 101, 201, 501)


def bucket_label(position: int) -> str:
    """The label of bucket `position` (1-based, as `width_bucket` numbers them)."""
    low = HISTOGRAM_BOUNDS[position - 1]
    if position == len(HISTOGRAM_BOUNDS):
        return f">{low - 1}"
    high = HISTOGRAM_BOUNDS[position] - 1
    return str(low) if low == high else f"{low}-{high}"


@dataclass(frozen=True)
class HistogramBucket:
    """Users whose row count (all rows; active rows) falls in the bucket `label`."""

    label: str
    users_all: int
    users_active: int


@dataclass(frozen=True)
class GoalsPerUser:
    """Rows per user of user_goal_progress: bucket counts, mean and maximum, for all and active rows."""

    users: int
    users_without_active: int
    buckets: list[HistogramBucket]
    mean_rows: float | None
    max_rows: int
    mean_active_rows: float | None
    max_active_rows: int
    sample_pct: float | None


@dataclass(frozen=True)
class HistogramGroup:
    """One (all-rows bucket, active-rows bucket) group of users, as the histogram statement returns it."""

    all_bucket: int
    active_bucket: int
    users: int
    all_rows: int
    active_rows: int
    max_all: int
    max_active: int


_HISTOGRAM = """
WITH per_user AS (
  SELECT user_id, count(*) AS all_rows, count(*) FILTER (WHERE is_active) AS active_rows
  FROM {table} {sample}
  GROUP BY user_id
)
SELECT width_bucket(all_rows, %(bounds)s::int8[]) AS all_bucket,
       width_bucket(active_rows, %(bounds)s::int8[]) AS active_bucket,
       count(*) AS users, sum(all_rows)::int8 AS all_rows, sum(active_rows)::int8 AS active_rows,
       max(all_rows) AS max_all, max(active_rows) AS max_active
FROM per_user
GROUP BY 1, 2
"""

_SAMPLE = sql.SQL("TABLESAMPLE SYSTEM (%(sample_pct)s::float8)")


def goals_per_user(
    conn: psycopg.Connection, sample_pct: float | None = None, table: str = PROGRESS_TABLE
) -> GoalsPerUser:
    """The goals-per-user histogram; `sample_pct` reads that share of the table's pages
    (`TABLESAMPLE SYSTEM`), so per-user counts then cover only the sampled pages."""
    statement = sql.SQL(_HISTOGRAM).format(
        table=sql.Identifier(table), sample=_SAMPLE if sample_pct is not None else sql.SQL("")
    )
    params: dict[str, Any] = {"bounds": list(HISTOGRAM_BOUNDS), "sample_pct": sample_pct}
    with conn.cursor(row_factory=class_row(HistogramGroup)) as cur:
        groups = cur.execute(statement, params).fetchall()
    return summarise_histogram(groups, sample_pct)


def summarise_histogram(groups: Sequence[HistogramGroup], sample_pct: float | None) -> GoalsPerUser:
    """Fold the (all bucket, active bucket) groups into one histogram with means and maxima."""
    users = sum(group.users for group in groups)
    all_counts = [0] * (len(HISTOGRAM_BOUNDS) + 1)
    active_counts = [0] * (len(HISTOGRAM_BOUNDS) + 1)
    for group in groups:
        all_counts[group.all_bucket] += group.users
        active_counts[group.active_bucket] += group.users
    buckets = [
        HistogramBucket(bucket_label(position), all_counts[position], active_counts[position])
        for position in range(1, len(HISTOGRAM_BOUNDS) + 1)
    ]
    total_rows = sum(group.all_rows for group in groups)
    total_active = sum(group.active_rows for group in groups)
    return GoalsPerUser(
        users=users,
        users_without_active=active_counts[0],
        buckets=buckets,
        mean_rows=round(total_rows / users, 2) if users else None,
        max_rows=max((group.max_all for group in groups), default=0),
        mean_active_rows=round(total_active / users, 2) if users else None,
        max_active_rows=max((group.max_active for group in groups), default=0),
        sample_pct=sample_pct,
    )

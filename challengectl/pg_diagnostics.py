"""PostgreSQL data access for `challengectl db activity|queries|indexes|tables` (docs/diagnostics.md#postgresql): the
reads and typed records for their rows. Rendering lives in `challengectl/commands/db.py`.

The statements are the named ones of sql/cli_queries.sql (`challengectl.cli_queries`). Three are composed
here with `psycopg.sql`, because an identifier varies: the pg_stat_statements view and its columns, which
differ across versions, and the table of `exact_count` and the goals-per-user histogram. Every value is a
bound parameter. Everything here reads, except the three destructive
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

from challengectl import plans
from challengectl.cli_queries import (
    fetch_all,
    fetch_all_async,
    fetch_composed,
    fetch_one,
    fetch_one_async,
    fetch_values,
    fetch_values_async,
)
from challengectl.expected_indexes import EXPECTED_INDEXES, PROGRESS_TABLE, ExpectedIndex, IndexKey, is_covered_by
from challengectl.ratios import hit_pct

PROJECT_TABLES = (PROGRESS_TABLE, "reward_grants")


# --- server ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """Server settings and database-wide numbers (docs/diagnostics.md#postgresql "Server settings", "Sizes", cache hit)."""

    server_version: str
    server_version_num: int
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
    def cache_hit_pct(self) -> float | None:
        return hit_pct(self.blks_hit, self.blks_read)


def server_info(conn: psycopg.Connection) -> ServerInfo:
    """Version, memory settings, preload libraries, database size and block hits."""
    row = fetch_one(conn, "cli_server_info", ServerInfo)
    assert row is not None  # the statement always yields one row
    return row


@dataclass(frozen=True)
class ConnectionLimits:
    """The server's connection limits (`reserved_connections`: PostgreSQL 16+, 0 before) and its client
    sessions in every database: the one source of the usable and free connection figures of every report."""

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    client_sessions: int

    @property
    def usable(self) -> int:
        """Connections open to ordinary roles such as the service's:
        `max_connections − superuser_reserved_connections − reserved_connections`."""
        return self.max_connections - self.superuser_reserved_connections - self.reserved_connections

    @property
    def free(self) -> int:
        """What the usable connections leave for new client sessions after every open one."""
        return self.usable - self.client_sessions


def connection_limits(conn: psycopg.Connection) -> ConnectionLimits:
    """The connection limits and client sessions now."""
    row = fetch_one(conn, "cli_connection_limits", ConnectionLimits)
    assert row is not None  # the statement always yields one row
    return row


async def connection_limits_async(conn: psycopg.AsyncConnection[Any]) -> ConnectionLimits:
    """`connection_limits` on an asynchronous connection."""
    row = await fetch_one_async(conn, "cli_connection_limits", ConnectionLimits)
    assert row is not None  # the statement always yields one row
    return row


async def server_version_async(conn: psycopg.AsyncConnection[Any]) -> str:
    """The server's version string, e.g. `16.4 (Debian 16.4-1)`."""
    [version] = await fetch_values_async(conn, "cli_server_version")
    return str(version)


# --- activity -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionCount:
    """Client sessions of the current database with one state and one application_name; how many wait
    on the client, and how many on locks or I/O."""

    state: str
    application_name: str
    connections: int
    waiting_on_client: int
    waiting_on_server: int


@dataclass(frozen=True)
class ConnectionSummary:
    """Sessions of the current database by state and application, and the server's limits and sessions."""

    groups: list[ConnectionCount]
    in_database: int
    limits: ConnectionLimits

    @property
    def on_server(self) -> int:
        return self.limits.client_sessions


UNKNOWN_STATE = "unknown"


def connection_summary(conn: psycopg.Connection) -> ConnectionSummary:
    """Counts by `state` and `application_name` (this session included), with the server's connection
    limits and client sessions."""
    groups = fetch_all(conn, "cli_connections_by_state", ConnectionCount, connection_groups_params())
    limits = connection_limits(conn)
    return ConnectionSummary(groups=groups, in_database=sum(group.connections for group in groups), limits=limits)


def connection_groups_params(unknown_state: str = UNKNOWN_STATE, include_self: bool = True) -> dict[str, Any]:
    """The parameters of `cli_connections_by_state`: the label of a hidden state, and whether the reading
    session counts."""
    return {"unknown_state": unknown_state, "include_self": include_self}


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


def long_running(conn: psycopg.Connection, min_duration_ms: float, state: str | None = None) -> list[SessionActivity]:
    """Sessions other than this one, running at least `min_duration_ms`, longest first: the non-idle
    ones, or those in `state` when given."""
    params = {"pid": None, "state": state, "min_duration_ms": min_duration_ms}
    return fetch_all(conn, "cli_sessions", SessionActivity, params)


def find_backend(conn: psycopg.Connection, pid: int) -> SessionActivity | None:
    """The backend with process id `pid` (any database), or None."""
    return fetch_one(conn, "cli_sessions", SessionActivity, {"pid": pid, "state": None, "min_duration_ms": 0})


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


def blocking_chains(conn: psycopg.Connection) -> tuple[list[BlockedSession], dict[int, BlockerSession]]:
    """Every blocked backend of the current database, and every backend blocking one, by pid."""
    blocked = fetch_all(conn, "cli_blocked_sessions", BlockedSession)
    pids = sorted({pid for session in blocked for pid in session.blocker_pids})
    if not pids:
        return blocked, {}
    blockers = fetch_all(conn, "cli_blockers", BlockerSession, {"pids": pids})
    return blocked, {blocker.pid: blocker for blocker in blockers}


SIGNALS = {"cancel": "cli_cancel_backend", "terminate": "cli_terminate_backend"}


def signal_backend(conn: psycopg.Connection, pid: int, action: str) -> bool:
    """Destructive: `pg_cancel_backend` (action `cancel`) or `pg_terminate_backend` (`terminate`).
    Returns what PostgreSQL returned (False: the signal was not sent)."""
    [signalled] = fetch_values(conn, SIGNALS[action], {"pid": pid})
    return bool(signalled)


# --- pg_stat_statements ---------------------------------------------------------------------------


class StatementStatsUnavailable(Exception):
    """pg_stat_statements cannot be read here: not created in this database, or not preloaded."""


NOT_LOADED = "pg_stat_statements is created but not loaded: it is missing from shared_preload_libraries"


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

# Composed here, not named in sql/cli_queries.sql: the view's schema and its timing columns are identifiers
# that differ across installations and PostgreSQL versions (`statement_columns`).
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


@dataclass(frozen=True)
class ExtensionVersion:
    """Where an extension is created and its version."""

    schema: str
    version: str


@dataclass(frozen=True)
class StatementStatsView(ExtensionVersion):
    """The pg_stat_statements extension (where it lives, its version) and the column set of its view."""

    columns: StatementColumns


def statement_stats_view(conn: psycopg.Connection) -> StatementStatsView:
    """The installed pg_stat_statements; `StatementStatsUnavailable` when it is not created here."""
    extension = fetch_one(conn, "cli_statement_stats_extension", ExtensionVersion)
    if extension is None:
        database = conn.info.dbname
        raise StatementStatsUnavailable(f"the pg_stat_statements extension is not created in database {database}")
    columns = fetch_values(conn, "cli_statement_stats_columns", {"schema": extension.schema})
    return StatementStatsView(extension.schema, extension.version, statement_columns(columns))


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
        return fetch_composed(conn, statement, StatementStats, params)
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise StatementStatsUnavailable(NOT_LOADED) from None


def reset_statement_stats(conn: psycopg.Connection, view: StatementStatsView) -> None:
    """Destructive: `pg_stat_statements_reset()`, which clears the statistics of every database and
    every consumer of the view."""
    try:
        # Composed: the function lives in the extension's schema, an identifier.
        conn.execute(sql.SQL("SELECT {}()").format(sql.Identifier(view.schema, "pg_stat_statements_reset")))
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise StatementStatsUnavailable(NOT_LOADED) from None


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
        return self.plan_index().key

    def plan_index(self) -> plans.IndexInfo:
        """The index as the plan reader describes it (`explain`)."""
        return plans.IndexInfo(
            name=self.index_name,
            table=self.table_name,
            columns=tuple(self.columns),
            unique=self.is_unique,
            primary=self.is_primary,
            valid=self.is_valid,
            predicate=self.predicate,
            opclasses=tuple(str(oid) for oid in self.opclasses),
            collations=tuple(str(oid) for oid in self.collations),
            definition=self.definition,
            access_method=self.access_method,
            expressions=self.expressions,
            include_columns=tuple(self.include_columns),
        )


def project_indexes(conn: psycopg.Connection, tables: Sequence[str] = PROJECT_TABLES) -> list[IndexInfo]:
    """Every index of `tables` (resolved through the search_path), by table and name."""
    return fetch_all(conn, "cli_project_indexes", IndexInfo, {"tables": list(tables)})


async def project_indexes_async(
    conn: psycopg.AsyncConnection[Any], tables: Sequence[str] = PROJECT_TABLES
) -> list[IndexInfo]:
    """`project_indexes` on an asynchronous connection (doctor's session)."""
    return await fetch_all_async(conn, "cli_project_indexes", IndexInfo, {"tables": list(tables)})


@dataclass(frozen=True)
class StatsAge:
    """How long the usage counters have been accumulating: since `stats_reset` of the database, or at
    least since the server started when they were never reset."""

    stats_reset: datetime | None
    since: datetime
    age_s: float


def stats_age(conn: psycopg.Connection) -> StatsAge:
    """The age of the current database's statistics (`pg_stat_database.stats_reset`)."""
    row = fetch_one(conn, "cli_stats_age", StatsAge)
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


def existing_tables(conn: psycopg.Connection, tables: Sequence[str] = PROJECT_TABLES) -> list[str]:
    """Those of `tables` that exist (resolved through the search_path)."""
    return fetch_values(conn, "cli_existing_tables", {"tables": list(tables)})


def table_stats(conn: psycopg.Connection, tables: Sequence[str] = PROJECT_TABLES) -> list[TableStats]:
    """Statistics of those of `tables` that exist (resolved through the search_path)."""
    return fetch_all(conn, "cli_table_stats", TableStats, {"tables": list(tables)})


@dataclass(frozen=True)
class ExactCount:
    """`COUNT(*)` and `COUNT(DISTINCT user_id)` of one table."""

    table_name: str
    rows: int
    distinct_users: int


def exact_count(conn: psycopg.Connection, table: str) -> ExactCount:
    """Real counts for `table` (a full scan, bounded by the session's statement timeout). Composed: the
    table is an identifier."""
    statement = sql.SQL(
        "SELECT %(table)s::text AS table_name, count(*) AS rows, count(DISTINCT user_id) AS distinct_users FROM {}"
    ).format(sql.Identifier(table))
    [row] = fetch_composed(conn, statement, ExactCount, {"table": table})  # an aggregate: one row
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


# Composed, not named in sql/cli_queries.sql: the table is an identifier and the sample clause optional.
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
    return summarise_histogram(fetch_composed(conn, statement, HistogramGroup, params), sample_pct)


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

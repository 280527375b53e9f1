"""`challengectl db ...`: the PostgreSQL commands (docs/cli.md#commands, docs/diagnostics.md#postgresql): `migrate`, and the diagnostics
`activity`, `queries`, `indexes` and `tables`. The SQL and the reads live in
`challengectl.pg_diagnostics`; this module parses options, confirms destructive actions (docs/cli.md#destructive-actions),
maps database failures to exit codes and renders the results.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text
from rich.tree import Tree

from challengectl.connections import database_target
from challengectl.context import CliContext, command_group, examples, get_cli, parse_duration
from challengectl.errors import EXIT_AUTH, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from challengectl.explain_command import add_explain_command
from challengectl.humanize import human_bytes, human_ms, one_line
from challengectl.output import Column, Output, confirm, format_cell, listing, rfc3339, status_text
from challengectl.ticker import parse_interval, watch_ticks
from service.config.settings import mask_url_password

if TYPE_CHECKING:
    import psycopg

    from challengectl import pg_diagnostics as pgd


app = command_group("Inspect and migrate the PostgreSQL database.")
add_explain_command(app)  # `db explain NAME` is the same command as the top-level `explain NAME`

HINT_DATABASE_URL = "check --database-url / DATABASE_URL"
HINT_PG_STAT_STATEMENTS = (
    "add pg_stat_statements to shared_preload_libraries and run CREATE EXTENSION pg_stat_statements"
)
INDEX_SECTIONS = ("usage", "unused", "duplicates", "expected", "suggest")
# The database-wide cache hit ratio to aim for, and below which to warn (docs/diagnostics.md#postgresql).
CACHE_HIT_WARN_PCT = 95.0
# Below this many block reads a hit ratio says nothing yet (a fresh database).
CACHE_HIT_MIN_BLOCKS = 1000


# --- database sessions and their errors -----------------------------------------------------------


class DiagnosticsSession:
    """A lazily (re)connected `challengectl-cli` session whose failures surface as CliErrors with the
    docs/cli.md#exit-codes exit codes; after a lost connection the next `conn()` reconnects (watch modes)."""

    def __init__(self, url: str, statement_timeout_ms: int, connect_timeout_s: int) -> None:
        self.url = url
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection | None = None

    @property
    def target(self) -> str:
        """`host:port/dbname`, for messages (never the password)."""
        from service.storage.store import describe_target

        return describe_target(self.url)

    def conn(self) -> psycopg.Connection:

        from challengectl import database

        if self._conn is None or self._conn.closed:
            with self.errors():
                self._conn = database.connect(self.url, self.statement_timeout_ms, self.connect_timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn driver errors raised inside the block into CliErrors (message without SQL or secrets)."""
        import psycopg

        from challengectl import pg_diagnostics as pgd
        from service.storage.store import short_reason

        try:
            yield
        except CliError:
            raise
        except pgd.StatementStatsUnavailable as missing:
            raise CliError(f"{missing} ({self.target})", HINT_PG_STAT_STATEMENTS, EXIT_UNAVAILABLE) from None
        except psycopg.errors.QueryCanceled:
            raise CliError(
                f"PostgreSQL {self.target}: statement timed out after {self.statement_timeout_ms} ms "
                "(or was cancelled)",
                "raise --timeout, or use --sample for large tables",
                EXIT_UNAVAILABLE,
            ) from None
        except psycopg.errors.InsufficientPrivilege as denied:
            raise CliError(
                f"PostgreSQL {self.target}: {short_reason(denied, self.url)}",
                "connect as a role with pg_monitor (reads) or pg_signal_backend (cancel/terminate), "
                "or as the table owner",
                EXIT_AUTH,
            ) from None
        except psycopg.OperationalError as lost:
            self.close()
            raise CliError(
                f"PostgreSQL {self.target} unreachable: {short_reason(lost, self.url)}",
                HINT_DATABASE_URL,
                EXIT_UNAVAILABLE,
            ) from None
        except psycopg.Error as failed:
            raise CliError(
                f"PostgreSQL {self.target}: {short_reason(failed, self.url)}",
                "rerun with --debug for details",
                EXIT_FAILED,
            ) from None


@contextmanager
def diagnostics_session(ctx: typer.Context, statement_timeout_ms: int | None = None) -> Iterator[DiagnosticsSession]:
    """A session on the command's database (docs/configuration.md#embedded-default target rules), bounded by `--timeout` unless
    `statement_timeout_ms` says otherwise (0 = unbounded); closed afterwards."""
    cli = get_cli(ctx)
    timeout_s = cli.timeout_s
    with database_target(cli.settings()) as target:
        session = DiagnosticsSession(
            target.url, int(timeout_s * 1000) if statement_timeout_ms is None else statement_timeout_ms, int(timeout_s)
        )
        try:
            yield session
        finally:
            session.close()


# --- shared rendering helpers ---------------------------------------------------------------------


def now_rfc3339() -> str:
    return rfc3339(datetime.now(UTC))


def sections(parts: Sequence[RenderableType]) -> RenderableType:
    """Several tables one under the other, separated by a blank line."""
    spaced: list[RenderableType] = []
    for part in parts:
        if spaced:
            spaced.append(Text(""))
        spaced.append(part)
    return Group(*spaced)


# --- db activity ----------------------------------------------------------------------------------

ACTIVITY_EXAMPLES = examples(
    "challengectl db activity --min-duration 500ms",
    "challengectl db activity --blocking -o json | jq '.items[] | {blocked_pid: .pid, blockers: [.blockers[].pid]}'",
    "challengectl db activity --cancel 12345 --yes",
)

SESSION_COLUMNS = [
    Column("pid", "PID", justify="right"),
    Column("application_name", "APPLICATION"),
    Column("state", "STATE"),
    Column("wait_event_type", "WAIT TYPE"),
    Column("wait_event", "WAIT EVENT"),
    Column("duration_ms", "DURATION", justify="right", render=lambda v: Text(human_ms(v))),
    Column("usename", "USER"),
    Column("client_addr", "CLIENT"),
    Column("query", "QUERY", render=lambda v: Text(one_line(v))),
]


def activity_snapshot(conn: psycopg.Connection, min_duration_ms: float, state: str | None) -> dict[str, Any]:
    """Connections by state and application, against the server's limit, plus the long-running sessions."""
    from challengectl import pg_diagnostics as pgd

    summary = pgd.connection_summary(conn)
    sessions = pgd.long_running(conn, min_duration_ms, state)
    limits = summary.limits
    by_state: dict[str, int] = {}
    by_application: dict[str, int] = {}
    for group in summary.groups:
        by_state[group.state] = by_state.get(group.state, 0) + group.connections
        by_application[group.application_name] = by_application.get(group.application_name, 0) + group.connections
    # Lists rather than objects keyed by state: JSON keys stay snake_case field names.
    usable = limits.usable
    return {
        "ts": now_rfc3339(),
        "database": conn.info.dbname,
        "connections": {
            "in_database": summary.in_database,
            "on_server": summary.on_server,
            "max_connections": limits.max_connections,
            "superuser_reserved_connections": limits.superuser_reserved_connections,
            "reserved_connections": limits.reserved_connections,
            "usable_connections": usable,
            "utilisation_pct": round(100.0 * summary.on_server / usable, 1) if usable > 0 else None,
            "waiting_on_client": sum(group.waiting_on_client for group in summary.groups),
            "by_state": [{"state": name, "connections": n} for name, n in by_state.items()],
            "by_application": [{"application_name": name, "connections": n} for name, n in by_application.items()],
            "groups": [asdict(group) for group in summary.groups],
        },
        "min_duration_ms": min_duration_ms,
        "long_running": listing([asdict(session) for session in sessions]),
    }


def render_activity(out: Output, data: dict[str, Any]) -> RenderableType:
    connections = data["connections"]
    headline = Text(
        f"{data['database']}: {connections['in_database']} session(s) in this database, "
        f"{connections['on_server']} of {connections['usable_connections']} usable connections on the "
        f"server ({format_cell(connections['utilisation_pct'])} %), "
        f"{connections['waiting_on_client']} waiting on the client"
    )
    groups = out.table(
        connections["groups"],
        [
            Column("state", "STATE"),
            Column("application_name", "APPLICATION"),
            Column("connections", "SESSIONS", justify="right"),
            Column("waiting_on_client", "WAITING ON CLIENT", justify="right"),
        ],
        title="Sessions by state and application",
    )
    long_running = data["long_running"]["items"]
    title = f"Sessions running ≥ {human_ms(data['min_duration_ms'])} (longest first)"
    sessions_part: RenderableType = (
        out.table(long_running, SESSION_COLUMNS, title=title) if long_running else Text(f"{title}: none")
    )
    return sections([headline, groups, sessions_part])


def blocking_snapshot(conn: psycopg.Connection) -> dict[str, Any]:
    """Every blocked session with its ungranted lock and its blockers (state, transaction age, query)."""
    from challengectl import pg_diagnostics as pgd

    blocked, blockers = pgd.blocking_chains(conn)
    items = []
    for session in blocked:
        entry = asdict(session)
        entry["blockers"] = [asdict(blockers[pid]) for pid in session.blocker_pids if pid in blockers]
        items.append(entry)
    return {"ts": now_rfc3339(), "database": conn.info.dbname, **listing(items)}


def blocking_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per (blocked, blocker) pair, for CSV and plain text."""
    rows = []
    for item in data["items"]:
        for blocker in item["blockers"] or [{}]:
            rows.append(
                {
                    "blocked_pid": item["pid"],
                    "lock_mode": item["lock_mode"],
                    "relation": item["relation"],
                    "lock_wait_ms": item["lock_wait_ms"],
                    "blocked_query": item["query"],
                    "blocker_pid": blocker.get("pid"),
                    "blocker_state": blocker.get("state"),
                    "blocker_xact_age_ms": blocker.get("xact_age_ms"),
                    "blocker_query": blocker.get("query"),
                }
            )
    return rows


def render_blocking(data: dict[str, Any]) -> RenderableType:
    if not data["items"]:
        return Text(f"{data['database']}: no blocked sessions")
    tree = Tree(Text(f"{data['database']}: {data['total']} blocked session(s), blocked → blockers"))
    for item in data["items"]:
        lock = f"{item['lock_mode'] or '?'} on {item['relation'] or item['lock_type'] or '?'}"
        node = tree.add(
            Text(
                f"pid {item['pid']} ({item['application_name'] or '-'}) waits {human_ms(item['lock_wait_ms'])} "
                f"for {lock}: {one_line(item['query'])}"
            )
        )
        for blocker in item["blockers"]:
            also = f", itself blocked by {blocker['blocked_by']}" if blocker["blocked_by"] else ""
            node.add(
                Text(
                    f"blocked by pid {blocker['pid']} ({blocker['application_name'] or '-'}, "
                    f"{blocker['state'] or '?'}, transaction age {human_ms(blocker['xact_age_ms'])}{also}): "
                    f"{one_line(blocker['query'])}"
                )
            )
    return tree


def signal_session(out: Output, session: DiagnosticsSession, pid: int, action: str, yes: bool, dry_run: bool) -> None:
    """Cancel the query of, or terminate, backend `pid` after confirmation."""
    from challengectl import pg_diagnostics as pgd

    with session.errors():
        conn = session.conn()
        backend = pgd.find_backend(conn, pid)
        if backend is None:
            raise CliError(
                f"no PostgreSQL backend with pid {pid} on {session.target}",
                "list sessions with 'challengectl db activity'",
                EXIT_NOT_FOUND,
            )
        what = "cancel the running query of" if action == "cancel" else "terminate"
        description = (
            f"{what} backend {pid} ({backend.application_name or 'no application_name'}, "
            f"{backend.state or 'unknown state'}: {one_line(backend.query, 60)})"
        )
        if not confirm(description, yes, dry_run):
            return
        signalled = pgd.signal_backend(conn, pid, action)
    if not signalled:
        raise CliError(
            f"PostgreSQL did not signal backend {pid} (it may have ended meanwhile)",
            "list sessions with 'challengectl db activity'",
            EXIT_FAILED,
        )
    result = {"pid": pid, "action": action, "signalled": True}
    message = f"{'cancel' if action == 'cancel' else 'terminate'} signal sent to backend {pid}"
    out.emit_object(result, text=lambda: message, table=lambda: Text(message))


@app.command("activity", epilog=ACTIVITY_EXAMPLES)
def activity(
    ctx: typer.Context,
    watch: bool = typer.Option(False, "--watch", help="refresh every --interval (NDJSON per tick when piped)"),
    interval: str = typer.Option("2s", "--interval", help="refresh interval of --watch, <n>[ms|s|m]"),
    count: int | None = typer.Option(None, "--count", min=1, help="stop --watch after N ticks"),
    min_duration: str = typer.Option("1s", "--min-duration", help="list sessions running at least this long"),
    state: str | None = typer.Option(
        None, "--state", help="list sessions in this state (e.g. 'idle in transaction') instead of all non-idle ones"
    ),
    blocking: bool = typer.Option(
        False, "--blocking", help="show blocked sessions and their blockers (pg_blocking_pids)"
    ),
    cancel: int | None = typer.Option(
        None, "--cancel", metavar="PID", help="cancel the running query of backend PID (pg_cancel_backend)"
    ),
    terminate: int | None = typer.Option(
        None, "--terminate", metavar="PID", help="terminate backend PID (pg_terminate_backend)"
    ),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation (--cancel/--terminate)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what --cancel/--terminate would do, change nothing"),
) -> None:
    """Sessions by state and application, long-running queries, blocking chains; cancel or terminate a backend."""
    cli = get_cli(ctx)
    out = cli.output
    if cancel is not None and terminate is not None:
        raise CliError("--cancel and --terminate exclude each other", "pick one", EXIT_USAGE)
    signal_pid = cancel if cancel is not None else terminate
    if signal_pid is not None and watch:
        raise CliError("--cancel/--terminate cannot be combined with --watch", "run them separately", EXIT_USAGE)
    interval_s = parse_interval(interval)
    min_duration_ms = parse_duration(min_duration, "--min-duration") * 1000
    with diagnostics_session(ctx) as session:
        if signal_pid is not None:
            signal_session(out, session, signal_pid, "cancel" if cancel is not None else "terminate", yes, dry_run)
            return

        def snapshot() -> dict[str, Any]:
            with session.errors():
                conn = session.conn()
                return blocking_snapshot(conn) if blocking else activity_snapshot(conn, min_duration_ms, state)

        def render(data: dict[str, Any]) -> RenderableType:
            return render_blocking(data) if blocking else render_activity(out, data)

        if watch:
            # The snapshot runs in a worker thread: the diagnostics session is a synchronous connection.
            with suppress(KeyboardInterrupt):
                asyncio.run(watch_ticks(out, lambda: asyncio.to_thread(snapshot), render, interval_s, count))
            return
        data = snapshot()
        if blocking:
            out.emit(data, rows=blocking_rows(data), table=lambda: render(data))
        else:
            out.emit(
                data,
                rows=data["long_running"]["items"],
                columns=[c.key for c in SESSION_COLUMNS],
                table=lambda: render(data),
            )


# --- db queries -----------------------------------------------------------------------------------

QUERIES_EXAMPLES = examples(
    "challengectl db queries --by mean --limit 5",
    "challengectl db queries --filter user_goal_progress -o json | jq '.items[] | {query_name, calls, mean_ms}'",
    "challengectl db queries --reset --yes",
)

STATEMENT_COLUMNS = [
    Column("query_name", "NAME"),
    Column("calls", "CALLS", justify="right"),
    Column("total_ms", "TOTAL", justify="right", render=lambda v: Text(human_ms(v))),
    Column("mean_ms", "MEAN", justify="right", render=lambda v: Text(human_ms(v))),
    Column("max_ms", "MAX", justify="right", render=lambda v: Text(human_ms(v))),
    Column("rows", "ROWS", justify="right"),
    Column("share_pct", "SHARE %", justify="right", render=lambda v: Text("-" if v is None else f"{v:.1f}")),
    Column("shared_blks_hit", "BLKS HIT", justify="right"),
    Column("shared_blks_read", "BLKS READ", justify="right"),
    Column("query", "QUERY", render=lambda v: Text(one_line(v, 70))),
]


def registry_statements(out: Output) -> dict[str, str]:
    """name → SQL of the named-query registry, to label statements; empty (with a warning) if unreadable."""
    from service.storage.registry import RegistryError, load_registry

    try:
        return {query.name: query.sql for query in load_registry()}
    except RegistryError as error:
        out.warn(f"statements are not labelled with registry names: {error}")
        return {}


@app.command("queries", epilog=QUERIES_EXAMPLES)
def queries(
    ctx: typer.Context,
    by: str = typer.Option("total", "--by", help="order by total|mean|calls|rows|io (io: I/O time, then blocks read)"),
    limit: int = typer.Option(10, "--limit", min=1, help="show the top N statements"),
    min_calls: int = typer.Option(0, "--min-calls", min=0, help="skip statements called fewer times"),
    text_filter: str | None = typer.Option(
        None, "--filter", help="only statements whose text contains TEXT (case-insensitive)"
    ),
    reset: bool = typer.Option(False, "--reset", help="clear pg_stat_statements (every database, every consumer)"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation (--reset)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what --reset would do, change nothing"),
) -> None:
    """Top statements from pg_stat_statements, labelled with their registry names."""
    from challengectl import pg_diagnostics as pgd

    out = get_cli(ctx).output
    order = by.strip().lower()
    if order not in pgd.STATEMENT_ORDERS:
        raise CliError(f"invalid --by '{by}'", f"use --by {'|'.join(pgd.STATEMENT_ORDERS)}", EXIT_USAGE)
    with diagnostics_session(ctx) as session, session.errors():
        conn = session.conn()
        try:
            view = pgd.statement_stats_view(conn)
        except pgd.StatementStatsUnavailable as missing:
            if reset:
                raise
            unavailable = CliError(f"{missing} ({session.target})", HINT_PG_STAT_STATEMENTS, EXIT_UNAVAILABLE)
            view = None
        if view is None:
            pass
        elif reset:
            action = (
                f"reset pg_stat_statements on {session.target}: this clears the statistics of every "
                "database and of every consumer of the view (monitoring included)"
            )
            if not confirm(action, yes, dry_run):
                return
            pgd.reset_statement_stats(conn, view)
            out.warn("pg_stat_statements was reset: every consumer of the view lost its statistics")
            result = {"reset": True, "database": conn.info.dbname}
            out.emit_object(
                result, text=lambda: "pg_stat_statements reset", table=lambda: Text("pg_stat_statements reset")
            )
            return
        else:
            stats = pgd.top_statements(
                conn, view, order=order, limit=limit, min_calls=min_calls, text_filter=text_filter
            )
            info = pgd.server_info(conn)
    if view is None:
        service_query_timings(get_cli(ctx), unavailable, order, limit, min_calls, text_filter)
        return
    labelled = pgd.label_statements(stats, registry_statements(out))
    items = [asdict(entry) for entry in labelled]
    data = {
        "server_version_num": info.server_version_num,
        "extension_version": view.version,
        "columns": asdict(view.columns),
        "order_by": order,
        **listing(items),
    }
    title = f"Top {len(items)} statements by {order} ({view.columns.total}; PostgreSQL {info.server_version})"
    out.emit(
        data,
        rows=items,
        columns=[c.key for c in STATEMENT_COLUMNS],
        table=lambda: (
            out.table(items, STATEMENT_COLUMNS, title=title)
            if items
            else Text("no statements recorded yet for this database")
        ),
    )


# NAME, CALLS, TOTAL and MEAN as for pg_stat_statements, then the p95 of the service's histogram.
SERVICE_TIMING_COLUMNS = [
    *STATEMENT_COLUMNS[:4],
    Column("p95_ms", "P95", justify="right", render=lambda v: Text(human_ms(v))),
]
SERVICE_TIMING_ORDERS = {"total": "total_ms", "mean": "mean_ms", "calls": "calls"}


def service_query_timings(
    cli: CliContext, unavailable: CliError, order: str, limit: int, min_calls: int, text_filter: str | None
) -> None:
    """Without pg_stat_statements: the service's own per-named-query timings from its /metrics (since it
    started), saying where they come from; the original error when the service does not answer either."""
    from challengectl.loadtest.servicemetrics import named_query_timings, parse_samples

    try:
        text = cli.run(lambda clients: clients.admin.get_text("/metrics"))
    except CliError as service_error:
        raise CliError(
            f"{unavailable.message}; the service's own timings are unavailable too: {service_error.message}",
            unavailable.hint,
            unavailable.exit_code,
        ) from None
    key = SERVICE_TIMING_ORDERS.get(order, "total_ms")
    items = [
        item
        for item in named_query_timings(parse_samples(text))
        if item["calls"] >= min_calls and (not text_filter or text_filter.lower() in item["query_name"].lower())
    ]
    items = sorted(items, key=lambda item: -item[key])[:limit]
    source = f"the service's own timings per named query from {cli.settings().admin_url}/metrics, since it started"
    out = cli.output
    out.warn(f"{unavailable.message}; showing {source} (order by {key.removesuffix('_ms')})")
    data = {"source": "service_metrics", "reason": unavailable.message, "order_by": key, **listing(items)}
    out.emit(
        data,
        rows=items,
        columns=[c.key for c in SERVICE_TIMING_COLUMNS],
        table=lambda: (
            out.table(items, SERVICE_TIMING_COLUMNS, title=f"Top {len(items)} named queries (service /metrics)")
            if items
            else Text("the service has run no named query yet")
        ),
    )


# --- db indexes -----------------------------------------------------------------------------------

INDEXES_EXAMPLES = examples(
    "challengectl db indexes",
    "challengectl db indexes duplicates -o json | jq -r '.items[].index_name'",
    "challengectl db indexes suggest --create --yes",
)


def _status_cell(status: Any) -> RenderableType:
    level = {"present": "pass", "invalid": "fail", "missing": "fail", "different": "warn"}.get(str(status), "warn")
    return status_text(level, str(status))


INDEX_TABLES: dict[str, list[Column]] = {
    "usage": [
        Column("table_name", "TABLE"),
        Column("index_name", "INDEX"),
        Column("idx_scan", "SCANS", justify="right"),
        Column("idx_tup_read", "TUPLES READ", justify="right"),
        Column("idx_tup_fetch", "TUPLES FETCHED", justify="right"),
        Column("size_bytes", "SIZE", justify="right", render=lambda v: Text(human_bytes(v))),
        Column("valid", "VALID"),
    ],
    "unused": [
        Column("table_name", "TABLE"),
        Column("index_name", "INDEX"),
        Column("size_bytes", "SIZE", justify="right", render=lambda v: Text(human_bytes(v))),
        Column("verdict", "VERDICT"),
        Column("definition", "DEFINITION"),
    ],
    "duplicates": [
        Column("table_name", "TABLE"),
        Column("index_name", "INDEX"),
        Column("columns", "COLUMNS", render=lambda v: Text(", ".join(v))),
        Column("duplicate_of", "DUPLICATES"),
        Column("duplicate_of_columns", "ITS COLUMNS", render=lambda v: Text(", ".join(v))),
        Column("size_bytes", "SIZE", justify="right", render=lambda v: Text(human_bytes(v))),
        Column("advice", "ADVICE"),
    ],
    "expected": [
        Column("index_name", "INDEX"),
        Column("table_name", "TABLE"),
        Column("expected_definition", "EXPECTED"),
        Column("status", "STATUS", render=_status_cell),
        Column("actual_definition", "ACTUAL"),
    ],
    "suggest": [
        Column("index_name", "INDEX"),
        Column("reason", "REASON"),
        Column("statements", "STATEMENTS", render=lambda v: Text(";\n".join(v) + ";")),
    ],
}

INDEX_TITLES = {
    "usage": "Index usage (pg_stat_user_indexes)",
    "unused": "Unused indexes (never scanned; not primary, unique or constraint)",
    "duplicates": "Duplicate indexes (leading columns of another index)",
    "expected": "Expected indexes (the ones the schema relies on)",
    "suggest": "Suggested statements",
}


def drop_advice(index_name: str) -> str:
    from psycopg import sql

    return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(index_name)).as_string(None)


def index_report(conn: psycopg.Connection, min_stats_age_s: float) -> dict[str, Any]:
    """Every section of `db indexes` for the project's tables."""
    from challengectl import pg_diagnostics as pgd

    indexes = pgd.project_indexes(conn)
    age = pgd.stats_age(conn)
    statuses = pgd.expected_index_status(indexes)
    old_enough = age.age_s >= min_stats_age_s
    usage = [
        {
            "table_name": i.table_name,
            "index_name": i.index_name,
            "idx_scan": i.idx_scan,
            "idx_tup_read": i.idx_tup_read,
            "idx_tup_fetch": i.idx_tup_fetch,
            "size_bytes": i.size_bytes,
            "primary": i.is_primary,
            "unique": i.is_unique,
            "valid": i.is_valid,
        }
        for i in indexes
    ]
    unused = [
        {
            "table_name": i.table_name,
            "index_name": i.index_name,
            "size_bytes": i.size_bytes,
            "idx_scan": i.idx_scan,
            "definition": i.definition,
            "verdict": "unused" if old_enough else "too early to tell",
        }
        for i in pgd.unused_indexes(indexes)
    ]
    duplicates = [{**asdict(d), "advice": drop_advice(d.index_name)} for d in pgd.duplicate_indexes(indexes)]
    return {
        "usage": listing(usage),
        "unused": {
            "stats_reset": age.stats_reset,
            "stats_since": age.since,
            "stats_age_s": round(age.age_s, 1),
            "min_stats_age_s": min_stats_age_s,
            **listing(unused),
        },
        "duplicates": listing(duplicates),
        "expected": listing([asdict(status) for status in statuses]),
        "suggest": listing([asdict(s) for s in pgd.suggest_indexes(statuses)]),
    }


def render_index_section(out: Output, name: str, section: dict[str, Any]) -> RenderableType:
    title = INDEX_TITLES[name]
    if name == "unused":
        since = section["stats_since"]
        title += f", statistics since {rfc3339(since) if since else '-'}"
    if not section["items"]:
        empty = {"suggest": "nothing to suggest: the expected indexes are present and valid"}.get(name, "none")
        return Text(f"{title}: {empty}")
    return out.table(section["items"], INDEX_TABLES[name], title=title)


def create_suggestions(
    ctx: typer.Context,
    out: Output,
    session: DiagnosticsSession,
    suggestions: list[pgd.IndexSuggestion],
    yes: bool,
    dry_run: bool,
) -> None:
    """Run the suggested statements after confirmation, then report the expected indexes again."""
    from challengectl import pg_diagnostics as pgd

    if not suggestions:
        message = "nothing to create: the expected indexes are present and valid"
        out.emit_object({"created": [], "expected": []}, text=lambda: message, table=lambda: Text(message))
        return
    statements = "; ".join(statement for suggestion in suggestions for statement in suggestion.statements)
    if not confirm(f"run on {session.target} (CREATE INDEX CONCURRENTLY): {statements}", yes, dry_run):
        return
    # Index builds are not bounded by --timeout: a build cut short leaves an INVALID index behind.
    with diagnostics_session(ctx, statement_timeout_ms=0) as builder, builder.errors():
        for suggestion in suggestions:
            out.info(f"creating {suggestion.index_name} …")
            pgd.create_suggested_index(builder.conn(), suggestion)
    with session.errors():
        statuses = pgd.expected_index_status(pgd.project_indexes(session.conn()))
    result: dict[str, Any] = {
        "created": [s.index_name for s in suggestions],
        "expected": [asdict(s) for s in statuses],
    }
    not_present = [s.index_name for s in statuses if s.status != "present"]
    out.emit(
        result,
        rows=result["expected"],
        columns=[c.key for c in INDEX_TABLES["expected"]],
        table=lambda: out.table(result["expected"], INDEX_TABLES["expected"], title=INDEX_TITLES["expected"]),
    )
    if not_present:
        raise CliError(
            f"expected index(es) still not present after the build: {', '.join(not_present)}",
            "see 'challengectl db indexes expected'",
            EXIT_FAILED,
        )


@app.command("indexes", epilog=INDEXES_EXAMPLES)
def indexes(
    ctx: typer.Context,
    section: str | None = typer.Argument(
        None, metavar="[usage|unused|duplicates|expected|suggest]", help="one section; default: all of them"
    ),
    create: bool = typer.Option(False, "--create", help="with suggest: run the suggested CREATE INDEX CONCURRENTLY"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation (suggest --create)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print what suggest --create would run, change nothing"),
    min_stats_age: str = typer.Option(
        "7d", "--min-stats-age", help="call a never-scanned index unused only when the statistics are at least this old"
    ),
) -> None:
    """Index health of the project's tables: usage, unused, duplicates, the expected indexes, suggestions."""
    from challengectl import pg_diagnostics as pgd

    out = get_cli(ctx).output
    if section is not None and section not in INDEX_SECTIONS:
        raise CliError(f"unknown section '{section}'", f"use one of {', '.join(INDEX_SECTIONS)}", EXIT_USAGE)
    if create and section != "suggest":
        raise CliError(
            "--create applies to 'db indexes suggest' only",
            "run 'challengectl db indexes suggest --create'",
            EXIT_USAGE,
        )
    min_stats_age_s = parse_duration(min_stats_age, "--min-stats-age")
    with diagnostics_session(ctx) as session:
        with session.errors():
            conn = session.conn()
            if pgd.PROGRESS_TABLE not in pgd.existing_tables(conn):
                raise CliError(
                    f"table {pgd.PROGRESS_TABLE} does not exist in {session.target}",
                    "apply the schema with 'challengectl db migrate'",
                    EXIT_FAILED,
                )
            if create:
                suggestions = pgd.suggest_indexes(pgd.expected_index_status(pgd.project_indexes(conn)))
            else:
                report = index_report(conn, min_stats_age_s)
        if create:
            create_suggestions(ctx, out, session, suggestions, yes, dry_run)
            return
    if section is not None:
        chosen = report[section]
        out.emit(
            chosen,
            rows=chosen["items"],
            columns=[c.key for c in INDEX_TABLES[section]],
            table=lambda: render_index_section(out, section, chosen),
        )
        return
    out.emit_object(
        report, table=lambda: sections([render_index_section(out, name, report[name]) for name in INDEX_SECTIONS])
    )


# --- db tables ------------------------------------------------------------------------------------

TABLES_EXAMPLES = examples(
    "challengectl db tables",
    "challengectl db tables --exact --histogram -o json | jq '.histogram.buckets'",
    "challengectl db tables --histogram --sample 10",
)

SIZE_COLUMNS = [
    Column("table_name", "TABLE"),
    Column("total_bytes", "TOTAL", justify="right", render=lambda v: Text(human_bytes(v))),
    Column("table_bytes", "HEAP", justify="right", render=lambda v: Text(human_bytes(v))),
    Column("indexes_bytes", "INDEXES", justify="right", render=lambda v: Text(human_bytes(v))),
    Column("toast_bytes", "TOAST", justify="right", render=lambda v: Text(human_bytes(v))),
    Column("estimated_rows", "ROWS (EST)", justify="right"),
    Column("exact_rows", "ROWS (EXACT)", justify="right"),
    Column("distinct_users", "USERS", justify="right"),
    Column("bytes_per_row", "BYTES/ROW", justify="right"),
]

ACTIVITY_COLUMNS = [
    Column("table_name", "TABLE"),
    Column("live_rows", "LIVE", justify="right"),
    Column("dead_rows", "DEAD", justify="right"),
    Column("dead_pct", "DEAD %", justify="right"),
    Column("seq_scan", "SEQ SCANS", justify="right"),
    Column("idx_scan", "IDX SCANS", justify="right"),
    Column("n_tup_upd", "UPDATES", justify="right"),
    Column("hot_update_pct", "HOT %", justify="right"),
    Column("n_mod_since_analyze", "MOD SINCE ANALYZE", justify="right"),
    Column("heap_hit_pct", "HEAP HIT %", justify="right"),
    Column("index_hit_pct", "INDEX HIT %", justify="right"),
]

MAINTENANCE_COLUMNS = [
    Column("table_name", "TABLE"),
    Column("last_vacuum", "LAST VACUUM"),
    Column("last_autovacuum", "LAST AUTOVACUUM"),
    Column("last_analyze", "LAST ANALYZE"),
    Column("last_autoanalyze", "LAST AUTOANALYZE"),
    Column("vacuum_count", "VACUUMS", justify="right"),
    Column("autovacuum_count", "AUTOVACUUMS", justify="right"),
]


def table_item(stats: pgd.TableStats, exact: pgd.ExactCount | None) -> dict[str, Any]:
    item = asdict(stats)
    item.update(heap_hit_pct=stats.heap_hit_pct, index_hit_pct=stats.index_hit_pct, bytes_per_row=stats.bytes_per_row)
    if exact is not None:
        item.update(exact_rows=exact.rows, distinct_users=exact.distinct_users)
    return item


def tables_report(conn: psycopg.Connection, exact: bool, histogram: bool, sample_pct: float | None) -> dict[str, Any]:
    from challengectl import pg_diagnostics as pgd

    info = pgd.server_info(conn)
    limits = pgd.connection_limits(conn)
    stats = pgd.table_stats(conn)
    counts = {s.table_name: pgd.exact_count(conn, s.table_name) for s in stats} if exact else {}
    report: dict[str, Any] = {
        "database": {
            "name": info.database,
            "size_bytes": info.database_size_bytes,
            "cache_hit_pct": info.cache_hit_pct,
            "blks_hit": info.blks_hit,
            "blks_read": info.blks_read,
        },
        "settings": {
            "server_version": info.server_version,
            "server_version_num": info.server_version_num,
            "max_connections": limits.max_connections,
            "superuser_reserved_connections": limits.superuser_reserved_connections,
            "reserved_connections": limits.reserved_connections,
            "shared_buffers": info.shared_buffers,
            "work_mem": info.work_mem,
            "shared_preload_libraries": info.shared_preload_libraries,
            "timezone": info.timezone,
        },
        "missing_tables": [name for name in pgd.PROJECT_TABLES if name not in {s.table_name for s in stats}],
        "tables": listing([table_item(s, counts.get(s.table_name)) for s in stats]),
    }
    if histogram and pgd.PROGRESS_TABLE not in report["missing_tables"]:
        report["histogram"] = asdict(pgd.goals_per_user(conn, sample_pct))
    return report


def render_tables(out: Output, report: dict[str, Any]) -> RenderableType:
    from challengectl import pg_diagnostics as pgd

    database, settings = report["database"], report["settings"]
    headline = Text(
        f"{database['name']}: {human_bytes(database['size_bytes'])}, cache hit "
        f"{format_cell(database['cache_hit_pct'])} % (aim ≥ 99 %); PostgreSQL {settings['server_version']}, "
        f"shared_buffers {settings['shared_buffers']}, work_mem {settings['work_mem']}, "
        f"max_connections {settings['max_connections']}, TimeZone {settings['timezone']}"
    )
    items = report["tables"]["items"]
    parts: list[RenderableType] = [
        headline,
        out.table(items, SIZE_COLUMNS, title="Sizes and rows"),
        out.table(items, ACTIVITY_COLUMNS, title="Rows, scans and cache hits"),
        out.table(items, MAINTENANCE_COLUMNS, title="Vacuum and analyze"),
    ]
    histogram = report.get("histogram")
    if histogram is not None:
        sampled = f", {histogram['sample_pct']} % page sample" if histogram["sample_pct"] is not None else ""
        parts.append(
            out.table(
                histogram["buckets"],
                [
                    Column("label", "GOALS PER USER"),
                    Column("users_all", "USERS (ALL ROWS)", justify="right"),
                    Column("users_active", "USERS (ACTIVE ROWS)", justify="right"),
                ],
                title=f"{pgd.PROGRESS_TABLE}: rows per user{sampled}",
            )
        )
        parts.append(
            Text(
                f"{histogram['users']} users; rows per user mean {format_cell(histogram['mean_rows'])}, "
                f"max {histogram['max_rows']}; active rows per user mean "
                f"{format_cell(histogram['mean_active_rows'])}, max {histogram['max_active_rows']}; "
                f"{histogram['users_without_active']} user(s) without an active row"
            )
        )
    return sections(parts)


@app.command("tables", epilog=TABLES_EXAMPLES)
def tables(
    ctx: typer.Context,
    exact: bool = typer.Option(
        False, "--exact", help="real COUNT(*) and COUNT(DISTINCT user_id) (full scans, bounded by --timeout)"
    ),
    histogram: bool = typer.Option(False, "--histogram", help="goals-per-user histogram of user_goal_progress"),
    sample: float | None = typer.Option(
        None, "--sample", metavar="PCT", help="with --histogram: read PCT percent of the pages (TABLESAMPLE SYSTEM)"
    ),
) -> None:
    """Sizes, row counts, dead rows, scans, vacuum/analyze history and cache hits of the project's tables."""
    from challengectl import pg_diagnostics as pgd

    out = get_cli(ctx).output
    if sample is not None and not histogram:
        raise CliError("--sample applies to --histogram only", "add --histogram", EXIT_USAGE)
    if sample is not None and not 0 < sample <= 100:
        raise CliError(
            f"invalid --sample {sample}: a percentage above 0 and at most 100", "e.g. --sample 10", EXIT_USAGE
        )
    with diagnostics_session(ctx) as session, session.errors():
        report = tables_report(session.conn(), exact, histogram, sample)
    if not report["tables"]["items"]:
        raise CliError(
            f"none of the project's tables ({', '.join(pgd.PROJECT_TABLES)}) exist in {session.target}",
            "apply the schema with 'challengectl db migrate'",
            EXIT_FAILED,
        )
    for name in report["missing_tables"]:
        out.warn(f"table {name} does not exist: run 'challengectl db migrate'")
    database = report["database"]
    hit = database["cache_hit_pct"]
    if (
        hit is not None
        and hit < CACHE_HIT_WARN_PCT
        and database["blks_hit"] + database["blks_read"] >= CACHE_HIT_MIN_BLOCKS
    ):
        out.warn(f"database cache hit ratio {hit} % is below {CACHE_HIT_WARN_PCT:.0f} %: check shared_buffers")
    out.emit(report, rows=report["tables"]["items"], table=lambda: render_tables(out, report))


# --- db analyze -----------------------------------------------------------------------------------

ANALYZE_EXAMPLES = examples(
    "challengectl db analyze",
    "challengectl users init --count 1000 && challengectl db analyze && challengectl explain active-goals",
    "challengectl db analyze -o json | jq '.items[] | .duration_ms'",
)


@app.command("analyze", epilog=ANALYZE_EXAMPLES)
def analyze(ctx: typer.Context) -> None:
    """ANALYZE the project's tables now, so that plans (explain, the service's queries) use fresh statistics."""
    from service.storage.statistics import analyze_tables

    out = get_cli(ctx).output
    with diagnostics_session(ctx, statement_timeout_ms=0) as session, session.errors():
        done = analyze_tables(session.conn())
    if not done:
        raise CliError(
            f"none of the project's tables exist in {session.target}",
            "apply the schema with 'challengectl db migrate'",
            EXIT_FAILED,
        )
    out.emit_list(
        [{"table": item.table, "duration_ms": item.duration_ms} for item in done],
        [Column("table"), Column("duration_ms", "DURATION MS", "right")],
    )


# --- db migrate -----------------------------------------------------------------------------------

MIGRATE_EXAMPLES = examples(
    "challengectl db migrate",
    "challengectl db migrate --status -o json | jq .pending",
    "DATABASE_URL=postgresql://postgres@db/challenge challengectl db migrate --yes",
)


@app.command("migrate", epilog=MIGRATE_EXAMPLES)
def migrate(
    ctx: typer.Context,
    status: bool = typer.Option(False, "--status", help="show applied and pending versions and checksum state"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be applied, change nothing"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation (non-embedded databases)"),
) -> None:
    """Apply pending schema migrations (forward-only, recorded in schema_migrations)."""
    from challengectl import database
    from service.storage.migrations import MigrationError, apply_migrations, discover_migrations, migration_status

    settings = ctx.obj.settings()
    out: Output = ctx.obj.output
    with database_target(settings) as target:
        try:
            current = migration_status(target.url)
            if status or dry_run:
                _print_status(current, out, dry_run)
                return
            if current.pending and not target.embedded and not yes:
                confirm(f"apply {len(current.pending)} migration(s) to {mask_url_password(target.url)}", yes)
            applied = apply_migrations(target.url, application_name=database.APPLICATION_NAME)
        except MigrationError as exc:
            raise CliError(str(exc), "see 'challengectl db migrate --status'", exc.exit_code) from None
        except CliError:
            raise
        except Exception as exc:  # psycopg connection failures
            raise CliError(
                f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}", HINT_DATABASE_URL, EXIT_UNAVAILABLE
            ) from None
    latest = max((m.version for m in discover_migrations()), default=0)
    names = [_describe(m) for m in applied]
    result = {"applied": names, "schema_version": latest}
    lines = [f"applied {name}" for name in names] or [f"nothing to apply: schema is at version {latest}"]
    out.emit_object(result, text=lambda: "\n".join(lines), table=lambda: "\n".join(lines))


def _describe(migration) -> str:
    return f"{migration.version:04d}_{migration.name}"


def _print_status(current, out: Output, dry_run: bool) -> None:
    body = {
        "applied": current.applied,
        "pending": [_describe(m) for m in current.pending],
        "checksum_mismatches": current.checksum_mismatches,
        "unknown_versions": current.unknown_versions,
    }
    lines = [
        f"applied:  {', '.join(f'{v:04d}' for v in current.applied) or '-'}",
        f"pending:  {', '.join(body['pending']) or '-'}" + ("  (dry run: nothing applied)" if dry_run else ""),
        f"checksum mismatches: {current.checksum_mismatches or '-'}; unknown versions: {current.unknown_versions or '-'}",
    ]
    out.emit_object(body, text=lambda: "\n".join(lines), table=lambda: "\n".join(lines))


def register(root: typer.Typer) -> None:
    """Add the `db` group to the root app."""
    root.add_typer(app, name="db")

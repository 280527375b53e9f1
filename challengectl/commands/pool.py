"""`challengectl pool`: connection usage on both sides (docs/cli.md#commands, docs/diagnostics.md#postgresql, docs/diagnostics.md#the-service, X10).

App side: the service's pools from `/admin/pool` (PostgreSQL and Redis: size, in use, idle, waiting,
peak, acquire wait, timeouts). Server side: `pg_stat_activity` (sessions by state and by
`application_name`, and every client session against `max_connections − superuser_reserved_connections`).
Utilisation of each is shown with a warning at ≥ 80 %, plus how many instances of this service's pool
configuration fit under `max_connections`. `--max-util PCT` turns it into a gate (exit 99).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from challengectl.bottleneck import diagnose, pool_snapshot_evidence
from challengectl.connections import database_target
from challengectl.context import examples, get_cli
from challengectl.errors import EXIT_GATE, EXIT_USAGE, CliError
from challengectl.output import Column, Output, status_text
from challengectl.ticker import parse_interval, run_watch
from service.config.settings import connections_per_instance, service_processes

if TYPE_CHECKING:
    from challengectl.client import Clients

EXAMPLES = examples(
    "challengectl pool",
    "challengectl pool -o json | jq '.utilisation_pct'",
    'challengectl pool --max-util 80 || echo "connection pools are running hot"',
    "challengectl pool --watch --interval 5s",
)

WARN_PCT = 80.0
CONNECT_TIMEOUT_S = 5
INSUFFICIENT_PRIVILEGE = "<insufficient privilege>"

# ---------------------------------------------------------------------------------------------------
# Data


async def read_server_connections(database_url: str) -> dict[str, Any]:
    """Server-side connection usage from `pg_stat_activity` and the connection limits (docs/diagnostics.md#postgresql).
    max_connections limits client sessions of every database, not just this one."""
    import psycopg

    from challengectl import database
    from challengectl.bottleneck import ServiceSessions
    from challengectl.cli_queries import fetch_all_async, fetch_one_async
    from challengectl.pg_diagnostics import ConnectionCount, connection_groups_params, connection_limits_async

    try:
        async with await database.connect_async(database_url, None, CONNECT_TIMEOUT_S) as conn:
            database_name = conn.info.dbname
            limits = await connection_limits_async(conn)
            groups = await fetch_all_async(
                conn, "cli_connections_by_state", ConnectionCount, connection_groups_params(INSUFFICIENT_PRIVILEGE)
            )
            service = await fetch_one_async(conn, "cli_service_sessions", ServiceSessions)
    except psycopg.Error as exc:
        raise database.unreachable(database_url, exc) from None
    assert service is not None  # an aggregate always yields one row
    by_state: dict[str, int] = {}
    by_application: dict[str, int] = {}
    for group in groups:
        application = group.application_name or "(unnamed)"
        by_state[group.state] = by_state.get(group.state, 0) + group.connections
        by_application[application] = by_application.get(application, 0) + group.connections
    return {
        "database": database_name,
        "max_connections": limits.max_connections,
        "superuser_reserved_connections": limits.superuser_reserved_connections,
        "reserved_connections": limits.reserved_connections,
        "available": limits.usable,
        "total": limits.client_sessions,
        "free": limits.free,
        "database_sessions": sum(by_state.values()),
        "by_state": by_state,
        "by_application": by_application,
        "waiting_on_client": sum(group.waiting_on_client for group in groups),
        "service_active": service.active,
        "service_waiting": service.waiting,
    }


async def _attempt(work: Awaitable[dict[str, Any]]) -> tuple[dict[str, Any] | None, CliError | None]:
    try:
        return await work, None
    except CliError as exc:
        return None, exc


async def collect_pool_report(clients: Clients, database_url: str, max_util: float | None) -> dict[str, Any]:
    """Both sides read concurrently (so the sizes compare), then utilisation, warnings, advice and gate.
    One unreachable side is reported in `unreachable`; both unreachable (or one, with a gate) raises."""
    (app, app_error), (config, _), (server, server_error) = await asyncio.gather(
        _attempt(clients.admin.get("/admin/pool")),
        _attempt(clients.admin.get("/admin/config")),
        _attempt(read_server_connections(database_url)),
    )
    if app_error and server_error:
        raise app_error
    failure = app_error or server_error
    if max_util is not None and failure is not None:
        raise failure  # a gate over half the figures would pass by accident
    return build_report(
        app,
        config,
        server,
        max_util,
        {
            name: error.message
            for name, error in (("service", app_error), ("postgres", server_error))
            if error is not None
        },
    )


def build_report(
    app: dict[str, Any] | None,
    config: dict[str, Any] | None,
    server: dict[str, Any] | None,
    max_util: float | None,
    unreachable: dict[str, str],
) -> dict[str, Any]:
    """The `pool` report from the two sides (either may be None) and the service's `/admin/config`."""
    utilisation: dict[str, float] = {}
    if app is not None:
        db, redis = app.get("db", {}), app.get("redis", {})
        utilisation["app_db"] = _pct(db.get("in_use", 0), db.get("max_size", 0))
        if redis.get("max_connections"):
            utilisation["app_redis"] = _pct(redis.get("in_use", 0), redis["max_connections"])
    if server is not None:
        utilisation["server"] = _pct(server["total"], server["available"])
    warnings = [
        f"{_LABELS[name]} at {pct:.1f} % (>= {WARN_PCT:g} %)" for name, pct in utilisation.items() if pct >= WARN_PCT
    ]
    over = [name for name, pct in utilisation.items() if max_util is not None and pct > max_util]
    return {
        "app": app,
        "server": server,
        "utilisation_pct": utilisation,
        "warnings": warnings,
        "advice": sizing_advice(config, server),
        "bottleneck": bottleneck(app, server),
        "unreachable": unreachable,
        "max_util_pct": max_util,
        "over_max_util": over,
    }


_LABELS = {"app_db": "service PostgreSQL pool", "app_redis": "service Redis pool", "server": "PostgreSQL connections"}


def bottleneck(app: dict[str, Any] | None, server: dict[str, Any] | None) -> dict[str, str] | None:
    """The pool's bottleneck verdict by the rule of the load-test findings (`challengectl.bottleneck`), or
    None when the pool is under no pressure or a side is unreachable."""
    if app is None or server is None:
        return None
    evidence = pool_snapshot_evidence(
        app.get("db", {}), server["service_active"], server["service_waiting"], server["free"]
    )
    verdicts = diagnose(evidence)
    return asdict(verdicts[0]) if verdicts else None


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def _setting(config: dict[str, Any], name: str) -> int | None:
    entry = config.get(name)
    value = entry.get("value") if isinstance(entry, dict) else entry
    return value if isinstance(value, int) else None


def sizing_advice(config: dict[str, Any] | None, server: dict[str, Any] | None) -> str | None:
    """`instances × processes × pool max (+ flusher) vs max_connections`: how many instances with this
    service's pool settings fit under the server's limit, keeping the sessions of other clients."""
    if config is None or server is None:
        return None
    workers, pool_max, flushers = (_setting(config, name) for name in ("workers", "db_pool_max", "flush_workers"))
    if workers is None or pool_max is None or flushers is None:
        return None
    per_instance = connections_per_instance(workers, pool_max, flushers)
    others = server["total"] - sum(
        count
        for app, count in server["by_application"].items()
        if app.startswith("challengectl-") and app != "challengectl-cli"
    )
    room = server["available"] - max(others, 0)
    fits = room // per_instance if per_instance else 0
    return (
        f"each instance opens up to {service_processes(workers)} process(es) × pool max {pool_max} + "
        f"{flushers} flusher = "
        f"{per_instance} connections; max_connections {server['max_connections']} − "
        f"{server['max_connections'] - server['available']} reserved − {max(others, 0)} other sessions "
        f"leaves {room}: at most {fits} instance(s) at full pools"
    )


# ---------------------------------------------------------------------------------------------------
# Rendering


POOL_COLUMNS = [
    Column("pool"),
    Column("size", justify="right"),
    Column("in_use", "IN USE", "right"),
    Column("idle", justify="right"),
    Column("waiting", justify="right"),
    Column("max", justify="right"),
    Column("peak", justify="right"),
    Column("wait_p50_ms", "WAIT P50 MS", "right"),
    Column("wait_p95_ms", "WAIT P95 MS", "right"),
    Column("timeouts", justify="right"),
    Column("errors", justify="right"),
]


def render_report(report: dict[str, Any], out: Output) -> RenderableType:
    """The report as tables: service pools, PostgreSQL sessions, utilisation and advice."""
    parts: list[RenderableType] = []
    app, server = report["app"], report["server"]
    if app is not None:
        db, redis = app.get("db", {}), app.get("redis", {})
        pools = [
            {
                "pool": "postgresql",
                "size": db.get("size"),
                "in_use": db.get("in_use"),
                "idle": db.get("idle"),
                "waiting": db.get("waiting"),
                "max": db.get("max_size"),
                "peak": db.get("peak_in_use"),
                "wait_p50_ms": db.get("acquire_wait_ms_p50"),
                "wait_p95_ms": db.get("acquire_wait_ms_p95"),
                "timeouts": db.get("acquire_timeouts"),
                "errors": db.get("connection_errors"),
            },
            {
                "pool": "redis",
                "size": redis.get("in_use", 0) + redis.get("idle", 0),
                "in_use": redis.get("in_use"),
                "idle": redis.get("idle"),
                "max": redis.get("max_connections"),
                "errors": redis.get("errors"),
            },
        ]
        parts += [Text("service pools (/admin/pool)", style="bold"), out.table(pools, POOL_COLUMNS)]
    if server is not None:
        parts += [
            Text(f"PostgreSQL sessions in {server['database']}", style="bold"),
            out.table(
                [{"state": state, "sessions": count} for state, count in server["by_state"].items()],
                [Column("state"), Column("sessions", justify="right")],
            ),
            out.table(
                [{"application": name, "sessions": count} for name, count in server["by_application"].items()],
                [Column("application", "APPLICATION_NAME"), Column("sessions", justify="right")],
            ),
            Text(
                f"waiting on the client: {server['waiting_on_client']}; all databases: {server['total']} of "
                f"{server['available']} available (max_connections {server['max_connections']} − "
                f"{server['superuser_reserved_connections']} superuser reserved"
                + (f" − {server['reserved_connections']} reserved" if server["reserved_connections"] else "")
                + ")"
            ),
        ]
    for name, pct in report["utilisation_pct"].items():
        status = "fail" if name in report["over_max_util"] else "warn" if pct >= WARN_PCT else "pass"
        parts.append(Text.assemble(status_text(status), f" {_LABELS[name]}: {pct:.1f} %"))
    if report["bottleneck"]:
        parts.append(Text(f"bottleneck: {report['bottleneck']['finding']}; {report['bottleneck']['advice']}"))
    if report["advice"]:
        parts.append(Text(f"advice: {report['advice']}"))
    for name, message in report["unreachable"].items():
        parts.append(Text(f"{name} unreachable: {message}"))
    return Group(*parts)


# ---------------------------------------------------------------------------------------------------
# Command


def pool(
    ctx: typer.Context,
    watch: bool = typer.Option(False, "--watch", help="refresh every --interval until Ctrl-C (NDJSON when piped)"),
    interval: str = typer.Option("2s", "--interval", help="refresh interval for --watch, <n>[ms|s|m|h]"),
    max_util: float | None = typer.Option(
        None, "--max-util", metavar="PCT", help="exit 99 when any utilisation is above PCT percent"
    ),
) -> None:
    """Connection usage: the service's pools against PostgreSQL's max_connections."""
    cli = get_cli(ctx)
    interval_s = parse_interval(interval)
    if max_util is not None and (watch or max_util < 0):
        raise CliError(
            "--max-util is a one-shot gate: give a PCT >= 0 and no --watch",
            "e.g. challengectl pool --max-util 80",
            EXIT_USAGE,
        )
    out = cli.output
    with database_target(cli.settings()) as target:
        if watch:
            run_watch(
                cli,
                interval_s,
                lambda clients: collect_pool_report(clients, target.url, None),
                lambda report: render_report(report, out),
            )
            return
        report = cli.run(lambda clients: collect_pool_report(clients, target.url, max_util))
    _emit(out, report)
    if report["over_max_util"]:
        over = ", ".join(f"{_LABELS[name]} {report['utilisation_pct'][name]:.1f} %" for name in report["over_max_util"])
        raise CliError(
            f"utilisation above --max-util {max_util:g} %: {over}",
            "raise db_pool_max or max_connections, or add capacity; see the advice line of 'challengectl pool'",
            EXIT_GATE,
        )


def _emit(out: Output, report: dict[str, Any]) -> None:
    if out.format != "table":  # the table shows them itself
        for warning in [
            *report["warnings"],
            *(f"{name} unreachable: {message}" for name, message in report["unreachable"].items()),
        ]:
            out.warn(warning)
    out.emit_object(report, table=lambda: render_report(report, out))


def register(app: typer.Typer) -> None:
    """Add `pool` to the root app."""
    app.command("pool", epilog=EXAMPLES)(pool)

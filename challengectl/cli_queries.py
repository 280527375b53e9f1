"""The CLI's named statements (sql/cli_queries.sql), parsed and validated by the service's registry loader,
so that they follow the same rules as the service's: one statement per name, declared parameters.

Callers run a statement by name with `fetch_all`/`fetch_one` (or their `_async` twins) and get typed
records (`record`: a frozen dataclass whose fields are the statement's columns), or with `fetch_values`
the one value of each row. Connections come from `challengectl.database`, which also maps an unreachable
server to the CLI's error. The few statements built at run time (identifiers, EXPLAIN of a registry
statement) are composed with `psycopg.sql` where they are used, each saying why, and run with
`fetch_composed`; tests/test_cli_queries.py keeps SQL out of the rest of `challengectl/`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from service.config.resources import cli_queries_path
from service.storage.registry import Registry, load_registry

if TYPE_CHECKING:
    import psycopg

CLI_QUERIES = (
    "cli_reward_grants",
    "cli_active_users_page",
    "cli_catalog_rows",
    "cli_truncate_tables",
    "cli_server_version",
    "cli_ping",
    "cli_server_info",
    "cli_connection_limits",
    "cli_connections_by_state",
    "cli_service_sessions",
    "cli_sessions",
    "cli_blocked_sessions",
    "cli_blockers",
    "cli_cancel_backend",
    "cli_terminate_backend",
    "cli_statement_stats_extension",
    "cli_statement_stats_columns",
    "cli_statement_stats_status",
    "cli_project_indexes",
    "cli_stats_age",
    "cli_existing_tables",
    "cli_table_stats",
    "cli_clock",
    "cli_explain_timeouts",
    "cli_progress_has_rows",
    "cli_progress_reltuples",
    "cli_sample_user_ids",
    "cli_heaviest_user",
    "cli_user_rows",
    "cli_plan_tables",
)

Row = TypeVar("Row")


@cache
def cli_registry() -> Registry:
    """The CLI's statements; a malformed or incomplete file raises `RegistryError` (a bug, not input)."""
    return load_registry(cli_queries_path(), required=CLI_QUERIES)


def cli_sql(name: str) -> str:
    """The text of the CLI statement `name`."""
    return cli_registry().get(name).sql


def fetch_all(
    conn: psycopg.Connection[Any], name: str, record: type[Row], params: Mapping[str, Any] | None = None
) -> list[Row]:
    """Every row of the CLI statement `name`, as `record`s."""
    return fetch_composed(conn, cli_sql(name), record, params)


def fetch_composed(
    conn: psycopg.Connection[Any],
    statement: str | psycopg.sql.Composed,
    record: type[Row],
    params: Mapping[str, Any] | None = None,
) -> list[Row]:
    """Every row of a statement composed at run time (see the module doc), as `record`s. Parameters are
    always a dict, even an empty one, so that psycopg reads `%%` as `%` in every statement."""
    from psycopg.rows import class_row

    with conn.cursor(row_factory=class_row(record)) as cursor:
        return cursor.execute(statement, dict(params or {})).fetchall()


def fetch_values(conn: psycopg.Connection[Any], name: str, params: Mapping[str, Any] | None = None) -> list[Any]:
    """The first column of every row of the CLI statement `name` (a statement of one value per row)."""
    from psycopg.rows import tuple_row

    with conn.cursor(row_factory=tuple_row) as cursor:
        return [row[0] for row in cursor.execute(cli_sql(name), dict(params or {})).fetchall()]


async def fetch_values_async(
    conn: psycopg.AsyncConnection[Any], name: str, params: Mapping[str, Any] | None = None
) -> list[Any]:
    """`fetch_values` on an asynchronous connection."""
    from psycopg.rows import tuple_row

    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(cli_sql(name), dict(params or {}))
        return [row[0] for row in await cursor.fetchall()]


def fetch_one(
    conn: psycopg.Connection[Any], name: str, record: type[Row], params: Mapping[str, Any] | None = None
) -> Row | None:
    """The first row of the CLI statement `name` as a `record`, None when there is none."""
    return next(iter(fetch_all(conn, name, record, params)), None)


async def fetch_all_async(
    conn: psycopg.AsyncConnection[Any], name: str, record: type[Row], params: Mapping[str, Any] | None = None
) -> list[Row]:
    """`fetch_all` on an asynchronous connection."""
    from psycopg.rows import class_row

    async with conn.cursor(row_factory=class_row(record)) as cursor:
        await cursor.execute(cli_sql(name), dict(params or {}))
        return await cursor.fetchall()


async def fetch_one_async(
    conn: psycopg.AsyncConnection[Any], name: str, record: type[Row], params: Mapping[str, Any] | None = None
) -> Row | None:
    """`fetch_one` on an asynchronous connection."""
    return next(iter(await fetch_all_async(conn, name, record, params)), None)


def execute(conn: psycopg.Connection[Any], name: str, params: Mapping[str, Any] | None = None) -> None:
    """Run the CLI statement `name` for its effect (a write)."""
    conn.execute(cli_sql(name), dict(params or {}))

"""`challengectl version`: the CLI's version and, where reachable, the service's version, schema
version and catalog fingerprint (from `/admin/config`), and the PostgreSQL and Redis server versions.
An unreachable part is shown as such; it is not an error (docs/cli.md#commands)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from challengectl.connections import service_database_url, service_redis_url
from challengectl.context import examples, get_cli
from challengectl.errors import CliError
from challengectl.output import Output
from service import __version__
from service.config.settings import Settings

if TYPE_CHECKING:
    from challengectl.client import Clients

EXAMPLES = examples(
    "challengectl version",
    "challengectl version -o json | jq -r .service_version",
    "challengectl --admin-url http://10.0.0.5:8080 version -o yaml",
)

CONNECT_TIMEOUT_S = 3


def version(ctx: typer.Context) -> None:
    """CLI, service, schema, catalog, PostgreSQL and Redis versions."""
    cli = get_cli(ctx)
    settings = cli.settings()
    report = cli.run(lambda clients: collect_versions(clients, settings))
    _emit(cli.output, report)


async def collect_versions(clients: Clients, settings: Settings) -> dict[str, Any]:
    """The version report; each unreachable part has a null version and its reason in `unreachable`."""
    database_url, redis_url = service_database_url(settings), service_redis_url(settings)
    service, postgres, redis = await asyncio.gather(
        _service_versions(clients),
        _postgres_version(database_url),
        _redis_version(redis_url),
    )
    unreachable = {
        name: part["error"]
        for name, part in (("service", service), ("postgres", postgres), ("redis", redis))
        if part.get("error")
    }
    return {
        "cli_version": __version__,
        "service_version": service.get("service_version"),
        "schema_version": service.get("schema_version"),
        "catalog_fingerprint": service.get("catalog_fingerprint"),
        "postgres_version": postgres.get("version"),
        "redis_version": redis.get("version"),
        "unreachable": unreachable,
    }


async def _service_versions(clients: Clients) -> dict[str, Any]:
    try:
        config = await clients.admin.get("/admin/config")
    except CliError as exc:
        return {"error": exc.message}
    if not isinstance(config, dict):
        return {"error": "unexpected /admin/config body"}
    return {key: config.get(key) for key in ("service_version", "schema_version", "catalog_fingerprint")}


async def _postgres_version(url: str | None) -> dict[str, Any]:
    if not url:
        return {"error": "no database_url and no running embedded PostgreSQL"}
    import psycopg

    from challengectl import database
    from challengectl.pg_diagnostics import server_version_async

    try:
        async with await database.connect_async(url, None, CONNECT_TIMEOUT_S) as conn:
            version = await server_version_async(conn)
    except psycopg.Error as exc:
        return {"error": f"PostgreSQL unreachable: {_first_line(exc)}"}
    return {"version": version}


async def _redis_version(url: str | None) -> dict[str, Any]:
    if not url:
        return {"error": "no redis_url (or disabled) and no running embedded Redis"}
    import redis.asyncio as redis_asyncio
    from redis.exceptions import RedisError

    client = redis_asyncio.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
    )
    try:
        info = await client.info("server")
    except (RedisError, OSError) as exc:
        return {"error": f"Redis unreachable: {_first_line(exc)}"}
    finally:
        await client.aclose()
    return {"version": info.get("redis_version")}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _emit(out: Output, report: dict[str, Any]) -> None:
    unreachable = report["unreachable"]
    rows = [
        ("cli", report["cli_version"], ""),
        ("service", report["service_version"], unreachable.get("service", "")),
        ("schema", report["schema_version"], ""),
        ("catalog fingerprint", report["catalog_fingerprint"], ""),
        ("postgresql", report["postgres_version"], unreachable.get("postgres", "")),
        ("redis", report["redis_version"], unreachable.get("redis", "")),
    ]

    def table() -> Table:
        grid = Table(show_header=not out.no_headers, header_style="bold", box=None, pad_edge=False)
        for header in ("COMPONENT", "VERSION"):
            grid.add_column(header)
        for name, value, error in rows:
            grid.add_row(name, _shown(value, error))
        return grid

    def text() -> str:
        return "\n".join(f"{name}: {_shown(value, error)}" for name, value, error in rows)

    out.emit_object(report, table=table, text=text)


def _shown(value: Any, error: str) -> str:
    if value is None:
        return f"unreachable: {error}" if error else "-"
    return str(value)


def register(app: typer.Typer) -> None:
    """Add `version` to the root app."""
    app.command("version", epilog=EXAMPLES)(version)

"""Where the CLI's direct PostgreSQL/Redis connections go: the configured URL, or the embedded servers
of the data dir (a running `serve`'s, or started for the duration of the command) (SPEC §9.4)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from challengectl.errors import EXIT_UNAVAILABLE, CliError
from service.embedded import EmbeddedServers, discover
from service.settings import Settings


@dataclass(frozen=True)
class DatabaseTarget:
    url: str
    embedded: bool


@contextmanager
def database_target(settings: Settings) -> Iterator[DatabaseTarget]:
    """The database the command acts on; an embedded one this command started is stopped afterwards."""
    if settings.database_url and settings.embedded != "always":
        yield DatabaseTarget(settings.database_url, embedded=False)
        return
    if settings.embedded == "never":
        raise CliError("no database: DATABASE_URL is unset and embedded=never",
                       "set --database-url or DATABASE_URL", EXIT_UNAVAILABLE)
    data_dir = settings.resolved_data_dir()
    running = discover(data_dir)
    if running is not None:
        yield DatabaseTarget(running["database_url"], embedded=True)
        return
    servers = EmbeddedServers(data_dir, postgres=True, redis=False)
    try:
        urls = servers.start()
    except Exception as exc:
        raise CliError(f"cannot start the embedded PostgreSQL in {data_dir}: {exc}",
                       "set --database-url, or check the data dir", EXIT_UNAVAILABLE) from None
    try:
        yield DatabaseTarget(urls.database_url, embedded=True)
    finally:
        servers.stop()

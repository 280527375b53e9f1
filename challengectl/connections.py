"""Where the CLI's direct PostgreSQL/Redis connections go: the configured URL, or the embedded servers
of the data dir (a running `serve`'s, or started for the duration of the command) (docs/configuration.md#embedded-default).

Whether a server is the embedded one is decided as `serve` decides it (`service.config.resolution.wants_embedded_*`),
so a command inspects the server the service actually uses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from challengectl.errors import EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from service.config.resolution import wants_embedded_postgres, wants_embedded_redis
from service.config.settings import Settings

# service.runtime.embedded (psycopg, redis, psutil) is imported inside the functions: `challengectl --help`
# and the commands that never open a connection do not pay for it.


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
        raise CliError(
            "no database: DATABASE_URL is unset and embedded=never",
            "set --database-url or DATABASE_URL",
            EXIT_UNAVAILABLE,
        )

    from service.runtime.embedded import EmbeddedServers, discover

    data_dir = settings.resolved_data_dir()
    running = discover(data_dir)
    if running is not None:
        yield DatabaseTarget(running["database_url"], embedded=True)
        return
    servers = EmbeddedServers(data_dir, postgres=True, redis=False)
    try:
        urls = servers.start()
    except Exception as exc:
        raise CliError(
            f"cannot start the embedded PostgreSQL in {data_dir}: {exc}",
            "set --database-url, or check the data dir",
            EXIT_UNAVAILABLE,
        ) from None
    assert urls.database_url is not None  # started with postgres=True
    try:
        yield DatabaseTarget(urls.database_url, embedded=True)
    finally:
        servers.stop()


def service_database_url(settings: Settings) -> str | None:
    """The service's PostgreSQL for a command that only looks at it: `database_url`, or with the
    embedded database the one of a running `serve` of the data dir; None when there is neither
    (nothing is started)."""

    from service.runtime.embedded import discover

    if not wants_embedded_postgres(settings):
        return settings.database_url
    running = discover(settings.resolved_data_dir())
    return running.get("database_url") if running else None


def service_redis_url(settings: Settings) -> str | None:
    """The Redis the service caches in: `redis_url`, or with the embedded Redis the one of a running
    `serve` of the data dir; None when the cache is disabled or there is no such Redis. The CLI never
    starts an embedded Redis: a fresh one would hold no cache to inspect."""

    from service.runtime.embedded import discover

    if not wants_embedded_redis(settings):
        return None if settings.cache_disabled() else settings.redis_url
    running = discover(settings.resolved_data_dir())
    return running.get("redis_url") if running else None


def require_service_redis_url(settings: Settings) -> str:
    """`service_redis_url`, for a command that needs the cache: a disabled cache is CliError exit 2,
    no Redis to be found exit 5."""
    if settings.cache_disabled():
        raise CliError(
            "the cache is disabled (redis_url=disabled)",
            "set --redis-url or REDIS_URL to the service's Redis",
            EXIT_USAGE,
        )
    url = service_redis_url(settings)
    if url is not None:
        return url
    if settings.embedded == "never":
        raise CliError(
            "no Redis: REDIS_URL is unset and embedded=never", "set --redis-url or REDIS_URL", EXIT_UNAVAILABLE
        )
    raise CliError(
        f"no Redis: no running 'challengectl serve' uses an embedded Redis in {settings.resolved_data_dir()}"
        + ("" if settings.redis_url else " and REDIS_URL is unset"),
        "set --redis-url or REDIS_URL, or start 'challengectl serve'",
        EXIT_UNAVAILABLE,
    )


async def connect_service_redis(url: str, mode: str, timeout_s: float, max_connections: int = 2) -> Any:
    """A client of `url` from the service's own factory (`service.storage.cache.connect_redis`): a Redis Cluster
    client when `mode` (the `redis_mode` setting) says or finds one (docs/cache.md#redis-cluster)."""
    from service.storage.cache import connect_redis, is_cluster

    timeout_ms = int(timeout_s * 1000)
    if mode == "auto":  # asked here: a server that does not answer is the command's error, not a startup warning
        mode = "cluster" if await is_cluster(url, timeout_ms) else "standalone"
    return await connect_redis(url, max_connections, timeout_ms, mode)

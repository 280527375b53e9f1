"""What `top` reads once per refresh, each source on its own so that one being down leaves the others:
the service's admin port (`/metrics`, `/admin/pool`, `/admin/buffer`, `/admin/cache` through
`AdminClient`), PostgreSQL (`pg_diagnostics`: sessions by state and application, the longest running
query, blocking chains, `max_connections`) and Redis (`redis_diagnostics.read_server_summary`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from challengectl.errors import CliError

if TYPE_CHECKING:
    import psycopg
    import redis.asyncio as redis_asyncio

    from challengectl.client import AdminClient
    from challengectl.loadtest.servicemetrics import Samples

T = TypeVar("T")

ADMIN_PATHS = {"pool": "/admin/pool", "buffer": "/admin/buffer", "cache": "/admin/cache"}
STATEMENT_TIMEOUT_MS = 2000
CONNECT_TIMEOUT_S = 2


@dataclass
class Reading:
    """One refresh: `at` (monotonic seconds), every source that answered, and for each one that did
    not, why (`errors[source]`, sources `metrics`, `pool`, `buffer`, `cache`, `postgres`, `redis`)."""

    at: float
    metrics: Samples | None = None
    pool: dict[str, Any] | None = None
    buffer: dict[str, Any] | None = None
    cache: dict[str, Any] | None = None
    postgres: dict[str, Any] | None = None
    redis: dict[str, Any] | None = None
    errors: dict[str, str] = field(default_factory=dict)


class PostgresSource:
    """A session of its own (application `challengectl-cli`) used from one thread; reconnects after a
    failure. A read that takes longer than the refresh is not started again until it ends, so a stuck
    server costs one thread, not one per refresh."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._conn: psycopg.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="top-postgres")
        self._pending: Future[dict[str, Any]] | None = None

    async def read(self, timeout_s: float) -> dict[str, Any]:
        """Sessions by state and application, the longest non-idle query, blocking chains and the
        connection limits; CliError when unreachable or slower than `timeout_s`."""
        from service.storage.store import describe_target

        if self.url is None:
            raise CliError("no database URL", "set --database-url or DATABASE_URL, or start 'challengectl serve'")
        if self._pending is None or self._pending.done():
            self._pending = self._executor.submit(self._read)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._pending)), timeout_s)
        except TimeoutError:
            raise CliError(f"PostgreSQL {describe_target(self.url)} did not answer within {timeout_s:g} s") from None

    def _read(self) -> dict[str, Any]:
        import psycopg

        from challengectl import database, pg_diagnostics
        from service.storage.store import describe_target, short_reason

        assert self.url is not None
        try:
            if self._conn is None or self._conn.closed:
                self._conn = database.connect(self.url, STATEMENT_TIMEOUT_MS, CONNECT_TIMEOUT_S)
            summary = pg_diagnostics.connection_summary(self._conn)
            longest = pg_diagnostics.long_running(self._conn, 0)
            blocked, blockers = pg_diagnostics.blocking_chains(self._conn)
        except psycopg.Error as exc:
            self.close_connection()
            raise CliError(
                f"PostgreSQL {describe_target(self.url)} unreachable: {short_reason(exc, self.url)}"
            ) from None
        return {
            "max_connections": summary.limits.max_connections,
            "usable_connections": summary.limits.usable,
            "on_server": summary.on_server,
            "in_database": summary.in_database,
            "groups": [asdict(group) for group in summary.groups],
            "longest": asdict(longest[0]) if longest else None,
            "blocked": [asdict(session) for session in blocked],
            "blockers": {pid: asdict(blocker) for pid, blocker in blockers.items()},
        }

    def close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._executor.submit(self.close_connection)
        self._executor.shutdown(wait=False, cancel_futures=False)


class RedisSource:
    """`INFO` of the service's Redis, summarised by `redis_diagnostics.server_summary`."""

    def __init__(self, url: str | None, disabled: bool) -> None:
        self.url = url
        self.disabled = disabled
        self._client: redis_asyncio.Redis | None = None

    async def read(self, timeout_s: float) -> dict[str, Any]:
        import redis.asyncio as redis_asyncio

        from challengectl.redis_diagnostics import read_server_summary, redis_failures_as_cli_errors

        if self.url is None:
            reason = "the cache is disabled (redis_url=disabled)" if self.disabled else "no Redis URL"
            raise CliError(reason, "set --redis-url or REDIS_URL, or start 'challengectl serve'")
        if self._client is None:
            self._client = redis_asyncio.from_url(self.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        async with redis_failures_as_cli_errors(self.url, "reading INFO"):
            return await read_server_summary(self._client)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class Sources:
    """Every source of one `top` session; `read()` takes one Reading."""

    def __init__(self, admin: AdminClient, postgres: PostgresSource, redis: RedisSource, timeout_s: float) -> None:
        self.admin = admin
        self.postgres = postgres
        self.redis = redis
        self.timeout_s = timeout_s

    async def read(self) -> Reading:
        from challengectl.loadtest.servicemetrics import parse_samples

        reading = Reading(at=time.monotonic())

        async def metrics() -> Samples:
            response = await self.admin.send("GET", "/metrics")
            return parse_samples(response.raw.decode("utf-8", "replace"))

        def admin_json(path: str) -> Callable[[], Awaitable[dict[str, Any]]]:
            return lambda: self.admin.get(path)

        readers: dict[str, Callable[[], Awaitable[Any]]] = {
            "metrics": metrics,
            **{name: admin_json(path) for name, path in ADMIN_PATHS.items()},
            "postgres": lambda: self.postgres.read(self.timeout_s),
            "redis": lambda: self.redis.read(self.timeout_s),
        }
        results = await asyncio.gather(*(_attempt(reader(), self.timeout_s) for reader in readers.values()))
        for name, (value, error) in zip(readers, results, strict=True):
            if error is None:
                setattr(reading, name, value)
            else:
                reading.errors[name] = error
        return reading

    async def reset_peaks(self) -> str | None:
        """`POST /admin/reset-peaks`; the error message when it failed."""
        _, error = await _attempt(self.admin.post("/admin/reset-peaks"), self.timeout_s)
        return error

    async def close(self) -> None:
        self.postgres.close()
        await self.redis.close()


async def _attempt(work: Awaitable[T], timeout_s: float) -> tuple[T | None, str | None]:
    try:
        return await asyncio.wait_for(work, timeout_s + 0.5), None
    except CliError as exc:
        return None, exc.message
    except TimeoutError:
        return None, f"no answer within {timeout_s:g} s"

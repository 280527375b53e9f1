"""The steps before `serve` serves: load the catalog, start the embedded servers that have no URL, wait for
PostgreSQL, prepare the schema; and `StartupError`, how any of them (or a server that cannot bind) stops
the start with its exit code (docs/cli.md#exit-codes)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from service.config.resolution import resolve_catalog_path, wants_embedded_postgres, wants_embedded_redis
from service.config.resources import example_catalog_path
from service.config.settings import Settings
from service.domain.catalog import Catalog, CatalogError, first_lines, grouped_warnings, load_catalog
from service.runtime.embedded import EmbeddedServers
from service.storage.migrations import MigrationError, apply_migrations, migration_status
from service.storage.statistics import analyze_database
from service.storage.store import describe_target, short_reason
from service.transport.auth import ensure_embedded_secret

log = logging.getLogger("challengectl.serve")


class StartupError(Exception):
    """The service cannot start; `exit_code` follows docs/cli.md#exit-codes (2 config, 5 dependency, 1 other)."""

    def __init__(self, message: str, exit_code: int, hint: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.hint = hint


@dataclass
class Dependencies:
    """Where PostgreSQL and Redis are, and the embedded servers this process started for them."""

    database_url: str
    redis_url: str | None  # None: cache disabled
    embedded_postgres: bool = False
    embedded_redis: bool = False
    servers: EmbeddedServers | None = None

    @property
    def embedded(self) -> bool:
        return self.embedded_postgres

    def stop(self) -> None:
        if self.servers is not None:
            self.servers.stop()


def load_service_catalog(settings: Settings) -> Catalog:
    path = resolve_catalog_path(settings)
    try:
        catalog = load_catalog(path)
    except CatalogError as exc:
        details = "\n".join(f"  {error}" for error in first_lines(exc.errors))
        hint = "fix the catalog, then check it with 'challengectl serve --check'"
        if settings.sources["catalog_path"] == "default" and not path.exists():
            hint = (
                f"pass --catalog FILE or set CHALLENGE_CATALOG_PATH (the bundled example "
                f"{example_catalog_path()} is used by default only with the embedded database)"
            )
        raise StartupError(f"invalid catalog ({len(exc.errors)} error(s)):\n{details}", 2, hint) from None
    for warning in grouped_warnings(catalog.warnings):
        log.warning("catalog: %s", warning)
    return catalog


def start_dependencies(settings: Settings) -> Dependencies:
    """Start the embedded servers that have no URL (docs/configuration.md#embedded-default) and return where everything is."""
    data_dir = settings.resolved_data_dir()
    deps = Dependencies(
        database_url=settings.database_url or "",
        redis_url=None if settings.cache_disabled() else settings.redis_url,
        embedded_postgres=wants_embedded_postgres(settings),
        embedded_redis=wants_embedded_redis(settings),
    )
    if not (deps.embedded_postgres or deps.embedded_redis):
        return deps
    deps.servers = EmbeddedServers(data_dir, postgres=deps.embedded_postgres, redis=deps.embedded_redis)
    try:
        urls = deps.servers.start()
    except Exception as exc:
        deps.stop()
        raise StartupError(
            f"cannot start the embedded servers in {data_dir}: {exc}",
            5,
            "check the data dir, or set DATABASE_URL and REDIS_URL",
        ) from None
    if deps.embedded_postgres and urls.database_url:
        deps.database_url = urls.database_url
    if deps.embedded_redis:
        deps.redis_url = urls.redis_url
    return deps


def embedded_jwt_secret(settings: Settings, deps: Dependencies) -> Path | None:
    """In embedded mode with no key source configured, the data dir's HS256 secret (created 0600)."""
    has_key_source = settings.jwt_secret or settings.jwt_secret_file or settings.jwt_jwks_url
    if settings.auth != "jwt" or has_key_source or not deps.embedded:
        return None
    return ensure_embedded_secret(settings.resolved_data_dir())


# Connection refusals by a server that answered: waiting does not change them, so startup stops at once
# (what each says, and how to fix it). libpq reports them only as text.
_PERMANENT_REFUSALS = (
    ("does not exist", "create it (createdb), or fix the database or user name in DATABASE_URL"),
    ("authentication failed", "fix the user or password in DATABASE_URL"),
    ("pg_hba.conf", "allow this client in the server's pg_hba.conf, or fix DATABASE_URL"),
)


def wait_for_database(database_url: str, timeout_s: float) -> None:
    """Retry PostgreSQL until it answers or `startup_timeout_s` passes (then exit code 5); a refusal
    that waiting cannot fix (unknown database or user, failed authentication) stops at once (exit code 2)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            migration_status(database_url)
            return
        except MigrationError as exc:
            if exc.exit_code != 5:
                return  # reachable; the migration step reports the problem itself
            _refuse_permanent_failure(database_url)
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"PostgreSQL unreachable after {timeout_s:.0f} s: {exc}",
                    5,
                    "check DATABASE_URL and that PostgreSQL is running",
                ) from None
            time.sleep(0.5)


def _refuse_permanent_failure(database_url: str) -> None:
    """Raise StartupError when a fresh connection is refused for good (see _PERMANENT_REFUSALS)."""
    try:
        psycopg.connect(database_url, connect_timeout=5, application_name="challengectl-service").close()
    except psycopg.OperationalError as error:
        reason = short_reason(error, database_url).removeprefix("FATAL:").strip()
        for marker, hint in _PERMANENT_REFUSALS:
            if marker in reason:
                raise StartupError(
                    f"PostgreSQL {describe_target(database_url)} refused the connection: {reason}", 2, hint
                ) from None


def _analyze_unanalyzed(database_url: str) -> None:
    """Tables without planner statistics (a fresh install) get them now, so that the first plans use the
    indexes; a failure only logs (the service works without, only `explain` would cry wolf)."""
    try:
        for done in analyze_database(database_url, "challengectl-service", only_unanalyzed=True):
            log.info("analyzed %s (%.0f ms): it had no planner statistics", done.table, done.duration_ms)
    except psycopg.Error as exc:
        log.warning("could not analyze the tables: %s", short_reason(exc, database_url))


def prepare_schema(settings: Settings, database_url: str) -> None:
    """Apply pending migrations (migrate=auto) or only verify them (migrate=off)."""
    try:
        if settings.migrate == "auto":
            for migration in apply_migrations(database_url, application_name="challengectl-service"):
                log.info("applied migration %04d_%s", migration.version, migration.name)
            _analyze_unanalyzed(database_url)
        else:
            status = migration_status(database_url)
            if status.pending:
                log.error(
                    "pending migrations with migrate=off: %s; the service stays not ready",
                    ", ".join(f"{m.version:04d}" for m in status.pending),
                )
    except MigrationError as exc:
        raise StartupError(str(exc), exc.exit_code, "see 'challengectl db migrate --status'") from None

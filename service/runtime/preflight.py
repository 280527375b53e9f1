"""`serve --check`: validate settings and catalog, reach the dependencies, check migrations, and report."""

from __future__ import annotations

from service.config.resolution import validate_settings, wants_embedded_postgres, wants_embedded_redis
from service.config.settings import Settings
from service.domain.catalog import grouped_warnings
from service.runtime.embedded import discover
from service.runtime.startup import StartupError, load_service_catalog
from service.storage.migrations import MigrationError, migration_status


def check_configuration(settings: Settings) -> list[str]:
    """The report lines; raises SettingsError / StartupError (exit 2 or 5) on the first blocking problem."""
    validate_settings(settings)
    catalog = load_service_catalog(settings)
    lines = [
        "settings: ok",
        f"catalog: ok ({catalog.path}: {len(catalog.challenges)} challenges, {len(catalog.goals_by_id)} goals, "
        f"{len(catalog.default_goals)} default, fingerprint {catalog.fingerprint})",
        *[f"catalog warning: {warning}" for warning in grouped_warnings(catalog.warnings)],
    ]
    database_url, redis_url = settings.database_url, settings.redis_url
    running = discover(settings.resolved_data_dir())
    if wants_embedded_postgres(settings):
        if running is None:
            lines.append(f"postgres: embedded, not running (would start in {settings.resolved_data_dir()})")
        database_url = running["database_url"] if running else None
    if database_url:
        lines.append(_check_migrations(database_url))
    if wants_embedded_redis(settings):
        redis_url = running["redis_url"] if running else None
        if running is None:
            lines.append("redis: embedded, not running")
    if settings.cache_disabled():
        lines.append("redis: cache disabled")
    elif redis_url:
        lines.append(_check_redis(redis_url, settings.redis_timeout_ms))
    return lines


def _check_migrations(database_url: str) -> str:
    try:
        status = migration_status(database_url)
    except MigrationError as exc:
        raise StartupError(str(exc), exc.exit_code, "see 'challengectl db migrate --status'") from None
    except Exception as exc:
        raise StartupError(
            f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}",
            5,
            "check DATABASE_URL and that PostgreSQL is running",
        ) from None
    if status.checksum_mismatches or status.unknown_versions:
        raise StartupError(
            f"migrations: checksum mismatch {status.checksum_mismatches}, unknown versions {status.unknown_versions}",
            2,
            "see 'challengectl db migrate --status'",
        )
    pending = ", ".join(f"{m.version:04d}_{m.name}" for m in status.pending)
    return f"postgres: reachable; migrations applied {status.applied}" + (f", pending {pending}" if pending else "")


def _check_redis(redis_url: str, timeout_ms: int) -> str:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=timeout_ms / 1000, socket_connect_timeout=1)
    try:
        version = client.info("server")["redis_version"]
    except redis.RedisError as exc:
        raise StartupError(f"Redis unreachable: {exc}", 5, "check REDIS_URL, or set REDIS_URL=disabled") from None
    finally:
        client.close()
    return f"redis: reachable (version {version})"

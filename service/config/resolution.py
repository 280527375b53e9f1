"""What a set of settings means for a run, decided once for `serve` and the CLI alike: which servers are
the embedded ones, which catalog file is loaded, and which combinations cannot start
(docs/configuration.md#embedded-default)."""

from __future__ import annotations

from pathlib import Path

from service.config.resources import example_catalog_path
from service.config.settings import Settings, SettingsError, validate_for_serve


def wants_embedded_postgres(settings: Settings) -> bool:
    """PostgreSQL is the data dir's embedded server: always, or by default when no URL is configured."""
    return settings.embedded == "always" or (settings.embedded == "auto" and not settings.database_url)


def wants_embedded_redis(settings: Settings) -> bool:
    """Redis is the data dir's embedded server: as for PostgreSQL, unless the cache is disabled."""
    if settings.cache_disabled():
        return False
    return settings.embedded == "always" or (settings.embedded == "auto" and not settings.redis_url)


def validate_settings(settings: Settings) -> None:
    """Refuse impossible combinations before anything starts (exit 2)."""
    if settings.embedded == "never":
        for name, value in (("database_url", settings.database_url), ("redis_url", settings.redis_url)):
            if not value:
                raise SettingsError(f"invalid setting '{name}': unset while embedded=never")
    validate_for_serve(settings, embedded_postgres=wants_embedded_postgres(settings))


def resolve_catalog_path(settings: Settings) -> Path:
    """The configured catalog; with embedded PostgreSQL and no configured file, the bundled example."""
    configured = Path(settings.catalog_path).expanduser()
    if settings.sources["catalog_path"] == "default" and not configured.exists() and wants_embedded_postgres(settings):
        return example_catalog_path()
    return configured


BUNDLED_EXAMPLE_SOURCE = "bundled example (the default path does not exist and the database is embedded)"


def catalog_path_source(settings: Settings) -> str:
    """Where the effective catalog path comes from: the setting's source, or the bundled-example rule."""
    if resolve_catalog_path(settings) != Path(settings.catalog_path).expanduser():
        return BUNDLED_EXAMPLE_SOURCE
    return settings.sources["catalog_path"]

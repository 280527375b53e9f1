"""The catalog the service loads, as the CLI reads it: resolved like `serve` does (the configured file,
or the bundled example with the embedded database); an unusable one is a configuration error (exit 2)."""

from __future__ import annotations

from challengectl.errors import EXIT_USAGE, CliError
from service.config.resolution import resolve_catalog_path
from service.config.settings import Settings
from service.domain.catalog import Catalog, CatalogError, load_catalog


def service_catalog(settings: Settings) -> Catalog:
    """The service's catalog; CliError exit 2 naming the file and its first error when it cannot be used."""
    path = resolve_catalog_path(settings)
    try:
        return load_catalog(path)
    except CatalogError as exc:
        raise CliError(
            f"cannot load the catalog {path}: {exc.errors[0] if exc.errors else exc}",
            "check it with 'challengectl config validate', or set CHALLENGE_CATALOG_PATH",
            EXIT_USAGE,
        ) from None

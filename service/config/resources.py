"""Locations of the files shipped with the service: SQL (migrations, queries) and the example catalog."""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the `service` package


def sql_dir() -> Path:
    """The `sql/` folder: inside the package in a wheel, at the project root in a source checkout."""
    bundled = _PACKAGE_DIR / "sql"
    if bundled.is_dir():
        return bundled
    return _PACKAGE_DIR.parent / "sql"


def migrations_dir() -> Path:
    return sql_dir() / "migrations"


def queries_path() -> Path:
    return sql_dir() / "queries.sql"


def cli_queries_path() -> Path:
    return sql_dir() / "cli_queries.sql"


def example_catalog_path() -> Path:
    return _PACKAGE_DIR / "examples" / "challenges.json"

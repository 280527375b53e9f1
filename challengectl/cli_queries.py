"""The CLI's named statements (sql/cli_queries.sql), parsed and validated by the service's registry loader,
so that they follow the same rules as the service's: one statement per name, declared parameters."""

from __future__ import annotations

from functools import cache

from service.config.resources import cli_queries_path
from service.storage.registry import Registry, load_registry

CLI_QUERIES = ("cli_reward_grants", "cli_active_users_page", "cli_catalog_rows", "cli_truncate_tables")


@cache
def cli_registry() -> Registry:
    """The CLI's statements; a malformed or incomplete file raises `RegistryError` (a bug, not input)."""
    return load_registry(cli_queries_path(), required=CLI_QUERIES)


def cli_sql(name: str) -> str:
    """The text of the CLI statement `name`."""
    return cli_registry().get(name).sql

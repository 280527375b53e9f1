"""The CLI's PostgreSQL sessions: one way to open them (named `challengectl-cli`, UTC, an optional
statement timeout) and one error when the server cannot be reached (exit 5, the target without secrets)."""

from __future__ import annotations

from typing import Any

import psycopg

from challengectl.errors import EXIT_UNAVAILABLE, CliError
from service.storage.store import describe_target, session_options, short_reason

APPLICATION_NAME = "challengectl-cli"
CONNECT_TIMEOUT_S = 5
HINT_DATABASE_URL = "check --database-url / DATABASE_URL"


def connect(
    url: str,
    statement_timeout_ms: int | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    *,
    autocommit: bool = True,
    row_factory: Any = None,
    application_name: str = APPLICATION_NAME,
) -> psycopg.Connection[Any]:
    """A session whose statements stop after `statement_timeout_ms` (None or 0: no limit). Raises
    `psycopg.OperationalError` when the server is unreachable (see `unreachable`)."""
    return psycopg.connect(
        url,
        autocommit=autocommit,
        application_name=application_name,
        options=session_options(url, statement_timeout_ms),
        connect_timeout=max(2, int(connect_timeout_s)),
        **({"row_factory": row_factory} if row_factory is not None else {}),
    )


async def connect_async(
    url: str,
    statement_timeout_ms: int | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    application_name: str = APPLICATION_NAME,
) -> psycopg.AsyncConnection[Any]:
    """`connect`, for asyncio code: an autocommit session."""
    return await psycopg.AsyncConnection.connect(
        url,
        autocommit=True,
        application_name=application_name,
        options=session_options(url, statement_timeout_ms),
        connect_timeout=max(2, int(connect_timeout_s)),
    )


def unreachable(url: str, error: BaseException, hint: str = HINT_DATABASE_URL) -> CliError:
    """The CliError (exit 5) of a server that refused or failed the connection."""
    return CliError(
        f"PostgreSQL {describe_target(url)} unreachable: {short_reason(error, url)}", hint, EXIT_UNAVAILABLE
    )

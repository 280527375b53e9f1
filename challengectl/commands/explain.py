"""`challengectl explain NAME`: the top-level shortcut of `db explain NAME`; the command itself is
`challengectl.explain_command` (docs/cli.md#explain)."""

from __future__ import annotations

import typer

from challengectl.explain_command import add_explain_command


def register(app: typer.Typer) -> None:
    """Add the top-level `explain` command."""
    add_explain_command(app)

"""`challengectl db ...`: database commands (migrate here; explain, queries, indexes, activity, tables later)."""

from __future__ import annotations

import typer

from challengectl.connections import database_target
from challengectl.context import command_group
from challengectl.errors import EXIT_UNAVAILABLE, CliError
from challengectl.output import Output, confirm
from service.migrations import MigrationError, apply_migrations, discover_migrations, migration_status
from service.settings import mask_url_password

app = command_group("Inspect and migrate the PostgreSQL database.")


MIGRATE_EXAMPLES = """Examples:

  challengectl db migrate

  challengectl db migrate --status -o json | jq .pending

  DATABASE_URL=postgresql://postgres@db/challenge challengectl db migrate --yes
"""


@app.command("migrate", epilog=MIGRATE_EXAMPLES)
def migrate(
    ctx: typer.Context,
    status: bool = typer.Option(False, "--status", help="show applied and pending versions and checksum state"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be applied, change nothing"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation (non-embedded databases)"),
) -> None:
    """Apply pending schema migrations (forward-only, recorded in schema_migrations)."""
    settings = ctx.obj.settings()
    out: Output = ctx.obj.output
    with database_target(settings) as target:
        try:
            current = migration_status(target.url)
            if status or dry_run:
                _print_status(current, out, dry_run)
                return
            if current.pending and not target.embedded and not yes:
                confirm(f"apply {len(current.pending)} migration(s) to {mask_url_password(target.url)}", yes)
            applied = apply_migrations(target.url, application_name="challengectl-cli")
        except MigrationError as exc:
            raise CliError(str(exc), "see 'challengectl db migrate --status'", exc.exit_code) from None
        except CliError:
            raise
        except Exception as exc:  # psycopg connection failures
            raise CliError(f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}",
                           "check --database-url / DATABASE_URL", EXIT_UNAVAILABLE) from None
    latest = max((m.version for m in discover_migrations()), default=0)
    result = {"applied": [_describe(m) for m in applied], "schema_version": latest}
    lines = [f"applied {name}" for name in result["applied"]] or [f"nothing to apply: schema is at version {latest}"]
    out.emit_object(result, text=lambda: "\n".join(lines), table=lambda: "\n".join(lines))


def _describe(migration) -> str:
    return f"{migration.version:04d}_{migration.name}"


def _print_status(current, out: Output, dry_run: bool) -> None:
    body = {
        "applied": current.applied,
        "pending": [_describe(m) for m in current.pending],
        "checksum_mismatches": current.checksum_mismatches,
        "unknown_versions": current.unknown_versions,
    }
    lines = [
        f"applied:  {', '.join(f'{v:04d}' for v in current.applied) or '-'}",
        f"pending:  {', '.join(body['pending']) or '-'}" + ("  (dry run: nothing applied)" if dry_run else ""),
        f"checksum mismatches: {current.checksum_mismatches or '-'}; unknown versions: {current.unknown_versions or '-'}",
    ]
    out.emit_object(body, text=lambda: "\n".join(lines), table=lambda: "\n".join(lines))


def register(root: typer.Typer) -> None:
    """Add the `db` group to the root app."""
    root.add_typer(app, name="db")

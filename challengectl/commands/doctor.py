"""`challengectl doctor`: one-shot health checks across every dependency (docs/cli.md#commands doctor table).

The checks live in `challengectl.checks`; this module picks them (`--skip`), runs them, prints one row
per check (✓ PASS / ! WARN / ✗ FAIL / - SKIP, the observed value, a hint) and sets the exit code:
99 when a check fails (or warns, with `--strict`), else 0. An unreachable dependency is a failed
check, never exit 5 (docs/cli.md#exit-codes).
"""

from __future__ import annotations

import asyncio

import typer
from rich.table import Table
from rich.text import Text

from challengectl.checks import (
    CHECK_IDS,
    FAIL,
    OPERATION_TIMEOUT_S,
    SKIP,
    WARN,
    CheckResult,
    Diagnosis,
    run_checks,
)
from challengectl.context import CliContext, examples, get_cli
from challengectl.errors import EXIT_GATE, EXIT_USAGE, CliError
from challengectl.output import Column, Output, status_text
from service.config.settings import Settings

HELP = "Run one-shot health checks across every dependency; exit 99 when any check fails."
# `\b` keeps click from rewrapping a paragraph, so the list of ids stays one line.
EXAMPLES = (
    examples(
        "challengectl doctor",
        "challengectl doctor --strict --skip pg-stat-statements --skip cache-ratio",
        "challengectl doctor -o json | jq -r '.items[] | select(.status == \"fail\") | .id'",
    )
    + f"""
\b
Check ids: {", ".join(CHECK_IDS)}
"""
)


def doctor(
    ctx: typer.Context,
    strict: bool = typer.Option(False, "--strict", help="warnings fail too (exit 99)"),
    skip: list[str] | None = typer.Option(
        None, "--skip", metavar="CHECK", help="leave out a check by id (repeatable); ids are listed below"
    ),
) -> None:
    """Check settings, catalog, PostgreSQL, migrations, indexes, Redis, the service, buffer and secrets."""
    cli = get_cli(ctx)
    skipped = set(skip or ())
    unknown = sorted(skipped - set(CHECK_IDS))
    if unknown:
        raise CliError(
            f"unknown check id(s) for --skip: {', '.join(unknown)}", f"use one of: {', '.join(CHECK_IDS)}", EXIT_USAGE
        )
    try:
        settings = cli.settings()
    except CliError as invalid:
        results = _without_settings(invalid, skipped)
    else:
        results = asyncio.run(_diagnose(cli, settings, skipped))
    out = _output(cli)
    _emit(out, results)
    failed = [result.id for result in results if result.status == FAIL]
    warned = [result.id for result in results if result.status == WARN]
    out.err.print(_summary(results, failed, warned), markup=False, highlight=False, soft_wrap=True)
    if failed or (strict and warned):
        raise typer.Exit(EXIT_GATE)


async def _diagnose(cli: CliContext, settings: Settings, skipped: set[str]) -> list[CheckResult]:
    clients = cli.clients(settings)
    # Each check is bounded so that doctor ends quickly when things are down, whatever --timeout says.
    clients.timeout_s = min(clients.timeout_s, OPERATION_TIMEOUT_S)
    async with clients, Diagnosis(settings, clients) as diagnosis:
        return await run_checks(diagnosis, skipped)


def _without_settings(invalid: CliError, skipped: set[str]) -> list[CheckResult]:
    """Settings that cannot even be loaded: the settings row fails and nothing else can run."""
    results = []
    for check_id in CHECK_IDS:
        if check_id in skipped:
            continue
        if check_id == "settings":
            results.append(CheckResult("settings", FAIL, invalid.message, invalid.hint))
        else:
            results.append(CheckResult(check_id, SKIP, "not checked: the settings are invalid"))
    return results


def _output(cli: CliContext) -> Output:
    """The invocation's Output; with unloadable settings, one built from the -o flag alone."""
    try:
        return cli.output
    except CliError:
        return Output(cli.flags.get("output"), no_headers=cli.no_headers, quiet=cli.quiet, color=cli.color)


def _status_cell(status: str) -> Text:
    if status == SKIP:
        return Text("- SKIP", style="dim")
    return status_text(status)


def _emit(out: Output, results: list[CheckResult]) -> None:
    items = [result.as_json() for result in results]
    columns = [
        Column("id", "CHECK"),
        Column("status", "STATUS", render=_status_cell),
        Column("observed", "OBSERVED"),
        Column("hint", "HINT"),
    ]

    def table() -> Table:
        grid = out.table(items, columns)
        grid.columns[2].overflow = "fold"
        grid.columns[3].overflow = "fold"
        return grid

    out.emit_list(items, columns, table=table)


def _summary(results: list[CheckResult], failed: list[str], warned: list[str]) -> str:
    passed = sum(1 for result in results if result.status == "pass")
    skipped = sum(1 for result in results if result.status == SKIP)
    text = f"doctor: {passed} passed, {len(warned)} warned, {len(failed)} failed, {skipped} skipped"
    if failed:
        text += f" ({', '.join(failed)})"
    return text


def register(app: typer.Typer) -> None:
    """Add `doctor` to the root app."""
    app.command("doctor", help=HELP, epilog=EXAMPLES)(doctor)

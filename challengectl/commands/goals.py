"""`challengectl goals activate|deactivate|select|random|claim`: the player's goal writes through the
REST API, acting as `--user` (docs/cli.md#commands, docs/http-api.md#endpoints), and the reference demo CLI's hidden aliases
`set-goal-active`, `batch-select`, `random-select` and `claim-reward` (docs/cli.md#command-tree).

Service errors keep their exit codes (docs/cli.md#exit-codes): business errors 1, 404 3, 502/503 5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import typer
from rich.console import Group
from rich.text import Text

from challengectl.context import command_group, examples, get_cli, register_group
from challengectl.errors import EXIT_USAGE, CliError
from challengectl.output import Output
from challengectl.player_views import (
    GOAL_COLUMNS,
    challenge_path,
    goal_path,
    goal_summary,
)

app = command_group("Activate, select and claim the player's goals (acts as --user).")

ACTIVATE_EXAMPLES = examples(
    "challengectl --user alice goals activate season-1 s1-veteran",
    "challengectl --user alice goals activate season-1 s1-veteran -o json | jq -r .assignedAt",
)

DEACTIVATE_EXAMPLES = examples(
    "challengectl --user alice goals deactivate season-1 s1-veteran",
    "challengectl --user alice goals deactivate season-1 s1-veteran -o json | jq .isActive",
)

SELECT_EXAMPLES = examples(
    "challengectl --user alice goals select season-1 --goal-ids s1-veteran,s1-sharpshooter",
    "challengectl --user alice goals select daily-grind --goal-ids daily-takedowns --replace-existing",
    "challengectl --user alice goals select season-1 --goal-ids s1-veteran -o json | jq .replacedGoals",
)

RANDOM_EXAMPLES = examples(
    "challengectl --user alice goals random season-1 --count 2",
    "challengectl --user alice goals random weekly-ops --count 1 --exclude-active",
    "challengectl --user alice goals random daily-grind --replace-existing -o json | jq '[.selectedGoals[].goalId]'",
)

CLAIM_EXAMPLES = examples(
    "challengectl --user alice goals claim season-1 s1-welcome",
    "challengectl --user alice goals claim season-1 s1-welcome -o json | jq .reward",
)

SET_ACTIVE_EXAMPLES = examples(
    "challengectl --user alice set-goal-active season-1 s1-veteran --active=true",
    "challengectl --user alice set-goal-active season-1 s1-veteran --active=false -o json | jq .message",
)

CHALLENGE_ARG = typer.Argument(..., metavar="C", help="the challenge id")
GOAL_ARG = typer.Argument(..., metavar="G", help="the goal id")
REPLACE_HELP = "deactivate the challenge's other active goals"
# Selected goals carry no `locked` (docs/http-api.md#endpoints SelectedGoal).
SELECTED_COLUMNS = [column for column in GOAL_COLUMNS if column.key != "locked"]
_TRUE_WORDS = ("true", "1", "yes")
_FALSE_WORDS = ("false", "0", "no")


def _set_active(ctx: typer.Context, challenge_id: str, goal_id: str, active: bool) -> None:
    cli = get_cli(ctx)
    user = cli.require_user()
    payload = cli.run(
        lambda clients: clients.api.put(goal_path(challenge_id, goal_id, "active"), {"is_active": active}, user=user)
    )
    cli.output.emit(payload)


@app.command("activate", epilog=ACTIVATE_EXAMPLES)
def activate(ctx: typer.Context, challenge_id: str = CHALLENGE_ARG, goal_id: str = GOAL_ARG) -> None:
    """Make a goal active (idempotent)."""
    _set_active(ctx, challenge_id, goal_id, True)


@app.command("deactivate", epilog=DEACTIVATE_EXAMPLES)
def deactivate(ctx: typer.Context, challenge_id: str = CHALLENGE_ARG, goal_id: str = GOAL_ARG) -> None:
    """Make a goal inactive (idempotent)."""
    _set_active(ctx, challenge_id, goal_id, False)


def set_goal_active(
    ctx: typer.Context,
    challenge_id: str = CHALLENGE_ARG,
    goal_id: str = GOAL_ARG,
    active: str = typer.Option(..., "--active", metavar="BOOL", help="true or false (also 1/0, yes/no)"),
) -> None:
    """Set a goal active or inactive (the reference CLI's spelling of goals activate/deactivate)."""
    _set_active(ctx, challenge_id, goal_id, parse_bool(active, "--active"))


def parse_bool(text: str, option: str) -> bool:
    """`true/false/1/0/yes/no` (any case) → bool; anything else is a usage error (exit 2)."""
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise CliError(f"invalid {option} '{text}': expected true or false", f"e.g. {option}=true", EXIT_USAGE)


def parse_goal_ids(text: str) -> list[str]:
    """`a,b,c` → ids in order; an empty list is a usage error (exit 2)."""
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise CliError(
            "--goal-ids needs at least one goal id", "e.g. --goal-ids s1-veteran,s1-sharpshooter", EXIT_USAGE
        )
    return ids


@app.command("select", epilog=SELECT_EXAMPLES)
def select(
    ctx: typer.Context,
    challenge_id: str = CHALLENGE_ARG,
    goal_ids: str = typer.Option(..., "--goal-ids", metavar="A,B", help="comma-separated goal ids to activate"),
    replace_existing: bool = typer.Option(False, "--replace-existing", help=REPLACE_HELP),
) -> None:
    """Activate the listed goals of a challenge (batch select, all or nothing)."""
    cli = get_cli(ctx)
    user = cli.require_user()
    body = {"goal_ids": parse_goal_ids(goal_ids), "replace_existing": replace_existing}
    payload = cli.run(
        lambda clients: clients.api.post(f"{challenge_path(challenge_id)}/goals/batch-select", body, user=user)
    )
    emit_selection(cli.output, payload)


@app.command("random", epilog=RANDOM_EXAMPLES)
def random_select(
    ctx: typer.Context,
    challenge_id: str = CHALLENGE_ARG,
    count: int = typer.Option(3, "--count", min=1, help="how many goals to pick (fewer when fewer are eligible)"),
    replace_existing: bool = typer.Option(False, "--replace-existing", help=REPLACE_HELP + " (and skip them)"),
    exclude_active: bool = typer.Option(False, "--exclude-active", help="never pick a goal that is already active"),
) -> None:
    """Activate randomly chosen eligible goals of a challenge (not completed, not locked)."""
    cli = get_cli(ctx)
    user = cli.require_user()
    body = {"count": count, "replace_existing": replace_existing, "exclude_active": exclude_active}
    payload = cli.run(
        lambda clients: clients.api.post(f"{challenge_path(challenge_id)}/goals/random-select", body, user=user)
    )
    emit_selection(cli.output, payload)


def emit_selection(out: Output, payload: Mapping[str, Any]) -> None:
    """A batch/random select response: the API body in JSON; the selected goals, the replaced goals and
    the challenge's active count in a table."""
    rows = [goal_summary(goal) for goal in payload.get("selectedGoals", [])]
    replaced = ", ".join(payload.get("replacedGoals") or []) or "-"

    def table() -> Group:
        return Group(
            out.table(rows, SELECTED_COLUMNS, title=f"selected in {payload.get('challengeId')}"),
            Text(f"replaced: {replaced}"),
            Text(f"active goals in {payload.get('challengeId')}: {payload.get('totalActiveGoals')}"),
        )

    out.emit(payload, rows=rows, columns=SELECTED_COLUMNS, table=table)


@app.command("claim", epilog=CLAIM_EXAMPLES)
def claim(ctx: typer.Context, challenge_id: str = CHALLENGE_ARG, goal_id: str = GOAL_ARG) -> None:
    """Claim a completed goal's reward (exactly once)."""
    cli = get_cli(ctx)
    user = cli.require_user()
    payload = cli.run(lambda clients: clients.api.post(goal_path(challenge_id, goal_id, "claim"), user=user))
    cli.output.emit(payload)


def register(root: typer.Typer) -> None:
    """Add the `goals` group and the hidden reference aliases to the root app."""
    register_group(root, app, "goals", {"batch-select": select, "random-select": random_select, "claim-reward": claim})
    root.command("set-goal-active", hidden=True, epilog=SET_ACTIVE_EXAMPLES)(set_goal_active)

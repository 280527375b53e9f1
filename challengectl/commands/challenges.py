"""`challengectl challenges list|get|rotation`: the player's challenges through the REST API, acting as
`--user` (docs/cli.md#commands, docs/http-api.md#endpoints), and the reference demo CLI's hidden aliases
`list-challenges`, `get-challenge` and `get-rotation-status` (docs/cli.md#command-tree).

`-o json` prints the API body unchanged (camelCase); tables and CSV show a per-row summary
(`challengectl.player_views`, shared with `goals`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import typer

from challengectl.context import command_group, examples, get_cli, register_group
from challengectl.output import Column
from challengectl.player_views import GOAL_COLUMNS, challenge_path, format_expires_in, goal_summary

app = command_group("The player's challenges, goals and rotation status (acts as --user).")

ACTIVE_ONLY_HELP = "only goals with an active row; challenges left without goals are omitted"
DONE_STATUSES = ("completed", "claimed")

# click rewraps epilog paragraphs; a `\b` line keeps the examples copy-pasteable as written.
LIST_EXAMPLES = examples(
    "challengectl --user alice challenges list",
    "challengectl --user alice challenges list --active-only -o json | jq '.challenges[].challengeId'",
    "CHALLENGE_USER=alice challengectl challenges list -o csv",
)

GET_EXAMPLES = examples(
    "challengectl --user alice challenges get daily-grind",
    "challengectl --user alice challenges get daily-grind -o json | jq '.goals[] | {goalId, status, progress}'",
    "challengectl --user alice challenges get season-1 --active-only",
)

ROTATION_EXAMPLES = examples(
    "challengectl --user alice challenges rotation daily-grind",
    "challengectl --user alice challenges rotation weekly-ops -o json | jq .rotation.currentPeriod.expiresInSeconds",
)


def challenge_summary(challenge: Mapping[str, Any]) -> dict[str, Any]:
    """One `challenges list` row: challenge, name, completed/total goals, active goals."""
    goals: Sequence[Mapping[str, Any]] = challenge.get("goals") or []
    completed = sum(1 for goal in goals if goal.get("status") in DONE_STATUSES)
    return {
        "challenge": challenge.get("challengeId"),
        "name": challenge.get("name"),
        "completed": f"{completed}/{len(goals)}",
        "active": sum(1 for goal in goals if goal.get("isActive")),
    }


CHALLENGE_COLUMNS = [
    Column("challenge"),
    Column("name"),
    Column("completed", justify="right"),
    Column("active", justify="right"),
]


# --- commands ------------------------------------------------------------------------------------


@app.command("list", epilog=LIST_EXAMPLES)
def list_challenges(
    ctx: typer.Context,
    active_only: bool = typer.Option(False, "--active-only", help=ACTIVE_ONLY_HELP),
) -> None:
    """The player's challenges: completed/total and active goals per challenge."""
    cli = get_cli(ctx)
    user = cli.require_user()
    payload = cli.run(lambda clients: clients.api.get("/v1/challenges", user=user, params={"active_only": active_only}))
    rows = [challenge_summary(challenge) for challenge in payload.get("challenges", [])]
    cli.output.emit(payload, rows=rows, columns=CHALLENGE_COLUMNS)


@app.command("get", epilog=GET_EXAMPLES)
def get_challenge(
    ctx: typer.Context,
    challenge_id: str = typer.Argument(..., metavar="ID", help="the challenge id"),
    active_only: bool = typer.Option(False, "--active-only", help=ACTIVE_ONLY_HELP),
) -> None:
    """One challenge with its goals: status, progress/target, active, locked, expiry and reward."""
    cli = get_cli(ctx)
    user = cli.require_user()
    payload = cli.run(
        lambda clients: clients.api.get(challenge_path(challenge_id), user=user, params={"active_only": active_only})
    )
    rows = [goal_summary(goal) for goal in payload.get("goals", [])]
    cli.output.emit(
        payload, rows=rows, columns=GOAL_COLUMNS, title=f"{payload.get('challengeId')}: {payload.get('name')}"
    )


@app.command("rotation", epilog=ROTATION_EXAMPLES)
def rotation_status(
    ctx: typer.Context,
    challenge_id: str = typer.Argument(..., metavar="ID", help="the challenge id"),
) -> None:
    """The challenge's rotation: schedule, reset rules, the current and the next period."""
    cli = get_cli(ctx)
    user = cli.require_user()
    payload = cli.run(lambda clients: clients.api.get(f"{challenge_path(challenge_id)}/rotation", user=user))
    out = cli.output
    out.emit(payload, table=lambda: out.key_value_table(rotation_fields(payload)))


def rotation_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The rotation status as flat `name: value` pairs for the key/value table."""
    rotation = payload.get("rotation") or {}
    fields: dict[str, Any] = {
        "challenge": payload.get("challengeId"),
        "enabled": rotation.get("enabled"),
        "type": rotation.get("type"),
        "schedule": rotation.get("schedule"),
        "reset_progress": rotation.get("resetProgress"),
        "allow_reselection": rotation.get("allowReselection"),
    }
    current, upcoming = rotation.get("currentPeriod"), rotation.get("nextPeriod")
    if current:
        fields["current_period"] = f"{current.get('startTime')} -> {current.get('endTime')}"
        fields["expires_in"] = format_expires_in(current.get("expiresInSeconds"), current.get("endTime"))
    if upcoming:
        fields["next_period"] = f"{upcoming.get('startTime')} -> {upcoming.get('endTime')}"
    return fields


def register(root: typer.Typer) -> None:
    """Add the `challenges` group and the hidden reference aliases to the root app."""
    register_group(
        root,
        app,
        "challenges",
        {"list-challenges": list_challenges, "get-challenge": get_challenge, "get-rotation-status": rotation_status},
    )

"""`challengectl watch`: poll one player's challenges and show what changed (docs/cli.md#commands, docs/cli.md#output-conventions, X11).

Also home of what `events send --wait` shares with it: `fetch_goals` (one snapshot of the player's goals
through the player API, with the catalog fingerprint the service sent) and `goal_changes` (the
difference of two snapshots). The polling itself (`--interval`, `--once`, `--count`, backoff after
transient failures) is `challengectl.ticker.run_ticks`, shared with every `--watch` mode.

Piped (or `-o json`), each poll prints one NDJSON object
`{"ts", "user_id", "changes": [{"challenge_id", "goal_id", "old_progress", "new_progress", "old_status",
"new_status"}]}`; the first object lists every goal (old values null), so a reader can rebuild the state
by folding the changes. On a TTY a rich Live table highlights changed cells and marks CHANGED or
COMPLETED rows. Ctrl-C ends the watch with exit 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from challengectl.client import ApiClient, Clients
from challengectl.context import examples, get_cli
from challengectl.errors import EXIT_USAGE, CliError
from challengectl.output import Output, rfc3339
from challengectl.ticker import parse_interval, run_ticks

EXAMPLES = examples(
    "challengectl watch --user alice",
    "challengectl watch --user alice --active-only --interval 1s | jq -c '.changes[] | select(.new_status == \"completed\")'",
    "challengectl watch --user alice --challenge season-1 --once -o json",
)

FINGERPRINT_HEADER = "x-catalog-fingerprint"
CHANGED_STYLE = "bold reverse"


@dataclass(frozen=True)
class GoalState:
    """One goal of a player as the player API showed it."""

    challenge_id: str
    goal_id: str
    name: str
    progress: int
    target: int | None
    status: str
    is_active: bool
    stat_code: str


GoalKey = tuple[str, str]  # (challenge_id, goal_id)


@dataclass(frozen=True)
class GoalSnapshot:
    """Every goal of one poll, in API order, and the catalog fingerprint of the response."""

    goals: dict[GoalKey, GoalState]
    fingerprint: str | None
    taken_at: datetime


async def fetch_goals(
    api: ApiClient, user: str, *, challenge_id: str | None = None, active_only: bool = False
) -> GoalSnapshot:
    """One snapshot of `user`'s goals: `GET /v1/challenges` (or `/v1/challenges/{id}`), optionally
    `active_only`. Failures raise CliError with the exit code of docs/cli.md#exit-codes."""
    path = "/v1/challenges" if challenge_id is None else f"/v1/challenges/{quote(challenge_id, safe='')}"
    response = await api.send("GET", path, params={"active_only": True} if active_only else None, user=user)
    body = response.body
    challenges = [body] if challenge_id is not None else (body or {}).get("challenges", [])
    goals: dict[GoalKey, GoalState] = {}
    for challenge in challenges:
        for goal in challenge.get("goals", []):
            requirement = goal.get("requirement") or {}
            state = GoalState(
                challenge_id=challenge["challengeId"],
                goal_id=goal["goalId"],
                name=goal.get("name", ""),
                progress=int(goal.get("progress", 0)),
                target=requirement.get("targetValue"),
                status=goal.get("status", ""),
                is_active=bool(goal.get("isActive")),
                stat_code=requirement.get("statCode", ""),
            )
            goals[(state.challenge_id, state.goal_id)] = state
    fingerprint = next((value for name, value in response.headers.items() if name.lower() == FINGERPRINT_HEADER), None)
    return GoalSnapshot(goals, fingerprint, datetime.now(UTC))


def goal_changes(old: Mapping[GoalKey, GoalState] | None, new: Mapping[GoalKey, GoalState]) -> list[dict[str, Any]]:
    """The goals whose progress or status differ between two snapshots, in the new snapshot's order
    (goals that disappeared come last). Against no previous snapshot, every goal is listed with null
    old values. A goal that appeared or disappeared has null values on the side it is missing from."""
    previous = old or {}
    changes = []
    for key, state in new.items():
        before = previous.get(key)
        if before is None or (before.progress, before.status) != (state.progress, state.status):
            changes.append(_change(key, before, state))
    changes += [_change(key, before, None) for key, before in previous.items() if key not in new]
    return changes


def _change(key: GoalKey, before: GoalState | None, after: GoalState | None) -> dict[str, Any]:
    return {
        "challenge_id": key[0],
        "goal_id": key[1],
        "old_progress": before.progress if before else None,
        "new_progress": after.progress if after else None,
        "old_status": before.status if before else None,
        "new_status": after.status if after else None,
    }


class WatchView:
    """What the watch prints per poll: NDJSON lines, or a Live table on a TTY."""

    def __init__(self, output: Output, user: str, interval_s: float) -> None:
        self.output = output
        self.user = user
        self.interval_s = interval_s
        self.previous: dict[GoalKey, GoalState] | None = None
        self.polls = 0
        self.live: Any = None

    @property
    def uses_live(self) -> bool:
        return not self.output.streams_ndjson and self.output.format == "table"

    def show(self, snapshot: GoalSnapshot) -> None:
        """Print one poll: its changes against the previous poll (all goals for the first)."""
        changes = goal_changes(self.previous, snapshot.goals)
        self.polls += 1
        if self.uses_live:
            renderable = self.render(snapshot, changes)
            if self.live is None:
                self.live = self.output.live(renderable)
                self.live.start()
            self.live.update(renderable, refresh=True)
        else:
            record = {"ts": rfc3339(snapshot.taken_at), "user_id": self.user, "changes": changes}
            if self.output.streams_ndjson:
                self.output.ndjson(record)
            else:
                self.output.emit(record, rows=changes)
        self.previous = dict(snapshot.goals)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def render(self, snapshot: GoalSnapshot, changes: list[dict[str, Any]]) -> Group:
        """The Live table: changed cells highlighted, CHANGED/COMPLETED in the last column (the words
        carry the meaning; the highlight only repeats it)."""
        first_poll = self.previous is None
        changed = {(c["challenge_id"], c["goal_id"]): c for c in changes}
        table = Table(show_header=not self.output.no_headers, header_style="bold", box=None, pad_edge=False)
        for header, justify in (
            ("CHALLENGE", "left"),
            ("GOAL", "left"),
            ("STATUS", "left"),
            ("PROGRESS", "right"),
            ("ACTIVE", "left"),
            ("", "left"),
        ):
            table.add_column(header, justify=justify)  # type: ignore[arg-type]
        for key, state in snapshot.goals.items():
            change = None if first_poll else changed.get(key)
            status_changed = change is not None and change["old_status"] != change["new_status"]
            progress_changed = change is not None and change["old_progress"] != change["new_progress"]
            progress = f"{state.progress}/{state.target}" if state.target is not None else str(state.progress)
            if change is None:
                marker = ""
            elif state.status == "completed" and change["old_status"] != "completed":
                marker = "COMPLETED"
            else:
                marker = "CHANGED"
            table.add_row(
                state.challenge_id,
                state.goal_id,
                Text(state.status, style=CHANGED_STYLE if status_changed else ""),
                Text(progress, style=CHANGED_STYLE if progress_changed else ""),
                "yes" if state.is_active else "no",
                Text(marker, style="bold green" if marker == "COMPLETED" else "bold yellow"),
            )
        if not first_poll:
            for key in changed:
                if key not in snapshot.goals:
                    table.add_row(
                        key[0],
                        key[1],
                        Text("(gone)", style=CHANGED_STYLE),
                        "-",
                        "-",
                        Text("CHANGED", style="bold yellow"),
                    )
        caption = Text(
            f"{self.user} · poll {self.polls} at {rfc3339(snapshot.taken_at)} · every "
            f"{self.interval_s:g}s · Ctrl-C to stop",
            style="dim",
        )
        return Group(table, caption)


def watch(
    ctx: typer.Context,
    user: str | None = typer.Option(None, "--user", help="the player to watch [env: CHALLENGE_USER]"),
    interval: str = typer.Option("2s", "--interval", help="time between polls <n>[ms|s|m|h]"),
    challenge: str | None = typer.Option(None, "--challenge", help="watch one challenge only"),
    active_only: bool = typer.Option(False, "--active-only", help="only the player's active goals"),
    once: bool = typer.Option(False, "--once", help="poll once and exit"),
    count: int | None = typer.Option(None, "--count", min=1, help="exit after N polls"),
) -> None:
    """Poll a player's challenges and highlight changes; Ctrl-C exits 0."""
    cli = get_cli(ctx)
    player = cli.settings(user=user).user
    if not player:
        raise CliError("watch needs --user", "add --user <id> or set CHALLENGE_USER", EXIT_USAGE)
    interval_s = parse_interval(interval)
    if once and count is not None:
        raise CliError("--once and --count exclude each other", "use --once, or --count N", EXIT_USAGE)
    view = WatchView(cli.output, player, interval_s)

    def report_retry(error: CliError, delay_s: float) -> None:
        cli.output.warn(f"poll failed: {error.message}; retrying in {delay_s:g}s")

    async def main(clients: Clients) -> None:
        await run_ticks(
            lambda: fetch_goals(clients.api, player, challenge_id=challenge, active_only=active_only),
            view.show,
            interval_s=interval_s,
            count=1 if once else count,
            on_retry=report_retry,
        )

    try:
        cli.run(main)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: exit 0 (docs/cli.md#exit-codes)
    finally:
        view.stop()


def register(root: typer.Typer) -> None:
    """Add `watch` to the root app."""
    root.command("watch", epilog=EXAMPLES)(watch)

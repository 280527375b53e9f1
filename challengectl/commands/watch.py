"""`challengectl watch`: poll one player's challenges and show what changed (docs/cli.md#commands, docs/cli.md#output-conventions, X11).

A poll is `challengectl.goal_snapshots.fetch_goals` and what changed is its `goal_changes` (shared with
`events send --wait`). The polling itself (`--interval`, `--once`, `--count`, backoff after
transient failures) is `challengectl.ticker.run_ticks`, shared with every `--watch` mode.

Piped (or `-o json`), each poll prints one NDJSON object
`{"ts", "user_id", "changes": [{"challenge_id", "goal_id", "old_progress", "new_progress", "old_status",
"new_status"}]}`; the first object lists every goal (old values null), so a reader can rebuild the state
by folding the changes. On a TTY a rich Live table highlights changed cells and marks CHANGED or
COMPLETED rows. Ctrl-C ends the watch with exit 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from challengectl.context import examples, get_cli
from challengectl.errors import EXIT_USAGE, CliError
from challengectl.goal_snapshots import GoalKey, GoalSnapshot, GoalState, fetch_goals, goal_changes
from challengectl.output import Output, rfc3339
from challengectl.ticker import parse_interval, retry_warning, run_ticks

if TYPE_CHECKING:
    from challengectl.client import Clients

EXAMPLES = examples(
    "challengectl watch --user alice",
    "challengectl watch --user alice --active-only --interval 1s | jq -c '.changes[] | select(.new_status == \"completed\")'",
    "challengectl watch --user alice --challenge season-1 --once -o json",
)

CHANGED_STYLE = "bold reverse"


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
        return self.output.streams_live

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
                self.output.emit_update(record, lambda: self.render(snapshot, changes))
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
    player = cli.require_user(user=user)
    interval_s = parse_interval(interval)
    if once and count is not None:
        raise CliError("--once and --count exclude each other", "use --once, or --count N", EXIT_USAGE)
    view = WatchView(cli.output, player, interval_s)

    async def main(clients: Clients) -> None:
        await run_ticks(
            lambda: fetch_goals(clients.api, player, challenge_id=challenge, active_only=active_only),
            view.show,
            interval_s=interval_s,
            count=1 if once else count,
            on_retry=retry_warning(cli.output),
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

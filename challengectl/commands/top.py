"""`challengectl top`: one live screen of a running service (docs/cli.md#commands): per-route rates and
latency, event ingestion, the buffer, the DB pool, the cache, PostgreSQL sessions and Redis, refreshed
every `--interval`. Keys: q quit, p pause, s sort, r reset peaks, ? help.

`--once` takes two readings one interval apart and prints the view (JSON with `-o json`); piped without
`--once` it prints one NDJSON view per refresh. The data comes from `challengectl.top.sources`, the
numbers from `challengectl.top.view`, the drawing from `challengectl.top.screen`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.live import Live

from challengectl.connections import service_database_url, service_redis_url
from challengectl.context import CliContext, examples, get_cli
from challengectl.errors import EXIT_USAGE, CliError
from challengectl.output import Output, rfc3339
from challengectl.ticker import parse_interval
from challengectl.top.keys import KeyReader
from challengectl.top.screen import ScreenState, render, static
from challengectl.top.sources import PostgresSource, Reading, RedisSource, Sources
from challengectl.top.view import SORTS, Peaks, build_view, sort_routes

if TYPE_CHECKING:
    from challengectl.client import Clients

EXAMPLES = examples(
    "challengectl top",
    "challengectl top --once -o json | jq '.pool'",
    "challengectl top --interval 2s --sort p95",
)

# A source slower than this is shown as not answering, so that one stuck server never stalls the screen.
SOURCE_TIMEOUT_S = 2.0


def _sources(cli: CliContext, clients: Clients, timeout_s: float) -> Sources:
    settings = cli.settings()
    return Sources(
        clients.admin,
        PostgresSource(service_database_url(settings)),
        RedisSource(service_redis_url(settings), settings.cache_disabled()),
        timeout_s,
    )


async def _one_view(sources: Sources, interval_s: float, sort: str) -> dict[str, Any]:
    first = await sources.read()
    await asyncio.sleep(max(0.0, first.at + interval_s - time.monotonic()))
    return build_view(first, await sources.read(), sort)


async def _stream(sources: Sources, out: Output, interval_s: float, sort: str) -> None:
    previous: Reading | None = None
    while True:
        reading = await sources.read()
        if previous is not None:
            out.ndjson({"ts": rfc3339(datetime.now(UTC)), **build_view(previous, reading, sort)})
        previous = reading
        await asyncio.sleep(max(0.0, reading.at + interval_s - time.monotonic()))


class Interactive:
    """The full-screen loop: a reading every interval unless paused, and a redraw after every reading
    and every key."""

    def __init__(self, sources: Sources, out: Output, state: ScreenState) -> None:
        self.sources = sources
        self.out = out
        self.state = state
        self.peaks = Peaks()
        self.previous: Reading | None = None
        self.view: dict[str, Any] | None = None
        self.reset_requested = False
        self.resumed = False
        self.wake = asyncio.Event()

    def on_key(self, key: str) -> None:
        state = self.state
        state.message = ""
        if key in ("q", "Q"):
            state.quit = True
        elif key == "p":
            state.paused = not state.paused
            self.resumed = not state.paused
        elif key == "s":
            state.sort = SORTS[(SORTS.index(state.sort) + 1) % len(SORTS)]
            if self.view is not None:
                self.view["routes"] = sort_routes(self.view["routes"], state.sort)
                self.view["sort"] = state.sort
        elif key == "r":
            self.reset_requested = True
        elif key == "?":
            state.help = not state.help
        self.wake.set()

    async def _refresh(self) -> None:
        reading = await self.sources.read()
        if self.resumed:
            # After a pause the next window starts now, not when the pause began.
            self.resumed = False
        else:
            self.view = build_view(self.previous, reading, self.state.sort)
            self.state.peaks = self.peaks.update(self.view)
        self.previous = reading

    async def _reset_peaks(self) -> None:
        self.reset_requested = False
        self.peaks.reset()
        self.state.peaks = {}
        error = await self.sources.reset_peaks()
        self.state.message = f"peaks reset; the service's failed: {error}" if error else "peaks reset"

    async def run(self, interval_s: float) -> None:
        next_at = time.monotonic()
        with (
            KeyReader(self.on_key),
            Live(render(None, self.state), console=self.out.console, screen=True, auto_refresh=False) as live,
        ):
            while not self.state.quit:
                if self.reset_requested:
                    await self._reset_peaks()
                if not self.state.paused and time.monotonic() >= next_at:
                    await self._refresh()
                    next_at = self.previous.at + interval_s if self.previous else time.monotonic() + interval_s
                live.update(render(self.view, self.state), refresh=True)
                self.wake.clear()
                timeout = None if self.state.paused else max(0.0, next_at - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)


def top(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="print one view (two readings one interval apart) and exit"),
    interval: str = typer.Option("1s", "--interval", help="refresh interval, <n>[ms|s|m]"),
    sort: str = typer.Option("rps", "--sort", help=f"order of the routes: {'|'.join(SORTS)}"),
) -> None:
    """Live view of a running service: routes, events, buffer, pool, cache, PostgreSQL and Redis."""
    cli = get_cli(ctx)
    interval_s = parse_interval(interval)
    if sort not in SORTS:
        raise CliError(f"invalid --sort '{sort}'", f"use one of {', '.join(SORTS)}", EXIT_USAGE)
    out = cli.output
    state = ScreenState(target=cli.settings().admin_url, interval_s=interval_s, sort=sort)
    timeout_s = min(SOURCE_TIMEOUT_S, max(interval_s, 0.5))

    async def main(clients: Clients) -> Any:
        sources = _sources(cli, clients, timeout_s)
        try:
            if once:
                return await _one_view(sources, interval_s, sort)
            if out.streams_ndjson:
                await _stream(sources, out, interval_s, sort)
            else:
                await Interactive(sources, out, state).run(interval_s)
            return None
        finally:
            await sources.close()

    with contextlib.suppress(KeyboardInterrupt):
        view = cli.run(main)
        if once:
            out.emit_object(view, table=lambda: static(view, state))


def register(app: typer.Typer) -> None:
    """Add `top` to the root app."""
    app.command("top", epilog=EXAMPLES)(top)

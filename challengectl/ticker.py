"""The one loop behind `watch` and every `--watch` mode (docs/cli.md#output-conventions streaming commands): a tick every
`--interval` (fixed cadence), at most `--count` ticks, a transient failure (exit code 5) reported and
retried after a doubling backoff, any other failure raised. Ctrl-C ending the loop with exit 0 is the
caller's `except KeyboardInterrupt`, around the event loop that runs this.

What a tick shows is the caller's: `live_or_ndjson` is the usual display (a rich Live on a TTY, one
NDJSON object per tick otherwise).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import RenderableType
from rich.text import Text

from challengectl.context import CliContext, parse_duration
from challengectl.errors import EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from challengectl.output import Output, rfc3339
from service.domain.backoff import doubling_backoff

if TYPE_CHECKING:
    from challengectl.client import Clients

T = TypeVar("T")

MAX_BACKOFF_S = 30.0


def parse_interval(text: str) -> float:
    """`--interval` in seconds, `<n>[ms|s|m|h|d]`; must be above zero (CliError exit 2 otherwise)."""
    seconds = parse_duration(text, "--interval")
    if seconds <= 0:
        raise CliError(f"invalid --interval '{text}': must be above zero", "e.g. --interval 2s", EXIT_USAGE)
    return seconds


def backoff_delay(interval_s: float, failures: int) -> float:
    """The wait after `failures` consecutive failed ticks: twice the interval per failure, up to 30 s
    (or the interval when that is longer)."""
    return doubling_backoff(2 * interval_s, max(MAX_BACKOFF_S, interval_s), failures)


async def run_ticks(
    tick: Callable[[], Awaitable[T]],
    on_result: Callable[[T], None],
    *,
    interval_s: float,
    count: int | None,
    on_retry: Callable[[CliError, float], None],
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Call `tick` every `interval_s` and hand each result to `on_result`, for `count` ticks (failed ones
    included; None: until cancelled). A failure with exit code 5 (unreachable, unavailable, timed out)
    goes to `on_retry(error, delay_s)` and the next tick waits `backoff_delay`; any other CliError is
    raised at once, and so is the last failure of a run that ends without one good tick. `pause(s)`
    replaces the sleep between good ticks (e.g. to take measurements meanwhile)."""
    ticks = good = failures = 0
    last_error: CliError | None = None
    while count is None or ticks < count:
        ticks += 1
        more = count is None or ticks < count
        started = time.monotonic()
        try:
            result = await tick()
        except CliError as error:
            if error.exit_code != EXIT_UNAVAILABLE:
                raise
            failures += 1
            last_error = error
            delay = backoff_delay(interval_s, failures)
            on_retry(error, delay)
            if more:
                await asyncio.sleep(delay)
            continue
        failures = 0
        good += 1
        on_result(result)
        if more:
            await pause(max(0.0, started + interval_s - time.monotonic()))
    if good == 0 and last_error is not None:
        raise last_error


@contextmanager
def live_or_ndjson(
    out: Output, render: Callable[[Any], RenderableType], record: Callable[[Any], Any] = lambda data: data
) -> Iterator[Callable[[Any], None]]:
    """The display of a `--watch` mode, as the `on_result` of `run_ticks`: with json `record(data)` as one
    NDJSON line per tick; as a table on a TTY a rich Live of `render(data)` (showing "collecting…" until
    the first tick); otherwise each tick printed in the chosen format."""
    if out.streams_ndjson:
        yield lambda data: out.ndjson(record(data))
        return
    if not out.streams_live:
        yield lambda data: out.emit_update(record(data), lambda: render(data))
        return
    with out.live(Text("collecting…")) as live:
        yield lambda data: live.update(render(data), refresh=True)


def retry_warning(out: Output) -> Callable[[CliError, float], None]:
    """How every watch reports a failed tick that it retries: one warning line on stderr."""

    def report(error: CliError, delay_s: float) -> None:
        out.warn(f"poll failed: {error.message}; retrying in {delay_s:g}s")

    return report


async def watch_ticks(
    out: Output,
    tick: Callable[[], Awaitable[T]],
    render: Callable[[T], RenderableType],
    interval_s: float,
    count: int | None = None,
    record: Callable[[T], Any] = lambda data: data,
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """A `--watch` mode: `run_ticks` shown with `live_or_ndjson` (`record(data)` is the NDJSON object),
    failed ticks reported with `retry_warning`."""
    with live_or_ndjson(out, render, record) as show:
        await run_ticks(tick, show, interval_s=interval_s, count=count, on_retry=retry_warning(out), pause=pause)


def run_watch(
    cli: CliContext,
    interval_s: float,
    tick: Callable[[Clients], Awaitable[dict[str, Any]]],
    render: Callable[[dict[str, Any]], RenderableType],
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """`watch_ticks` over the service's clients until Ctrl-C (exit 0), each NDJSON object stamped
    `{"ts", ...snapshot}` (docs/cli.md#output-conventions); `pause(seconds)` replaces the sleep between
    ticks (e.g. to measure latency meanwhile). The `--watch` of `pool` and `cache stats`."""

    def stamped(snapshot: dict[str, Any]) -> dict[str, Any]:
        return {"ts": rfc3339(datetime.now(UTC)), **snapshot}

    with suppress(KeyboardInterrupt):
        cli.run(
            lambda clients: watch_ticks(cli.output, lambda: tick(clients), render, interval_s, None, stamped, pause)
        )

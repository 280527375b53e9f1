"""The event loop the service's processes run on: uvloop when it is installed, else asyncio's default.

uvicorn picks uvloop only when it creates the loop itself; `serve` and the HTTP workers call
`Server.serve()` inside their own loop, so they choose it here. uvloop is a dependency on the
platforms it supports (not Windows); grpc.aio runs on it too.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None (asyncio's default loop) where uvloop is unavailable."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop of `loop_factory()`."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def _ignore(signum: int) -> None:
    """No extra step on a signal."""


def stop_on_signals(
    stop: asyncio.Event,
    on_stop: Callable[[int], None] = _ignore,
    on_second: Callable[[int], None] = _ignore,
) -> None:
    """On the running loop: the first SIGINT/SIGTERM sets `stop` (after `on_stop(signum)`), a second one
    ends the process at once with status 130 (after `on_second(signum)`), for an operator who means it."""
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            on_second(signum)
            os._exit(130)
        on_stop(signum)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

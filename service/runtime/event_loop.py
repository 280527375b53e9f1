"""The event loop the service's processes run on: uvloop when it is installed, else asyncio's default.

uvicorn picks uvloop only when it creates the loop itself; `serve` and the HTTP workers call
`Server.serve()` inside their own loop, so they choose it here. uvloop is a dependency on the
platforms it supports (not Windows); grpc.aio runs on it too.
"""

from __future__ import annotations

import asyncio
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

"""The serving processes' runtime policy: the uvloop event loop and the GC freeze after startup."""

from __future__ import annotations

import asyncio
import gc

import uvloop

from service.runtime import event_loop
from service.runtime.gc_policy import freeze_startup_objects


def test_run_uses_uvloop_and_returns_the_result() -> None:
    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    assert event_loop.loop_factory() is uvloop.new_event_loop
    assert issubclass(event_loop.run(loop_type()), uvloop.Loop)


def test_freeze_moves_live_objects_out_of_the_collectors_reach() -> None:
    survivor = [object() for _ in range(100)]
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() >= len(survivor)
        assert not any(obj is survivor for obj in gc.get_objects())
    finally:
        gc.unfreeze()

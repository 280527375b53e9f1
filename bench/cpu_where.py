"""Where a process's CPU goes, by function: `time.process_time()` accumulated around named functions while on.

Each wrapped function counts the CPU of its own body and of everything it calls (inclusive); for a coroutine
function only the CPU of its steps, not the time it waits. Used by `publish_floor.py --where`. Wrapping adds
~1 us per call of its own, so the shares are of a slower process: read them as where the time is, and take
CPU per event from a run without `--where`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from collections import Counter
from collections.abc import Callable, Generator
from typing import Any


class _Steps:
    """Awaits a coroutine step by step, adding each step's CPU to `totals[name]`."""

    __slots__ = ("coroutine", "name", "totals")

    def __init__(self, coroutine: Any, name: str, totals: Counter[str]) -> None:
        self.coroutine, self.name, self.totals = coroutine, name, totals

    def __await__(self) -> Generator[Any, Any, Any]:
        value: Any = None
        error: BaseException | None = None
        while True:
            started = time.process_time()
            try:
                sent = self.coroutine.send(value) if error is None else self.coroutine.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                self.totals[self.name] += time.process_time() - started
            try:
                value, error = (yield sent), None
            except BaseException as raised:  # noqa: BLE001 - handed to the coroutine, as await would
                value, error = None, raised


class CpuWhere:
    """Wraps `module:Class.method` or `module:function` names (those that exist) and sums their CPU while on."""

    def __init__(self, names: list[str]) -> None:
        self.totals: Counter[str] = Counter()
        self.on = False
        self.names = [name for name in names if self._wrap(name)]

    def _wrap(self, name: str) -> bool:
        module_name, _, path = name.partition(":")
        owner: Any = importlib.import_module(module_name)
        *parents, attribute = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        function = getattr(owner, attribute, None)
        if function is None:
            return False
        setattr(owner, attribute, self._timed(function, path))
        return True

    def _timed(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        totals = self.totals
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def timed_coroutine(*args: Any, **kwargs: Any) -> Any:
                if not self.on:
                    return await function(*args, **kwargs)
                return await _Steps(function(*args, **kwargs), label, totals)

            return timed_coroutine

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return function(*args, **kwargs)
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                totals[label] += time.process_time() - started

        return timed

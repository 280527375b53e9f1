"""Single key presses for `top`: the terminal in cbreak mode (no line buffering, no echo; Ctrl-C still
interrupts) and stdin watched by the event loop. Without a terminal on stdin nothing is read."""

from __future__ import annotations

import asyncio
import os
import sys
import termios
import tty
from collections.abc import Callable
from typing import Any


class KeyReader:
    """Calls `on_key(character)` for every key pressed while the block runs."""

    def __init__(self, on_key: Callable[[str], None]) -> None:
        self._on_key = on_key
        self._fd: int | None = None
        self._saved: list[Any] | None = None

    def __enter__(self) -> KeyReader:
        if not sys.stdin.isatty():
            return self
        self._fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        asyncio.get_running_loop().add_reader(self._fd, self._read)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        asyncio.get_running_loop().remove_reader(self._fd)
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def _read(self) -> None:
        assert self._fd is not None
        for key in os.read(self._fd, 64).decode("utf-8", "replace"):
            self._on_key(key)

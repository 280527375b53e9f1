"""The last step of a shutdown that does not finish (docs/events.md#shutdown): once the buffer is drained,
what is left (stopping servers, closing pools, the event loop's own close) has a deadline; past it, the
stacks of every thread go to stderr and the process exits with status 1, so that a step stuck in a
library (a thread that never joins, a close that never returns) cannot keep a stopping service alive."""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time

log = logging.getLogger("challengectl.serve")


class ExitWatchdog:
    """A daemon thread that ends the process at a deadline unless `disarm` comes first."""

    def __init__(self) -> None:
        self._deadline: float | None = None
        self._waiting_for = ""
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, step: str) -> None:
        """Exit `seconds` from now unless disarmed; `step` names what the process is waiting for."""
        with self._changed:
            self._deadline = time.monotonic() + seconds
            self._waiting_for = f"{step} not done within {seconds:.0f} s"
            self._changed.notify()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._watch, name="exit watchdog", daemon=True)
            self._thread.start()

    def disarm(self) -> None:
        with self._changed:
            self._deadline = None
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while self._deadline is not None and (left := self._deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            if self._deadline is None:
                return
            waiting_for = self._waiting_for
        log.error("shutdown stuck: %s; exiting with status 1 (thread stacks follow)", waiting_for)
        for handler in logging.getLogger().handlers:
            handler.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)

"""Whether PostgreSQL is known to be down, for one pool (docs/http-api.md#health-and-readiness).

A connectivity failure seen by a request makes the pool *suspect*: one direct connection attempt (the
probe) runs in the background. When it fails, PostgreSQL is *known down*: callers fail at once with the
probe's reason instead of each waiting out the pool timeout, and the probe repeats every
`interval_s` until a connection succeeds. Then the recovery hooks run (each pool on that server replaces
its broken connections) and callers are let through again. The pools of one process to one server share
one Availability: the outage is the server's, not a pool's. While PostgreSQL is up this costs one
attribute read per acquire and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("challengectl.storage")

PROBE_INTERVAL_S = 0.25
PROBE_TIMEOUT_S = 1.0


class Availability:
    """The known-down state of one PostgreSQL pool and the background probe that ends it.

    `probe()` opens one connection and raises on failure; `describe(error)` turns its error into the
    short reason shown to callers; probing stops for good once `active()` is false (the pool closed).
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        describe: Callable[[BaseException], str],
        active: Callable[[], bool],
        interval_s: float = PROBE_INTERVAL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._probe = probe
        self._describe = describe
        self._active = active
        self._recovery_hooks: list[Callable[[], Awaitable[None]]] = []
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self.down_reason: str | None = None
        self.down_since: float | None = None  # monotonic
        self.outages = 0
        self._task: asyncio.Task[None] | None = None
        self._last_probe_at = float("-inf")
        self._up = asyncio.Event()
        self._up.set()
        self._down_listeners: list[Callable[[str], None]] = []

    @property
    def is_down(self) -> bool:
        return self.down_reason is not None

    def on_down(self, listener: Callable[[str], None]) -> None:
        """Call `listener(reason)` each time PostgreSQL becomes known down (event calls are released)."""
        self._down_listeners.append(listener)

    def on_recovery(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook()` when the probe connects after an outage, before callers are let through."""
        self._recovery_hooks.append(hook)

    def suspect(self, connection_lost: bool = False) -> None:
        """A request saw a connectivity failure or a pool timeout: probe now, unless a probe runs or ran
        within the last interval (a burst of failures costs one probe). After a lost connection the
        recovery hooks run even when the server answers: connections killed together (a restart, or
        `pg_terminate_backend` on every session) are then replaced at once instead of failing one
        request each."""
        if not self._active() or (self._task is not None and not self._task.done()):
            return
        if time.monotonic() - self._last_probe_at < self._interval_s:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(connection_lost), name="postgres-availability-probe"
        )

    async def wait_until_up(self, timeout_s: float) -> None:
        """Sleep up to `timeout_s`, returning early when a known outage ends or when the probe running now
        (after a lost connection) finds the server answering: flush retries resume at once instead of
        sleeping out a backoff grown during the outage."""
        try:
            async with asyncio.timeout(timeout_s):
                probe = self._task
                if probe is not None and not probe.done():
                    await asyncio.wait([probe])  # ends when a connection succeeds; not cancelled by the timeout
                elif self.is_down:
                    await self._up.wait()
                else:
                    await asyncio.sleep(timeout_s)
        except TimeoutError:
            pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, connection_lost: bool) -> None:
        while self._active():
            self._last_probe_at = time.monotonic()
            reason = await self._probe_once()
            if reason is None:
                if self.is_down:
                    await self._recovered()
                elif connection_lost:
                    await self._run_hooks()
                return
            if not self.is_down:
                self._went_down(reason)
            else:
                self.down_reason = reason
            await asyncio.sleep(self._interval_s)

    async def _probe_once(self) -> str | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._probe()
        except TimeoutError:
            return f"no answer within {self._timeout_s:g} s"
        except Exception as error:  # noqa: BLE001 - any failure to connect is the outage's reason
            return self._describe(error)
        return None

    async def _run_hooks(self) -> None:
        for hook in self._recovery_hooks:
            try:
                await hook()
            except Exception as error:  # noqa: BLE001 - the pool replaces what it could not check on its own
                log.warning("checking a pool after a lost connection failed: %s", self._describe(error))

    def _went_down(self, reason: str) -> None:
        self.down_reason = reason
        self.down_since = time.monotonic()
        self.outages += 1
        self._up.clear()
        log.warning("PostgreSQL is down (%s); requests fail at once until a probe connects", reason)
        for listener in self._down_listeners:
            listener(reason)

    async def _recovered(self) -> None:
        await self._run_hooks()
        seconds = time.monotonic() - (self.down_since or time.monotonic())
        log.info("PostgreSQL is back after %.1f s; requests go through again", seconds)
        self.down_reason = None
        self.down_since = None
        self._up.set()

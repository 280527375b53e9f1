"""Liveness and readiness (docs/http-api.md#health-and-readiness): what `/healthz`, `/readyz` and gRPC health report.

`/readyz` is public: its reasons name no host, port or socket path; the full error goes to the log when a
check starts failing or its error changes."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from service.storage.store import StoreUnavailable

log = logging.getLogger("challengectl.health")

FLUSHER_FAILURE_LIMIT_S = 10.0
DATABASE_TIMEOUT_S = 1.0
REDIS_TIMEOUT_S = 0.5

HEALTHY_BODY = {"status": "healthy"}


@dataclass
class Readiness:
    """Runs the readiness checks. The probes are plain coroutines so that tests and the app wire the
    real pools in: `ping_database()` / `ping_redis()` return a latency in ms or raise, and
    `read_schema_version()` returns the highest applied migration."""

    ping_database: Callable[[], Awaitable[float]]
    read_schema_version: Callable[[], Awaitable[int | None]]
    expected_schema_version: int
    ping_redis: Callable[[], Awaitable[float]] | None  # None: cache disabled
    redis_required: bool = True
    shutting_down: bool = False
    # Monotonic time of the first failure of the flusher's current failing streak, or None.
    flusher_failing_since: Callable[[], float | None] = lambda: None
    # An HTTP worker process (`serve --workers N`) also reports the main process's shutdown.
    main_shutting_down: Callable[[], bool] = lambda: False
    _schema_version: int | None = None
    _database_was_down: bool = True
    _listeners: list[Callable[[bool], None]] = field(default_factory=list)
    _last_ready: bool | None = None
    _logged_errors: dict[str, str | None] = field(default_factory=dict)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(ready)` whenever the readiness verdict changes (gRPC health follows it)."""
        self._listeners.append(listener)

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """Run every check; returns (ready, body) where body is the `/readyz` JSON."""
        checks: dict[str, dict[str, Any]] = {}
        failing: list[str] = []

        database = await _probe(self.ping_database, DATABASE_TIMEOUT_S)
        checks["database"] = database
        if not database["ok"]:
            failing.append("database")
            self._database_was_down = True
        elif self._database_was_down:
            version = await _probe(self.read_schema_version, DATABASE_TIMEOUT_S)
            if version["ok"]:
                self._schema_version = version["value"]
                self._database_was_down = False

        migrations_ok = self._schema_version is not None and self._schema_version >= self.expected_schema_version
        checks["migrations"] = {"ok": migrations_ok, "version": self._schema_version or 0}
        if not migrations_ok:
            checks["migrations"]["error"] = (
                f"schema version {self._schema_version or 0}, expected {self.expected_schema_version}"
            )
            failing.append("migrations")

        if self.ping_redis is not None:
            redis = await _probe(self.ping_redis, REDIS_TIMEOUT_S)
            checks["redis"] = redis
            if not redis["ok"]:
                redis["required"] = self.redis_required
                if self.redis_required:
                    failing.append("redis")

        failing_since = self.flusher_failing_since()
        flusher_ok = failing_since is None or time.monotonic() - failing_since < FLUSHER_FAILURE_LIMIT_S
        checks["flusher"] = {"ok": flusher_ok}
        if not flusher_ok:
            checks["flusher"]["error"] = "flushes failing for more than 10 s"
            failing.append("flusher")
        if self.shutting_down or self.main_shutting_down():
            checks["shutdown"] = {"ok": False, "error": "service is shutting down"}
            failing.append("shutdown")

        for name, entry in checks.items():
            entry.pop("value", None)
            self._log_change(name, entry.pop("detail", None))
        ready = not failing
        self._notify(ready)
        if ready:
            # Ready but degraded: an optional dependency is down and this instance still serves without it.
            degraded = [name for name, entry in checks.items() if not entry["ok"]]
            if degraded:
                return True, {"status": "degraded", "degraded": degraded, "checks": checks}
            return True, {"status": "ready", "checks": checks}
        return False, {
            "errorCode": "DEPENDENCY_UNAVAILABLE",
            "message": f"not ready: {', '.join(failing)}",
            "status": "not_ready",
            "checks": checks,
        }

    def _log_change(self, check: str, detail: str | None) -> None:
        if detail != self._logged_errors.get(check):
            self._logged_errors[check] = detail
            if detail is not None:
                log.warning("readiness check %s failing: %s", check, detail)

    def _notify(self, ready: bool) -> None:
        if ready != self._last_ready:
            self._last_ready = ready
            for listener in self._listeners:
                listener(ready)


async def _probe(probe: Callable[[], Awaitable[Any]], timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        value = await asyncio.wait_for(probe(), timeout_s)
    except TimeoutError:
        return {"ok": False, "error": f"timed out after {int(timeout_s * 1000)} ms"}
    except Exception as exc:  # any failure of the dependency makes it not ready; the reason is shown
        return {"ok": False, "error": public_reason(exc), "detail": f"{type(exc).__name__}: {exc}"}
    latency = round((time.perf_counter() - started) * 1000, 2)
    return {"ok": True, "latencyMs": latency, "value": value}


_REDIS_CONNECT = re.compile(r"^Error (\d+) connecting to ")
# Hosts with a port, IPv4 and bracketed IPv6 addresses, and paths of two or more parts (Unix sockets).
_ADDRESS = re.compile(
    r"\[[0-9A-Fa-f:.]+\](?::\d+)?|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?|\b[\w-]+(?:\.[\w-]+)*:\d+|(?:/[\w.-]+){2,}"
)


def public_reason(exc: BaseException) -> str:
    """First line of the error, without driver noise, secrets, SQL, hosts, ports or socket paths."""
    if isinstance(exc, StoreUnavailable):
        return f"PostgreSQL unavailable: {exc.reason}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    connect = _REDIS_CONNECT.match(text)
    if connect:
        return f"Redis unavailable: {os.strerror(int(connect.group(1)))}"
    return _ADDRESS.sub("<address>", text)[:200]

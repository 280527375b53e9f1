"""Admission control of the player API (docs/http-api.md#http-limits). A new player request is answered
503 `SERVICE_OVERLOADED` + `Retry-After: 1` at once, instead of joining a queue it would wait out (up to
`db_pool_timeout_ms`) and lengthen for everyone, when this process already has

- `max_inflight` player requests in progress, or
- `max_pool_waiting` requests queued for a database connection while the pool is at its max size, or
- at least `LATENCY_MIN_INFLIGHT` requests in progress while recent player requests took more than
  `shed_latency_s` on average (the counts bound the queues; this bounds the time when PostgreSQL or
  the event loop itself has slowed down, so that a queue of moderate length still waits seconds).

Health routes and the OpenAPI document are never refused, so `/readyz` still answers under overload.
"""

from __future__ import annotations

from collections.abc import Callable

from service.transport.errors import ApiError

# The latency rule needs this many requests in progress: a lone slow request is not overload, and
# while requests are refused the in-progress ones still finish and bring the average back down.
LATENCY_MIN_INFLIGHT = 8
# Weight of the newest request in the moving average of durations (about the last 10-20 requests).
LATENCY_WEIGHT = 0.1


def _overloaded(message: str) -> ApiError:
    return ApiError(503, "SERVICE_OVERLOADED", message)


class Admission:
    """Counts the player requests in progress, averages how long they take, and decides whether one
    more may start. The pool queue is only read once `max_pool_waiting` requests are in progress (it
    cannot be longer than that), so at normal load admission costs a few comparisons."""

    def __init__(
        self,
        max_inflight: int,
        pool_waiting: Callable[[], int],
        max_pool_waiting: int,
        shed_latency_s: float | None = None,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_pool_waiting = max_pool_waiting
        self.shed_latency_s = shed_latency_s
        self._pool_waiting = pool_waiting
        self.inflight = 0
        self.recent_duration_s = 0.0

    def refusal(self) -> ApiError | None:
        """None when the request may start (the caller then calls `started` and `finished`), else the 503."""
        if self.inflight >= self.max_inflight:
            return _overloaded(f"{self.inflight} requests in progress; retry shortly")
        if self.inflight >= self.max_pool_waiting and self._pool_waiting() >= self.max_pool_waiting:
            return _overloaded("all database connections busy; retry shortly")
        if (
            self.shed_latency_s is not None
            and self.inflight >= LATENCY_MIN_INFLIGHT
            and self.recent_duration_s > self.shed_latency_s
        ):
            return _overloaded(f"requests take {self.recent_duration_s:.1f} s; retry shortly")
        return None

    def started(self) -> None:
        self.inflight += 1

    def finished(self, duration_s: float) -> None:
        self.inflight -= 1
        self.recent_duration_s += LATENCY_WEIGHT * (duration_s - self.recent_duration_s)

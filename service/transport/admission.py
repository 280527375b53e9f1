"""Admission control of the player API (docs/http-api.md#http-limits): when this process already has
`max_inflight` player requests in progress, or `max_pool_waiting` requests queued for a database
connection while the pool is at its max size, a new player request is answered 503 `SERVICE_OVERLOADED` + `Retry-After: 1` at once,
instead of joining a queue it would wait out (up to `db_pool_timeout_ms`) and lengthen for everyone.

Health routes and the OpenAPI document are never refused, so `/readyz` still answers under overload.
"""

from __future__ import annotations

from collections.abc import Callable

from service.transport.errors import ApiError


def _overloaded(message: str) -> ApiError:
    return ApiError(503, "SERVICE_OVERLOADED", message)


class Admission:
    """Counts the player requests in progress and decides whether one more may start.

    The pool queue is only read once `max_pool_waiting` requests are in progress (it cannot be longer
    than that), so at normal load admission costs one comparison."""

    def __init__(self, max_inflight: int, pool_waiting: Callable[[], int], max_pool_waiting: int) -> None:
        self.max_inflight = max_inflight
        self.max_pool_waiting = max_pool_waiting
        self._pool_waiting = pool_waiting
        self.inflight = 0

    def refusal(self) -> ApiError | None:
        """None when the request may start (the caller then counts it in `inflight`), else the 503."""
        if self.inflight >= self.max_inflight:
            return _overloaded(f"{self.inflight} requests in progress; retry shortly")
        if self.inflight >= self.max_pool_waiting and self._pool_waiting() >= self.max_pool_waiting:
            return _overloaded("all database connections busy; retry shortly")
        return None

"""What psycopg_pool does not measure for `/admin/pool` (docs/http-api.md#admin-and-metrics): the peak number of connections in
use and the wait to acquire one, as percentiles over the most recent acquisitions.

`Store.connection()` reports each checkout to a `PoolUsage`; `/admin/pool` reads `snapshot()` and
`POST /admin/reset-peaks` calls `reset_peak()`.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

# Percentiles describe the recent past, not the whole uptime: a pool that waited during a load test an
# hour ago must not look slow now. 2048 samples give a stable p95 at a few hundred requests a second.
ACQUIRE_WINDOW = 2048


def nearest_rank(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0..1) of `values`; 0.0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(fraction * len(ordered) + 0.999999) - 1))
    return ordered[rank]


class PoolUsage:
    """Connections checked out through one Store: how many now, the peak since the last reset, and
    the acquire waits of the last `window` checkouts. Single event loop; no locking needed."""

    def __init__(self, window: int = ACQUIRE_WINDOW) -> None:
        self.in_use = 0
        self.peak_in_use = 0
        self._waits_ms: collections.deque[float] = collections.deque(maxlen=window)

    def acquired(self, wait_s: float) -> None:
        """A connection was handed out after waiting `wait_s` seconds."""
        self.in_use += 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        self._waits_ms.append(wait_s * 1000)

    def released(self) -> None:
        """A connection went back to the pool."""
        self.in_use -= 1

    def reset_peak(self) -> None:
        """Start a new peak from the connections in use now (`POST /admin/reset-peaks`)."""
        self.peak_in_use = self.in_use

    def waits_ms(self) -> list[float]:
        """The acquire waits (ms) in the window, oldest first: `serve --workers` merges them across
        processes so that the percentiles cover every sample."""
        return list(self._waits_ms)

    def snapshot(self, pool_in_use: int) -> dict[str, float | int]:
        """`peak_in_use`, `acquire_wait_ms_p50` and `acquire_wait_ms_p95` (ms, 3 decimals).

        `pool_in_use` is what the pool itself counts as in use now (it also counts connections being
        returned or checked out past this Store); the peak reported is never below it.
        """
        return {
            "peak_in_use": max(self.peak_in_use, pool_in_use),
            "acquire_wait_ms_p50": round(nearest_rank(self._waits_ms, 0.50), 3),
            "acquire_wait_ms_p95": round(nearest_rank(self._waits_ms, 0.95), 3),
        }

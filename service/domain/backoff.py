"""Exponential backoff: the one rule for how long to wait after consecutive failures (flusher, reward
grants, CLI polling loops)."""

from __future__ import annotations

# 2**60 times any positive first delay is far above every cap; a bound keeps long outages from overflowing floats.
_MAX_DOUBLINGS = 60


def doubling_backoff(first_s: float, cap_s: float, failures: int) -> float:
    """The wait after `failures` consecutive failures (1 = the first): `first_s`, doubled per further
    failure, at most `cap_s`."""
    doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
    return min(first_s * 2**doublings, cap_s)

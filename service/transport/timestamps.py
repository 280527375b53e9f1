"""Instants as the HTTP API writes them (docs/http-api.md#general-rules): RFC 3339 UTC, second precision."""

from __future__ import annotations

from datetime import UTC, datetime

from service.domain.catalog import Goal
from service.domain.rules import expires_at_for, expires_in_seconds


def format_timestamp(dt: datetime | None) -> str:
    """RFC 3339 UTC with a `Z` suffix and second precision (fraction truncated); "" for None."""
    if dt is None:
        return ""
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt.isoformat()} given where a timezone-aware UTC instant is required")
    u = dt.astimezone(UTC)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}Z"


def expiry_fields(goal: Goal, t: datetime) -> tuple[str, int]:
    """The API's (`expiresAt`, `expiresInSeconds`) pair: (N formatted, seconds to N), or ("", 0)."""
    n = expires_at_for(goal, t)
    if n is None:
        return "", 0
    return format_timestamp(n), expires_in_seconds(n, t)

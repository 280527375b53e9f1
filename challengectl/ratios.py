"""The hit ratio, the one formula behind every hit figure the CLI reports: cache lookups (`/admin/cache`,
`cache stats`, `doctor`, `top`, load-test snapshots), Redis keyspace hits and PostgreSQL block hits."""

from __future__ import annotations


def hit_ratio(hits: float | None, misses: float | None) -> float | None:
    """`hits / (hits + misses)`; None when there was no lookup (or the counters went backwards)."""
    total = (hits or 0) + (misses or 0)
    return (hits or 0) / total if total > 0 else None


def hit_pct(hits: float | None, misses: float | None, digits: int = 2) -> float | None:
    """`hit_ratio` in percent, rounded to `digits`."""
    ratio = hit_ratio(hits, misses)
    return None if ratio is None else round(100.0 * ratio, digits)

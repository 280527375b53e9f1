"""Prometheus metrics of event ingestion and the flusher (docs/http-api.md#admin-and-metrics)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from service.telemetry.metrics import LATENCY_BUCKETS

ENTRY_COUNT_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)

EVENTS_TOTAL = Counter(
    "challenge_events_total",
    "Ingested events by origin and outcome",
    ["origin", "outcome"],
)
EVENT_AGE_SECONDS = Histogram(
    "challenge_event_age_seconds",
    "Event timestamp to acceptance",
    buckets=LATENCY_BUCKETS,
)
ACK_WAIT_SECONDS = Histogram(
    "challenge_ack_wait_seconds",
    "Commit mode: acceptance to commit",
    buckets=LATENCY_BUCKETS,
)
BUFFER_ENTRIES = Gauge(
    "challenge_buffer_entries",
    "Buffered entries per partition",
    ["partition"],
    multiprocess_mode="livesum",
)
BUFFER_CAPACITY = Gauge(
    "challenge_buffer_capacity",
    "Buffer capacity across all partitions",
    multiprocess_mode="livesum",
)
FLUSH_DURATION_SECONDS = Histogram(
    "challenge_flush_duration_seconds",
    "Duration of one flush statement",
    buckets=LATENCY_BUCKETS,
)
FLUSH_ENTRIES = Histogram(
    "challenge_flush_entries",
    "Entries per flush",
    buckets=ENTRY_COUNT_BUCKETS,
)
FLUSH_ROWS_UPDATED_TOTAL = Counter(
    "challenge_flush_rows_updated_total",
    "Progress rows written by flushes",
)
FLUSH_DEFERRED_TOTAL = Counter(
    "challenge_flush_deferred_total",
    "Entries deferred because a row was locked by another transaction",
)
FLUSH_FAILURES_TOTAL = Counter(
    "challenge_flush_failures_total",
    "Flushes rolled back by a database error",
)


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(amount)` for every amount, with one update of the sum and of each bucket hit: in
    multiprocess mode (`serve`) every update is a write to a memory-mapped file, about 2 us each."""
    if not amounts:
        return
    bounds = histogram._upper_bounds
    hits: dict[int, int] = {}
    for amount in amounts:
        index = bisect_left(bounds, amount)  # the first bound >= amount, as observe() picks it
        hits[index] = hits.get(index, 0) + 1
    histogram._sum.inc(sum(amounts))
    for index, count in hits.items():
        histogram._buckets[index].inc(count)

"""The flusher (docs/events.md#flush, docs/events.md#flush-failure-and-retry, docs/events.md#cache-invalidation-after-commit): one loop per partition that commits its buffer in batches.

Each flush takes a snapshot of up to `flush_batch_max` entries, builds the goal definitions of the
snapshot's sources at one instant T, and runs `apply_event_updates` once: one statement, so one
transaction, that skips rows locked by other transactions. Then, in this order: the cache of every user
with an applied row is invalidated, the event ids of applied and row-less entries are marked done and
their waiters released (the listener does both). Deferred entries, and the whole snapshot on a database
error, are merged back into the buffer; failures are retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from service.domain.backoff import doubling_backoff
from service.domain.buffer import Entry, Partition
from service.domain.routing import GoalRouting
from service.storage.cache import Cache
from service.storage.store import Queries, Store, short_reason
from service.telemetry.event_metrics import (
    BUFFER_ENTRIES,
    FLUSH_DEFERRED_TOTAL,
    FLUSH_DURATION_SECONDS,
    FLUSH_ENTRIES,
    FLUSH_FAILURES_TOTAL,
    FLUSH_ROWS_UPDATED_TOTAL,
)
from service.telemetry.pool_stats import nearest_rank

log = logging.getLogger("challengectl.flusher")

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
OUTCOME_APPLIED = "applied"
OUTCOME_DEFERRED = "deferred"
# A flush this large, this slow or with deferred entries is logged at info; the rest at debug, because
# every partition flushes up to 20 times a second.
_NOTABLE_FLUSH_ENTRIES = 1000
_NOTABLE_FLUSH_MS = 1000.0
_DURATION_WINDOW = 2048


class FlushListener(Protocol):
    """What the flusher tells the ingestor, which owns the event index and the de-duplication markers."""

    def entries_taken(self, partition: Partition) -> None:
        """A snapshot left the buffer: admission may find room now."""

    def entries_returned(self, absorbed: list[tuple[Entry, Entry]]) -> None:
        """Entries came back; each `(older, newer)` pair means `older` was merged into `newer`."""

    async def entries_committed(self, entries: list[Entry]) -> None:
        """The entries' effects are committed (or touched no row): mark their ids done, release waiters."""


@dataclass
class FlushTotals:
    """Counters shared by the partitions, for `/admin/buffer`."""

    flushes: int = 0
    failures: int = 0
    rows_updated: int = 0
    max_ms: float = 0.0
    recent_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=_DURATION_WINDOW))

    def percentile_ms(self, fraction: float) -> float:
        """Nearest-rank percentile of the recent flush durations; 0 before the first flush."""
        return nearest_rank(self.recent_ms, fraction)


@dataclass
class _LastFlush:
    at: datetime | None = None
    duration_ms: float = 0.0
    entries: int = 0
    rows_updated: int = 0
    deferred: int = 0


class PartitionFlusher:
    """Flushes one partition, sequentially, every `interval_s` or as soon as it holds `batch_max` entries."""

    def __init__(
        self,
        partition: Partition,
        routing: GoalRouting,
        store: Store,
        queries: Queries,
        cache: Cache,
        listener: FlushListener,
        totals: FlushTotals,
        interval_s: float,
        batch_max: int,
        clock: Callable[[], datetime],
    ) -> None:
        self.partition = partition
        self._routing = routing
        self._store = store
        self._queries = queries
        self._cache = cache
        self._listener = listener
        self._totals = totals
        self._interval_s = interval_s
        self._batch_max = batch_max
        self._clock = clock
        self._draining = False
        self._gauge = BUFFER_ENTRIES.labels(str(partition.index))
        self.last = _LastFlush()
        self.failing_since: float | None = None  # monotonic time of the first failure of the streak
        self._failures_in_streak = 0

    def drain(self) -> None:
        """Flush back to back until the partition is empty, then return from `run`."""
        self._draining = True
        self.partition.wake.set()

    async def run(self) -> None:
        """The partition's loop; returns once draining has emptied the partition."""
        partition = self.partition
        failures = 0
        next_flush_at = time.monotonic()
        while True:
            self._gauge.set(len(partition))
            if self._draining and not partition.entries:
                return
            delay = next_flush_at - time.monotonic()
            if delay > 0 and not self._draining and len(partition) < self._batch_max:
                partition.wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await partition.wake.wait()
                except TimeoutError:
                    pass
            next_flush_at = time.monotonic() + self._interval_s
            if not partition.entries:
                continue
            if await self.flush_once():
                failures = 0
                if self._draining and self.last.deferred:
                    # A lock holder (a claim) is not hurried by hammering its row; retry at the interval.
                    await asyncio.sleep(self._interval_s)
            else:
                failures += 1
                backoff_s = doubling_backoff(BACKOFF_FIRST_S, BACKOFF_MAX_S, failures)
                self._gauge.set(len(partition))
                # Retry as soon as a known PostgreSQL outage ends, not at the end of the backoff.
                await self._store.availability.wait_until_up(backoff_s)

    async def flush_once(self) -> bool:
        """One flush of up to `batch_max` entries; False when the database failed (snapshot merged back)."""
        snapshot = self.partition.take_snapshot(self._batch_max)
        if not snapshot:
            return True
        self._listener.entries_taken(self.partition)
        now = self._clock()
        params = self._routing.statement_params(snapshot, now)
        started = time.perf_counter()
        try:
            # One statement in an autocommit session is one transaction: BEGIN/COMMIT would only add
            # two round trips to the hot path.
            async with self._store.connection() as conn:
                outcomes = await self._queries.rows(conn, "apply_event_updates", params)
        except asyncio.CancelledError:
            self._listener.entries_returned(self.partition.merge_back(snapshot))
            raise
        except Exception as exc:  # noqa: BLE001 - whatever failed, keeping the snapshot loses nothing (docs/events.md#flush-failure-and-retry)
            self._flush_failed(snapshot, exc)
            return False
        duration_ms = (time.perf_counter() - started) * 1000

        settled: list[Entry] = []
        deferred: list[Entry] = []
        applied_users: list[str] = []
        rows_updated = 0
        for entry, outcome in zip(snapshot, outcomes, strict=True):
            state = outcome["outcome"]
            if state == OUTCOME_DEFERRED:
                deferred.append(entry)
                continue
            if state == OUTCOME_APPLIED:
                applied_users.append(entry.user_id)
                rows_updated += len(outcome["goal_ids"])
            settled.append(entry)
        if deferred:
            self._listener.entries_returned(self.partition.merge_back(deferred))
        self._flush_succeeded(now, duration_ms, len(snapshot), rows_updated, len(deferred))
        # The effects are committed: even a shutdown that cancels this loop must not strand the waiters.
        await asyncio.shield(self._after_commit(applied_users, settled))
        return True

    async def _after_commit(self, applied_users: list[str], settled: list[Entry]) -> None:
        # docs/events.md#flush step 5 / docs/events.md#cache-invalidation-after-commit: invalidate before any waiter is released.
        await self._cache.invalidate_many(applied_users)
        await self._listener.entries_committed(settled)

    def _flush_failed(self, snapshot: list[Entry], exc: Exception) -> None:
        self._listener.entries_returned(self.partition.merge_back(snapshot))
        self._totals.failures += 1
        FLUSH_FAILURES_TOTAL.inc()
        self._failures_in_streak += 1
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            log.warning(
                "flush of partition %d failed (%s); %d entries kept in the buffer, retrying with backoff",
                self.partition.index,
                short_reason(exc),
                len(snapshot),
                extra={"partition": self.partition.index, "entries": len(snapshot)},
            )
        else:
            log.debug(
                "flush of partition %d failed again (%s)",
                self.partition.index,
                short_reason(exc),
                extra={"partition": self.partition.index, "entries": len(snapshot)},
            )

    def _flush_succeeded(
        self, now: datetime, duration_ms: float, entries: int, rows_updated: int, deferred: int
    ) -> None:
        if self.failing_since is not None:
            log.info(
                "flushes of partition %d succeed again after %d failures over %.1f s",
                self.partition.index,
                self._failures_in_streak,
                time.monotonic() - self.failing_since,
                extra={"partition": self.partition.index},
            )
            self.failing_since = None
            self._failures_in_streak = 0
        self.last = _LastFlush(now, duration_ms, entries, rows_updated, deferred)
        totals = self._totals
        totals.flushes += 1
        totals.rows_updated += rows_updated
        totals.max_ms = max(totals.max_ms, duration_ms)
        totals.recent_ms.append(duration_ms)
        FLUSH_DURATION_SECONDS.observe(duration_ms / 1000)
        FLUSH_ENTRIES.observe(entries)
        if rows_updated:
            FLUSH_ROWS_UPDATED_TOTAL.inc(rows_updated)
        if deferred:
            FLUSH_DEFERRED_TOTAL.inc(deferred)
        notable = entries >= _NOTABLE_FLUSH_ENTRIES or duration_ms >= _NOTABLE_FLUSH_MS or deferred
        log.log(
            logging.INFO if notable else logging.DEBUG,
            "flush partition=%d entries=%d rows_updated=%d deferred=%d duration_ms=%.1f",
            self.partition.index,
            entries,
            rows_updated,
            deferred,
            duration_ms,
            extra={
                "partition": self.partition.index,
                "entries": entries,
                "rows_updated": rows_updated,
                "deferred": deferred,
                "duration_ms": round(duration_ms, 1),
            },
        )

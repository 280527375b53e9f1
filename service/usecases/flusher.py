"""The flusher (docs/events.md#flush, docs/events.md#flush-failure-and-retry, docs/events.md#cache-invalidation-after-commit): one loop that commits every partition's buffer in batches.

At each tick of `interval_s` every non-empty partition is due; a partition holding `batch_max` entries is
due at once. While the buffer is empty and no flush runs, the loop sleeps until admission adds entries
(`entries_added`), then ticks on the same grid. Due partitions whose snapshots add up to at most `combine_max` entries are flushed together
by one statement, so that at moderate rates a tick costs one statement and one Redis round trip instead
of one per partition (docs/events.md#flush); larger ones flush alone, in parallel. A partition is in at
most one flush at a time, which keeps each user's events in order.

Each flush takes a snapshot of up to `batch_max` entries per partition, as many as write at most `rows_max`
goal rows in all (an entry may write a row per goal its source feeds), builds the goal definitions of
the snapshot's sources at one instant T, and runs `apply_event_updates` once: one statement, so one
transaction, that skips rows locked by other transactions. Then, in one Redis round trip, the cache of
every user with an applied row is invalidated and the event ids of applied and row-less entries are
marked done (the listener), and their waiters are released. Deferred entries, and the whole snapshot on
a database error or when another writer inserted one of its implied rows first, are merged back into the
buffer; failures are retried with exponential backoff, a race at the next tick.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import psycopg
from psycopg.rows import tuple_row

from service.domain.backoff import doubling_backoff
from service.domain.buffer import Entry, Partition
from service.domain.routing import GoalRouting
from service.storage.arrays import with_array_literals
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
# the flusher runs up to 20 times a second per partition.
_NOTABLE_FLUSH_ENTRIES = 1000
_NOTABLE_FLUSH_MS = 1000.0
_DURATION_WINDOW = 2048


class FlushListener(Protocol):
    """What the flusher tells the ingestor, which owns the event index and the de-duplication markers."""

    def entries_taken(self, partition: Partition) -> None:
        """A snapshot left the buffer: admission may find room now."""

    def entries_returned(self, absorbed: list[tuple[Entry, Entry]]) -> None:
        """Entries came back; each `(older, newer)` pair means `older` was merged into `newer`."""

    async def entries_committed(self, applied_users: list[str], entries: list[Entry]) -> None:
        """The entries' effects are committed (or touched no row): invalidate the cache of the users
        with an applied row, then mark the entries' ids done and release their waiters."""


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
class LastFlush:
    """A partition's part of the last flush that included it."""

    at: datetime | None = None
    duration_ms: float = 0.0
    entries: int = 0
    rows_updated: int = 0
    deferred: int = 0


class PartitionFlushState:
    """What the flusher knows of one partition: whether a flush holds it, whether it is due, its last flush
    and its current failing streak."""

    __slots__ = ("busy", "due", "failing_since", "failures", "gauge", "gauge_value", "last", "partition")

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self.busy = False
        self.due = False
        self.last = LastFlush()
        self.failing_since: float | None = None  # monotonic time of the first failure of the streak
        self.failures = 0
        self.gauge = BUFFER_ENTRIES.labels(str(partition.index))
        self.gauge_value = -1

    def report_entries(self) -> None:
        """Set the partition's entries gauge, when it changed: a multiprocess gauge write costs ~2 us, and
        the loop runs at every tick and flush."""
        entries = len(self.partition)
        if entries != self.gauge_value:
            self.gauge_value = entries
            self.gauge.set(entries)


@dataclass(frozen=True, slots=True)
class FlushCadence:
    """When partitions flush and how many entries one statement takes (docs/events.md#flush)."""

    interval_s: float
    batch_max: int
    combine_max: int  # due partitions are flushed together while their entries add up to at most this
    rows_max: int  # goal rows one statement may write (each partition of a flush gives at least one entry)


def group_due(due: Sequence[PartitionFlushState], batch_max: int, combine_max: int) -> list[list[PartitionFlushState]]:
    """Split the due partitions, in order, into flushes of at most `combine_max` entries (at most
    `batch_max` per partition); a partition larger than that flushes alone."""
    groups: list[list[PartitionFlushState]] = []
    size = 0
    for state in due:
        entries = min(len(state.partition), batch_max)
        if not groups or size + entries > combine_max:
            groups.append([])
            size = 0
        groups[-1].append(state)
        size += entries
    return groups


class Flusher:
    """Flushes every partition (docs/events.md#flush): one loop of ticks, flushes run as tasks."""

    def __init__(
        self,
        partitions: Sequence[Partition],
        routing: GoalRouting,
        store: Store,
        queries: Queries,
        listener: FlushListener,
        cadence: FlushCadence,
        clock: Callable[[], datetime],
    ) -> None:
        self.states = [PartitionFlushState(partition) for partition in partitions]
        self.totals = FlushTotals()
        self._routing = routing
        self._store = store
        self._queries = queries
        self._listener = listener
        self._cadence = cadence
        self._combine_max = min(cadence.combine_max, cadence.batch_max)
        self._clock = clock
        self._draining = False
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._idle = False  # waiting for admission: nothing buffered, nothing in flight

    @property
    def failing_since(self) -> float | None:
        """Monotonic time of the first failure of the oldest current failing streak, None while flushes succeed."""
        streaks = [state.failing_since for state in self.states if state.failing_since is not None]
        return min(streaks) if streaks else None

    def wake(self) -> None:
        """A partition reached `batch_max` entries: flush it without waiting for the tick."""
        self._wake.set()

    def entries_added(self) -> None:
        """Admission buffered entries: end an idle wait (they are still flushed at the next tick)."""
        if self._idle:
            self._wake.set()

    def drain(self) -> None:
        """Flush back to back until every partition is empty, then return from `run`."""
        self._draining = True
        self._wake.set()

    async def run(self) -> None:
        """The loop; returns once draining has emptied every partition. Cancelling it cancels the
        flushes in progress, whose snapshots go back into the buffer."""
        interval_s = self._cadence.interval_s
        next_tick = time.monotonic()
        try:
            while True:
                for state in self.states:
                    state.report_entries()
                if self._draining and not self._running and not any(state.partition.entries for state in self.states):
                    return
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + interval_s
                    for state in self.states:
                        state.due = state.busy or bool(state.partition.entries)
                self._start_due()
                self._wake.clear()
                if (
                    not self._draining
                    and not self._running
                    and not any(state.partition.entries for state in self.states)
                ):
                    # Nothing to flush: no ticks until admission adds entries (an idle process would wake
                    # 1/interval times a second); the ticks then resume on their grid.
                    await self._wait_while_idle()
                    now = time.monotonic()
                    if now >= next_tick:
                        next_tick += (math.floor((now - next_tick) / interval_s) + 1) * interval_s
                    continue
                try:
                    async with asyncio.timeout(max(0.0, next_tick - time.monotonic())):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _wait_while_idle(self) -> None:
        self._idle = True
        try:
            await self._wake.wait()
        finally:
            self._idle = False

    def _start_due(self) -> None:
        batch_max = self._cadence.batch_max
        due = [
            state
            for state in self.states
            if not state.busy
            and state.partition.entries
            and (state.due or self._draining or len(state.partition) >= batch_max)
        ]
        for group in group_due(due, batch_max, self._combine_max):
            for state in group:
                state.busy = True
                state.due = False
            task = asyncio.get_running_loop().create_task(self._flush_and_settle(group))
            self._running.add(task)
            task.add_done_callback(self._flush_done)

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()

    async def _flush_and_settle(self, group: list[PartitionFlushState]) -> None:
        """One flush of the group, then what must pass before its partitions flush again: the backoff
        after a failure, or one interval while draining with deferred entries."""
        try:
            if await self.flush_once(group):
                for state in group:
                    state.failures = 0
                if self._draining and any(state.last.deferred for state in group):
                    # A lock holder (a claim) is not hurried by hammering its row; retry at the interval.
                    await asyncio.sleep(self._cadence.interval_s)
            else:
                failures = max(state.failures for state in group) + 1
                for state in group:
                    state.failures = failures
                    state.report_entries()
                # Retry as soon as a known PostgreSQL outage ends, not at the end of the backoff.
                await self._store.availability.wait_until_up(doubling_backoff(BACKOFF_FIRST_S, BACKOFF_MAX_S, failures))
                for state in group:
                    state.due = True
        finally:
            for state in group:
                state.busy = False

    async def flush_once(self, group: Sequence[PartitionFlushState]) -> bool:
        """One statement for up to `batch_max` entries of each partition of the group; False when the
        database failed (the snapshots are merged back)."""
        batch_max, rows_left = self._cadence.batch_max, self._cadence.rows_max
        snapshots = []
        for state in group:
            part = state.partition.take_snapshot(batch_max, self._routing.rows_fed, rows_left)
            rows_left = max(1, rows_left - sum(map(self._routing.rows_fed, part)))
            snapshots.append(part)
        snapshot = [entry for part in snapshots for entry in part]
        if not snapshot:
            return True
        for state in group:
            self._listener.entries_taken(state.partition)
        now = self._clock()
        # Array literals: far cheaper than psycopg dumping lists.
        params = with_array_literals(self._routing.statement_params(snapshot, now))
        started = time.perf_counter()
        try:
            # One statement, so one transaction: it updates the entries' real rows and inserts their implied
            # default rows with the entries applied (docs/data-model.md#implied-default-goals).
            async with self._store.connection() as conn:
                outcomes = await self._queries.rows(conn, "apply_event_updates", params, tuple_row)
        except asyncio.CancelledError:
            self._merge_back(group, snapshots)
            raise
        except psycopg.errors.UniqueViolation:
            # Another writer made one of the implied rows real after the statement's snapshot; nothing was
            # written. The next tick's statement sees that row as real (docs/events.md#flush).
            self._merge_back(group, snapshots)
            self._flush_raced(group, len(snapshot))
            return True
        except Exception as exc:  # noqa: BLE001 - whatever failed, keeping the snapshot loses nothing (docs/events.md#flush-failure-and-retry)
            self._merge_back(group, snapshots)
            self._flush_failed(group, len(snapshot), exc)
            return False
        duration_ms = (time.perf_counter() - started) * 1000

        settled: list[Entry] = []
        applied_users: list[str] = []
        results = iter(outcomes)
        deferred_by_partition: list[list[Entry]] = []
        rows_by_partition: list[int] = []
        for part in snapshots:
            deferred: list[Entry] = []
            rows_updated = 0
            for entry in part:
                _, _, _, state_name, goal_ids = next(results)  # entry_index, user_id, source, outcome, goal_ids
                if state_name == OUTCOME_DEFERRED:
                    deferred.append(entry)
                    continue
                if state_name == OUTCOME_APPLIED:
                    applied_users.append(entry.user_id)
                    rows_updated += len(goal_ids)
                settled.append(entry)
            deferred_by_partition.append(deferred)
            rows_by_partition.append(rows_updated)
        self._merge_back(group, deferred_by_partition)
        for state, part, rows_updated, deferred in zip(
            group, snapshots, rows_by_partition, deferred_by_partition, strict=True
        ):
            state.last = LastFlush(now, duration_ms, len(part), rows_updated, len(deferred))
        self._flush_succeeded(
            group, duration_ms, len(snapshot), sum(rows_by_partition), sum(map(len, deferred_by_partition))
        )
        # The effects are committed: even a shutdown that cancels this flush must not strand the waiters.
        # docs/events.md#flush step 5 / docs/events.md#cache-invalidation-after-commit: invalidate before any waiter is released.
        await asyncio.shield(self._listener.entries_committed(applied_users, settled))
        return True

    def _merge_back(self, group: Sequence[PartitionFlushState], returning: Sequence[list[Entry]]) -> None:
        for state, entries in zip(group, returning, strict=True):
            if entries:
                self._listener.entries_returned(state.partition.merge_back(entries))

    def _flush_raced(self, group: Sequence[PartitionFlushState], entries: int) -> None:
        log.info(
            "flush of partition %s raced another writer's insert of an implied row; %d entries flush again",
            _indexes(group),
            entries,
            extra={"partition": _indexes(group), "entries": entries},
        )

    def _flush_failed(self, group: Sequence[PartitionFlushState], entries: int, exc: Exception) -> None:
        self.totals.failures += 1
        FLUSH_FAILURES_TOTAL.inc()
        indexes = _indexes(group)
        started_streak = any(state.failing_since is None for state in group)
        for state in group:
            if state.failing_since is None:
                state.failing_since = time.monotonic()
        extra = {"partition": indexes, "entries": entries}
        if started_streak:
            log.warning(
                "flush of partition %s failed (%s); %d entries kept in the buffer, retrying with backoff",
                indexes,
                short_reason(exc),
                entries,
                extra=extra,
            )
        else:
            log.debug("flush of partition %s failed again (%s)", indexes, short_reason(exc), extra=extra)

    def _flush_succeeded(
        self, group: Sequence[PartitionFlushState], duration_ms: float, entries: int, rows_updated: int, deferred: int
    ) -> None:
        indexes = _indexes(group)
        recovered = [state for state in group if state.failing_since is not None]
        if recovered:
            log.info(
                "flushes of partition %s succeed again after %d failures over %.1f s",
                indexes,
                max(state.failures for state in recovered),
                time.monotonic() - min(state.failing_since or 0.0 for state in recovered),
                extra={"partition": indexes},
            )
            for state in recovered:
                state.failing_since = None
        totals = self.totals
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
            "flush partition=%s entries=%d rows_updated=%d deferred=%d duration_ms=%.1f",
            indexes,
            entries,
            rows_updated,
            deferred,
            duration_ms,
            extra={
                "partition": indexes,
                "entries": entries,
                "rows_updated": rows_updated,
                "deferred": deferred,
                "duration_ms": round(duration_ms, 1),
            },
        )


def _indexes(group: Sequence[PartitionFlushState]) -> str:
    """The partitions of a flush for logs: "2", or "0,1,3" for a combined flush."""
    return ",".join(str(state.partition.index) for state in group)

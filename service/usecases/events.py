"""Event ingestion (docs/events.md#validation, docs/events.md#guarantees): validation, routing, de-duplication, buffer admission, ack modes.

`Ingestor` is the public entry point used by the gRPC servicers. One `submit` call is one OnMessage
event or one Publish batch:

1. every event is validated and normalised (docs/events.md#validation) and routed by its source (docs/events.md#routing); invalid events are
   rejected one by one, foreign-namespace, negative and unrouted events are skipped;
2. events with an id get their de-duplication marker, one pipelined round trip per call (docs/events.md#de-duplication);
3. admission into the partitioned buffer (docs/events.md#buffer-and-merge) is all or nothing per call, waits briefly for room and
   otherwise fails with RESOURCE_EXHAUSTED (docs/events.md#backpressure). Admissions happen in the order the calls arrived,
   which keeps each user's events in arrival order;
4. in commit mode the call then waits until the flusher has committed every entry holding its events
   (docs/events.md#ack-modes); in buffered mode it returns at once.

The buffer lives in `service.domain.buffer`, the markers in `service.storage.dedup`, the flush loops in
`service.usecases.flusher`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, NamedTuple

from service.config.settings import Settings
from service.domain.buffer import (
    SOURCE_LOGIN,
    Entry,
    EventKey,
    Partition,
    Waiter,
    partition_of,
)
from service.domain.catalog import Catalog
from service.domain.errors import DomainError, Exhausted, InvalidRequest, Unavailable
from service.domain.routing import GoalRouting
from service.domain.rules import utc_now
from service.domain.user_ids import is_valid_user_id
from service.storage.cache import Cache
from service.storage.dedup import PENDING, Deduplicator
from service.storage.store import Queries, Store
from service.telemetry.event_metrics import (
    ACK_WAIT_SECONDS,
    BUFFER_CAPACITY,
    EVENT_AGE_SECONDS,
    EVENTS_TOTAL,
    observe_many,
)
from service.usecases.flusher import FlushCadence, Flusher

log = logging.getLogger("challengectl.events")

ACK_COMMIT = "commit"
ACK_BUFFERED = "buffered"

ORIGIN_AGS_LOGIN = "ags_login"
ORIGIN_AGS_STAT = "ags_stat"
ORIGIN_PUBLISH = "publish"
ORIGINS = (ORIGIN_AGS_LOGIN, ORIGIN_AGS_STAT, ORIGIN_PUBLISH)

KIND_LOGIN = "login"
KIND_STAT = "stat"

OUTCOME_ACCEPTED = "accepted"
OUTCOME_DUPLICATE = "duplicate"
OUTCOME_SKIPPED_NAMESPACE = "skipped_namespace"
OUTCOME_SKIPPED_NO_GOAL = "skipped_no_goal"
OUTCOME_SKIPPED_NEGATIVE = "skipped_negative"
OUTCOME_REJECTED = "rejected"
OUTCOME_EXHAUSTED = "exhausted"
OUTCOMES = (
    OUTCOME_ACCEPTED,
    OUTCOME_DUPLICATE,
    OUTCOME_SKIPPED_NAMESPACE,
    OUTCOME_SKIPPED_NO_GOAL,
    OUTCOME_SKIPPED_NEGATIVE,
    OUTCOME_REJECTED,
    OUTCOME_EXHAUSTED,
)

MAX_EVENT_ID_LENGTH = 200
INT32_MIN = -2_147_483_648
INT32_MAX = 2_147_483_647

NOT_COMMITTED_MESSAGE = "events accepted but not yet committed; retry with the same event ids"
SHUTTING_DOWN_MESSAGE = "service is shutting down"

# Per-event rejection reasons (PublishResult.rejected; OnMessage turns them into INVALID_ARGUMENT).
REASON_USER_ID_REQUIRED = "user_id is required"
REASON_USER_ID_INVALID = "user_id is invalid (at most 100 characters, no control characters, '{' or '}')"
REASON_KIND_REQUIRED = "kind is required"
REASON_PAYLOAD_REQUIRED = "payload is required for a stat event"
REASON_STAT_CODE_REQUIRED = "stat_code is required for a stat event"
REASON_ID_TOO_LONG = f"id is longer than {MAX_EVENT_ID_LENGTH} characters"


class IncomingEvent(NamedTuple):
    """One event as the gRPC layer decoded it (AGS OnMessage). A named tuple: built once per event, it costs
    a fraction of a frozen dataclass (`bench/README.md`, event CPU). Publish passes plain `EventFields`."""

    id: str  # "" = no de-duplication
    user_id: str
    namespace: str  # "" counts as the server namespace for Publish; OnMessage passes the message's value
    kind: str  # "login" | "stat" | "" (unspecified → rejected)
    stat_code: str
    latest_value: float
    inc: float
    has_payload: bool  # False for an AGS stat message without payload → rejected
    timestamp: (
        float | None
    )  # epoch seconds: orders a stat's values (docs/events.md#flush) and feeds challenge_event_age_seconds


# An IncomingEvent's fields as a plain tuple, in its order: what `submit` reads (positionally). Publish builds
# these for its batches: ~1 us less per event than the named tuple (`bench/README.md`, publish2).
EventFields = tuple[str, str, str, str, str, float, float, bool, float | None]


@dataclass
class SubmitResult:
    """The outcome of one call, per event counts as in PublishResult (docs/events.md#ingest-service)."""

    accepted: int
    duplicates: int
    skipped: int
    rejected: list[tuple[int, str, str]]  # (index in the call, event id, reason)
    committed: bool  # ack_mode == commit


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """The settings of ingestion (docs/configuration.md#service-settings ack_*, flush_*, buffer_*, dedup_*, ingest_max_batch)."""

    namespace: str
    ack_mode: str = ACK_COMMIT
    ack_timeout_ms: int = 10_000
    flush_interval_ms: int = 50
    flush_workers: int = 4
    flush_batch_max: int = 5_000
    flush_combine_max: int = 500
    flush_rows_max: int = 20_000
    buffer_max_entries: int = 20_000
    buffer_full_wait_ms: int = 200
    ingest_max_batch: int = 1_000
    dedup_ttl_s: int = 86_400
    dedup_pending_ttl_s: int = 60
    dedup_lru_size: int = 1_000_000
    redis_key_prefix: str = "ch"
    redis_probe_interval_ms: int = 1_000

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestConfig:
        """Pick the ingestion settings out of the service settings (every field is named as its setting)."""
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})

    @property
    def partition_capacity(self) -> int:
        """`buffer_max_entries` divided evenly across the partitions, rounding up (docs/events.md#buffer-and-merge)."""
        return -(-self.buffer_max_entries // self.flush_workers)


# (index in the call, user id, source, value (None for login), inc, event id, timestamp, partition)
_Candidate = tuple[int, str, str, int | None, int, str, float | None, int]

# Exclusive bounds of a finite value whose truncation toward zero is an int32 (NaN and ±Inf fall outside).
_INT32_FLOOR = INT32_MIN - 1.0
_INT32_CEILING = INT32_MAX + 1.0


def _value_problem(name: str, raw: float) -> str | None:
    if _INT32_FLOOR < raw < _INT32_CEILING:
        return None
    if not math.isfinite(raw):
        return f"{name} must be a finite number"
    return f"{name} is outside the int32 range after truncation"


def validate_event(event: EventFields) -> str | None:
    """The rejection reason of an invalid event (docs/events.md#validation), or None when it is valid."""
    event_id, user_id, _, kind, stat_code, latest_value, inc, has_payload, _ = event
    if not user_id:
        return REASON_USER_ID_REQUIRED
    if not is_valid_user_id(user_id):
        return REASON_USER_ID_INVALID
    if kind == KIND_STAT:
        if not has_payload:
            return REASON_PAYLOAD_REQUIRED
        if not stat_code:
            return REASON_STAT_CODE_REQUIRED
    elif kind != KIND_LOGIN:
        return REASON_KIND_REQUIRED
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        return REASON_ID_TOO_LONG
    if kind == KIND_STAT:
        # A login counts one whatever it carries, so only stat values are checked.
        return _value_problem("latest_value", latest_value) or _value_problem("inc", inc)
    return None


class _CallPlan:
    """What validation and routing made of one call's events."""

    __slots__ = ("candidates", "rejected", "skipped_namespace", "skipped_negative", "skipped_no_goal")

    def __init__(self) -> None:
        self.candidates: list[_Candidate] = []
        self.rejected: list[tuple[int, str, str]] = []
        self.skipped_namespace = 0
        self.skipped_negative = 0
        self.skipped_no_goal = 0

    @property
    def skipped(self) -> int:
        return self.skipped_namespace + self.skipped_negative + self.skipped_no_goal


class Ingestor:
    """Accepts events into the partitioned buffer and runs one flusher per partition (docs/events.md)."""

    def __init__(
        self,
        config: IngestConfig,
        catalog: Catalog,
        store: Store,
        queries: Queries,
        cache: Cache,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not 1 <= config.flush_workers <= 32:
            raise ValueError(f"flush_workers must be between 1 and 32, got {config.flush_workers}")
        if config.ack_mode not in (ACK_COMMIT, ACK_BUFFERED):
            raise ValueError(f"ack_mode must be commit or buffered, got {config.ack_mode!r}")
        self._config = config
        self._commit_mode = config.ack_mode == ACK_COMMIT
        self._routing = GoalRouting(catalog)
        self._stat_sources = self._routing.routed_stat_sources()
        self._cache = cache
        self._dedup = Deduplicator(
            cache.client,
            config.redis_key_prefix,
            config.dedup_pending_ttl_s,
            config.dedup_ttl_s,
            config.dedup_lru_size,
            config.redis_probe_interval_ms / 1000,
            pipe=cache.pipe,
        )
        capacity = config.partition_capacity
        self._partitions = [Partition(index, capacity) for index in range(config.flush_workers)]
        self._flusher = Flusher(
            self._partitions,
            self._routing,
            store,
            queries,
            self,
            FlushCadence(
                config.flush_interval_ms / 1000, config.flush_batch_max, config.flush_combine_max, config.flush_rows_max
            ),
            clock,
        )
        # The entry that currently holds each pending event id of this process (buffered or in flight).
        self._owners: dict[EventKey, Entry] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._renewal_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._admission_tail: asyncio.Future[None] | None = None
        self._space_freed = asyncio.Event()
        self._pending_waiters = 0
        # Commit-mode calls waiting for their commit; released at once when PostgreSQL goes down.
        self._waiters: set[Waiter] = set()
        self._database = store.availability
        store.availability.on_down(self._release_waiters)
        self._peak_entries = 0
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._outcome_counters = {
            (origin, outcome): EVENTS_TOTAL.labels(origin, outcome) for origin in ORIGINS for outcome in OUTCOMES
        }
        BUFFER_CAPACITY.set(capacity * config.flush_workers)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the partition flushers and the renewal of pending markers."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._flusher.run(), name="flusher")]
        self._renewal_task = loop.create_task(self._renew_markers(), name="dedup-marker-renewal")

    async def drain_and_stop(self, timeout_s: float) -> int:
        """Stop accepting events, flush every partition until empty (retrying database errors) and
        release the waiting calls (docs/events.md#shutdown). Returns the number of entries left unflushed at the timeout;
        their commit-mode callers get UNAVAILABLE."""
        self._stopping = True
        buffered = sum(len(partition.entries) for partition in self._partitions)
        if not self._tasks:
            await self.start()
        self._flusher.drain()
        _, unfinished = await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._renewal_task is not None:
            self._renewal_task.cancel()
            await asyncio.gather(self._renewal_task, return_exceptions=True)
        left = [entry for partition in self._partitions for entry in partition.entries.values()]
        log.info("shutdown: flushed %d buffered entries, %d left", max(buffered - len(left), 0), len(left))
        if left:
            events = sum(entry.events for entry in left)
            if self._commit_mode:
                log.error(
                    "shutdown: %d buffered entries (%d events) were not committed in %g s; their "
                    "callers get UNAVAILABLE and retry",
                    len(left),
                    events,
                    timeout_s,
                )
            else:
                log.error(
                    "shutdown: %d buffered entries (%d events) were not committed in %g s and are lost",
                    len(left),
                    events,
                    timeout_s,
                )
            for entry in left:
                for waiter in entry.waiters:
                    waiter.abandon()
            # Free the ids, so that the senders' retries (elsewhere) are accepted rather than "in flight".
            await self._dedup.forget([key for entry in left for key in entry.event_keys])
        return len(left)

    @property
    def flusher_failing_since(self) -> float | None:
        """Monotonic time of the first failure of the current failing streak, None while flushes succeed."""
        return self._flusher.failing_since

    # -- submit -----------------------------------------------------------------------------------

    async def submit(
        self,
        events: Sequence[EventFields],
        origin: str,
        deadline: float | None = None,
    ) -> SubmitResult:
        """Validate, de-duplicate and buffer one call's events; in commit mode wait for their commit.

        `origin` is "ags_login", "ags_stat" or "publish"; `deadline` the client's deadline as a
        `time.monotonic()` value. Raises a DomainError when the call fails as a whole.
        """
        if self._stopping:
            raise Unavailable("SHUTTING_DOWN", SHUTTING_DOWN_MESSAGE)
        if len(events) > self._config.ingest_max_batch:
            raise InvalidRequest(
                "BATCH_TOO_LARGE", f"batch too large ({len(events)} > {self._config.ingest_max_batch})"
            )
        plan = self._plan(events, origin)
        if not plan.candidates:
            self._count_plan(origin, plan, accepted=0, duplicates=0)
            return SubmitResult(0, 0, plan.skipped, plan.rejected, self._commit_mode)
        if self._commit_mode and self._database.is_down:
            # Nothing could be committed before the deadline: say so now rather than at the deadline.
            self._count_plan(origin, plan, accepted=0, duplicates=0)
            raise Unavailable("DATABASE_DOWN", database_down_message(self._database.down_reason))

        # Take a place in the admission queue now, so calls are admitted in the order they arrived.
        previous_turn = self._admission_tail
        my_turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._admission_tail = my_turn
        try:
            accepted, duplicates, touched = await self._admit(plan, origin, previous_turn)
        except DomainError:
            self._count_plan(origin, plan, accepted=0, duplicates=0)
            raise
        finally:
            self._pass_turn(previous_turn, my_turn)
        self._count_plan(origin, plan, accepted, duplicates)
        if touched:
            await self._wait_for_commit(touched, deadline)
        return SubmitResult(accepted, duplicates, plan.skipped, plan.rejected, self._commit_mode)

    def _plan(self, events: Sequence[EventFields], origin: str) -> _CallPlan:
        """Validate and route the call's events in one pass over their fields (this runs for every event)."""
        plan = _CallPlan()
        candidates, rejected = plan.candidates, plan.rejected
        server_namespace = self._config.namespace
        empty_is_server = origin == ORIGIN_PUBLISH
        stat_sources = self._stat_sources
        login_routed = self._routing.routes(SOURCE_LOGIN)
        partitions = len(self._partitions)
        for index, event in enumerate(events):
            reason = validate_event(event)
            if reason is not None:
                rejected.append((index, event[0], reason))
                continue
            event_id, user_id, namespace, kind, stat_code, latest_value, inc, _, timestamp = event
            if namespace != server_namespace and not (empty_is_server and not namespace):
                plan.skipped_namespace += 1
                continue
            if kind == KIND_LOGIN:
                if not login_routed:
                    plan.skipped_no_goal += 1
                    continue
                candidates.append(
                    (index, user_id, SOURCE_LOGIN, None, 1, event_id, timestamp, partition_of(user_id, partitions))
                )
                continue
            value = int(latest_value)
            if value < 0:
                plan.skipped_negative += 1
                continue
            source = stat_sources.get(stat_code)
            if source is None:
                plan.skipped_no_goal += 1
                continue
            # A negative increment (the stat went down) is no progress; taken as 0 it still fixes a
            # relative goal's baseline at the new value instead of far above it (docs/events.md#validation).
            candidates.append(
                (
                    index,
                    user_id,
                    source,
                    value,
                    max(int(inc), 0),
                    event_id,
                    timestamp,
                    partition_of(user_id, partitions),
                )
            )
        return plan

    async def _admit(
        self,
        plan: _CallPlan,
        origin: str,
        previous_turn: asyncio.Future[None] | None,
    ) -> tuple[int, int, list[Entry]]:
        """De-duplicate and admit the plan's events; returns (accepted, duplicates, entries to wait for).

        When admission fails, the pending markers this call created are deleted before the error is
        raised, so that the sender's retry is accepted (docs/events.md#de-duplication step 2).
        """
        candidates = plan.candidates
        # One marker lookup per distinct (user, id); a repeat within the call is a duplicate.
        lookups: dict[EventKey, int] = {}
        repeated: set[int] = set()
        for position, candidate in enumerate(candidates):
            event_id = candidate[5]
            if event_id:
                key = (candidate[1], event_id)
                if key in lookups:
                    repeated.add(position)
                else:
                    lookups[key] = position
        states = await self._dedup.begin(list(lookups)) if lookups else []
        state_of = dict(zip(lookups.values(), states, strict=True))
        created = [key for key, state in zip(lookups, states, strict=True) if state is None]
        admitted = False
        try:
            if previous_turn is not None and not previous_turn.done():
                await asyncio.shield(previous_turn)
            new, duplicates, pending_here, in_flight_elsewhere = self._classify(candidates, repeated, state_of)
            if self._commit_mode and in_flight_elsewhere is not None:
                raise Unavailable("EVENT_IN_FLIGHT", f"event {in_flight_elsewhere} is in flight; retry later")
            if new:
                await self._wait_for_room(new, origin)
            touched = self._buffer(new, pending_here)
            admitted = True
        finally:
            if not admitted and created:
                await self._dedup.forget(created)
        return len(new), duplicates, touched

    def _classify(
        self,
        candidates: list[_Candidate],
        repeated: set[int],
        state_of: dict[int, str | None],
    ) -> tuple[list[_Candidate], int, list[EventKey], str | None]:
        """Split by marker state: (new events, duplicates, ids pending in this process, the first id
        pending in another process)."""
        new: list[_Candidate] = []
        duplicates = 0
        pending_here: list[EventKey] = []
        in_flight_elsewhere: str | None = None
        for position, candidate in enumerate(candidates):
            if position in repeated:
                duplicates += 1
                continue
            state = state_of.get(position)
            if state is None:
                new.append(candidate)
                continue
            duplicates += 1
            if state == PENDING:
                key = (candidate[1], candidate[5])
                if key in self._owners:
                    pending_here.append(key)
                elif in_flight_elsewhere is None:
                    in_flight_elsewhere = candidate[5]
        return new, duplicates, pending_here, in_flight_elsewhere

    async def _wait_for_room(self, new: list[_Candidate], origin: str) -> None:
        """Wait up to buffer_full_wait_ms until every partition involved has room for its new keys."""
        give_up_at = time.monotonic() + self._config.buffer_full_wait_ms / 1000
        while True:
            if self._stopping:
                raise Unavailable("SHUTTING_DOWN", SHUTTING_DOWN_MESSAGE)
            full = self._full_partition(new)
            if full is None:
                return
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                self._count(origin, OUTCOME_EXHAUSTED, len(new))
                raise Exhausted(
                    "BUFFER_FULL",
                    f"event buffer full ({len(full)}/{full.capacity}); retry with backoff",
                )
            freed = self._space_freed
            try:
                async with asyncio.timeout(remaining):
                    await freed.wait()
            except TimeoutError:
                pass

    def _full_partition(self, new: list[_Candidate]) -> Partition | None:
        """A partition without room for the new keys this call would add to it, if any (docs/events.md#backpressure)."""
        partitions = self._partitions
        added: dict[int, set[tuple[str, str]]] = {}
        for _, user_id, source, _, _, _, _, index in new:
            if (user_id, source) not in partitions[index].entries:
                added.setdefault(index, set()).add((user_id, source))
        for index, keys in added.items():
            partition = self._partitions[index]
            if not partition.has_room_for(len(keys)):
                return partition
        return None

    def _buffer(self, new: list[_Candidate], pending_here: list[EventKey]) -> list[Entry]:
        """Merge the admitted events into their entries (synchronously: no other call interleaves)."""
        partitions = self._partitions
        now = time.monotonic()
        wall_now = time.time()
        owners = self._owners
        touched: set[Entry] = set()
        grown: set[int] = set()
        ages: list[float] = []
        for _, user_id, source, value, inc, event_id, timestamp, index in new:
            entries = partitions[index].entries
            entry_key = (user_id, source)
            entry = entries.get(entry_key)
            if entry is None:
                entry = entries[entry_key] = Entry(user_id, source, now)
                grown.add(index)
            if timestamp is not None:
                age = wall_now - timestamp
                if age < 0.0:
                    # A sender's clock ahead of ours must not make its value outrank later ones for long.
                    age, timestamp = 0.0, wall_now
                ages.append(age)
            if value is None:
                entry.add_login()
            else:
                entry.add_stat(value, inc, timestamp)
            if event_id:
                key = (user_id, event_id)
                entry.event_keys.append(key)
                owners[key] = entry
            touched.add(entry)
        observe_many(EVENT_AGE_SECONDS, ages)
        if grown:
            self._flusher.entries_added()
            batch_max = self._config.flush_batch_max
            if any(len(partitions[index]) >= batch_max for index in grown):
                self._flusher.wake()
            total = sum(len(partition) for partition in partitions)
            self._peak_entries = max(self._peak_entries, total)
        if not self._commit_mode:
            return []
        for key in pending_here:
            # The original may have been committed while this call waited for room: then nothing to wait for.
            original = owners.get(key)
            if original is not None:
                touched.add(original)
        return list(touched)

    async def _wait_for_commit(self, entries: list[Entry], deadline: float | None) -> None:
        """Commit mode: wait until every entry is committed, at most ack_timeout_ms or the deadline."""
        started = time.monotonic()
        timeout_s = self._config.ack_timeout_ms / 1000
        if deadline is not None:
            timeout_s = min(timeout_s, deadline - started)
        waiter = Waiter(len(entries), asyncio.get_running_loop().create_future())
        for entry in entries:
            entry.waiters.append(waiter)
        self._pending_waiters += 1
        self._waiters.add(waiter)
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                committed = await waiter.future
        except TimeoutError:
            raise Unavailable("NOT_COMMITTED", NOT_COMMITTED_MESSAGE) from None
        finally:
            self._pending_waiters -= 1
            self._waiters.discard(waiter)
        if not committed:
            raise Unavailable("NOT_COMMITTED", NOT_COMMITTED_MESSAGE)
        ACK_WAIT_SECONDS.observe(time.monotonic() - started)

    @staticmethod
    def _pass_turn(previous_turn: asyncio.Future[None] | None, my_turn: asyncio.Future[None]) -> None:
        """Let the next call admit once this one and every earlier one are done (even if this one was
        cancelled while it waited for its turn)."""
        if previous_turn is None or previous_turn.done():
            my_turn.set_result(None)
        else:
            previous_turn.add_done_callback(lambda _: _resolve(my_turn))

    def _release_waiters(self, reason: str) -> None:
        """PostgreSQL went down: answer the waiting calls UNAVAILABLE now. Their entries stay buffered and
        are committed after recovery; a retry with the same ids then counts as a duplicate (or waits
        for that commit), so nothing is lost or counted twice (docs/events.md#de-duplication)."""
        for waiter in list(self._waiters):
            waiter.abandon()

    # -- flush listener ---------------------------------------------------------------------------

    def entries_taken(self, partition: Partition) -> None:
        """A flush took a snapshot: wake the calls waiting for room."""
        freed, self._space_freed = self._space_freed, asyncio.Event()
        freed.set()

    def entries_returned(self, absorbed: list[tuple[Entry, Entry]]) -> None:
        """Snapshot entries merged into newer ones: their pending ids now live in the newer entry."""
        owners = self._owners
        for older, newer in absorbed:
            for key in older.event_keys:
                if owners.get(key) is older:
                    owners[key] = newer

    async def entries_committed(self, applied_users: list[str], entries: list[Entry]) -> None:
        """After commit: invalidate the applied users' cache, mark the ids done, then release the waiters (docs/events.md#flush step 5)."""
        keys = [key for entry in entries for key in entry.event_keys]
        # One Redis round trip: the invalidations, then the done markers, in one pipeline.
        follow_up = self._dedup.done_follow_up(keys)
        await self._cache.invalidate_many(applied_users, follow_up)
        if follow_up is None:
            await self._dedup.mark_done(keys)
        owners = self._owners
        for entry in entries:
            entry.settle()
            for key in entry.event_keys:
                if owners.get(key) is entry:
                    del owners[key]

    async def _renew_markers(self) -> None:
        interval_s = self._config.dedup_pending_ttl_s / 3
        while True:
            await asyncio.sleep(interval_s)
            await self._dedup.renew(list(self._owners))

    # -- counting and stats -----------------------------------------------------------------------

    def _count(self, origin: str, outcome: str, n: int) -> None:
        if n:
            self._outcomes[outcome] += n
            counter = self._outcome_counters.get((origin, outcome))
            if counter is None:
                counter = self._outcome_counters[(origin, outcome)] = EVENTS_TOTAL.labels(origin, outcome)
            counter.inc(n)

    def _count_plan(self, origin: str, plan: _CallPlan, accepted: int, duplicates: int) -> None:
        self._count(origin, OUTCOME_ACCEPTED, accepted)
        self._count(origin, OUTCOME_DUPLICATE, duplicates)
        self._count(origin, OUTCOME_SKIPPED_NAMESPACE, plan.skipped_namespace)
        self._count(origin, OUTCOME_SKIPPED_NO_GOAL, plan.skipped_no_goal)
        self._count(origin, OUTCOME_SKIPPED_NEGATIVE, plan.skipped_negative)
        self._count(origin, OUTCOME_REJECTED, len(plan.rejected))

    def reset_peaks(self) -> None:
        """Reset `peak_entries` to the current number of entries (POST /admin/reset-peaks)."""
        self._peak_entries = sum(len(partition) for partition in self._partitions)

    def buffer_stats(self) -> dict[str, Any]:
        """The body of `GET /admin/buffer` (docs/http-api.md#admin-and-metrics)."""
        entries = sum(len(partition) for partition in self._partitions)
        oldest = [accepted for partition in self._partitions if (accepted := partition.oldest_accepted()) is not None]
        totals = self._flusher.totals
        return {
            "ack_mode": self._config.ack_mode,
            "entries": entries,
            "capacity": self._config.partition_capacity * len(self._partitions),
            "peak_entries": max(self._peak_entries, entries),
            "oldest_entry_age_ms": (time.monotonic() - min(oldest)) * 1000 if oldest else 0.0,
            "pending_waiters": self._pending_waiters,
            "partitions": [
                {
                    "index": state.partition.index,
                    "entries": len(state.partition),
                    "last_flush_at": _iso(state.last.at),
                    "last_flush_ms": round(state.last.duration_ms, 3),
                    "last_flush_entries": state.last.entries,
                    "last_flush_rows_updated": state.last.rows_updated,
                    "last_flush_deferred": state.last.deferred,
                }
                for state in self._flusher.states
            ],
            "flushes_total": totals.flushes,
            "flush_failures_total": totals.failures,
            "rows_updated_total": totals.rows_updated,
            "flush_ms_p50": round(totals.percentile_ms(0.50), 3),
            "flush_ms_p95": round(totals.percentile_ms(0.95), 3),
            "flush_ms_max": round(totals.max_ms, 3),
            "events": dict(self._outcomes),
        }


def database_down_message(reason: str | None) -> str:
    """The UNAVAILABLE message of a commit-mode call refused while PostgreSQL is known down."""
    return f"PostgreSQL unavailable: {reason}; retry with the same event ids"


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _resolve(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)

"""Event de-duplication markers (docs/events.md#de-duplication): Redis scripts, with an in-process LRU during outages.

A marker `<p>:{<user_id>}:evt:<id>` is `"p"` while its event is pending (accepted, not yet committed)
and `"d"` once its effect is committed. Every operation is one script call per call or per flush over all
its markers (per hash slot on a Redis Cluster, where a script's keys must share one slot). When Redis
fails, the same semantics are kept in a bounded in-process LRU (de-duplication then covers only this
process); Redis is tried again after `retry_interval_s`, and while LRU entries live both stores are
consulted. No method raises because of Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from service.domain.buffer import EventKey
from service.storage.cache import REDIS_FAILURES, RedisClient, event_key, event_keys
from service.storage.redis_pipe import PipelinedRedis

log = logging.getLogger(__name__)

DEDUP_TOTAL = Counter(
    "challenge_dedup_total",
    "De-duplication lookups by backend and result",
    ["backend", "result"],
)

PENDING = "p"
DONE = "d"

BACKEND_REDIS = "redis"
BACKEND_LRU = "lru"
RESULT_NEW = "new"
RESULT_DUPLICATE = "duplicate"
RESULT_PENDING = "pending"
# The labelled children, looked up once: `labels()` takes a lock and builds a key on every call.
_DEDUP_COUNTERS = {
    (backend, result): DEDUP_TOTAL.labels(backend, result)
    for backend in (BACKEND_REDIS, BACKEND_LRU)
    for result in (RESULT_NEW, RESULT_DUPLICATE, RESULT_PENDING)
}

# Each script handles many markers (KEYS) with one TTL (ARGV[1]): a batch costs one command, not one per id.
# BEGIN returns per key the existing state, or "" after creating a pending marker.
BEGIN_LUA = (
    "local states = {} for i, key in ipairs(KEYS) do local v = redis.call('GET', key) "
    "if v then states[i] = v else redis.call('SET', key, 'p', 'PX', ARGV[1]) states[i] = '' end end "
    "return states"
)
DONE_LUA = "for _, key in ipairs(KEYS) do redis.call('SET', key, 'd', 'PX', ARGV[1]) end return #KEYS"
RENEW_LUA = (
    "for _, key in ipairs(KEYS) do if redis.call('GET', key) == 'p' then redis.call('PEXPIRE', key, ARGV[1]) end "
    "end return #KEYS"
)

_PIPELINE_CHUNK = 2000  # keys per script call at most: bounds one call's time in Redis and its buffers


class _RedisFailed(Exception):
    """A pipeline reply carried an error other than NOSCRIPT; the whole batch falls back to the LRU."""


_FALLBACK_FAILURES: tuple[type[BaseException], ...] = (*REDIS_FAILURES, _RedisFailed)


class MarkerLru:
    """In-process markers with the Redis semantics (state and TTL), at most `max_size` keys, LRU-evicted."""

    def __init__(self, max_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_size = max_size
        self._clock = clock
        self._markers: OrderedDict[EventKey, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._markers)

    def get(self, key: EventKey) -> str | None:
        found = self._markers.get(key)
        if found is None:
            return None
        state, expires_at = found
        if expires_at <= self._clock():
            del self._markers[key]
            return None
        self._markers.move_to_end(key)
        return state

    def begin(self, key: EventKey, pending_ttl_s: float) -> str | None:
        """The LRU twin of BEGIN_LUA: the existing state, or None after creating a pending marker."""
        state = self.get(key)
        if state is None:
            self.put(key, PENDING, pending_ttl_s)
        return state

    def put(self, key: EventKey, state: str, ttl_s: float) -> None:
        self._markers[key] = (state, self._clock() + ttl_s)
        self._markers.move_to_end(key)
        while len(self._markers) > self._max_size:
            self._markers.popitem(last=False)

    def renew(self, key: EventKey, ttl_s: float) -> None:
        if self.get(key) == PENDING:
            self.put(key, PENDING, ttl_s)

    def delete(self, key: EventKey) -> None:
        self._markers.pop(key, None)


class Deduplicator:
    """Creates, renews, clears and completes event markers; Redis first, the LRU when Redis fails.

    `client` None (cache disabled) means the LRU only. The client must return bytes, as
    `service.storage.cache.open_redis`'s does. With `pipe` (the cache's pipelined connection to a standalone
    server) the script calls of lookups, done markers and renewals go over it: about 70 us of CPU less per
    call than a redis-py pipeline, and one OnMessage call makes one lookup.
    """

    def __init__(
        self,
        client: RedisClient | None,
        prefix: str,
        pending_ttl_s: int,
        done_ttl_s: int,
        lru_size: int,
        retry_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        pipe: PipelinedRedis | None = None,
    ) -> None:
        self._client = client
        self._pipe = pipe if client is not None else None
        self._prefix = prefix
        self._pending_ttl_s = pending_ttl_s
        self._pending_ttl_ms = pending_ttl_s * 1000
        self._done_ttl_s = done_ttl_s
        self._done_ttl_ms = done_ttl_s * 1000
        self._retry_interval_s = retry_interval_s
        self._clock = clock
        self.lru = MarkerLru(lru_size, clock)
        self._redis_down_until: float | None = None
        # Lookups of calls that arrived while another lookup was in flight: they share the next pipeline.
        self._begin_queue: list[tuple[Sequence[EventKey], asyncio.Future[list[Any]]]] | None = None
        self._begin_sender: asyncio.Task[None] | None = None
        self._cluster = isinstance(client, RedisCluster)
        if client is not None:
            self._begin_script = client.register_script(BEGIN_LUA)
            self._done_script = client.register_script(DONE_LUA)
            self._renew_script = client.register_script(RENEW_LUA)

    @property
    def redis_usable(self) -> bool:
        """Whether the next operation goes to Redis (it is configured and not in an outage back-off)."""
        if self._client is None:
            return False
        return self._redis_down_until is None or self._clock() >= self._redis_down_until

    def _redis_failed(self, exc: BaseException, doing: str) -> None:
        if self._redis_down_until is None:
            log.warning(
                "Redis failed while %s (%s: %s); event de-duplication uses the in-process LRU",
                doing,
                type(exc).__name__,
                exc or "timeout",
            )
        self._redis_down_until = self._clock() + self._retry_interval_s

    def _redis_answered(self) -> None:
        if self._redis_down_until is not None:
            log.info("Redis answers again; event de-duplication uses Redis (and the LRU until it expires)")
            self._redis_down_until = None

    def _redis_key(self, key: EventKey) -> str:
        return event_key(self._prefix, key[0], key[1])

    # -- acceptance -------------------------------------------------------------------------------

    async def begin(self, keys: Sequence[EventKey]) -> list[str | None]:
        """Step 1 of docs/events.md#de-duplication for each key: None when the event is new (a pending marker now exists),
        `"d"` for a duplicate, `"p"` when it is pending (here or elsewhere)."""
        if not keys:
            return []
        if self.redis_usable:
            try:
                states = await self._begin_in_redis(keys)
            except _FALLBACK_FAILURES as exc:
                self._redis_failed(exc, f"checking {len(keys)} event ids")
            else:
                self._redis_answered()
                if len(self.lru):
                    states = await self._consult_lru_too(keys, states)
                self._count(BACKEND_REDIS, states)
                return states
        states = [self.lru.begin(key, self._pending_ttl_s) for key in keys]
        self._count(BACKEND_LRU, states)
        return states

    async def _begin_in_redis(self, keys: Sequence[EventKey]) -> list[str | None]:
        return [reply.decode() or None for reply in await self._coalesced_begin(keys)]

    async def _coalesced_begin(self, keys: Sequence[EventKey]) -> list[Any]:
        """The BEGIN_LUA state of each key. With no lookup in flight they are sent at once; otherwise they
        join the lookups of the other calls that arrive meanwhile, all sent in one pipeline as soon as the
        one in flight returns (one round trip for many concurrent OnMessage calls)."""
        if self._begin_queue is not None:
            replies: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            self._begin_queue.append((keys, replies))
            return await replies
        self._begin_queue = []
        try:
            return await self._run_script(self._begin_script, keys, self._pending_ttl_ms)
        finally:
            if self._begin_queue:
                self._begin_sender = asyncio.get_running_loop().create_task(self._send_queued_begins())
            else:
                self._begin_queue = None

    async def _send_queued_begins(self) -> None:
        """Send the queued lookups, one pipeline per batch that gathered, and hand each call its replies."""
        queued: list[tuple[Sequence[EventKey], asyncio.Future[list[Any]]]] = []
        try:
            while self._begin_queue:
                queued, self._begin_queue = self._begin_queue, []
                keys = [key for call_keys, _ in queued for key in call_keys]
                try:
                    replies = await self._run_script(self._begin_script, keys, self._pending_ttl_ms)
                except Exception as exc:  # noqa: BLE001 - each call decides what a failure means for it
                    for _, future in queued:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for call_keys, future in queued:
                    if not future.done():
                        future.set_result(replies[start : start + len(call_keys)])
                    start += len(call_keys)
        finally:
            # Cancelled (shutdown): no call may wait for replies that will never come.
            for _, future in [*queued, *(self._begin_queue or ())]:
                future.cancel()
            self._begin_queue = None

    async def _consult_lru_too(self, keys: Sequence[EventKey], states: list[str | None]) -> list[str | None]:
        """After an outage the LRU still knows ids that Redis never saw; its answer wins for those."""
        completed: list[EventKey] = []
        for position, key in enumerate(keys):
            remembered = self.lru.get(key)
            if remembered is not None and states[position] is None:
                states[position] = remembered
                if remembered == DONE:
                    completed.append(key)
        if completed:
            # Redis just created pending markers for events that were already committed.
            await self._set_done_in_redis(completed)
        return states

    async def forget(self, keys: Sequence[EventKey]) -> None:
        """Step 2 of docs/events.md#de-duplication: delete the pending markers a call created when its admission failed."""
        if not keys:
            return
        for key in keys:
            self.lru.delete(key)
        if not self.redis_usable:
            return
        assert self._client is not None
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    # A cluster pipeline's `unlink` is a coroutine (it splits keys by slot); the raw command queues.
                    pipe.execute_command("UNLINK", self._redis_key(key))
                await pipe.execute()
        except REDIS_FAILURES as exc:
            # The markers expire after dedup_pending_ttl_s; until then a retry elsewhere sees "in flight".
            self._redis_failed(exc, f"clearing {len(keys)} pending event markers")

    # -- after the flush --------------------------------------------------------------------------

    async def mark_done(self, keys: Sequence[EventKey]) -> None:
        """Step 3 of docs/events.md#de-duplication: the events' effects are committed; replays are duplicates for dedup_ttl_s."""
        if not keys:
            return
        self._done_in_lru_too(keys)
        if self.redis_usable:
            try:
                await self._set_done_in_redis(keys)
            except _FALLBACK_FAILURES as exc:
                self._redis_failed(exc, f"marking {len(keys)} event ids as done")
            else:
                return
        self._done_in_lru(keys)

    def done_follow_up(self, keys: Sequence[EventKey]) -> _DoneFollowUp | None:
        """`mark_done` as commands of another pipeline (the cache invalidations after a flush, one round trip);
        None when it cannot ride along (no keys, Redis in back-off): then call `mark_done`."""
        if not keys or not self.redis_usable:
            return None
        return _DoneFollowUp(self, keys)

    def _done_in_lru_too(self, keys: Sequence[EventKey]) -> None:
        """Ids the LRU holds (from an outage) are completed there as well, so that it never answers "p" for them."""
        if len(self.lru):
            for key in keys:
                if self.lru.get(key) is not None:
                    self.lru.put(key, DONE, self._done_ttl_s)

    def _done_in_lru(self, keys: Sequence[EventKey]) -> None:
        for key in keys:
            self.lru.put(key, DONE, self._done_ttl_s)

    def _queue_done(self, pipe: Any, keys: Sequence[EventKey]) -> None:
        for call in self._script_keys(keys)[1]:
            pipe.evalsha(self._done_script.sha, len(call), *call, self._done_ttl_ms)

    async def _set_done_in_redis(self, keys: Sequence[EventKey]) -> None:
        await self._run_script(self._done_script, keys, self._done_ttl_ms)

    async def renew(self, keys: Sequence[EventKey]) -> None:
        """Step 5 of docs/events.md#de-duplication: keep the pending markers of events still buffered in this process alive."""
        if not keys:
            return
        if len(self.lru):
            for key in keys:
                self.lru.renew(key, self._pending_ttl_s)
        if not self.redis_usable:
            return
        try:
            await self._run_script(self._renew_script, keys, self._pending_ttl_ms)
        except _FALLBACK_FAILURES as exc:
            self._redis_failed(exc, f"renewing {len(keys)} pending event markers")

    # -- plumbing ---------------------------------------------------------------------------------

    def _script_calls(self, keys: Sequence[EventKey]) -> list[list[int]]:
        """The positions of `keys` in script calls of at most _PIPELINE_CHUNK keys, in order: all in one call
        on a standalone server; on a cluster one call per hash slot (a player's markers share its slot)."""
        if self._cluster:
            by_slot: dict[int, list[int]] = {}
            for position, key in enumerate(keys):
                by_slot.setdefault(key_slot(self._redis_key(key).encode()), []).append(position)
            groups = list(by_slot.values())
        else:
            groups = [list(range(len(keys)))]
        return [
            group[start : start + _PIPELINE_CHUNK]
            for group in groups
            for start in range(0, len(group), _PIPELINE_CHUNK)
        ]

    def _script_keys(self, keys: Sequence[EventKey]) -> tuple[list[list[int]], list[list[str]]]:
        """`_script_calls(keys)`, and the Redis keys of each call."""
        positions = self._script_calls(keys)
        redis_keys = event_keys(self._prefix, keys)
        if not self._cluster:
            return positions, [redis_keys[call[0] : call[-1] + 1] for call in positions]
        return positions, [[redis_keys[position] for position in call] for call in positions]

    async def _run_script(self, script: Any, keys: Sequence[EventKey], ttl_ms: int) -> list[Any]:
        """Run the multi-key script over `keys`, one EVALSHA per script call, pipelined; returns the per-key
        replies of a script that gives them, in the order of `keys`. Scripts missing on the server (a
        restart) are loaded and only the calls that did not run are sent again."""
        assert self._client is not None
        positions, calls = self._script_keys(keys)
        replies = await self._evalsha_each(script.sha, calls, ttl_ms)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await self._client.script_load(script.script)
            again = await self._evalsha_each(script.sha, [calls[i] for i in missing], ttl_ms)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, BaseException):
                raise _RedisFailed(f"{type(reply).__name__}: {reply}")
        if not all(isinstance(reply, list) for reply in replies):
            return []
        if not self._cluster:  # the calls hold the keys in order
            return [reply for call_replies in replies for reply in call_replies]
        per_key: list[Any] = [None] * len(keys)
        for call, call_replies in zip(positions, replies, strict=True):
            for position, reply in zip(call, call_replies, strict=True):
                per_key[position] = reply
        return per_key

    async def _evalsha_each(self, sha: str, calls: Sequence[list[str]], ttl_ms: int) -> list[Any]:
        """One EVALSHA per call, pipelined; an error reply comes back as that call's reply (a connection
        failure raises)."""
        if self._pipe is not None:
            return await self._pipe.execute_many([("EVALSHA", sha, len(call), *call, ttl_ms) for call in calls])
        assert self._client is not None
        async with self._client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(sha, len(call), *call, ttl_ms)
            return await pipe.execute(raise_on_error=False)

    @staticmethod
    def _count(backend: str, states: Sequence[str | None]) -> None:
        new = duplicate = pending = 0
        for state in states:
            if state is None:
                new += 1
            elif state == PENDING:
                pending += 1
            else:
                duplicate += 1
        for result, n in ((RESULT_NEW, new), (RESULT_DUPLICATE, duplicate), (RESULT_PENDING, pending)):
            if n:
                _DEDUP_COUNTERS[(backend, result)].inc(n)


class _DoneFollowUp:
    """Marking ids done as the tail of the cache's invalidation pipeline (a `PipelineFollowUp`)."""

    __slots__ = ("_dedup", "_keys")

    def __init__(self, dedup: Deduplicator, keys: Sequence[EventKey]) -> None:
        self._dedup = dedup
        self._keys = keys

    def queue(self, pipe: Any) -> None:
        self._dedup._done_in_lru_too(self._keys)
        self._dedup._queue_done(pipe, self._keys)

    async def replied(self, replies: list[Any]) -> None:
        failure = next((reply for reply in replies if isinstance(reply, BaseException)), None)
        if failure is None:
            self._dedup._redis_answered()
            return
        if isinstance(failure, NoScriptError):
            # The script is not on the server (a restart): the own path loads it.
            await self._dedup.mark_done(self._keys)
            return
        self._dedup._redis_failed(failure, f"marking {len(self._keys)} event ids as done")
        self._dedup._done_in_lru(self._keys)

    async def undelivered(self, error: BaseException | None) -> None:
        if error is None:
            await self._dedup.mark_done(self._keys)
            return
        self._dedup._redis_failed(error, f"marking {len(self._keys)} event ids as done")
        self._dedup._done_in_lru(self._keys)

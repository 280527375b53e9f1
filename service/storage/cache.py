"""Redis cache of each player's active view, with read-your-writes and degradation (docs/cache.md).

Owns the key layout (every key of a user carries the hash tag `{<user_id>}`, docs/cache.md#keys, docs/cache.md#redis-cluster), the entry
codec (docs/cache.md#entries-and-tokens), the token protocol (read = one MGET; conditional fill and invalidation = one Lua script
each on the user's `[tok, active]`), the synced marker of initialize (docs/rules.md#initialize) and the outage handling
(docs/cache.md#degradation-and-recovery): an unhealthy cache does no Redis I/O, undeliverable invalidations go into a bounded journal,
and a background probe replays the journal before reads resume.

Redis never fails a request: every public coroutine of `Cache` except `delete_synced` (an explicit
operator action) swallows Redis errors, marks the cache unhealthy and lets the caller use PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec
import redis.asyncio as redis_asyncio
from prometheus_client import Counter, Gauge
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from service.domain.catalog import Goal
from service.domain.rules import Initialization, ProgressRow, implied_row
from service.storage.redis_pipe import Arg, CommandBatch, PipelinedRedis

CACHE_REQUESTS = Counter(
    "challenge_cache_requests_total",
    "Cache reads by kind and result",
    ["kind", "result"],
)
CACHE_INVALIDATIONS = Counter(
    "challenge_cache_invalidations_total",
    "Cache invalidations: delivered, journaled, replayed",
    ["result"],
)
REDIS_UP = Gauge(
    "challenge_redis_up",
    "1 while the cache's Redis answers, 0 while reads bypass it",
    multiprocess_mode="min",
)

log = logging.getLogger(__name__)

KIND_ACTIVE = "active"
KIND_SYNCED = "synced"
RESULT_HIT = "hit"
RESULT_MISS = "miss"
RESULT_BYPASS = "bypass"
RESULT_ERROR = "error"
INVALIDATION_OK = "ok"
INVALIDATION_FAILED = "failed"
INVALIDATION_REPLAYED = "replayed"

ENTRY_VERSION = 2
_TOKEN_TTL_MARGIN_S = 60  # the token outlives the entry it validates (docs/cache.md#keys)
_SCAN_COUNT = 1000
_REPLAY_BATCH = 500

# What an unreachable, slow or refusing Redis raises: redis-py wraps socket errors in RedisError
# subclasses, but asyncio timeouts and bare OSErrors can escape from the connect path, and the cluster
# client raises RedisClusterException (not a RedisError) when no node of a slot answers.
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)

REDIS_MODES = ("auto", "standalone", "cluster")

# A standalone client or a Redis Cluster client: the cache and de-duplication use only what both offer.
RedisClient = redis_asyncio.Redis | RedisCluster


# ---------------------------------------------------------------------------------------------------
# Client


class CountingConnectionPool(BlockingConnectionPool):
    """A blocking pool that counts the connections it has created and lent (for `/admin/pool`), through its
    public `make_connection`, `get_connection` and `release`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections_created = 0
        self._lent: set[int] = set()

    @property
    def connections_in_use(self) -> int:
        return len(self._lent)

    def make_connection(self) -> Any:
        self.connections_created += 1
        return super().make_connection()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = await super().get_connection(*args, **kwargs)
        self._lent.add(id(connection))
        return connection

    async def release(self, connection: Any) -> None:
        self._lent.discard(id(connection))
        await super().release(connection)


def open_redis(url: str, max_connections: int, timeout_ms: int) -> redis_asyncio.Redis:
    """A pooled asyncio client; every operation, including waiting for a pooled connection, times out
    after `timeout_ms` (docs/cache.md#degradation-and-recovery) and is never retried, so an outage costs one timeout, not a
    backoff series."""
    timeout_s = timeout_ms / 1000
    pool = CountingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=0,
    )
    return redis_asyncio.Redis.from_pool(pool)


def open_cluster(url: str, max_connections: int, timeout_ms: int) -> RedisCluster:
    """`open_redis` for a Redis Cluster (docs/cache.md#redis-cluster): the nodes are found from `url`'s,
    `max_connections` is per node, and a node without a free connection fails the operation at once."""
    timeout_s = timeout_ms / 1000
    return RedisCluster.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


async def is_cluster(url: str, timeout_ms: int) -> bool | None:
    """Whether the server at `url` runs in cluster mode (`INFO cluster`); None when it does not answer.
    A Unix socket is never a cluster."""
    if url.startswith("unix:"):
        return False
    client = open_redis(url, 1, timeout_ms)
    try:
        info = await client.info("cluster")
    except REDIS_FAILURES:
        return None
    finally:
        await client.aclose()
    return bool(info.get("cluster_enabled"))


async def connect_redis(url: str, max_connections: int, timeout_ms: int, mode: str) -> RedisClient:
    """`open_redis` for the `redis_mode` setting (docs/cache.md#redis-cluster): `cluster`, `standalone`, or
    `auto`, which asks the server (`INFO cluster`) and takes a server that does not answer for standalone."""
    cluster = mode == "cluster"
    if mode == "auto":
        detected = await is_cluster(url, timeout_ms)
        if detected is None:
            log.warning(
                "Redis did not answer at startup; assuming a standalone server (set redis_mode=cluster for a cluster)"
            )
        cluster = bool(detected)
    if cluster:
        return open_cluster(url, max_connections, timeout_ms)
    return open_redis(url, max_connections, timeout_ms)


async def ping(client: RedisClient) -> float:
    """PING (every primary of a cluster); returns the round trip in ms."""
    started = time.perf_counter()
    if isinstance(client, RedisCluster):
        await client.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.ping()
    return (time.perf_counter() - started) * 1000


def new_token() -> str:
    """A fresh random 128-bit validation token, hex (docs/cache.md#keys)."""
    return secrets.token_hex(16)


# ---------------------------------------------------------------------------------------------------
# Keys


def active_key(prefix: str, user_id: str) -> str:
    """`<p>:{<user>}:active`: the user's active view entry."""
    return f"{prefix}:{{{user_id}}}:active"


def token_key(prefix: str, user_id: str) -> str:
    """`<p>:{<user>}:tok`: the token that validates the user's entry."""
    return f"{prefix}:{{{user_id}}}:tok"


def synced_key(prefix: str, user_id: str, fingerprint: str) -> str:
    """`<p>:{<user>}:synced:<fp>`: the user got the default goals of catalog `fingerprint`."""
    return f"{prefix}:{{{user_id}}}:synced:{fingerprint}"


def event_key(prefix: str, user_id: str, event_id: str) -> str:
    """`<p>:{<user>}:evt:<event_id>`: the de-duplication marker of one event (docs/events.md#de-duplication)."""
    return event_keys(prefix, ((user_id, event_id),))[0]


def event_keys(prefix: str, keys: Iterable[tuple[str, str]]) -> list[str]:
    """The `event_key` of each (user, event id), in one comprehension (a flush and a batch have hundreds)."""
    return [f"{prefix}:{{{user_id}}}:evt:{event_id}" for user_id, event_id in keys]


_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def escape_glob(text: str) -> str:
    """`text` as a literal inside a SCAN MATCH pattern: `* ? [ ] \\` are backslash-escaped (docs/cache.md#redis-cluster)."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def scan_pattern_for_user(prefix: str, user_id: str, rest: str = "*") -> str:
    """SCAN MATCH pattern for the keys of one user: literal prefix and user id, then the raw glob `rest`."""
    return f"{escape_glob(prefix)}:{{{escape_glob(user_id)}}}:{rest}"


def key_name_pattern(prefix: str) -> re.Pattern[bytes]:
    """Any key name of the layout above under `prefix`, as SCAN returns it: group 1 is the user id,
    group 2 `active` or `tok`, or else group 3 `synced` or `evt` with group 4 the fingerprint or event
    id (so an event id ending in `:tok` is never taken for a token key)."""
    return re.compile(re.escape(prefix.encode()) + rb":\{([^{}]*)\}:(?:(active|tok)|(synced|evt):(.*))\Z", re.DOTALL)


# ---------------------------------------------------------------------------------------------------
# Entry codec (docs/cache.md#entries-and-tokens)


class ActiveEntry(msgspec.Struct, frozen=True, rename={"version": "v", "token": "tok", "fingerprint": "fp"}):
    """A decoded active view: the user's active rows and the rows of their prerequisites, real ones only when `init`
    is set (the implied default rows are the catalog's default goals missing from them, docs/data-model.md#implied-default-goals)."""

    version: int
    token: str
    fingerprint: str
    rows: list[ProgressRow]
    pre: list[ProgressRow]
    init: Initialization | None = None

    def active_rows(self, user_id: str, default_goals: Sequence[Goal]) -> list[ProgressRow]:
        """The active rows, the implied ones of `default_goals` (the catalog's) built as the `goal_progress` view shows them."""
        if self.init is None:
            return list(self.rows)
        real = self.init.real_goal_ids(self.rows, self.pre)
        implied = [implied_row(user_id, goal, self.init) for goal in default_goals if goal.goal_id not in real]
        return [*self.rows, *implied]


def _wire_type(hint: Any) -> Any:
    """A column's type in an entry: a timestamp is a formatted string (or null), anything else as it is."""
    return str | None if datetime in (typing.get_args(hint) or (hint,)) else hint


# The wire shape of one row (docs/cache.md#entries-and-tokens): ProgressRow's columns in order, timestamps formatted.
_RowJson = msgspec.defstruct(
    "_RowJson", [(name, _wire_type(hint)) for name, hint in typing.get_type_hints(ProgressRow).items()]
)


class _EntryJson(msgspec.Struct):
    v: int
    tok: str
    fp: str
    rows: list[msgspec.Struct]
    pre: list[msgspec.Struct]
    init: Initialization | None


_ZERO = timedelta(0)
_entry_encoder = msgspec.json.Encoder()
_entry_decoder = msgspec.json.Decoder(ActiveEntry)


def format_timestamp(value: datetime | None) -> str | None:
    """ISO 8601 UTC with microseconds, `Z` suffix (always six fraction digits), or None."""
    if value is None:
        return None
    if value.utcoffset() != _ZERO:
        value = value.astimezone(UTC)
    return f"{value:%Y-%m-%dT%H:%M:%S.%fZ}"


class _Timestamps(dict[datetime | None, str | None]):
    """`format_timestamp` memoised over one entry: a player's rows share few distinct instants (every row of
    an initialize has the same created_at, updated_at and assigned_at), so most lookups are hits."""

    def __missing__(self, value: datetime | None) -> str | None:
        formatted = self[value] = format_timestamp(value)
        return formatted


def _row_json(row: ProgressRow, stamp: _Timestamps) -> msgspec.Struct:
    return _RowJson(
        row.user_id,
        row.goal_id,
        row.challenge_id,
        row.namespace,
        row.progress,
        row.status,
        stamp[row.completed_at],
        stamp[row.claimed_at],
        stamp[row.created_at],
        stamp[row.updated_at],
        row.is_active,
        stamp[row.assigned_at],
        stamp[row.expires_at],
        row.baseline_value,
    )


def encode_entry(
    token: str,
    fingerprint: str,
    rows: Iterable[ProgressRow],
    pre: Iterable[ProgressRow],
    init: Initialization | None = None,
) -> bytes:
    """Compact JSON `{"v":2,"tok","fp","rows","pre","init"}` of an active view (docs/cache.md#entries-and-tokens)."""
    stamp = _Timestamps()
    return _entry_encoder.encode(
        _EntryJson(
            ENTRY_VERSION,
            token,
            fingerprint,
            [_row_json(r, stamp) for r in rows],
            [_row_json(r, stamp) for r in pre],
            init,
        )
    )


def decode_entry(raw: bytes | str) -> ActiveEntry | None:
    """The entry in `raw`, or None when it does not parse, has the wrong shape or `v` is not 2."""
    try:
        entry = _entry_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    return entry if entry.version == ENTRY_VERSION else None


# ---------------------------------------------------------------------------------------------------
# Lua scripts (EVALSHA with EVAL fallback via register_script); only Redis 6.2 commands.

# KEYS: tok, active. ARGV: seen token ("" = none was seen), token of the entry, entry, entry TTL ms,
# token TTL ms. Returns 1 when stored.
_FILL_LUA = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' then
  if current ~= ARGV[1] then return 0 end
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl >= 0 and ttl < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
else
  if current then return 0 end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
"""

# KEYS: tok, active. ARGV: fresh token, token TTL ms, "XX" to rotate only an existing token (replay of
# "everything", docs/cache.md#degradation-and-recovery) or "". Tokens are replaced, never deleted.
_INVALIDATE_LUA = """
if ARGV[3] == 'XX' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'XX')
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('UNLINK', KEYS[2])
return 1
"""

# The same for several users in one call (a standalone server: a cluster's keys of one call must share a slot).
# KEYS: tok and active of each user in turn. ARGV: token TTL ms, "XX" or "", then one fresh token per user.
_INVALIDATE_MANY_LUA = """
local views = {}
for i = 1, #KEYS / 2 do
  if ARGV[2] == 'XX' then
    redis.call('SET', KEYS[2 * i - 1], ARGV[i + 2], 'PX', ARGV[1], 'XX')
  else
    redis.call('SET', KEYS[2 * i - 1], ARGV[i + 2], 'PX', ARGV[1])
  end
  views[i] = KEYS[2 * i]
end
redis.call('UNLINK', unpack(views))
return #views
"""

# Users per call of _INVALIDATE_MANY_LUA at most: bounds one call's time in Redis and Lua's unpack().
_INVALIDATE_MANY_CHUNK = 500


# KEYS: tok, active, synced. ARGV: seen token ("" = none was seen), token of the entry, entry ("" = no fill),
# entry TTL ms, token TTL ms, synced TTL s, "1" when initialize inserted rows (rotate the token even when no
# fill is stored). Initialize's fill, invalidation and synced marker in one call; returns 1 when stored.
_INITIALIZED_LUA = """
local current = redis.call('GET', KEYS[1])
local unchanged
if ARGV[1] == '' then unchanged = not current else unchanged = current == ARGV[1] end
local stored = 0
if ARGV[3] ~= '' and unchanged then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  stored = 1
elseif ARGV[7] == '1' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
  redis.call('UNLINK', KEYS[2])
end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[6])
return stored
"""


# ---------------------------------------------------------------------------------------------------
# The cache


class PipelineFollowUp(Protocol):
    """Commands that ride in the pipeline of `Cache.invalidate_many`, after the invalidations, so that both
    cost one round trip (docs/events.md#flush step 5: marking event ids done after a flush)."""

    def queue(self, pipe: Any) -> None:
        """Add the commands to the pipeline."""

    async def replied(self, replies: list[Any]) -> None:
        """The replies of the queued commands, in order (errors as exception objects)."""

    async def undelivered(self, error: BaseException | None) -> None:
        """The commands were not sent (`error` None: the cache skipped Redis) or the pipeline failed as a whole."""


@dataclass(frozen=True, slots=True)
class CacheRead:
    """What one read saw. `entry` is set only when valid; `bypassed` means Redis was not consulted
    (disabled, unhealthy, journal pending or the read failed), so no fill may follow."""

    user_id: str
    token: str | None
    entry: ActiveEntry | None
    synced: bool
    bypassed: bool
    replay_generation: int


class CacheUnavailableError(Exception):
    """An operator action on the cache could not reach Redis."""


class Cache:
    """The per-process cache client: reads, conditional fills, invalidations, synced markers, probe.

    `client` None means the cache is disabled: reads return a bypassed result without counting and
    every write is a no-op. The client must return bytes (no `decode_responses`), as `open_redis`'s does.
    """

    def __init__(
        self,
        client: RedisClient | None,
        prefix: str,
        fingerprint: str,
        cache_ttl_s: int,
        synced_ttl_s: int,
        journal_max: int,
        probe_interval_ms: int,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._fingerprint = fingerprint
        self._entry_ttl_ms = cache_ttl_s * 1000
        self._token_ttl_ms = (cache_ttl_s + _TOKEN_TTL_MARGIN_S) * 1000
        self._synced_ttl_s = synced_ttl_s
        self._journal_max = journal_max
        self._probe_interval_s = probe_interval_ms / 1000
        self._healthy = client is not None
        self._journal: set[str] = set()
        self._journal_everything = False
        # Bumped each time a replay finishes; a fill whose read saw an older value is dropped (docs/cache.md#degradation-and-recovery rule 6).
        self._replay_generation = 0
        self._probe_task: asyncio.Task[None] | None = None
        self._recovery_lock = asyncio.Lock()
        self._reads = {
            (kind, result): 0
            for kind in (KIND_ACTIVE, KIND_SYNCED)
            for result in (RESULT_HIT, RESULT_MISS, RESULT_BYPASS, RESULT_ERROR)
        }
        # The labelled children, looked up once: `labels()` takes a lock and builds a key on every call.
        self._read_counters = {key: CACHE_REQUESTS.labels(*key) for key in self._reads}
        self._invalidations = {INVALIDATION_OK: 0, INVALIDATION_FAILED: 0, INVALIDATION_REPLAYED: 0}
        self._redis_errors = 0
        # A standalone server's per-request commands (read, fill, initialize, invalidate) go over one pipelined
        # connection; pipelines, SCAN and a cluster stay with redis-py.
        self._pipe = PipelinedRedis.of_client(client) if client is not None else None
        if client is not None:
            self._fill_script = client.register_script(_FILL_LUA)
            self._invalidate_script = client.register_script(_INVALIDATE_LUA)
            self._invalidate_many_script = client.register_script(_INVALIDATE_MANY_LUA)
            self._initialized_script = client.register_script(_INITIALIZED_LUA)
        REDIS_UP.set(1 if self._healthy else 0)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._client is not None

    @property
    def client(self) -> RedisClient | None:
        """The Redis client (None when the cache is disabled); de-duplication shares it."""
        return self._client

    @property
    def pipe(self) -> PipelinedRedis | None:
        """The pipelined connection (None on a cluster or with the cache disabled); de-duplication's per-call
        lookups share it. `stop` closes it."""
        return self._pipe

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def journal_pending(self) -> int:
        """Users waiting in the journal; in "everything" mode, one more than the journal can hold."""
        return self._journal_max + 1 if self._journal_everything else len(self._journal)

    def _usable(self) -> bool:
        # The journal is only non-empty while unhealthy; both are checked to keep rule 6 explicit.
        return self._healthy and not self._journal and not self._journal_everything

    def _mark_unhealthy(self, exc: BaseException, doing: str) -> None:
        self._redis_errors += 1
        if self._healthy:
            log.warning(
                "Redis failed while %s (%s: %s); cache reads bypass Redis until the probe succeeds",
                doing,
                type(exc).__name__,
                exc or "timeout",
            )
        self._healthy = False
        REDIS_UP.set(0)

    def _mark_healthy(self) -> None:
        if not self._healthy:
            log.info("Redis answers again; cache reads resume")
        self._healthy = True
        REDIS_UP.set(1)

    def _count_read(self, kind: str, result: str) -> None:
        self._reads[(kind, result)] += 1
        self._read_counters[(kind, result)].inc()

    def _count_invalidations(self, result: str, n: int = 1) -> None:
        if n:
            self._invalidations[result] += n
            CACHE_INVALIDATIONS.labels(result).inc(n)

    def _journal_add(self, user_ids: Iterable[str]) -> None:
        if self._journal_everything:
            return
        self._journal.update(user_ids)
        if len(self._journal) > self._journal_max:
            log.warning(
                "cache invalidation journal overflowed %d users; every token is rotated on recovery",
                self._journal_max,
            )
            self._journal.clear()
            self._journal_everything = True

    # -- reads and fills -----------------------------------------------------------------------------

    async def read_active(self, user_id: str, include_synced: bool) -> CacheRead:
        """One MGET of the user's token, active view and (for initialize) synced marker (docs/cache.md#entries-and-tokens, docs/rules.md#initialize)."""
        kinds = (KIND_ACTIVE, KIND_SYNCED) if include_synced else (KIND_ACTIVE,)
        generation = self._replay_generation
        bypass = CacheRead(user_id, None, None, False, True, generation)
        if self._client is None:
            return bypass
        if not self._usable():
            for kind in kinds:
                self._count_read(kind, RESULT_BYPASS)
            return bypass
        keys = [token_key(self._prefix, user_id), active_key(self._prefix, user_id)]
        if include_synced:
            keys.append(synced_key(self._prefix, user_id, self._fingerprint))
        try:
            values = await (self._pipe.execute("MGET", *keys) if self._pipe else self._client.mget(keys))
        except REDIS_FAILURES as exc:
            self._mark_unhealthy(exc, f"reading the cached view of user {user_id!r}")
            for kind in kinds:
                self._count_read(kind, RESULT_ERROR)
            return bypass
        token = values[0].decode() if isinstance(values[0], bytes) else values[0]
        entry = decode_entry(values[1]) if values[1] is not None else None
        if entry is not None and (token is None or entry.token != token or entry.fingerprint != self._fingerprint):
            entry = None
        self._count_read(KIND_ACTIVE, RESULT_HIT if entry is not None else RESULT_MISS)
        synced = include_synced and values[2] is not None
        if include_synced:
            self._count_read(KIND_SYNCED, RESULT_HIT if synced else RESULT_MISS)
        return CacheRead(user_id, token, entry, synced, False, generation)

    async def fill_active(
        self,
        user_id: str,
        read: CacheRead,
        rows: Sequence[ProgressRow],
        pre: Sequence[ProgressRow],
        init: Initialization | None = None,
    ) -> bool:
        """Store the view read from PostgreSQL after `read`, unless a write happened in between (docs/cache.md#entries-and-tokens).

        Returns True when the entry was stored.
        """
        if self._client is None or read.bypassed or not self._usable():
            return False
        if read.replay_generation != self._replay_generation:
            return False  # the read predates the last journal replay (docs/cache.md#degradation-and-recovery rule 6)
        seen = read.token
        entry_token = seen or new_token()
        entry = encode_entry(entry_token, self._fingerprint, rows, pre, init)
        try:
            stored = await self._run_script(
                self._fill_script,
                [token_key(self._prefix, user_id), active_key(self._prefix, user_id)],
                [seen or "", entry_token, entry, self._entry_ttl_ms, self._token_ttl_ms],
            )
        except REDIS_FAILURES as exc:
            self._mark_unhealthy(exc, f"filling the cached view of user {user_id!r}")
            return False
        return bool(stored)

    async def record_initialize(
        self,
        user_id: str,
        read: CacheRead,
        rows: Sequence[ProgressRow],
        pre: Sequence[ProgressRow],
        inserted: bool,
        init: Initialization | None = None,
    ) -> bool:
        """Initialize's slow path after its statement, in one script call: the conditional fill of the view it
        read (as `fill_active` after `read`), the invalidation when it `inserted` rows (a fresh token, also for
        the filled entry), and the synced marker (docs/rules.md#initialize, docs/cache.md#entries-and-tokens).

        Never raises; returns True when the entry was stored. With Redis unhealthy an insert is journaled.
        """
        if self._client is None:
            return False
        if not self._healthy:
            if inserted:
                self._journal_add((user_id,))
                self._count_invalidations(INVALIDATION_FAILED)
            return False
        fill = not read.bypassed and self._usable() and read.replay_generation == self._replay_generation
        seen = "" if read.bypassed else (read.token or "")
        entry_token = new_token() if inserted or not seen else seen
        entry = encode_entry(entry_token, self._fingerprint, rows, pre, init) if fill else b""
        try:
            stored = await self._run_script(
                self._initialized_script,
                [
                    token_key(self._prefix, user_id),
                    active_key(self._prefix, user_id),
                    synced_key(self._prefix, user_id, self._fingerprint),
                ],
                [
                    seen,
                    entry_token,
                    entry,
                    self._entry_ttl_ms,
                    self._token_ttl_ms,
                    self._synced_ttl_s,
                    "1" if inserted else "0",
                ],
            )
        except REDIS_FAILURES as exc:
            self._mark_unhealthy(exc, f"recording the initialize of user {user_id!r}")
            if inserted:
                self._journal_add((user_id,))
                self._count_invalidations(INVALIDATION_FAILED)
            return False
        if inserted:
            self._count_invalidations(INVALIDATION_OK)
        return bool(stored)

    async def _run_script(self, script: Any, keys: list[str], args: list[Arg]) -> Any:
        """A registered script on the pipelined connection when there is one, else through redis-py."""
        if self._pipe is not None:
            return await self._pipe.script(script.sha, script.script, keys, args)
        return await script(keys=keys, args=args)

    # -- invalidation ---------------------------------------------------------------------------------

    def _invalidation_calls(self, users: Sequence[str]) -> list[Sequence[str]]:
        """The users of each invalidation script call: up to _INVALIDATE_MANY_CHUNK per call on a standalone
        server, one per call on a cluster (a script's keys must share a hash slot)."""
        if isinstance(self._client, RedisCluster):
            return [[user_id] for user_id in users]
        return [users[start : start + _INVALIDATE_MANY_CHUNK] for start in range(0, len(users), _INVALIDATE_MANY_CHUNK)]

    def _invalidate_call(self, users: Sequence[str], client: Any, only_existing: bool = False) -> Any:
        flag = "XX" if only_existing else ""
        if isinstance(self._client, RedisCluster):
            (user_id,) = users
            keys = [token_key(self._prefix, user_id), active_key(self._prefix, user_id)]
            return self._invalidate_script(keys=keys, args=[new_token(), self._token_ttl_ms, flag], client=client)
        keys = [
            key for user_id in users for key in (token_key(self._prefix, user_id), active_key(self._prefix, user_id))
        ]
        tokens = secrets.token_hex(16 * len(users))  # one fresh 128-bit token per user, as new_token() makes
        args: list[str | int] = [self._token_ttl_ms, flag, *(tokens[32 * i : 32 * i + 32] for i in range(len(users)))]
        if client is not self._client:
            # In a standalone pipeline a Script object makes redis-py send SCRIPT EXISTS first, one more round
            # trip per pipeline; the callers handle a NOSCRIPT reply instead.
            return client.evalsha(self._invalidate_many_script.sha, len(keys), *keys, *args)
        return self._invalidate_many_script(keys=keys, args=args, client=client)  # loads the script if missing

    async def invalidate(self, user_id: str) -> str | None:
        """Rotate the user's token and unlink the view (docs/cache.md#entries-and-tokens); returns the new token.

        Never raises: when Redis is unhealthy or fails, the user goes into the journal and None is
        returned.
        """
        if self._client is None:
            return None
        if not self._healthy:
            self._journal_add((user_id,))
            self._count_invalidations(INVALIDATION_FAILED)
            return None
        token = new_token()
        try:
            await self._run_script(
                self._invalidate_script,
                [token_key(self._prefix, user_id), active_key(self._prefix, user_id)],
                [token, self._token_ttl_ms, ""],
            )
        except REDIS_FAILURES as exc:
            self._mark_unhealthy(exc, f"invalidating the cached view of user {user_id!r}")
            self._journal_add((user_id,))
            self._count_invalidations(INVALIDATION_FAILED)
            return None
        self._count_invalidations(INVALIDATION_OK)
        return token

    async def invalidate_many(self, user_ids: Iterable[str], follow_up: PipelineFollowUp | None = None) -> None:
        """Invalidate several users in one pipeline: one script call for up to 500 users on a standalone server, one
        per user on a cluster (docs/events.md#cache-invalidation-after-commit),
        with `follow_up`'s commands at the end of the same pipeline.

        Never raises; undelivered invalidations go into the journal.
        """
        users = list(dict.fromkeys(user_ids))
        if self._client is None or (not users and follow_up is None):
            if follow_up is not None:
                await follow_up.undelivered(None)
            return
        if not self._healthy:
            self._journal_add(users)
            self._count_invalidations(INVALIDATION_FAILED, len(users))
            if follow_up is not None:
                await follow_up.undelivered(None)
            return
        try:
            failed, replies = await self._pipelined_invalidations(users, follow_up=follow_up)
        except REDIS_FAILURES as exc:
            self._mark_unhealthy(exc, f"invalidating the cached views of {len(users)} users")
            self._journal_add(users)
            self._count_invalidations(INVALIDATION_FAILED, len(users))
            if follow_up is not None:
                await follow_up.undelivered(exc)
            return
        if failed:
            self._journal_add(failed)
        self._count_invalidations(INVALIDATION_OK, len(users) - len(failed))
        self._count_invalidations(INVALIDATION_FAILED, len(failed))
        if follow_up is not None:
            await follow_up.replied(replies)

    async def _pipelined_invalidations(
        self, users: Sequence[str], only_existing: bool = False, follow_up: PipelineFollowUp | None = None
    ) -> tuple[list[str], list[Any]]:
        """Run the invalidation script for the users in one pipeline (several users per call on a standalone
        server, one per call on a cluster), then `follow_up`'s commands; returns the users it failed for and
        the follow-up's replies.

        Raises on a connection-level failure (nothing can be assumed delivered).
        """
        assert self._client is not None
        calls = self._invalidation_calls(users)
        if self._pipe is not None:
            # The pipelined connection: no redis-py pipeline (its Python packing of every key and token).
            batch = CommandBatch()
            for call in calls:
                self._invalidate_call(call, batch, only_existing)
            if follow_up is not None:
                follow_up.queue(batch)
            results = await self._pipe.execute_many(batch.commands)
        else:
            async with self._client.pipeline(transaction=False) as pipe:
                for call in calls:
                    await self._invalidate_call(call, pipe, only_existing)
                if follow_up is not None:
                    follow_up.queue(pipe)
                results = await pipe.execute(raise_on_error=False)
        failed: list[str] = []
        for call, result in zip(calls, results, strict=False):
            if isinstance(result, NoScriptError):
                # A pipeline routed to a node that lacks the script: one direct call loads it.
                await self._invalidate_call(call, self._client, only_existing)
            elif isinstance(result, BaseException):
                self._mark_unhealthy(result, f"invalidating the cached views of {len(call)} users")
                failed.extend(call)
        return failed, results[len(calls) :]

    # -- synced markers ------------------------------------------------------------------------------

    async def set_synced(self, user_id: str) -> bool:
        """Mark the user as having received this catalog's default goals (docs/rules.md#initialize); False when not stored."""
        if self._client is None or not self._healthy:
            return False
        try:
            await self._client.set(synced_key(self._prefix, user_id, self._fingerprint), b"1", ex=self._synced_ttl_s)
        except REDIS_FAILURES as exc:
            self._mark_unhealthy(exc, f"setting the synced marker of user {user_id!r}")
            return False
        return True

    async def delete_synced(self, user_id: str) -> int:
        """Unlink every synced marker of the user, whatever its fingerprint (`users delete`); returns
        how many were removed. Raises CacheUnavailableError when Redis fails."""
        if self._client is None:
            return 0
        pattern = scan_pattern_for_user(self._prefix, user_id, "synced:*")
        try:
            keys = [key async for key in self._client.scan_iter(match=pattern, count=_SCAN_COUNT)]
            return await self._client.unlink(*keys) if keys else 0
        except REDIS_FAILURES as exc:
            self._mark_unhealthy(exc, f"deleting the synced markers of user {user_id!r}")
            raise CacheUnavailableError(
                f"could not delete the synced markers of user {user_id!r}: Redis failed ({type(exc).__name__})"
            ) from exc

    # -- probe and recovery (docs/cache.md#degradation-and-recovery) --------------------------------------------------------------------

    def start(self) -> None:
        """Start the background probe (no-op for a disabled cache or when already running)."""
        if self._client is not None and self._probe_task is None:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop(), name="redis-cache-probe")

    async def stop(self) -> None:
        """Stop the background probe and close the pipelined connection."""
        if self._pipe is not None:
            self._pipe.close()
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            await self.probe()

    async def probe(self) -> bool:
        """PING Redis once; when unhealthy and it answers, replay the journal and resume reads.
        Returns whether the cache is healthy afterwards."""
        if self._client is None:
            return False
        async with self._recovery_lock:
            try:
                await ping(self._client)
                if not self._healthy:
                    await self._replay_journal()
                    self._mark_healthy()
            except REDIS_FAILURES as exc:
                self._mark_unhealthy(exc, "probing Redis or replaying the invalidation journal")
        return self._healthy

    async def _replay_journal(self) -> None:
        """Deliver every journaled invalidation; entries journaled meanwhile are replayed too."""
        while self._journal or self._journal_everything:
            users, everything = list(self._journal), self._journal_everything
            self._journal, self._journal_everything = set(), False
            try:
                replayed = await self._rotate_every_token() if everything else 0
                if users:
                    failed, _ = await self._pipelined_invalidations(users)
                    if failed:
                        raise RedisError(f"{len(failed)} invalidations failed during the replay")
                    replayed += len(users)
            except REDIS_FAILURES:
                self._journal_add(users)
                self._journal_everything = self._journal_everything or everything
                raise
            self._count_invalidations(INVALIDATION_REPLAYED, replayed)
        self._replay_generation += 1

    async def _rotate_every_token(self) -> int:
        """ "Everything" replay: SCAN `<p>:*:tok` on every primary, rotate each token that still exists
        (`SET … XX`) and unlink its view. Returns how many users were invalidated."""
        assert self._client is not None
        key_name = key_name_pattern(self._prefix)
        batch: list[str] = []
        rotated = 0
        async for key in self._client.scan_iter(match=f"{escape_glob(self._prefix)}:*:tok", count=_SCAN_COUNT):
            match = key_name.match(key)
            if match is None or match.group(2) != b"tok":
                continue
            batch.append(match.group(1).decode())
            if len(batch) >= _REPLAY_BATCH:
                rotated += await self._rotate_batch(batch)
                batch = []
        if batch:
            rotated += await self._rotate_batch(batch)
        return rotated

    async def _rotate_batch(self, users: list[str]) -> int:
        failed, _ = await self._pipelined_invalidations(users, only_existing=True)
        if failed:
            raise RedisError(f"{len(failed)} token rotations failed during the replay")
        return len(users)

    # -- admin ----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The body of `GET /admin/cache` (docs/http-api.md#admin-and-metrics)."""
        by_kind = {
            kind: {"hits": self._reads[(kind, RESULT_HIT)], "misses": self._reads[(kind, RESULT_MISS)]}
            for kind in (KIND_ACTIVE, KIND_SYNCED)
        }
        hits = sum(k["hits"] for k in by_kind.values())
        misses = sum(k["misses"] for k in by_kind.values())
        return {
            "enabled": self.enabled,
            "healthy": self._healthy,
            "bypass": self.enabled and not self._usable(),
            "journal_pending": self.journal_pending,
            "hits": hits,
            "misses": misses,
            "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
            "bypassed": sum(n for (_, result), n in self._reads.items() if result == RESULT_BYPASS),
            "errors": sum(n for (_, result), n in self._reads.items() if result == RESULT_ERROR),
            "invalidations": self._invalidations[INVALIDATION_OK],
            "invalidation_failures": self._invalidations[INVALIDATION_FAILED],
            "by_kind": by_kind,
        }

    def redis_pool_stats(self) -> dict[str, Any]:
        """The `redis` part of `GET /admin/pool` (docs/http-api.md#admin-and-metrics); zeros for a disabled cache.

        `errors` counts Redis operations of this cache that failed; `created` counts connections opened, the
        pipelined connection of a standalone server's per-request commands included (a pool not made by
        `open_redis` reports only that one; a cluster client, summed over its nodes, the connections it holds).
        """
        if self._client is None:
            return {"max_connections": 0, "in_use": 0, "idle": 0, "created": 0, "errors": 0, "healthy": False}
        if isinstance(self._client, RedisCluster):
            nodes = self._client.get_nodes()
            idle = sum(len(node._free) for node in nodes)
            held = sum(len(node._connections) for node in nodes)
            limit, in_use, created = sum(node.max_connections for node in nodes), held - idle, held
        else:
            pool = self._client.connection_pool
            limit = pool.max_connections
            if isinstance(pool, CountingConnectionPool):
                created, in_use = pool.connections_created, pool.connections_in_use
            else:
                created = in_use = 0
            idle = created - in_use
        if self._pipe is not None:  # the pipelined connection counts as one more, busy while a reply is due
            created += self._pipe.connections_made
            busy = self._pipe.pending > 0
            in_use += busy
            idle += self._pipe.connected and not busy
        return {
            "max_connections": limit,
            "in_use": in_use,
            "idle": idle,
            "created": created,
            "errors": self._redis_errors,
            "healthy": self._healthy,
        }

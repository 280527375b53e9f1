"""Read-only data access for the cache commands (docs/cache.md#keys, docs/diagnostics.md#redis): the INFO figures operators need, throttled SCANs grouped by key kind, sampled TTLs and `MEMORY USAGE`, and one
user's keys decoded. Presentation lives in `challengectl/commands/cache.py`.

Keys are only ever found with `SCAN … MATCH … COUNT` (never `KEYS`, docs/cache.md#redis-cluster).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis_asyncio

from challengectl.errors import EXIT_UNAVAILABLE, CliError
from challengectl.ratios import hit_ratio
from service.config.settings import mask_url_password
from service.domain.rules import Initialization
from service.storage.cache import (
    REDIS_FAILURES,
    active_key,
    decode_entry,
    escape_glob,
    key_name_pattern,
    scan_pattern_for_user,
    token_key,
)

SCAN_COUNT = 1000
KINDS = ("active", "tok", "synced", "evt", "other")
# Sampled TTLs fall into these buckets: (label, upper bound in seconds, exclusive).
TTL_BUCKETS = (("< 1m", 60), ("1m-5m", 300), ("5m-1h", 3600), ("1h-24h", 86400), (">= 24h", float("inf")))
NO_EXPIRY = "no expiry"
EVENT_STATES = {b"p": "pending", b"d": "done"}


@asynccontextmanager
async def redis_failures_as_cli_errors(url: str, doing: str) -> AsyncIterator[None]:
    """Turn a Redis failure inside the block into CliError exit 5 naming the server (no password)."""
    try:
        yield
    except REDIS_FAILURES as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(
            f"Redis at {mask_url_password(url)} failed while {doing}: {reason}",
            "check --redis-url / REDIS_URL, or run 'challengectl doctor'",
            EXIT_UNAVAILABLE,
        ) from None


# ---------------------------------------------------------------------------------------------------
# INFO


def server_summary(info: dict[str, Any]) -> dict[str, Any]:
    """The docs/diagnostics.md#redis figures of one `INFO` reply (server, stats, memory, clients, keyspace), snake_case."""
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    keyspace = {
        name: {"keys": value.get("keys", 0), "expires": value.get("expires", 0)}
        for name, value in info.items()
        if re.fullmatch(r"db\d+", name) and isinstance(value, dict)
    }
    return {
        "redis_version": info.get("redis_version"),
        "uptime_s": info.get("uptime_in_seconds"),
        "cluster_enabled": bool(info.get("cluster_enabled", 0)),
        "keyspace_hits": hits,
        "keyspace_misses": misses,
        "hit_ratio": hit_ratio(hits, misses),
        "evicted_keys": info.get("evicted_keys", 0),
        "expired_keys": info.get("expired_keys", 0),
        "ops_per_sec": info.get("instantaneous_ops_per_sec", 0),
        "commands_processed": info.get("total_commands_processed", 0),
        "rejected_connections": info.get("rejected_connections", 0),
        "used_memory_bytes": info.get("used_memory", 0),
        "used_memory_peak_bytes": info.get("used_memory_peak", 0),
        "maxmemory_bytes": info.get("maxmemory", 0),
        "maxmemory_policy": info.get("maxmemory_policy"),
        "mem_fragmentation_ratio": info.get("mem_fragmentation_ratio"),
        "connected_clients": info.get("connected_clients", 0),
        "blocked_clients": info.get("blocked_clients", 0),
        "keyspace": keyspace,
    }


async def read_server_summary(client: redis_asyncio.Redis) -> dict[str, Any]:
    """One `INFO` (default sections) summarised by `server_summary`."""
    return server_summary(await client.info())


STATS_SUMMED = ("keyspace_hits", "keyspace_misses", "total_commands_processed")


async def stats_of_every_primary(client: Any) -> dict[str, int]:
    """The `INFO stats` counters of `STATS_SUMMED`, summed over every primary of a Redis Cluster (one server's
    otherwise)."""
    from redis.asyncio.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        replies = list((await client.info("stats", target_nodes=RedisCluster.PRIMARIES)).values())
    else:
        replies = [await client.info("stats")]
    return {name: sum(int(reply.get(name, 0)) for reply in replies) for name in STATS_SUMMED}


# ---------------------------------------------------------------------------------------------------
# Key names


@dataclass(frozen=True)
class CacheKey:
    """One key in the cache's layout (docs/cache.md#keys): its name (`raw` as Redis holds it), kind, user, and the
    fingerprint or event id after the kind. Keys outside the layout have kind `other` and no user."""

    raw: bytes
    name: str
    kind: str
    user_id: str | None = None
    detail: str | None = None


class KeyLayout:
    """Classifies key names of one prefix: `<p>:{<user>}:active|tok|synced:<fp>|evt:<id>`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._pattern = key_name_pattern(prefix)

    def all_keys_pattern(self) -> str:
        """SCAN MATCH pattern of every key under the prefix."""
        return f"{escape_glob(self.prefix)}:*"

    def classify(self, raw: bytes) -> CacheKey:
        """The kind and user of one key name as SCAN returned it."""
        name = raw.decode("utf-8", "backslashreplace")
        match = self._pattern.match(raw)
        if match is None:
            return CacheKey(raw, name, "other")
        user = match.group(1).decode("utf-8", "backslashreplace")
        if match.group(2):
            return CacheKey(raw, name, match.group(2).decode(), user)
        return CacheKey(raw, name, match.group(3).decode(), user, match.group(4).decode("utf-8", "backslashreplace"))


async def scan_batches(
    client: Any,
    pattern: str,
    *,
    sleep_s: float = 0.0,
    limit: int | None = None,
    count: int = SCAN_COUNT,
) -> AsyncIterator[list[bytes]]:
    """The keys matching `pattern`, one SCAN reply at a time (every primary of a Redis Cluster in turn),
    pausing `sleep_s` between calls so a busy server is not hogged; stops after `limit` keys when given."""
    from redis.asyncio.cluster import RedisCluster

    nodes: list[Any] = [None]
    if isinstance(client, RedisCluster):
        await client.initialize()  # the nodes are known only once the client has connected
        nodes = client.get_primaries()
    seen = 0
    for node in nodes:
        on_node = {} if node is None else {"target_nodes": node}
        cursor: Any = 0
        while True:
            cursor, keys = await client.scan(cursor=cursor, match=pattern, count=count, **on_node)
            if isinstance(cursor, dict):  # a cluster client answers {node name: cursor}
                cursor = next(iter(cursor.values()))
            if limit is not None and seen + len(keys) > limit:
                keys = keys[: limit - seen]
            seen += len(keys)
            if keys:
                yield [key if isinstance(key, bytes) else key.encode() for key in keys]
            if limit is not None and seen >= limit:
                return
            if int(cursor) == 0:
                break
            if sleep_s > 0:
                await asyncio.sleep(sleep_s)


# ---------------------------------------------------------------------------------------------------
# Inventory


@dataclass
class Inventory:
    """What a SCAN found: counts by kind over every key scanned (`complete` when the SCAN finished),
    and over the first `sampled` keys their TTL buckets, event states and largest sizes."""

    pattern: str
    scanned: int
    complete: bool
    by_kind: dict[str, int]
    sampled: int
    ttl_buckets: dict[str, int]
    event_states: dict[str, int]
    largest: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "scanned": self.scanned,
            "complete": self.complete,
            "by_kind": self.by_kind,
            "sampled": self.sampled,
            "ttl_distribution": self.ttl_buckets,
            "evt_states_sampled": self.event_states,
            "largest": self.largest,
        }


async def take_inventory(
    client: redis_asyncio.Redis,
    layout: KeyLayout,
    pattern: str,
    *,
    sample: int,
    top: int,
    sleep_s: float,
    limit: int | None = None,
) -> Inventory:
    """Scan `pattern` (at most `limit` keys), count keys by kind, and inspect the first `sample` of them:
    PTTL, `MEMORY USAGE` (only when `top` > 0) and, for de-duplication markers, their state."""
    by_kind = Counter({kind: 0 for kind in KINDS})
    ttl_buckets = Counter({label: 0 for label in (NO_EXPIRY, *(label for label, _ in TTL_BUCKETS))})
    event_states: Counter[str] = Counter({"pending": 0, "done": 0})
    sized: list[dict[str, Any]] = []
    scanned = sampled = 0
    complete = True
    async for batch in scan_batches(client, pattern, sleep_s=sleep_s, limit=limit):
        keys = [layout.classify(raw) for raw in batch]
        by_kind.update(key.kind for key in keys)
        scanned += len(keys)
        to_sample = keys[: max(0, sample - sampled)]
        if to_sample:
            sampled += len(to_sample)
            await _sample_keys(client, to_sample, top > 0, ttl_buckets, event_states, sized)
    if limit is not None and scanned >= limit:
        complete = False
    largest = sorted(sized, key=lambda item: item["bytes"] or 0, reverse=True)[:top]
    return Inventory(pattern, scanned, complete, dict(by_kind), sampled, dict(ttl_buckets), dict(event_states), largest)


async def _sample_keys(
    client: redis_asyncio.Redis,
    keys: list[CacheKey],
    with_memory: bool,
    ttl_buckets: Counter[str],
    event_states: Counter[str],
    sized: list[dict[str, Any]],
) -> None:
    """One pipeline per batch: PTTL (and MEMORY USAGE) of each key, GET of each event marker."""
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(key.raw)
            if with_memory:
                pipe.memory_usage(key.raw)
            if key.kind == "evt":
                pipe.get(key.raw)
        replies = iter(await pipe.execute())
    for key in keys:
        ttl_ms = next(replies)
        if ttl_ms != -2:  # gone since the SCAN
            ttl_buckets[ttl_bucket(ttl_ms)] += 1
        if with_memory:
            sized.append(
                {
                    "key": key.name,
                    "kind": key.kind,
                    "bytes": next(replies),
                    "ttl_s": round(ttl_ms / 1000, 1) if ttl_ms >= 0 else None,
                }
            )
        if key.kind == "evt":
            state = EVENT_STATES.get(next(replies) or b"")
            if state:
                event_states[state] += 1


def ttl_bucket(ttl_ms: int) -> str:
    """The TTL bucket of a PTTL reply of an existing key (-1: no expiry)."""
    if ttl_ms < 0:
        return NO_EXPIRY
    return next(label for label, bound in TTL_BUCKETS if ttl_ms / 1000 < bound)


# ---------------------------------------------------------------------------------------------------
# One user


async def user_cache_state(
    client: redis_asyncio.Redis, layout: KeyLayout, user_id: str, fingerprint: str | None
) -> dict[str, Any]:
    """Everything the cache holds for one user (docs/diagnostics.md#redis `cache keys --user`): the keys with their TTLs, the
    decoded active entry (rows, token match, fingerprint match), synced markers (current or older
    fingerprint) and de-duplication markers by state. `fingerprint` None: the catalog is unknown."""
    prefix = layout.prefix
    keys: list[CacheKey] = []
    async for batch in scan_batches(client, scan_pattern_for_user(prefix, user_id)):
        keys.extend(layout.classify(raw) for raw in batch)
    listed = [key for key in keys if key.kind != "evt"]
    events = [key for key in keys if key.kind == "evt"]
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(token_key(prefix, user_id))  # GETs, not MGET: a cluster pipeline refuses multi-key commands
        pipe.get(active_key(prefix, user_id))
        for key in listed:
            pipe.pttl(key.raw)
        for key in events:
            pipe.get(key.raw)
        replies = await pipe.execute()
    token_raw, entry_raw = replies[:2]
    ttls = replies[2 : 2 + len(listed)]
    event_values = replies[2 + len(listed) :]
    token = token_raw.decode() if token_raw is not None else None
    event_counts = Counter(EVENT_STATES.get(value or b"", "gone") for value in event_values)
    return {
        "user_id": user_id,
        "keys": [
            {"key": key.name, "kind": key.kind, "ttl_s": round(ttl / 1000, 1) if ttl >= 0 else None}
            for key, ttl in zip(listed, ttls, strict=True)
            if ttl != -2
        ],
        "token": token,
        "entry": describe_entry(entry_raw, token, fingerprint),
        "synced": [
            {"fingerprint": key.detail, "current": key.detail == fingerprint if fingerprint else None}
            for key in listed
            if key.kind == "synced"
        ],
        "evt": {"pending": event_counts["pending"], "done": event_counts["done"]},
    }


def describe_entry(raw: bytes | None, token: str | None, fingerprint: str | None) -> dict[str, Any] | None:
    """A decoded active entry: whether it parses, matches the token and the catalog, and its rows."""
    if raw is None:
        return None
    entry = decode_entry(raw)
    if entry is None:
        return {"decodes": False, "valid": False, "bytes": len(raw)}
    token_matches = token is not None and entry.token == token
    fingerprint_matches = entry.fingerprint == fingerprint if fingerprint else None
    return {
        "decodes": True,
        "valid": token_matches and fingerprint_matches is not False,
        "token_matches": token_matches,
        "fingerprint": entry.fingerprint,
        "fingerprint_matches": fingerprint_matches,
        "bytes": len(raw),
        "rows": _rows(entry.rows),
        "pre": _rows(entry.pre),
        "implied": _initialization(entry.init),
    }


def _initialization(init: Initialization | None) -> dict[str, Any] | None:
    """What implies the entry's default rows (docs/cache.md#entries-and-tokens), or None."""
    if init is None:
        return None
    return {"initialized_at": init.initialized_at, "namespace": init.namespace, "hidden": list(init.hidden)}


def _rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    return [
        {
            "goal_id": row.goal_id,
            "challenge_id": row.challenge_id,
            "progress": row.progress,
            "status": row.status,
            "is_active": row.is_active,
            "updated_at": row.updated_at,
        }
        for row in rows
    ]

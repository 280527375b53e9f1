"""The Redis cache (docs/cache.md): codec, keys, read/fill/invalidate protocol, synced markers, degradation.

Normal cases run against the shared Redis (`redis_url`, keys under a per-run prefix). Outages use a
private redis-server started by this module on a free loopback port, stopped (SHUTDOWN SAVE, so the
data survives like it does on a real restart) or frozen (SIGSTOP: every command times out) and
brought back on the same port.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import redis
from prometheus_client import REGISTRY
from redis.crc import key_slot

from service.domain.rules import PROGRESS_ROW_COLUMNS, Initialization, ProgressRow, implied_row
from service.storage.cache import (
    Cache,
    active_key,
    decode_entry,
    encode_entry,
    escape_glob,
    event_key,
    open_redis,
    scan_pattern_for_user,
    synced_key,
    token_key,
)
from tests.servers import PrivateRedis
from tests.support.players import MAIN_CATALOG

FP = "fp-one"
CACHE_TTL_S = 300
TOKEN_TTL_MS = (CACHE_TTL_S + 60) * 1000
T0 = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def make_row(user_id: str, goal_id: str, **overrides: object) -> ProgressRow:
    values: dict[str, object] = {
        "user_id": user_id,
        "goal_id": goal_id,
        "challenge_id": "ch-1",
        "namespace": "ns",
        "progress": 3,
        "status": "in_progress",
        "completed_at": None,
        "claimed_at": None,
        "created_at": T0,
        "updated_at": T0 + timedelta(seconds=1),
        "is_active": True,
        "assigned_at": T0,
        "expires_at": None,
        "baseline_value": None,
    }
    values.update(overrides)
    return ProgressRow.from_mapping(values)


def unique_user(label: str = "u") -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_cache(client: redis.asyncio.Redis | None, prefix: str, fingerprint: str = FP, **overrides: int) -> Cache:
    settings = {"cache_ttl_s": CACHE_TTL_S, "synced_ttl_s": 3600, "journal_max": 100, "probe_interval_ms": 50}
    settings.update(overrides)
    return Cache(client, prefix, fingerprint, **settings)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = open_redis(redis_url, max_connections=8, timeout_ms=2000)
    yield client
    await client.aclose()


@pytest.fixture
async def private_client(private_redis: PrivateRedis) -> AsyncIterator[redis.asyncio.Redis]:
    client = open_redis(private_redis.url, max_connections=8, timeout_ms=200)
    yield client
    await client.aclose()


async def wait_until_healthy(cache: Cache) -> None:
    deadline = time.monotonic() + 10
    while not cache.stats()["healthy"]:
        assert time.monotonic() < deadline, "the probe did not detect that Redis is back"
        await asyncio.sleep(0.02)


# --- codec and keys ------------------------------------------------------------------------------


def test_codec_round_trip_keeps_rows_none_timestamps_and_microseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    rows = [
        make_row("u1", "g1"),
        make_row(
            "u1",
            "g2",
            status="completed",
            completed_at=T0.replace(microsecond=0),
            progress=10,
            expires_at=datetime(2025, 3, 5, 2, 0, tzinfo=plus_two),
            baseline_value=-4,
        ),
    ]
    pre = [make_row("u1", "g0", status="claimed", claimed_at=T0, is_active=False, assigned_at=None)]

    raw = encode_entry("tok-1", FP, rows, pre)
    document = json.loads(raw)
    entry = decode_entry(raw)

    assert b" " not in raw  # compact
    assert set(document) == {"v", "tok", "fp", "rows", "pre", "init"} and document["v"] == 2
    assert document["init"] is None
    assert list(document["rows"][0]) == list(PROGRESS_ROW_COLUMNS)
    assert document["rows"][0]["created_at"] == "2025-03-04T05:06:07.890123Z"
    assert document["rows"][1]["completed_at"] == "2025-03-04T05:06:07.000000Z"
    assert document["rows"][1]["expires_at"] == "2025-03-05T00:00:00.000000Z"  # normalised to UTC
    assert document["rows"][0]["completed_at"] is None
    assert entry is not None
    assert (entry.token, entry.fingerprint) == ("tok-1", FP)
    assert entry.rows == rows and entry.pre == pre
    assert entry.rows[1].expires_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v":2}',
        b'{"v":1,"tok":"t","fp":"f","rows":[],"pre":[]}',
        b'{"v":3,"tok":"t","fp":"f","rows":[],"pre":[],"init":null}',
        b'{"v":2,"tok":"t","fp":"f","rows":[{"goal_id":"g"}],"pre":[]}',
        b'{"v":2,"tok":"t","fp":"f","rows":[],"pre":[],"init":{"namespace":"n"}}',
    ],
)
def test_decode_entry_rejects_what_is_not_a_version_2_entry(raw: bytes) -> None:
    assert decode_entry(raw) is None


def test_codec_keeps_the_initialization_and_builds_the_implied_rows() -> None:
    """A v2 entry holds real rows and the initialization; the implied rows are the defaults missing from it."""
    init = Initialization(T0, "ns", ("c1-login",))
    real = make_row("u1", "c2-a")
    entry = decode_entry(encode_entry("tok-1", FP, [real], [], init))
    assert entry is not None and entry.init == init and entry.rows == [real]
    assert entry.active_rows("u1", MAIN_CATALOG.default_goals) == [
        real,
        implied_row("u1", MAIN_CATALOG.goals_by_id["c1-daily"], init),
    ]
    built = entry.active_rows("u1", MAIN_CATALOG.default_goals)[1]
    assert (built.namespace, built.assigned_at, built.is_active, built.status) == ("ns", T0, True, "not_started")
    assert built.expires_at == datetime(T0.year, T0.month, T0.day, tzinfo=UTC) + timedelta(days=1)
    no_init = decode_entry(encode_entry("tok-1", FP, [real], []))
    assert no_init is not None and no_init.init is None
    assert no_init.active_rows("u1", MAIN_CATALOG.default_goals) == [real]


def test_scan_pattern_escapes_glob_characters_of_user_and_prefix() -> None:
    assert escape_glob(r"a*b?c[d]e\f") == r"a\*b\?c\[d\]e\\f"
    assert scan_pattern_for_user("p?", "u*[1]", "synced:*") == r"p\?:{u\*\[1\]}:synced:*"


def test_every_key_of_a_user_hashes_to_one_cluster_slot() -> None:
    for user in ["u1", "player:42", "a*b?[c]\\", "ünïcödé", "x" * 200]:
        keys = [
            token_key("ch", user),
            active_key("ch", user),
            synced_key("ch", user, "fp1"),
            synced_key("ch", user, "other"),
            event_key("ch", user, str(uuid.uuid4())),
        ]
        assert all(f"{{{user}}}" in key for key in keys)
        assert {key_slot(key.encode()) for key in keys} == {key_slot(user.encode())}


# --- protocol against the shared Redis ------------------------------------------------------------


async def test_read_miss_then_fill_then_read_hit(client: redis.asyncio.Redis, redis_prefix: str) -> None:
    cache = make_cache(client, redis_prefix)
    user = unique_user()
    rows, pre = [make_row(user, "g1"), make_row(user, "g2")], [make_row(user, "g0", is_active=False)]

    first = await cache.read_active(user, include_synced=False)
    assert (first.entry, first.token, first.bypassed) == (None, None, False)
    assert await cache.fill_active(user, first, rows, pre)
    second = await cache.read_active(user, include_synced=False)

    assert second.entry is not None and second.entry.rows == rows and second.entry.pre == pre
    stats = cache.stats()
    assert stats["by_kind"]["active"] == {"hits": 1, "misses": 1}
    assert (stats["hits"], stats["misses"], stats["hit_ratio"]) == (1, 1, 0.5)


async def test_first_fill_without_token_creates_one(client: redis.asyncio.Redis, redis_prefix: str) -> None:
    cache = make_cache(client, redis_prefix)
    user = unique_user()
    read = await cache.read_active(user, include_synced=False)

    assert await cache.fill_active(user, read, [make_row(user, "g1")], [])

    token = await client.get(token_key(redis_prefix, user))
    assert token is not None and len(token) == 32
    assert decode_entry(await client.get(active_key(redis_prefix, user))).token == token.decode()
    assert 0 < await client.pttl(active_key(redis_prefix, user)) <= CACHE_TTL_S * 1000
    assert CACHE_TTL_S * 1000 < await client.pttl(token_key(redis_prefix, user)) <= TOKEN_TTL_MS


async def test_fill_extends_a_short_lived_token(client: redis.asyncio.Redis, redis_prefix: str) -> None:
    cache = make_cache(client, redis_prefix)
    user = unique_user()
    await client.set(token_key(redis_prefix, user), "feed" * 8, px=5000)
    read = await cache.read_active(user, include_synced=False)

    assert await cache.fill_active(user, read, [make_row(user, "g1")], [])

    assert await client.pttl(token_key(redis_prefix, user)) > CACHE_TTL_S * 1000


async def test_ch1_invalidate_rotates_token_and_next_read_misses(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    cache = make_cache(client, redis_prefix)
    user = unique_user()
    read = await cache.read_active(user, include_synced=False)
    await cache.fill_active(user, read, [make_row(user, "g1")], [])
    old_token = (await cache.read_active(user, include_synced=False)).token
    ok_before = sample("challenge_cache_invalidations_total", result="ok")

    new_token = await cache.invalidate(user)

    assert new_token is not None and new_token != old_token
    assert (await client.get(token_key(redis_prefix, user))).decode() == new_token
    assert await client.exists(active_key(redis_prefix, user)) == 0
    assert CACHE_TTL_S * 1000 < await client.pttl(token_key(redis_prefix, user)) <= TOKEN_TTL_MS
    after = await cache.read_active(user, include_synced=False)
    assert after.entry is None and after.token == new_token
    assert cache.stats()["invalidations"] == 1
    assert sample("challenge_cache_invalidations_total", result="ok") == ok_before + 1


async def test_ch1_an_entry_under_a_replaced_token_is_not_valid(client: redis.asyncio.Redis, redis_prefix: str) -> None:
    """Even if an old entry survives (e.g. written by a late fill elsewhere), the token decides."""
    cache = make_cache(client, redis_prefix)
    user = unique_user()
    read = await cache.read_active(user, include_synced=False)
    await cache.fill_active(user, read, [make_row(user, "g1")], [])
    stale = await client.get(active_key(redis_prefix, user))

    await cache.invalidate(user)
    await client.set(active_key(redis_prefix, user), stale, ex=60)

    assert (await cache.read_active(user, include_synced=False)).entry is None


async def test_ch2_fill_whose_read_preceded_a_write_stores_nothing(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    reader = make_cache(client, redis_prefix)
    writer = make_cache(client, redis_prefix)  # another process
    user = unique_user()
    seeded = await reader.read_active(user, include_synced=False)
    await reader.fill_active(user, seeded, [make_row(user, "g1", progress=1)], [])
    await reader.invalidate(user)  # the view is gone, the token exists

    read_before_write = await reader.read_active(user, include_synced=False)
    await writer.invalidate(user)  # a write commits between the reader's MGET and its fill
    stored = await reader.fill_active(user, read_before_write, [make_row(user, "g1", progress=1)], [])

    assert stored is False
    assert await client.exists(active_key(redis_prefix, user)) == 0
    assert (await reader.read_active(user, include_synced=False)).entry is None


async def test_ch2_fill_that_saw_no_token_loses_to_a_write_that_created_one(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    reader, writer = make_cache(client, redis_prefix), make_cache(client, redis_prefix)
    user = unique_user()
    read_before_write = await reader.read_active(user, include_synced=False)
    assert read_before_write.token is None

    await writer.invalidate(user)

    assert await reader.fill_active(user, read_before_write, [make_row(user, "g1")], []) is False
    assert await client.exists(active_key(redis_prefix, user)) == 0


async def test_record_initialize_of_an_insert_fills_under_a_fresh_token_and_marks_synced(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    cache = make_cache(client, redis_prefix)
    user = unique_user()
    step1 = await cache.read_active(user, include_synced=True)
    assert (step1.synced, step1.token, step1.entry) == (False, None, None)

    assert await cache.record_initialize(user, step1, [make_row(user, "g1")], [], inserted=True)

    fast = await cache.read_active(user, include_synced=True)
    assert fast.synced and fast.entry is not None and fast.entry.token == fast.token
    assert [row.goal_id for row in fast.entry.rows] == ["g1"]
    assert 0 < await client.ttl(synced_key(redis_prefix, user, FP)) <= 3600
    assert cache.stats()["by_kind"]["synced"] == {"hits": 1, "misses": 1}
    assert cache.stats()["invalidations"] == 1


async def test_record_initialize_of_an_insert_rotates_an_existing_token(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    cache = make_cache(client, redis_prefix)
    user = unique_user()
    await cache.fill_active(user, await cache.read_active(user, include_synced=False), [make_row(user, "g1")], [])
    before = await cache.read_active(user, include_synced=True)
    assert before.entry is not None

    assert await cache.record_initialize(user, before, [make_row(user, "g1"), make_row(user, "g2")], [], True)

    after = await cache.read_active(user, include_synced=True)
    assert after.token != before.token and after.synced
    assert after.entry is not None and [row.goal_id for row in after.entry.rows] == ["g1", "g2"]


async def test_record_initialize_without_insert_keeps_the_token_it_read(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    cache = make_cache(client, redis_prefix)
    user = unique_user()
    await cache.invalidate(user)
    read = await cache.read_active(user, include_synced=True)

    assert await cache.record_initialize(user, read, [make_row(user, "g1")], [], inserted=False)

    after = await cache.read_active(user, include_synced=True)
    assert after.token == read.token and after.entry is not None and after.synced
    assert cache.stats()["invalidations"] == 1  # only the setup's own


async def test_record_initialize_after_a_concurrent_write_stores_no_view_but_still_invalidates(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    cache, writer = make_cache(client, redis_prefix), make_cache(client, redis_prefix)
    user = unique_user()
    read = await cache.read_active(user, include_synced=True)
    writer_token = await writer.invalidate(user)  # e.g. a flush that committed after the statement's snapshot

    assert await cache.record_initialize(user, read, [make_row(user, "g1")], [], inserted=True) is False

    after = await cache.read_active(user, include_synced=True)
    assert after.entry is None and after.synced
    assert after.token not in (None, writer_token)
    assert await client.exists(active_key(redis_prefix, user)) == 0
    # Without an insert, the concurrent writer's token stays and nothing is stored either.
    other = unique_user()
    read = await cache.read_active(other, include_synced=True)
    other_token = await writer.invalidate(other)
    assert await cache.record_initialize(other, read, [make_row(other, "g1")], [], inserted=False) is False
    assert (await cache.read_active(other, include_synced=False)).token == other_token


async def test_ch5_new_fingerprint_ignores_old_entry_and_old_synced_marker(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    old, new = make_cache(client, redis_prefix, "fp-old"), make_cache(client, redis_prefix, "fp-new")
    user = unique_user()
    read = await old.read_active(user, include_synced=True)
    await old.fill_active(user, read, [make_row(user, "g1")], [])
    await old.set_synced(user)
    assert (await old.read_active(user, include_synced=True)).synced

    seen_by_new = await new.read_active(user, include_synced=True)

    assert seen_by_new.entry is None and seen_by_new.synced is False
    assert seen_by_new.token is not None  # same token: only the fingerprint differs
    assert new.stats()["by_kind"] == {"active": {"hits": 0, "misses": 1}, "synced": {"hits": 0, "misses": 1}}


async def test_corrupt_entry_is_a_miss_and_is_replaced_by_the_fill(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    cache = make_cache(client, redis_prefix)
    user = unique_user()
    await client.set(active_key(redis_prefix, user), b'{"v":1,"tok":', ex=60)

    read = await cache.read_active(user, include_synced=False)
    assert read.entry is None and not read.bypassed
    assert await cache.fill_active(user, read, [make_row(user, "g1")], [])
    assert (await cache.read_active(user, include_synced=False)).entry is not None


async def test_invalidate_many_invalidates_each_user(client: redis.asyncio.Redis, redis_prefix: str) -> None:
    cache = make_cache(client, redis_prefix)
    users = [unique_user() for _ in range(5)]
    for user in users:
        await cache.fill_active(user, await cache.read_active(user, include_synced=False), [make_row(user, "g")], [])
    tokens_before = [await client.get(token_key(redis_prefix, u)) for u in users]

    await cache.invalidate_many(users + users[:2])  # duplicates are invalidated once

    for user, before in zip(users, tokens_before, strict=True):
        assert await client.get(token_key(redis_prefix, user)) not in (None, before)
        assert (await cache.read_active(user, include_synced=False)).entry is None
    assert cache.stats()["invalidations"] == 5


async def test_delete_synced_removes_only_that_users_markers(client: redis.asyncio.Redis, redis_prefix: str) -> None:
    cache = make_cache(client, redis_prefix)
    user = f"u*[{uuid.uuid4().hex[:6]}]?\\"
    lookalike = user.replace("*", "x")  # matches the user's id as an unescaped glob
    for fingerprint in ("fp-a", "fp-b"):
        await client.set(synced_key(redis_prefix, user, fingerprint), "1", ex=60)
        await client.set(synced_key(redis_prefix, lookalike, fingerprint), "1", ex=60)
    evt = event_key(redis_prefix, user, "synced:evt-1")
    await client.set(evt, "d", ex=60)
    await client.set(token_key(redis_prefix, user), "t" * 32, ex=60)

    removed = await cache.delete_synced(user)

    assert removed == 2
    assert await client.exists(synced_key(redis_prefix, user, "fp-a"), synced_key(redis_prefix, user, "fp-b")) == 0
    assert (
        await client.exists(synced_key(redis_prefix, lookalike, "fp-a"), synced_key(redis_prefix, lookalike, "fp-b"))
        == 2
    )
    assert await client.get(evt) == b"d"
    assert await client.exists(token_key(redis_prefix, user)) == 1


async def test_stats_and_pool_stats_have_exactly_the_spec_keys(client: redis.asyncio.Redis, redis_prefix: str) -> None:
    cache = make_cache(client, redis_prefix)
    await cache.read_active(unique_user(), include_synced=True)

    stats = cache.stats()
    pool = cache.redis_pool_stats()

    assert set(stats) == {
        "enabled",
        "healthy",
        "bypass",
        "journal_pending",
        "hits",
        "misses",
        "hit_ratio",
        "bypassed",
        "errors",
        "invalidations",
        "invalidation_failures",
        "by_kind",
    }
    assert stats["by_kind"] == {"active": {"hits": 0, "misses": 1}, "synced": {"hits": 0, "misses": 1}}
    assert (stats["enabled"], stats["healthy"], stats["bypass"], stats["journal_pending"]) == (True, True, False, 0)
    assert set(pool) == {"max_connections", "in_use", "idle", "created", "errors", "healthy"}
    assert (pool["max_connections"], pool["in_use"], pool["errors"], pool["healthy"]) == (8, 0, 0, True)
    assert pool["created"] >= 1 and pool["idle"] >= 1


async def test_disabled_cache_reads_bypass_without_counting_and_writes_are_no_ops() -> None:
    cache = make_cache(None, "unused")
    bypass_before = sample("challenge_cache_requests_total", kind="active", result="bypass")

    read = await cache.read_active("u1", include_synced=True)

    assert read.bypassed and read.entry is None and not read.synced
    assert await cache.fill_active("u1", read, [make_row("u1", "g")], []) is False
    assert await cache.invalidate("u1") is None
    await cache.invalidate_many(["u1", "u2"])
    assert await cache.set_synced("u1") is False
    assert await cache.delete_synced("u1") == 0
    cache.start()
    await cache.stop()
    stats = cache.stats()
    assert (stats["enabled"], stats["healthy"], stats["bypass"], stats["bypassed"], stats["journal_pending"]) == (
        False,
        False,
        False,
        0,
        0,
    )
    assert sample("challenge_cache_requests_total", kind="active", result="bypass") == bypass_before
    assert cache.redis_pool_stats()["max_connections"] == 0


# --- Ch3: outages against a private Redis ---------------------------------------------------------


async def test_ch3_outage_bypasses_journals_and_replays_on_recovery(
    private_redis: PrivateRedis, private_client: redis.asyncio.Redis
) -> None:
    cache = make_cache(private_client, "ch")
    user, bystander = "u-written", "u-read-before-outage"
    for who in (user, bystander):
        await cache.fill_active(who, await cache.read_active(who, include_synced=False), [make_row(who, "g")], [])
    bystander_read = await cache.read_active(bystander, include_synced=False)
    assert bystander_read.entry is not None
    await cache.invalidate(bystander)  # lets the bystander's next fill be a legitimate one
    bystander_read = await cache.read_active(bystander, include_synced=False)
    bypass_before = sample("challenge_cache_requests_total", kind="active", result="bypass")
    replayed_before = sample("challenge_cache_invalidations_total", result="replayed")

    private_redis.stop()
    during = await cache.read_active(user, include_synced=True)  # fails: counted as errors
    after_failure = await cache.read_active(user, include_synced=True)  # no I/O: counted as bypasses
    journaled = await cache.invalidate(user)  # a write committed during the outage
    stats_down = cache.stats()

    assert during.bypassed and after_failure.bypassed and journaled is None
    assert (stats_down["healthy"], stats_down["bypass"], stats_down["journal_pending"]) == (False, True, 1)
    assert (stats_down["errors"], stats_down["bypassed"], stats_down["invalidation_failures"]) == (2, 2, 1)
    assert sample("challenge_cache_requests_total", kind="active", result="bypass") == bypass_before + 1
    assert sample("challenge_redis_up") == 0
    assert cache.redis_pool_stats()["errors"] >= 1

    private_redis.start()  # the dataset, with the now stale entry of `user`, is back
    still_bypassed = await cache.read_active(user, include_synced=False)
    assert still_bypassed.bypassed  # the journal is pending: no cache reads before the replay
    cache.start()
    try:
        await wait_until_healthy(cache)
    finally:
        await cache.stop()

    assert cache.stats()["journal_pending"] == 0
    assert sample("challenge_cache_invalidations_total", result="replayed") == replayed_before + 1
    assert sample("challenge_redis_up") == 1
    assert (await cache.read_active(user, include_synced=False)).entry is None  # no stale entry served
    # A fill whose MGET predates the replay is dropped, even though that user's token is unchanged.
    assert await cache.fill_active(bystander, bystander_read, [make_row(bystander, "g")], []) is False
    assert await cache.fill_active(
        bystander, await cache.read_active(bystander, include_synced=False), [make_row(bystander, "g")], []
    )


async def test_ch3_journal_overflow_replays_everything_by_scan(
    private_redis: PrivateRedis, private_client: redis.asyncio.Redis
) -> None:
    cache = make_cache(private_client, "ch", journal_max=2)
    filled = [f"user-{i}" for i in range(4)]
    for who in filled:
        await cache.fill_active(who, await cache.read_active(who, include_synced=False), [make_row(who, "g")], [])
    tokens_before = {who: await private_client.get(token_key("ch", who)) for who in filled}
    evt = event_key("ch", "user-0", "e:tok")  # ends in ":tok" like a token key; must stay untouched
    await private_client.set(evt, "d", ex=600)
    await private_client.set(active_key("other", "user-0"), "x", ex=600)  # another prefix
    await private_client.set(token_key("other", "user-0"), "y", ex=600)

    private_redis.stop()
    await cache.invalidate_many(["user-0", "user-1", "user-2"])  # overflows a journal of 2
    assert cache.stats()["journal_pending"] == 3  # "everything": more than the journal holds
    private_redis.start()
    assert await cache.probe()

    for who in filled:  # every token rotated (not only the journaled ones), every view unlinked
        assert await private_client.get(token_key("ch", who)) not in (None, tokens_before[who])
        assert await private_client.exists(active_key("ch", who)) == 0
        assert (await cache.read_active(who, include_synced=False)).entry is None
    assert await private_client.exists(token_key("ch", "never-filled")) == 0
    assert await private_client.get(evt) == b"d"
    assert await private_client.get(token_key("other", "user-0")) == b"y"
    assert await private_client.get(active_key("other", "user-0")) == b"x"
    assert cache.stats()["journal_pending"] == 0


async def test_ch3_frozen_redis_times_out_and_recovers(
    private_redis: PrivateRedis, private_client: redis.asyncio.Redis
) -> None:
    cache = make_cache(private_client, "ch")
    user = "u-frozen"
    await cache.fill_active(user, await cache.read_active(user, include_synced=False), [make_row(user, "g")], [])

    private_redis.freeze()
    try:
        read = await cache.read_active(user, include_synced=False)  # times out after 200 ms
        assert read.bypassed and cache.stats()["errors"] == 1
        assert await cache.invalidate(user) is None
        assert await cache.set_synced(user) is False
        assert await cache.probe() is False
    finally:
        private_redis.thaw()

    assert await cache.probe()
    assert (await cache.read_active(user, include_synced=False)).entry is None


# --- Ch4: no command spans slots -------------------------------------------------------------------


def command_keys(args: list[str]) -> list[str]:
    name, rest = args[0].upper(), args[1:]
    if name in ("MGET", "UNLINK", "DEL", "EXISTS"):
        return rest
    if name in ("EVALSHA", "EVAL"):
        return rest[2 : 2 + int(rest[1])]
    if name in ("GET", "SET", "PTTL", "PEXPIRE", "EXPIRE", "TTL"):
        return rest[:1]
    return []


async def test_ch4_no_command_spans_users_or_slots(
    private_redis: PrivateRedis, private_client: redis.asyncio.Redis
) -> None:
    cache = make_cache(private_client, "ch", journal_max=1)
    users = ["a", "b*[x]", "c?", "d\\e"]
    monitor_client = redis.asyncio.Redis(port=private_redis.port)
    seen: list[tuple[str, list[str]]] = []
    async with monitor_client.monitor() as monitor:

        async def collect() -> None:
            while True:
                line = (await monitor.connection.read_response()).decode()
                client_info = monitor.monitor_re.match(line.split(" ", 1)[1]).group(2)
                args = [a.replace('\\"', '"') for a in monitor.command_re.findall(line)]
                seen.append((client_info, args))
                if args[:2] == ["ECHO", "done"]:
                    return

        collector = asyncio.create_task(collect())
        for user in users:
            read = await cache.read_active(user, include_synced=True)
            await cache.fill_active(user, read, [make_row(user, "g")], [])
            await cache.set_synced(user)
        await cache.invalidate(users[0])
        await cache.invalidate_many(users)
        await cache.delete_synced(users[1])
        private_redis.freeze()
        try:
            await cache.invalidate_many(users)  # times out; overflows into "everything"
        finally:
            private_redis.thaw()
        assert await cache.probe()  # SCAN + a rotation per token
        await private_client.echo("done")
        await asyncio.wait_for(collector, 10)
    await monitor_client.aclose()

    # On a standalone server (this one) the invalidations of several users share one script call, which a
    # cluster client never sends (tests/test_faults_cluster.py); every other command stays in one slot.
    many_sha = cache._invalidate_many_script.sha
    script_slot: int | None = None
    names = set()
    multi_user_calls = 0
    in_multi_user_call = False
    for client_info, args in seen:
        names.add(args[0].upper())
        slots = {key_slot(k.encode()) for k in command_keys(args)}
        if client_info == "lua" and in_multi_user_call:
            continue
        in_multi_user_call = args[0].upper() == "EVALSHA" and args[1] == many_sha
        if in_multi_user_call:
            multi_user_calls += 1
            continue
        assert len(slots) <= 1, f"{args[0]} spans slots: {args}"
        if args[0].upper() in ("EVALSHA", "EVAL"):
            script_slot = slots.pop()
        elif client_info == "lua" and slots:
            assert slots == {script_slot}, f"a script touched a key outside its user's slot: {args}"
    assert multi_user_calls >= 1
    assert {"MGET", "EVALSHA", "SCAN", "UNLINK", "SET"} <= names
    assert not names & {"KEYS", "FLUSHDB", "FLUSHALL", "MULTI"}

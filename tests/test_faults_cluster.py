"""Redis Cluster (issue 11; docs/cache.md#redis-cluster): `redis_mode=auto` finds a cluster, and the cache and
event de-duplication work through a real 3-node cluster, across its nodes and over a node restart.

The cluster is the test's own (three free ports picked at start, each with its cluster bus port + 10000 free);
skipped without a redis-server binary.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from challengectl.loadtest.reset import clear_cache
from service.proto.challengectl.v1 import ingest_pb2, ingest_pb2_grpc
from service.storage.cache import Cache, active_key, connect_redis, is_cluster, token_key
from service.storage.dedup import DONE, Deduplicator
from service.transport.auth import mint_token
from tests.servers import PrivateRedisCluster, free_cluster_ports, free_port
from tests.support.cli import isolate_cli, run_cli
from tests.support.serve import ServeProcess, http_get, metric_total, player_call, service_env

pytestmark = pytest.mark.integration

SECRET = "cluster-secret-" + "x" * 24


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedisCluster]:
    server = PrivateRedisCluster(tmp_path_factory.mktemp("cluster"), free_cluster_ports(3))
    try:
        server.start()
        yield server
    finally:
        server.kill()


def _users_on_every_node(cluster: PrivateRedisCluster, prefix: str, count: int) -> list[str]:
    """`count` user ids whose keys together live on every node of the cluster."""
    slots = {port: _slot_range(cluster, port) for port in cluster.ports}
    users: list[str] = []
    seen: set[int] = set()
    while len(users) < count or len(seen) < len(cluster.ports):
        user = f"cl-{uuid.uuid4().hex[:10]}"
        slot = cluster.node(cluster.ports[0]).cluster("keyslot", active_key(prefix, user))
        seen.update(port for port, (first, last) in slots.items() if first <= slot <= last)
        users.append(user)
    return users


def _slot_range(cluster: PrivateRedisCluster, port: int) -> tuple[int, int]:
    for first, last, (_, node_port, *_), *_ in cluster.node(port).execute_command("CLUSTER SLOTS"):
        if node_port == port:
            return first, last
    raise AssertionError(f"node {port} owns no slots")


def _cache(client: RedisCluster, prefix: str) -> Cache:
    return Cache(client, prefix, "fp", 60, 60, 1000, 50)


async def test_auto_mode_asks_the_server_whether_it_is_a_cluster(cluster: PrivateRedisCluster, redis_url: str) -> None:
    clustered = await connect_redis(cluster.url, 4, 1000, "auto")
    standalone = await connect_redis(redis_url, 4, 1000, "auto")
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    try:
        assert isinstance(clustered, RedisCluster)
        assert not isinstance(standalone, RedisCluster)
        assert await is_cluster(redis_url, 1000) is False
        assert await is_cluster(unreachable, 200) is None
        assert not isinstance(await connect_redis(unreachable, 4, 200, "auto"), RedisCluster)
        assert isinstance(await connect_redis(cluster.url, 4, 1000, "cluster"), RedisCluster)
    finally:
        await clustered.aclose()
        await standalone.aclose()


async def test_cache_and_dedup_work_on_every_node_and_survive_a_node_restart(cluster: PrivateRedisCluster) -> None:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    users = _users_on_every_node(cluster, prefix, 6)
    client = await connect_redis(cluster.url, 8, 1000, "auto")
    cache = _cache(client, prefix)
    dedup = Deduplicator(client, prefix, 60, 60, 100, 0.05)
    try:
        for user in users:
            assert await cache.fill_active(user, await cache.read_active(user, True), [], [])
        assert [(await cache.read_active(user, True)).entry is not None for user in users] == [True] * len(users)
        assert cache.stats()["hits"] == len(users) and cache.healthy
        await cache.invalidate_many(users)  # one pipeline over every node
        assert [(await cache.read_active(user, False)).entry for user in users] == [None] * len(users)
        assert cache.stats()["invalidation_failures"] == 0

        keys = [(user, str(uuid.uuid4())) for user in users]
        assert await dedup.begin(keys) == [None] * len(keys)
        await dedup.forget(keys[:2])
        assert await dedup.begin(keys) == [None, None] + ["p"] * (len(keys) - 2)
        await dedup.mark_done(keys)
        assert await dedup.begin(keys) == [DONE] * len(keys)
        assert dedup.redis_usable and len(dedup.lru) == 0

        restarted = cluster.ports[1]
        cluster.stop_node(restarted)
        for user in users:
            await cache.read_active(user, False)
        assert not cache.healthy
        assert not await cache.probe()
        cluster.start_node(restarted)
        cluster.wait_healthy()
        await _until_async(cache.probe, 10)
        for user in users:
            await cache.fill_active(user, await cache.read_active(user, False), [], [])
        assert [(await cache.read_active(user, False)).entry is not None for user in users] == [True] * len(users)
        assert await dedup.begin([(user, str(uuid.uuid4())) for user in users]) == [None] * len(users)
    finally:
        await client.aclose()


def test_serve_on_a_cluster_caches_and_deduplicates_through_it(cluster: PrivateRedisCluster, pg_url: str) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    users = _users_on_every_node(cluster, prefix, 6)
    with ServeProcess(service_env(pg_url, cluster.url, prefix, SECRET)) as serve:
        assert http_get(serve.api("/readyz"))[1]["checks"]["redis"]["ok"] is True
        for user in users:
            token = mint_token(SECRET.encode(), user)
            player_call(serve, token, "POST", "/v1/challenges/initialize")
            player_call(serve, token, "GET", "/v1/challenges?active_only=true")
        cache = http_get(serve.admin("/admin/cache"))[1]
        assert cache["healthy"] is True and cache["hits"] >= len(users), cache
        assert cache["invalidation_failures"] == 0 and cache["errors"] == 0, cache

        event_id = str(uuid.uuid4())
        first, again = (_publish_login(serve, users[0], event_id) for _ in range(2))
        assert (first.accepted, again.duplicates) == (1, 1)
        assert metric_total(serve, "challenge_dedup_total", backend="redis", result="duplicate") >= 1
        assert metric_total(serve, "challenge_dedup_total", backend="lru", result="duplicate") == 0
        stored = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0]).get(
            f"{prefix}:{{{users[0]}}}:evt:{event_id}"
        )
        assert stored == DONE.encode()


def test_cache_commands_see_every_node(
    cluster: PrivateRedisCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = f"k{uuid.uuid4().hex[:8]}"
    users = _users_on_every_node(cluster, prefix, 6)
    asyncio.run(_fill_views(cluster, prefix, users))
    isolate_cli(monkeypatch, tmp_path, REDIS_URL=cluster.url, CHALLENGE_REDIS_KEY_PREFIX=prefix)
    code, out, err = run_cli(["cache", "stats", "-o", "json"], capsys)
    assert code == 0, err
    assert _kinds(out) == {"tok": len(users), "active": len(users)}
    code, out, err = run_cli(["cache", "keys", "--user", users[-1], "-o", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)["token"] is not None
    code, out, err = run_cli(["cache", "flush", "--all", "--yes", "-o", "json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["cache", "stats", "-o", "json"], capsys)
    assert _kinds(out) == {"tok": len(users)}  # tokens rotated, views unlinked


def test_users_delete_and_loadtest_reset_reach_every_node(
    cluster: PrivateRedisCluster,
    fresh_db: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"u{uuid.uuid4().hex[:8]}"
    users = _users_on_every_node(cluster, prefix, 6)
    asyncio.run(_fill_views(cluster, prefix, users))
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    tokens = {user: client.get(token_key(prefix, user)) for user in users}
    isolate_cli(monkeypatch, tmp_path, DATABASE_URL=fresh_db, REDIS_URL=cluster.url, CHALLENGE_REDIS_KEY_PREFIX=prefix)
    assert run_cli(["db", "migrate", "--yes"], capsys)[0] == 0
    for user in users[:3]:
        code, out, err = run_cli(["users", "delete", user, "--yes", "-o", "json"], capsys)
        assert code == 0, err
        assert json.loads(out)["cache_invalidated"] is True
        assert client.get(token_key(prefix, user)) not in (None, tokens[user])
        assert client.exists(active_key(prefix, user)) == 0

    cleared = asyncio.run(clear_cache(cluster.url, "auto", prefix))
    assert (cleared.keys_removed, cleared.tokens_rotated) == (len(users) - 3, len(users))
    assert all(client.get(token_key(prefix, user)) != tokens[user] for user in users)
    assert not any(client.exists(active_key(prefix, user)) for user in users)


async def _fill_views(cluster: PrivateRedisCluster, prefix: str, users: list[str]) -> None:
    client = await connect_redis(cluster.url, 4, 1000, "cluster")
    cache = _cache(client, prefix)
    for user in users:
        await cache.fill_active(user, await cache.read_active(user, True), [], [])
    await client.aclose()


def _kinds(stats_json: str) -> dict[str, int]:
    return {kind: n for kind, n in json.loads(stats_json)["keys"]["by_kind"].items() if n}


def _publish_login(serve: ServeProcess, user: str, event_id: str) -> ingest_pb2.PublishResult:
    event = ingest_pb2.Event(id=event_id, user_id=user, kind=ingest_pb2.EVENT_KIND_LOGIN)
    with grpc.insecure_channel(f"127.0.0.1:{serve.grpc_port}") as channel:
        stub = ingest_pb2_grpc.EventIngestStub(channel)
        return stub.Publish(ingest_pb2.EventBatch(batch_id="b", events=[event]), timeout=10)


async def _until_async(predicate, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"not true within {timeout_s} s"
        await asyncio.sleep(0.05)

"""The cache's pipelined Redis connection (service/storage/redis_pipe.py): replies matched to concurrent
callers in order, error replies, the EVAL fallback, timeouts, a lost server and reconnection.

Normal cases use the shared Redis (keys under a per-test prefix); outages a private redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.storage.cache import open_redis
from service.storage.redis_pipe import CommandBatch, PipelinedRedis
from tests.servers import PrivateRedis


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[PipelinedRedis]:
    client = open_redis(redis_url, max_connections=2, timeout_ms=2000)
    pipe = PipelinedRedis.of_client(client)
    assert pipe is not None
    yield pipe
    pipe.close()
    await client.aclose()


@pytest.fixture
async def private_pipe(private_redis: PrivateRedis) -> AsyncIterator[PipelinedRedis]:
    client = open_redis(private_redis.url, max_connections=1, timeout_ms=200)
    pipe = PipelinedRedis.of_client(client)
    assert pipe is not None
    yield pipe
    pipe.close()
    await client.aclose()


def prefix() -> str:
    return f"pipe-test-{uuid.uuid4().hex[:8]}"


async def test_concurrent_callers_each_get_their_own_reply(pipe: PipelinedRedis) -> None:
    keys = [f"{prefix()}:{i}" for i in range(200)]
    await asyncio.gather(*(pipe.execute("SET", key, f"value-{i}", "EX", 60) for i, key in enumerate(keys)))

    replies = await asyncio.gather(*(pipe.execute("MGET", key, f"{key}:absent") for key in keys))

    assert replies == [[f"value-{i}".encode(), None] for i in range(len(keys))]
    assert pipe.connections_made == 1 and pipe.pending == 0


async def test_binary_and_integer_arguments_round_trip(pipe: PipelinedRedis) -> None:
    key = prefix()
    value = bytes(range(256)) + b"\r\n$3\r\n"

    assert await pipe.execute("SET", key, value, "PX", 60_000) == b"OK"
    assert await pipe.execute("GET", key) == value
    assert 0 < await pipe.execute("PTTL", key) <= 60_000


async def test_an_error_reply_raises_and_the_next_command_still_gets_its_own_reply(pipe: PipelinedRedis) -> None:
    key = prefix()
    await pipe.execute("SET", key, "text", "EX", 60)

    failing = pipe.execute("INCR", key)
    following = pipe.execute("GET", key)
    results = await asyncio.gather(failing, following, return_exceptions=True)

    assert isinstance(results[0], ResponseError) and not isinstance(results[0], NoScriptError)
    assert results[1] == b"text"
    with pytest.raises(NoScriptError):
        await pipe.execute("EVALSHA", "0" * 40, 0)


async def test_script_falls_back_to_eval_then_runs_by_sha(pipe: PipelinedRedis, redis_url: str) -> None:
    source = f"return {{KEYS[1], ARGV[1], '{uuid.uuid4().hex}'}}"  # a script this server has never seen
    client = open_redis(redis_url, max_connections=1, timeout_ms=2000)
    sha = client.register_script(source).sha
    try:
        assert await client.script_exists(sha) == [False]
        first = await pipe.script(sha, source, ["k"], [7])
        assert await client.script_exists(sha) == [True]
        again = await pipe.execute("EVALSHA", sha, 1, "k", 7)
    finally:
        await client.aclose()

    assert first == again and first[:2] == [b"k", b"7"]


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(pipe: PipelinedRedis) -> None:
    key = prefix()
    await pipe.execute("SET", key, "kept", "EX", 60)

    cancelled = asyncio.ensure_future(pipe.execute("GET", "absent-" + key))
    await asyncio.sleep(0)  # sent
    cancelled.cancel()
    after = await pipe.execute("GET", key)

    assert cancelled.cancelled() and after == b"kept"


async def test_database_and_password_come_from_the_client(private_redis: PrivateRedis) -> None:
    admin = open_redis(private_redis.url, max_connections=1, timeout_ms=2000)
    await admin.config_set("requirepass", "s3cret")
    client = open_redis(f"redis://:s3cret@127.0.0.1:{private_redis.port}/3", max_connections=1, timeout_ms=2000)
    pipe = PipelinedRedis.of_client(client)
    assert pipe is not None
    try:
        await pipe.execute("SET", "in-db-3", "yes")
        assert await client.get("in-db-3") == b"yes"  # the client (db 3) sees what the pipe wrote
        await client.select(0)  # only this client's connection changes database
        assert await pipe.execute("DBSIZE") == 1
    finally:
        pipe.close()
        await client.config_set("requirepass", "")
        await client.aclose()
        await admin.aclose()


async def test_a_frozen_server_times_out_and_the_next_command_reconnects(
    private_redis: PrivateRedis, private_pipe: PipelinedRedis
) -> None:
    await private_pipe.execute("SET", "k", "v")
    private_redis.freeze()
    try:
        results = await asyncio.gather(
            private_pipe.execute("GET", "k"), private_pipe.execute("GET", "k"), return_exceptions=True
        )
    finally:
        private_redis.thaw()
    assert all(isinstance(result, RedisTimeoutError) for result in results)
    assert not private_pipe.connected

    assert await private_pipe.execute("GET", "k") == b"v"
    assert private_pipe.connections_made == 2


async def test_a_stopped_server_fails_commands_until_it_is_back(
    private_redis: PrivateRedis, private_pipe: PipelinedRedis
) -> None:
    await private_pipe.execute("SET", "k", "v")
    private_redis.stop()
    with pytest.raises(RedisConnectionError):
        await private_pipe.execute("GET", "k")
    with pytest.raises(RedisConnectionError):  # refused: connecting again fails too
        await asyncio.gather(private_pipe.execute("GET", "k"), private_pipe.execute("GET", "k"))
    private_redis.start()

    assert await private_pipe.execute("GET", "k") == b"v"


async def test_a_batch_gets_its_replies_in_order_with_error_replies_in_place(pipe: PipelinedRedis) -> None:
    key = prefix()
    await pipe.execute("SET", key, "text", "EX", 60)
    batch = CommandBatch()
    batch.evalsha("0" * 40, 1, key)  # unknown script: NOSCRIPT
    batch.commands += [("INCR", key), ("GET", key), ("EXISTS", key, f"{key}:absent")]

    replies = await pipe.execute_many(batch.commands)

    assert batch.commands[0] == ("EVALSHA", "0" * 40, 1, key)
    assert isinstance(replies[0], NoScriptError)
    assert isinstance(replies[1], ResponseError) and not isinstance(replies[1], NoScriptError)
    assert replies[2:] == [b"text", 1]
    assert await pipe.execute("GET", key) == b"text"  # the connection stays in step


async def test_a_batch_on_a_stopped_server_raises(private_redis: PrivateRedis, private_pipe: PipelinedRedis) -> None:
    await private_pipe.execute("SET", "k", "v")
    private_redis.stop()
    with pytest.raises(RedisConnectionError):
        await private_pipe.execute_many([("GET", "k"), ("GET", "k")])
    private_redis.start()

    assert await private_pipe.execute_many([("GET", "k"), ("EXISTS", "k")]) == [b"v", 1]


def test_clients_it_cannot_follow_get_no_pipe(redis_url: str) -> None:
    assert PipelinedRedis.of_client(object()) is None
    tls = open_redis("rediss://127.0.0.1:6380/0", max_connections=1, timeout_ms=200)
    assert PipelinedRedis.of_client(tls) is None

"""Redis: the client of the cache and de-duplication markers (SPEC §8)."""

from __future__ import annotations

import time

import redis.asyncio as redis_asyncio


def open_redis(url: str, max_connections: int, timeout_ms: int) -> redis_asyncio.Redis:
    """A pooled asyncio client; every operation times out after `timeout_ms` (SPEC §8.5)."""
    timeout_s = timeout_ms / 1000
    return redis_asyncio.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=max(timeout_s, 0.5),
        health_check_interval=0,
    )


async def ping(client: redis_asyncio.Redis) -> float:
    """PING; returns the round trip in ms."""
    started = time.perf_counter()
    await client.ping()
    return (time.perf_counter() - started) * 1000

"""`loadtest run --reset`: a cold start for the next run (docs/loadtest.md#loadtest-run). Truncates `user_goal_progress`,
`user_initializations` and `reward_grants`, unlinks every `<prefix>:*` key and rotates every `<prefix>:{user}:tok` key instead
of deleting it (docs/cache.md#degradation-and-recovery: a deleted token would let a concurrent stale fill pass validation)."""

from __future__ import annotations

from dataclasses import dataclass

from challengectl import database
from challengectl.cli_queries import execute
from challengectl.connections import connect_service_redis
from service.storage.cache import escape_glob, new_token

SCAN_COUNT = 1000
CLEAR_TIMEOUT_S = 30


@dataclass(frozen=True)
class ResetResult:
    keys_removed: int
    tokens_rotated: int


def truncate_tables(database_url: str) -> None:
    """Empty the progress and grant tables (the schema and migrations stay)."""
    with database.connect(database_url) as conn:
        execute(conn, "cli_truncate_tables")


async def clear_cache(redis_url: str, redis_mode: str, prefix: str) -> ResetResult:
    """SCAN `<prefix>:*` (every primary of a Redis Cluster); UNLINK every key except the token keys, which get a
    fresh value."""
    client = await connect_service_redis(redis_url, redis_mode, CLEAR_TIMEOUT_S)
    removed = rotated = 0
    token_suffix = b":tok"
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{escape_glob(prefix)}:*", count=SCAN_COUNT):
            if key.endswith(token_suffix) and key.count(b":") == prefix.count(":") + 2:
                await client.set(key, new_token(), xx=True, keepttl=True)
                rotated += 1
                continue
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                removed += await client.unlink(*batch)
                batch = []
        if batch:
            removed += await client.unlink(*batch)
    finally:
        await client.aclose()
    return ResetResult(removed, rotated)

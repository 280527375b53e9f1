"""Shared test support for the player use cases (`service/players.py`): catalogs, a movable clock,
a real PostgreSQL pool and Redis cache, row seeding and a statement counter.

This module holds no tests; the `test_players_*` modules import its fixtures and helpers. Every
test uses a fresh user id, so tests share the run's database and Redis prefix without interfering.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from prometheus_client import REGISTRY
from psycopg import sql
from psycopg.rows import class_row, dict_row

from service.domain.catalog import Catalog, parse_catalog
from service.domain.errors import DomainError
from service.domain.rules import ProgressRow
from service.storage.cache import Cache, open_redis
from service.storage.migrations import apply_migrations
from service.storage.registry import load_registry
from service.storage.store import PoolConfig, Queries, Store, open_pool
from service.transport.errors import ApiError, http_error
from service.usecases.players import Players
from service.usecases.rewards import RewardConfig, RewardGranter

NAMESPACE = "test-ns"
# Wednesday noon: the daily period is [2030-05-15, 2030-05-16), the weekly one starts Monday 2030-05-13.
T0 = datetime(2030, 5, 15, 12, 0, tzinfo=UTC)
DAY_START = datetime(2030, 5, 15, tzinfo=UTC)
NEXT_DAY = datetime(2030, 5, 16, tzinfo=UTC)
WEEK_START = datetime(2030, 5, 13, tzinfo=UTC)
NEXT_WEEK = datetime(2030, 5, 20, tzinfo=UTC)
NEXT_MONTH = datetime(2030, 6, 1, tzinfo=UTC)


def goal_json(
    goal_id: str,
    *,
    source: str = "statistic",
    target: int = 5,
    mode: str = "absolute",
    default: bool = False,
    prerequisites: tuple[str, ...] = (),
    rotation: tuple[str, bool, bool] | None = None,
) -> dict[str, Any]:
    """One catalog goal; `rotation` is (schedule, resetProgress, allowReselection)."""
    goal: dict[str, Any] = {
        "goalId": goal_id,
        "name": f"Goal {goal_id}",
        "description": f"about {goal_id}",
        "eventSource": source,
        "defaultAssigned": default,
        "requirement": {
            "statCode": f"stat-{goal_id}",
            "operator": ">=",
            "targetValue": target,
            "progressMode": "relative" if rotation else mode,
        },
        "reward": {"type": "ITEM", "rewardId": f"item-{goal_id}", "quantity": 2},
        "prerequisites": list(prerequisites),
    }
    if rotation is not None:
        schedule, reset, reselect = rotation
        goal["rotation"] = {
            "enabled": True,
            "type": "global",
            "schedule": schedule,
            "onExpiry": {"resetProgress": reset, "allowReselection": reselect},
        }
    return goal


def challenge_json(challenge_id: str, goals: list[dict[str, Any]]) -> dict[str, Any]:
    return {"challengeId": challenge_id, "name": f"Challenge {challenge_id}", "goals": goals}


def build_catalog(challenges: list[dict[str, Any]]) -> Catalog:
    return parse_catalog(json.dumps({"challenges": challenges}).encode(), "test")


def main_challenges() -> list[dict[str, Any]]:
    """The catalog most tests use.

    c1: defaults (a login goal and a daily resetting, reselectable goal), a daily carry-over goal, a
        goal locked behind a goal of c2, a plain goal. c2: prerequisites within and across
        challenges, weekly and monthly rotations. c3: eight independent goals for the selects.
    """
    return [
        challenge_json(
            "c1",
            [
                goal_json("c1-login", source="login", target=1, default=True),
                goal_json("c1-daily", target=5, default=True, rotation=("daily", True, True)),
                goal_json("c1-carry", target=5, rotation=("daily", False, False)),
                goal_json("c1-locked", target=10, prerequisites=("c2-a",)),
                goal_json("c1-plain", target=3),
            ],
        ),
        challenge_json(
            "c2",
            [
                goal_json("c2-a", target=2),
                goal_json("c2-b", target=2, prerequisites=("c2-a", "c1-login")),
                goal_json("c2-weekly", target=4, rotation=("weekly", True, False)),
                goal_json("c2-monthly", target=4, rotation=("monthly", True, False)),
            ],
        ),
        challenge_json("c3", [goal_json(f"c3-{letter}", target=3) for letter in "abcdefgh"]),
    ]


MAIN_CATALOG = build_catalog(main_challenges())
DEFAULT_IDS = ["c1-login", "c1-daily"]


class Clock:
    """The injectable clock of Players: a fixed instant that tests move across boundaries."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def new_user(label: str = "u") -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def statements_run() -> float:
    """How many named queries this process has run (the per-query duration histogram's counts)."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "challenge_db_query_duration_seconds":
            total += sum(s.value for s in metric.samples if s.name.endswith("_count"))
    return total


def make_cache(client: redis_asyncio.Redis | None, prefix: str, catalog: Catalog) -> Cache:
    return Cache(
        client,
        prefix,
        catalog.fingerprint,
        cache_ttl_s=300,
        synced_ttl_s=3600,
        journal_max=100,
        probe_interval_ms=60_000,
    )


_SEED_COLUMNS = (
    "progress",
    "status",
    "completed_at",
    "claimed_at",
    "created_at",
    "updated_at",
    "is_active",
    "assigned_at",
    "expires_at",
    "baseline_value",
)


@dataclass
class Env:
    """Real dependencies of one test module, and a factory of Players over them."""

    store: Store
    queries: Queries
    redis_client: redis_asyncio.Redis
    redis_prefix: str
    granters: list[RewardGranter] = field(default_factory=list)

    def cache(self, catalog: Catalog = MAIN_CATALOG) -> Cache:
        return make_cache(self.redis_client, self.redis_prefix, catalog)

    def players(
        self,
        catalog: Catalog = MAIN_CATALOG,
        clock: Clock | None = None,
        cache: Cache | None = None,
        rewards: RewardGranter | None = None,
        reward_mode: str = "log",
        store: Store | None = None,
        claim_timeout_ms: int = 10_000,
    ) -> Players:
        if rewards is None:
            rewards = RewardGranter(RewardConfig())
            self.granters.append(rewards)
        return Players(
            catalog,
            store or self.store,
            self.queries,
            cache or self.cache(catalog),
            rewards,
            NAMESPACE,
            reward_mode,
            claim_timeout_ms,
            clock or Clock(),
        )

    async def seed(self, user_id: str, goal_id: str, challenge_id: str | None = None, **columns: Any) -> None:
        """Insert or overwrite one progress row; unspecified columns get an active, fresh, empty row."""
        values: dict[str, Any] = {
            "progress": 0,
            "status": "not_started",
            "completed_at": None,
            "claimed_at": None,
            "created_at": T0 - timedelta(hours=1),
            "updated_at": T0 - timedelta(hours=1),
            "is_active": True,
            "assigned_at": T0 - timedelta(hours=1),
            "expires_at": None,
            "baseline_value": None,
        }
        unknown = set(columns) - set(values)
        assert not unknown, f"unknown columns {unknown}"
        values.update(columns)
        if challenge_id is None:
            challenge_id = MAIN_CATALOG.goals_by_id[goal_id].challenge_id
        names = ", ".join(_SEED_COLUMNS)
        placeholders = ", ".join(f"%({c})s" for c in _SEED_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _SEED_COLUMNS)
        async with self.store.connection() as conn:
            await conn.execute(
                f"INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, {names}) "
                f"VALUES (%(user_id)s, %(goal_id)s, %(challenge_id)s, %(namespace)s, {placeholders}) "
                f"ON CONFLICT (user_id, goal_id) DO UPDATE SET {updates}",
                {
                    "user_id": user_id,
                    "goal_id": goal_id,
                    "challenge_id": challenge_id,
                    "namespace": NAMESPACE,
                    **values,
                },
            )

    async def row(self, user_id: str, goal_id: str) -> ProgressRow | None:
        async with self.store.connection() as conn, conn.cursor(row_factory=class_row(ProgressRow)) as cursor:
            await cursor.execute(
                "SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at,"
                " claimed_at, created_at, updated_at, is_active, assigned_at, expires_at, baseline_value"
                " FROM goal_progress WHERE user_id = %s AND goal_id = %s",
                (user_id, goal_id),
            )
            return await cursor.fetchone()

    async def rows(self, user_id: str, relation: str = "goal_progress") -> dict[str, ProgressRow]:
        """The user's rows as readers see them (real and implied, docs/data-model.md#implied-default-goals), or with
        `relation="user_goal_progress"` only the real ones."""
        async with self.store.connection() as conn, conn.cursor(row_factory=class_row(ProgressRow)) as cursor:
            await cursor.execute(
                sql.SQL(
                    "SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at,"
                    " claimed_at, created_at, updated_at, is_active, assigned_at, expires_at, baseline_value"
                    " FROM {} WHERE user_id = %s"
                ).format(sql.Identifier(relation)),
                (user_id,),
            )
            return {row.goal_id: row for row in await cursor.fetchall()}

    async def grants(self, user_id: str) -> list[dict[str, Any]]:
        async with self.store.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                "SELECT * FROM reward_grants WHERE user_id = %s ORDER BY goal_id, generation", (user_id,)
            )
            return await cursor.fetchall()


@pytest.fixture(scope="module", name="env")
async def env_fixture(pg_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Env]:
    apply_migrations(pg_url)
    pool = await open_pool(pg_url, "service", PoolConfig(min_size=1, max_size=8, statement_timeout_ms=5000))
    client = open_redis(redis_url, max_connections=16, timeout_ms=2000)
    environment = Env(Store(pool), Queries(load_registry()), client, redis_prefix)
    yield environment
    for granter in environment.granters:
        await granter.close()
    await client.aclose()
    await environment.store.close()


async def api_error(awaitable: Any) -> ApiError:
    """Await a use case that must fail; return its failure as the HTTP API reports it."""
    with pytest.raises(DomainError) as caught:
        await awaitable
    return http_error(caught.value)

"""Hostile and boundary-value gRPC input against the real ingestion core (PostgreSQL and Redis): every call gets
a status a sender can act on (OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED), never UNKNOWN or INTERNAL, and nothing
is logged as an error (docs/events.md#validation, docs/events.md#grpc-server).

The random cases are seeded, so a failure reproduces, and few enough to run in every test run (about a second).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg
import pytest
from psycopg.rows import dict_row

from service.domain.catalog import parse_catalog
from service.proto.accelbyte.iam.account.v1 import account_pb2
from service.proto.accelbyte.social.statistic.v1 import statistic_pb2
from service.proto.challengectl.v1 import ingest_pb2
from service.storage.cache import open_redis
from service.storage.migrations import apply_migrations
from service.storage.registry import load_registry
from service.storage.store import PoolConfig, Queries, Store
from service.usecases.events import IngestConfig, Ingestor
from tests.support.grpc_server import INGEST_UNARY_METHODS, Running, serving
from tests.support.players import make_cache, new_user

NS = "hostile-ns"
CATALOG = {
    "challenges": [
        {
            "challengeId": "c1",
            "name": "C1",
            "goals": [
                {
                    "goalId": goal_id,
                    "name": goal_id,
                    "eventSource": "statistic",
                    "requirement": {"statCode": "kills", "operator": ">=", "targetValue": 10, "progressMode": mode},
                    "reward": {"type": "ITEM", "rewardId": "r", "quantity": 1},
                }
                for goal_id, mode in (("kills-abs", "absolute"), ("kills-rel", "relative"))
            ],
        }
    ]
}
MAX_MESSAGE_BYTES = 64 * 1024
ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


@pytest.fixture(scope="module")
async def running(pg_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Running]:
    """A gRPC server with the real Ingestor (commit mode) on a migrated database."""
    apply_migrations(pg_url)
    catalog = parse_catalog(json.dumps(CATALOG).encode(), "test-hostile.json")
    store = await Store.open(pg_url, "flusher", PoolConfig(min_size=1, max_size=2))
    client = open_redis(redis_url, max_connections=8, timeout_ms=2000)
    config = IngestConfig(namespace=NS, flush_interval_ms=20, flush_workers=2, redis_key_prefix=redis_prefix)
    ingestor = Ingestor(config, catalog, store, Queries(load_registry()), make_cache(client, redis_prefix, catalog))
    await ingestor.start()
    try:
        async with serving(ingestor, MAX_MESSAGE_BYTES, 256) as server:
            yield server
    finally:
        await ingestor.drain_and_stop(10)
        await client.aclose()
        await store.close()


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
    conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True, row_factory=dict_row)
    yield conn
    await conn.close()


async def seed(db: psycopg.AsyncConnection[Any], user_id: str, goal_id: str) -> None:
    """An active, not started progress row."""
    await db.execute(
        "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, is_active, assigned_at)"
        " VALUES (%s, %s, 'c1', %s, true, now())",
        (user_id, goal_id, NS),
    )


async def row(db: psycopg.AsyncConnection[Any], user_id: str, goal_id: str) -> dict[str, Any]:
    cursor = await db.execute(
        "SELECT * FROM user_goal_progress WHERE user_id = %s AND goal_id = %s", (user_id, goal_id)
    )
    found = await cursor.fetchone()
    assert found is not None
    return found


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def stat_message(user_id: str, latest: float = 1.0, inc: float = 1.0, **fields: Any) -> statistic_pb2.StatItemUpdated:
    payload = statistic_pb2.StatItem(stat_code=fields.pop("stat_code", "kills"), latest_value=latest, inc=inc)
    return statistic_pb2.StatItemUpdated(**{"namespace": NS, **fields}, user_id=user_id, payload=payload)


# Each case: (latest_value, inc) and the status OnMessage must answer.
VALUE_BOUNDARIES = [
    ((2147483647.9, 0.0), grpc.StatusCode.OK),  # truncates to int32 max
    ((2147483648.0, 0.0), grpc.StatusCode.INVALID_ARGUMENT),
    ((-2147483648.9, 0.0), grpc.StatusCode.OK),  # in range after truncation, negative: skipped
    ((-2147483649.0, 0.0), grpc.StatusCode.INVALID_ARGUMENT),
    ((math.nan, 0.0), grpc.StatusCode.INVALID_ARGUMENT),
    ((math.inf, 0.0), grpc.StatusCode.INVALID_ARGUMENT),
    ((-math.inf, 0.0), grpc.StatusCode.INVALID_ARGUMENT),
    ((1.0, 1e300), grpc.StatusCode.INVALID_ARGUMENT),
    ((1.0, -2147483648.0), grpc.StatusCode.OK),  # a negative increment counts as none
    ((5e-324, -0.0), grpc.StatusCode.OK),  # the smallest denormal truncates to 0
]


@pytest.mark.parametrize(("values", "expected"), VALUE_BOUNDARIES, ids=[repr(case[0]) for case in VALUE_BOUNDARIES])
async def test_stat_value_boundaries(running: Running, values: tuple[float, float], expected: grpc.StatusCode) -> None:
    latest, inc = values
    assert await code_of(running.stat.OnMessage(stat_message(new_user(), latest, inc))) == expected


async def test_the_int32_maximum_lands_whole_and_a_negative_increment_keeps_the_baseline_at_the_value(
    running: Running, db: Any
) -> None:
    user = new_user()
    await seed(db, user, "kills-abs")
    await seed(db, user, "kills-rel")
    await running.stat.OnMessage(stat_message(user, 2147483647.9, -2147483648.0))
    absolute, relative = await row(db, user, "kills-abs"), await row(db, user, "kills-rel")
    assert (absolute["progress"], absolute["status"]) == (2147483647, "completed")
    assert (relative["progress"], relative["baseline_value"], relative["status"]) == (
        2147483647,
        2147483647,
        "in_progress",
    )


IDENTITY_BOUNDARIES = [
    ({"user_id": "u" * 100}, grpc.StatusCode.OK),
    ({"user_id": "u" * 101}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"user_id": ""}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"user_id": "a\x00b"}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"user_id": "a{b}"}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"user_id": "joueur-\u00e9\u4e16\U0001f3ae"}, grpc.StatusCode.OK),
    ({"id": "e" * 200}, grpc.StatusCode.OK),
    ({"id": "e" * 201}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"stat_code": ""}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"namespace": "other"}, grpc.StatusCode.OK),  # skipped
    ({"timestamp": "not a time"}, grpc.StatusCode.OK),  # informational: unparsable means unknown
    ({"timestamp": "9999-12-31T23:59:59Z"}, grpc.StatusCode.OK),  # taken as "now"
]


@pytest.mark.parametrize(
    ("fields", "expected"), IDENTITY_BOUNDARIES, ids=[repr(case[0])[:40] for case in IDENTITY_BOUNDARIES]
)
async def test_identity_and_metadata_boundaries(
    running: Running, fields: dict[str, Any], expected: grpc.StatusCode
) -> None:
    fields = {"user_id": new_user(), **fields}
    user_id = fields.pop("user_id")
    assert await code_of(running.stat.OnMessage(stat_message(user_id, **fields))) == expected


async def test_a_stat_message_without_payload_and_an_unknown_kind_are_refused(running: Running) -> None:
    no_payload = statistic_pb2.StatItemUpdated(user_id=new_user(), namespace=NS)
    assert await code_of(running.stat.OnMessage(no_payload)) == grpc.StatusCode.INVALID_ARGUMENT
    batch = ingest_pb2.EventBatch(events=[ingest_pb2.Event(id="k", user_id=new_user(), kind=99)])
    result = await running.ingest.Publish(batch)
    assert [(r.index, r.reason) for r in result.rejected] == [(0, "kind is required")]


async def test_a_message_over_the_size_limit_is_resource_exhausted(running: Running) -> None:
    huge = account_pb2.UserLoggedIn(user_id=new_user(), namespace=NS, id="x" * (MAX_MESSAGE_BYTES + 1))
    assert await code_of(running.login.OnMessage(huge)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def mutations(valid: bytes, rng: random.Random, count: int) -> list[bytes]:
    """Random bytes, truncations, and byte flips / insertions of a valid message."""
    out = []
    for index in range(count):
        kind = index % 4
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(1, 64)))
        elif kind == 1:
            out.append(valid[: rng.randrange(0, len(valid))])
        else:
            raw = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                position = rng.randrange(len(raw))
                if kind == 2:
                    raw[position] = rng.randrange(256)
                else:
                    raw[position:position] = rng.randbytes(rng.randrange(1, 4))
            out.append(bytes(raw))
    return out


async def test_random_and_mutated_messages_get_ok_or_invalid_argument_and_no_error_log(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(20261205)
    valid = {
        INGEST_UNARY_METHODS[0]: account_pb2.UserLoggedIn(id="m", user_id="fuzz", namespace=NS),
        INGEST_UNARY_METHODS[1]: stat_message("fuzz", 3.0, 1.0, id="m", timestamp="2026-01-01T00:00:00Z"),
        INGEST_UNARY_METHODS[2]: ingest_pb2.EventBatch(
            batch_id="b",
            events=[ingest_pb2.Event(id="m", user_id="fuzz", kind=ingest_pb2.EVENT_KIND_STAT, stat_code="kills")],
        ),
    }
    caplog.set_level(logging.WARNING)
    codes: dict[grpc.StatusCode, int] = {}
    for method, message in valid.items():
        call = running.channel.unary_unary(method)
        for raw in mutations(message.SerializeToString(), rng, 120):
            code = await code_of(call(raw, timeout=10))
            codes[code] = codes.get(code, 0) + 1
    assert set(codes) <= ACCEPTABLE, codes
    assert codes.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    # and the server still serves
    assert await code_of(running.login.OnMessage(account_pb2.UserLoggedIn(user_id="after", namespace=NS))) == (
        grpc.StatusCode.OK
    )

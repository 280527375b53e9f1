"""The player API end to end: uvicorn → routes → the real use cases → PostgreSQL and Redis (docs/http-api.md, docs/http-api.md#openapi;
H4 openapi part, L4, L9, L10, A4, A5).

Every response is validated with `jsonschema` (Draft 2020-12, as OpenAPI 3.1 uses) against the schema the
served OpenAPI document gives for its route, method and status, and the test checks that every documented
operation was exercised.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jsonschema
import psycopg
import pytest
import redis.asyncio as redis_asyncio
from psycopg import sql

from service.config.resources import example_catalog_path
from service.domain.catalog import Catalog, load_catalog
from service.storage.cache import Cache, open_redis
from service.storage.migrations import apply_migrations
from service.storage.registry import load_registry
from service.storage.store import PoolConfig, Queries, Store, open_pool
from service.transport.auth import AuthConfig, Authenticator
from service.transport.http_api import create_http_app, player_routes
from service.usecases.players import Players
from service.usecases.rewards import RewardConfig, RewardGranter
from tests.support.http import serve, stub_readiness

BASE = "/challenge"
NAMESPACE = "e2e-ns"
# A Wednesday noon: the daily, weekly and monthly goals of the example catalog all have a current period.
NOW = datetime(2030, 5, 15, 12, 0, tzinfo=UTC)
SECRET_IN_URL = "pw-e2e-do-not-leak"
FORBIDDEN_IN_BODIES = re.compile(r"Traceback|File \"|SELECT |INSERT |UPDATE |psycopg|" + SECRET_IN_URL)


def _players(catalog: Catalog, store: Store, cache: Cache, granter: RewardGranter) -> Players:
    return Players(
        catalog, store, Queries(load_registry()), cache, granter, NAMESPACE, "log", 10_000, clock=lambda: NOW
    )


def _cache(client: redis_asyncio.Redis, prefix: str, catalog: Catalog) -> Cache:
    return Cache(
        client,
        prefix,
        catalog.fingerprint,
        cache_ttl_s=300,
        synced_ttl_s=3600,
        journal_max=100,
        probe_interval_ms=60_000,
    )


def _app(catalog: Catalog, players: Players) -> Any:
    routes = player_routes(players, Authenticator(AuthConfig(mode="none")), catalog, BASE, 1024, clock=lambda: NOW)
    return create_http_app(stub_readiness(), BASE, catalog.fingerprint, player_routes=routes)


class Api:
    """Calls one running app as one user; validates every JSON response against the served document."""

    def __init__(self, session: aiohttp.ClientSession, url: str, document: dict[str, Any]) -> None:
        self.session, self.url, self.document = session, url, document
        self.exercised: set[tuple[str, str]] = set()
        self.user = "e2e-user"

    async def call(
        self, method: str, template: str, *, query: str = "", user: str | None = "", **kwargs: Any
    ) -> tuple[int, Any, bytes, Any]:
        """`template` is a documented path with `{...}` filled by `kwargs.pop("ids")`; returns
        (status, parsed body, raw body, headers) after validating the body against the document."""
        ids: dict[str, str] = kwargs.pop("ids", {})
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers["X-Mock-User-Id"] = user or self.user
        path = template.format(**ids) if ids else template
        async with self.session.request(
            method, f"{self.url}{BASE}{path}{query}", headers=headers, **kwargs
        ) as response:
            raw = await response.read()
            status, response_headers = response.status, response.headers
        assert response_headers["Content-Type"] == "application/json; charset=utf-8"
        body = json.loads(raw)
        self.validate(template, method, status, body)
        if status != 405:
            self.exercised.add((template, method.lower()))
        assert not FORBIDDEN_IN_BODIES.search(raw.decode()), raw
        return status, body, raw, response_headers

    def validate(self, template: str, method: str, status: int, body: Any) -> None:
        operation = self.document["paths"][template].get(method.lower())
        if operation is None:  # a method the route does not have: only the 405 error body is possible
            assert status == 405, f"{method} {template} is not documented but answered {status}"
            operation = {
                "responses": {"405": next(iter(self.document["paths"][template].values()))["responses"]["405"]}
            }
        documented = operation["responses"].get(str(status))
        assert documented is not None, f"{method} {template} answered undocumented status {status}: {body}"
        reference = documented["content"]["application/json"]["schema"]["$ref"]
        schema = {"$ref": reference, "components": self.document["components"]}
        jsonschema.Draft202012Validator(schema).validate(body)


class Env:
    def __init__(self, catalog: Catalog, store: Store, cache: Cache, api: Api) -> None:
        self.catalog, self.store, self.cache, self.api = catalog, store, cache, api

    async def complete(self, user_id: str, goal_id: str) -> None:
        """Mark a goal of `user_id` completed in PostgreSQL, as the event flusher would (making an implied row real first)."""
        async with self.store.connection() as conn:
            await conn.execute(
                load_registry().get("materialize_implied_goals").sql, {"user_id": user_id, "goal_ids": [goal_id]}
            )
            await conn.execute(
                "UPDATE user_goal_progress SET status = 'completed', progress = 1000, completed_at = %(t)s,"
                " updated_at = %(t)s WHERE user_id = %(u)s AND goal_id = %(g)s",
                {"t": NOW - timedelta(hours=1), "u": user_id, "g": goal_id},
            )
        await self.cache.invalidate(user_id)


@pytest.fixture(scope="module")
async def env(pg_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Env]:
    apply_migrations(pg_url)
    catalog = load_catalog(example_catalog_path())
    store = Store(await open_pool(pg_url, "service", PoolConfig(min_size=1, max_size=4)))
    client = open_redis(redis_url, max_connections=8, timeout_ms=2000)
    cache = _cache(client, f"{redis_prefix}-http", catalog)
    granter = RewardGranter(RewardConfig())
    async with (
        serve(_app(catalog, _players(catalog, store, cache, granter))) as url,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{url}{BASE}/openapi.json") as response:
            assert response.status == 200
            document = await response.json()
        yield Env(catalog, store, cache, Api(session, url, document))
    await granter.close()
    await client.aclose()
    await store.close()


def test_document_is_valid_openapi_31_with_schemas(env: Env) -> None:
    document = env.api.document
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    error_codes = schemas["ErrorBody"]["properties"]["errorCode"]["enum"]
    assert {"INVALID_REQUEST", "GOAL_NOT_FOUND", "PAYLOAD_TOO_LARGE", "ROUTE_NOT_FOUND"} <= set(error_codes)
    assert len(error_codes) == 23
    schemes = document["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    assert any(s.get("name") == "X-Mock-User-Id" for s in schemes.values())


async def test_player_journey_every_route_validates(env: Env) -> None:
    api, user = env.api, "journey-user"
    challenge = "/v1/challenges/{challenge_id}"
    goal = challenge + "/goals/{goal_id}"

    status, body, _, _ = await api.call("POST", "/v1/challenges/initialize", user=user)
    defaults = [g.goal_id for g in env.catalog.goals if g.default_assigned]
    assert status == 200 and body["newAssignments"] == len(defaults) == body["totalActive"]
    assert [g["goalId"] for g in body["assignedGoals"]] == defaults

    status, body, _, _ = await api.call("GET", "/v1/challenges", user=user)
    assert status == 200 and len(body["challenges"]) == len(env.catalog.challenges)
    status, body, _, _ = await api.call("GET", "/v1/challenges", query="?active_only=1", user=user)
    assert status == 200
    assert [g["goalId"] for c in body["challenges"] for g in c["goals"]] == defaults
    status, body, _, _ = await api.call("GET", challenge, ids={"challenge_id": "season-1"}, user=user)
    assert status == 200 and body["challengeId"] == "season-1"

    status, body, _, _ = await api.call(
        "PUT",
        goal + "/active",
        ids={"challenge_id": "season-1", "goal_id": "s1-veteran"},
        json={"isActive": True},
        user=user,
    )
    assert status == 200 and body["message"] == "Goal activated successfully"
    assert body["assignedAt"] == "2030-05-15T12:00:00Z"

    status, body, _, _ = await api.call(
        "POST",
        challenge + "/goals/batch-select",
        ids={"challenge_id": "weekly-ops"},
        json={"goal_ids": ["weekly-wins"], "replaceExisting": True},
        user=user,
    )
    assert status == 200 and [g["goalId"] for g in body["selectedGoals"]] == ["weekly-wins"]
    assert body["replacedGoals"] == ["weekly-captures"] and body["totalActiveGoals"] == 1

    status, body, _, _ = await api.call(
        "POST",
        challenge + "/goals/random-select",
        ids={"challenge_id": "monthly-mastery"},
        json={"count": 5},
        user=user,
    )
    assert status == 200 and body["selectedGoals"]

    await env.complete(user, "s1-welcome")
    claim_ids = {"challenge_id": "season-1", "goal_id": "s1-welcome"}
    status, body, _, _ = await api.call("POST", goal + "/claim", ids=claim_ids, user=user)
    assert status == 200 and body["status"] == "claimed" and body["claimedAt"] == "2030-05-15T12:00:00Z"
    status, body, _, _ = await api.call("POST", goal + "/claim", ids=claim_ids, user=user)
    assert (status, body["errorCode"]) == (409, "ALREADY_CLAIMED")
    status, body, _, _ = await api.call(
        "POST", goal + "/claim", ids={"challenge_id": "season-1", "goal_id": "s1-regular"}, user=user
    )
    assert (status, body["errorCode"]) == (400, "GOAL_NOT_COMPLETED")

    rotation = challenge + "/rotation"
    status, body, _, _ = await api.call("GET", rotation, ids={"challenge_id": "daily-grind"}, user=user)
    assert status == 200 and body["rotation"]["currentPeriod"] == {
        "startTime": "2030-05-15T00:00:00Z",
        "endTime": "2030-05-16T00:00:00Z",
        "expiresInSeconds": 43_200,
    }
    status, body, _, _ = await api.call("GET", rotation, ids={"challenge_id": "season-1"}, user=user)
    assert status == 200 and body["rotation"]["enabled"] is False and "currentPeriod" not in body["rotation"]

    for template in (challenge, challenge + "/rotation"):
        status, body, _, _ = await api.call("GET", template, ids={"challenge_id": "nope"}, user=user)
        assert (status, body["errorCode"]) == (404, "CHALLENGE_NOT_FOUND")
    status, body, _, _ = await api.call(
        "PUT",
        goal + "/active",
        ids={"challenge_id": "season-1", "goal_id": "daily-login"},
        json={"is_active": True},
        user=user,
    )
    assert (status, body["message"]) == (404, "goal 'daily-login' not found in challenge 'season-1'")

    documented = {(path, method) for path, item in api.document["paths"].items() for method in item}
    assert documented <= api.exercised, f"never exercised: {documented - api.exercised}"


async def test_cache_and_postgresql_responses_are_byte_identical(env: Env) -> None:
    """L9: the same state read through a cache miss (PostgreSQL), a hit, and again after the cache was
    emptied renders to the same bytes."""
    api, user = env.api, "parity-user"
    await api.call("POST", "/v1/challenges/initialize", user=user)
    await api.call(
        "PUT",
        "/v1/challenges/{challenge_id}/goals/{goal_id}/active",
        ids={"challenge_id": "daily-grind", "goal_id": "daily-takedowns"},
        json={"is_active": True},
        user=user,
    )
    reads = (("/v1/challenges", {}), ("/v1/challenges/{challenge_id}", {"challenge_id": "daily-grind"}))
    for template, ids in reads:
        await env.cache.invalidate(user)
        hits_before = env.cache.stats()["hits"]
        _, _, from_postgresql, _ = await api.call("GET", template, ids=ids, query="?active_only=true", user=user)
        _, _, from_cache, _ = await api.call("GET", template, ids=ids, query="?active_only=true", user=user)
        assert env.cache.stats()["hits"] > hits_before, "the second read was not served from the cache"
        assert from_cache == from_postgresql
        await env.cache.invalidate(user)
        _, _, again, _ = await api.call("GET", template, ids=ids, query="?active_only=true", user=user)
        assert again == from_postgresql


async def test_transport_and_validation_errors(env: Env) -> None:
    """A4, L4, 401, malformed bodies and camel/snake conflicts, through the real use cases."""
    api = env.api
    set_active = "/v1/challenges/{challenge_id}/goals/{goal_id}/active"
    ids = {"challenge_id": "season-1", "goal_id": "s1-veteran"}

    status, body, _, _ = await api.call("GET", "/v1/challenges", user=None)
    assert (status, body) == (401, {"errorCode": "UNAUTHORIZED", "message": "missing X-Mock-User-Id header"})
    status, body, _, _ = await api.call("GET", "/v1/challenges", query="?active_only=maybe")
    assert (status, body["message"]) == (400, "active_only must be true or false")
    for value in ("TRUE", "0", ""):
        status, _, _, _ = await api.call("GET", "/v1/challenges", query=f"?active_only={value}")
        assert status == 200

    status, body, _, headers = await api.call("GET", "/v1/challenges/initialize")
    assert (status, body["errorCode"], headers["Allow"]) == (405, "METHOD_NOT_ALLOWED", "POST")
    status, body, _, headers = await api.call("POST", set_active, ids=ids, json={"is_active": True})
    assert status == 405 and headers["Allow"] == "PUT"
    async with api.session.get(f"{api.url}{BASE}/v1/nothing-here") as response:
        assert response.status == 404 and (await response.json())["errorCode"] == "ROUTE_NOT_FOUND"
    status, body, _, _ = await api.call("PUT", set_active, ids=ids, json={"is_active": True, "pad": "x" * 2000})
    assert (status, body["errorCode"]) == (413, "PAYLOAD_TOO_LARGE")

    for payload, message in (
        (b"{not json", None),
        (b"[true]", None),
        (b'{"is_active": "yes"}', "is_active is required"),
        (b'{"is_active": true, "isActive": false}', None),
    ):
        status, body, _, _ = await api.call(
            "PUT", set_active, ids=ids, data=payload, headers={"Content-Type": "application/json"}
        )
        assert (status, body["errorCode"]) == (400, "INVALID_REQUEST"), payload
        if message is not None:
            assert body["message"] == message
    for declared in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream"):
        status, body, _, _ = await api.call(
            "PUT", set_active, ids=ids, data=b'{"is_active": true}', headers={"Content-Type": declared}
        )
        assert (status, body["errorCode"]) == (415, "UNSUPPORTED_MEDIA_TYPE"), declared
    status, body, _, _ = await api.call(
        "POST", "/v1/challenges/{challenge_id}/goals/random-select", ids={"challenge_id": "season-1"}, json={"count": 0}
    )
    assert (status, body["errorCode"]) == (400, "INVALID_COUNT")
    status, body, _, _ = await api.call(
        "POST",
        "/v1/challenges/{challenge_id}/goals/batch-select",
        ids={"challenge_id": "season-1"},
        json={"goal_ids": ["s1-welcome", 3]},
    )
    assert (status, body["errorCode"]) == (400, "INVALID_REQUEST")


async def test_request_id_and_fingerprint_headers(env: Env) -> None:
    _, _, _, headers = await env.api.call("GET", "/v1/challenges", headers={"X-Request-Id": "req-42"})
    assert headers["X-Request-Id"] == "req-42"
    assert headers["X-Catalog-Fingerprint"] == env.catalog.fingerprint
    _, _, _, headers = await env.api.call("GET", "/v1/challenges", user=None, headers={"X-Request-Id": "bad id"})
    assert headers["X-Request-Id"] not in ("", "bad id")
    assert headers["X-Catalog-Fingerprint"] == env.catalog.fingerprint


@pytest.mark.slow
async def test_database_outage_bodies_carry_no_internals(
    pg_admin_url: str, fresh_db: str, redis_url: str, redis_prefix: str
) -> None:
    """A5: PostgreSQL disappears under a running service (its database is dropped); every route answers a
    JSON error with no traceback, SQL, driver text or the password from the connection string."""
    apply_migrations(fresh_db)
    catalog = load_catalog(example_catalog_path())
    url_with_secret = psycopg.conninfo.make_conninfo(fresh_db, password=SECRET_IN_URL)
    store = Store(await open_pool(url_with_secret, "service", PoolConfig(min_size=1, max_size=2, timeout_ms=1000)))
    client = open_redis(redis_url, max_connections=4, timeout_ms=2000)
    granter = RewardGranter(RewardConfig())
    cache = _cache(client, f"{redis_prefix}-outage", catalog)
    try:
        async with (
            serve(_app(catalog, _players(catalog, store, cache, granter))) as url,
            aiohttp.ClientSession() as session,
        ):
            async with session.get(f"{url}{BASE}/openapi.json") as response:
                api = Api(session, url, await response.json())
            await api.call("POST", "/v1/challenges/initialize")
            with psycopg.connect(pg_admin_url, autocommit=True) as conn:
                dbname = psycopg.conninfo.conninfo_to_dict(fresh_db)["dbname"]
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
            for method, template, ids, payload in (
                ("GET", "/v1/challenges", {}, None),
                ("POST", "/v1/challenges/initialize", {}, None),
                (
                    "PUT",
                    "/v1/challenges/{challenge_id}/goals/{goal_id}/active",
                    {"challenge_id": "season-1", "goal_id": "s1-veteran"},
                    {"is_active": True},
                ),
                (
                    "POST",
                    "/v1/challenges/{challenge_id}/goals/{goal_id}/claim",
                    {"challenge_id": "season-1", "goal_id": "s1-welcome"},
                    None,
                ),
            ):
                # A user the cache has never seen, so no fast path can answer without PostgreSQL.
                status, body, _, headers = await api.call(method, template, ids=ids, json=payload, user="new-user")
                assert (status, body["errorCode"]) == (503, "DEPENDENCY_UNAVAILABLE"), template
                assert body["message"].startswith("Database error occurred (PostgreSQL: "), body
                assert headers["Retry-After"] == "1"
    finally:
        await granter.close()
        await client.aclose()
        await store.close()

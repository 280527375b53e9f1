"""The player HTTP layer over a real uvicorn server (docs/http-api.md#general-rules, docs/http-api.md#endpoints, docs/http-api.md#openapi; L4, A4): routing, the order of
checks, request-body parsing and limits, error bodies, headers, the OpenAPI route list and HTTP metrics.

The use cases are replaced by `RecordingPlayers` (tests/support/http.py), a small in-test implementation of the `Players`
methods that records each call and returns results built from the example catalog, so that what the
HTTP layer passes down is checked exactly. The end-to-end behaviour with the real use cases, PostgreSQL
and Redis is in test_http_e2e.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from service.config.resources import example_catalog_path
from service.domain.catalog import Catalog, load_catalog
from service.transport.auth import AuthConfig, Authenticator, mint_token
from service.transport.http_api import create_http_app, player_routes
from tests.support.http import BASE, MAX_BODY, SECRET, RecordingPlayers, serve, stub_readiness


class Api:
    """A client of the test server; `auth=True` sends a valid bearer token."""

    def __init__(self, session: aiohttp.ClientSession, url: str, players: RecordingPlayers) -> None:
        self.session, self.url, self.players = session, url, players
        self.token = mint_token(SECRET, "player-1")

    async def call(
        self, method: str, path: str, *, auth: bool = True, raw_path: bool = False, **kwargs: Any
    ) -> tuple[int, Any, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        url = self.url + (path if raw_path else BASE + path)
        async with self.session.request(method, url, headers=headers, **kwargs) as response:
            body = await response.read()
            parsed = await response.json(content_type=None) if body else None
            return response.status, parsed, response.headers


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(example_catalog_path())


@pytest.fixture(scope="module")
async def api(catalog: Catalog) -> AsyncIterator[Api]:
    players = RecordingPlayers(catalog)
    authenticator = Authenticator(AuthConfig(mode="jwt", hs256_key=SECRET))
    routes = player_routes(players, authenticator, catalog, BASE, MAX_BODY)  # type: ignore[arg-type]
    app = create_http_app(stub_readiness(), BASE, catalog.fingerprint, player_routes=routes)
    async with serve(app) as url, aiohttp.ClientSession() as session:
        yield Api(session, url, players)


def _error(body: Any) -> tuple[str, str]:
    assert set(body) == {"errorCode", "message"}
    return body["errorCode"], body["message"]


# --- routing ----------------------------------------------------------------------------------------


async def test_each_route_reaches_its_use_case_with_parsed_arguments(api: Api) -> None:
    cases = [
        ("GET", "/v1/challenges", {}, ("list_challenges", ("player-1", False))),
        ("GET", "/v1/challenges/season-1", {}, ("get_challenge", ("player-1", "season-1", False))),
        ("GET", "/v1/challenges/season-1?active_only=TRUE", {}, ("get_challenge", ("player-1", "season-1", True))),
        ("POST", "/v1/challenges/initialize", {"data": b"not json at all"}, ("initialize", ("player-1",))),
        (
            "PUT",
            "/v1/challenges/season-1/goals/s1-welcome/active",
            {"json": {"isActive": True}},
            ("set_active", ("player-1", "season-1", "s1-welcome", True)),
        ),
        (
            "POST",
            "/v1/challenges/season-1/goals/batch-select",
            {"json": {"goalIds": ["a", "b", "a"], "replace_existing": True, "unknown": [1]}},
            ("batch_select", ("player-1", "season-1", ("a", "b", "a"), True)),
        ),
        (
            "POST",
            "/v1/challenges/season-1/goals/random-select",
            {"json": {"count": 2, "excludeActive": True}},
            ("random_select", ("player-1", "season-1", 2, False, True)),
        ),
        (
            "POST",
            "/v1/challenges/season-1/goals/s1-welcome/claim",
            {"data": b"[ignored"},
            ("claim", ("player-1", "season-1", "s1-welcome")),
        ),
        ("GET", "/v1/challenges/season-1/rotation", {}, ("rotation_status", ("season-1",))),
    ]
    for method, path, kwargs, expected_call in cases:
        api.players.calls.clear()
        status, body, headers = await api.call(method, path, **kwargs)
        assert status == 200, (path, body)
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        assert api.players.calls == [expected_call], path


async def test_active_only_values(api: Api) -> None:
    """L4: true/1/false/0/empty/absent (any case) are accepted; anything else is 400."""
    for value, expected in (
        ("true", True),
        ("1", True),
        ("True", True),
        ("false", False),
        ("0", False),
        ("FALSE", False),
        ("", False),
    ):
        api.players.calls.clear()
        status, _, _ = await api.call("GET", f"/v1/challenges?active_only={value}")
        assert status == 200
        assert api.players.calls == [("list_challenges", ("player-1", expected))], value
    for value in ("yes", "2", "truee", "on"):
        status, body, _ = await api.call("GET", f"/v1/challenges?active_only={value}")
        assert (status, _error(body)) == (400, ("INVALID_REQUEST", "active_only must be true or false"))
        status, body, _ = await api.call("GET", f"/v1/challenges/season-1?active_only={value}")
        assert status == 400


async def test_unknown_routes_and_methods(api: Api) -> None:
    """A4: 404 ROUTE_NOT_FOUND, 405 with Allow; checked before authentication."""
    for path in (
        "/challenge/v2/challenges",
        "/v1/challenges",
        "/challenge/v1/challenges/c/goals",
        "/challenge/v1/challenges/c/goals/g/unknown",
        "/challenge",
    ):
        status, body, _ = await api.call("GET", path, auth=False, raw_path=True)
        assert status == 404 and _error(body)[0] == "ROUTE_NOT_FOUND", path
    status, body, headers = await api.call("DELETE", "/v1/challenges/season-1", auth=False)
    assert (status, _error(body)[0]) == (405, "METHOD_NOT_ALLOWED")
    assert set(headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    status, _, headers = await api.call("GET", "/v1/challenges/c/goals/g/claim", auth=False)
    assert status == 405 and headers["Allow"] == "POST"
    for method in ("GET", "PUT", "DELETE"):
        status, body, headers = await api.call(method, "/v1/challenges/initialize")
        assert (status, _error(body)[0], headers["Allow"]) == (405, "METHOD_NOT_ALLOWED", "POST"), method


async def test_empty_path_segments_reach_the_handler(api: Api) -> None:
    cases = [
        ("GET", "/v1/challenges/", "challenge_id is required"),
        ("GET", "/v1/challenges//rotation", "challenge_id is required"),
        ("PUT", "/v1/challenges/c/goals//active", "goal_id is required"),
        ("PUT", "/v1/challenges//goals/g/active", "challenge_id is required"),
        ("POST", "/v1/challenges/c/goals//claim", "goal_id is required"),
        ("POST", "/v1/challenges//goals/batch-select", "challenge_id is required"),
    ]
    for method, path, message in cases:
        api.players.calls.clear()
        status, body, _ = await api.call(method, path, json={"is_active": True})
        assert (status, _error(body)) == (400, ("INVALID_REQUEST", message)), path
        assert api.players.calls == []


async def test_use_case_errors_pass_through(api: Api) -> None:
    status, body, _ = await api.call("GET", "/v1/challenges/nope")
    assert (status, _error(body)) == (404, ("CHALLENGE_NOT_FOUND", "challenge 'nope' not found"))


# --- authentication and order of checks ---------------------------------------------------------------


async def test_authentication_comes_before_validation(api: Api) -> None:
    for method, path, kwargs in (
        ("GET", "/v1/challenges?active_only=maybe", {}),
        ("PUT", "/v1/challenges/c/goals//active", {"data": b"{bad"}),
        ("POST", "/v1/challenges/c/goals/random-select", {"json": {"count": 0}}),
        ("POST", "/v1/challenges/initialize", {}),
        ("GET", "/v1/challenges/c/rotation", {}),
    ):
        status, body, headers = await api.call(method, path, auth=False, **kwargs)
        assert (status, _error(body)) == (401, ("UNAUTHORIZED", "missing or malformed Authorization header"))
        assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, body, _ = await api.call(
        "GET", "/v1/challenges", auth=False, headers={"Authorization": "Bearer " + mint_token(b"x" * 32, "p")}
    )
    assert status == 401 and _error(body)[1].startswith("invalid token: ")


async def test_openapi_needs_no_authentication_and_lists_every_route(api: Api, catalog: Catalog) -> None:
    status, document, _ = await api.call("GET", "/openapi.json", auth=False)
    assert status == 200 and document["openapi"].startswith("3.1")
    routes = player_routes(
        RecordingPlayers(catalog),
        Authenticator(AuthConfig(mode="none")),  # type: ignore[arg-type]
        catalog,
        BASE,
        MAX_BODY,
    )
    for route in routes:
        template = route.path.removeprefix(BASE).replace(":segment", "")
        if template == "/openapi.json":
            continue
        assert template in document["paths"], template
        methods = {m.lower() for m in route.methods or {"POST"}} - {"head"}
        assert methods <= set(document["paths"][template]), template
    assert document["servers"] == [{"url": BASE}]


# --- request bodies ------------------------------------------------------------------------------------


async def test_set_active_body(api: Api) -> None:
    path = "/v1/challenges/c/goals/g/active"
    for body in ({"is_active": False}, {"isActive": False}, {"is_active": False, "isActive": False}):
        api.players.calls.clear()
        status, response, _ = await api.call("PUT", path, json=body)
        assert status == 200 and api.players.calls == [("set_active", ("player-1", "c", "g", False))]
        assert response["message"] == "Goal deactivated successfully"
    for body in ({}, {"is_active": None}, {"is_active": 1}, {"isActive": "true"}, {"other": True}):
        status, response, _ = await api.call("PUT", path, json=body)
        assert (status, _error(response)) == (400, ("INVALID_REQUEST", "is_active is required")), body
    status, response, _ = await api.call("PUT", path, json={"is_active": True, "isActive": False})
    assert (status, _error(response)[0]) == (400, "INVALID_REQUEST")
    assert "is_active" in response["message"] and "isActive" in response["message"]


async def test_malformed_bodies_are_400_without_internals(api: Api) -> None:
    path = "/v1/challenges/c/goals/batch-select"
    for raw in (b"{", b'{"goal_ids": ["a"]', b"\xff\xfe", b"[1, 2]", b'"text"', b"42", b"null"):
        status, response, _ = await api.call("POST", path, data=raw, headers={"Content-Type": "application/json"})
        code, message = _error(response)
        assert (status, code) == (400, "INVALID_REQUEST"), raw
        assert "Traceback" not in message and "msgspec" not in message and len(message) < 120


async def test_deeply_nested_bodies_are_400(api: Api) -> None:
    """Issue 11 item 2: nesting ~1000 deep (in a known or an ignored field) once raised RecursionError, a 500."""
    deep_object = b'{"a":' * 1000 + b"1" + b"}" * 1000
    deep_list = b"[" * 1000 + b"]" * 1000
    for path, field_name in (
        ("/v1/challenges/c/goals/g/active", b"is_active"),
        ("/v1/challenges/c/goals/batch-select", b"goal_ids"),
        ("/v1/challenges/c/goals/random-select", b"count"),
    ):
        for nested in (deep_object, deep_list):
            for body in (b'{"other":' + nested + b"}", b'{"' + field_name + b'":' + nested + b"}"):
                method = "PUT" if path.endswith("/active") else "POST"
                status, response, _ = await api.call(
                    method, path, data=body, headers={"Content-Type": "application/json"}
                )
                assert (status, _error(response)[0]) == (400, "INVALID_REQUEST"), (path, body[:20])


async def test_batch_select_body(api: Api) -> None:
    path = "/v1/challenges/c/goals/batch-select"
    for body in ({}, {"goal_ids": []}, {"goalIds": []}, {"replace_existing": True}):
        status, response, _ = await api.call("POST", path, json=body)
        assert (status, _error(response)) == (400, ("INVALID_REQUEST", "goal_ids cannot be empty")), body
    for body in (
        {"goal_ids": [1]},
        {"goal_ids": ["a", None]},
        {"goal_ids": "a"},
        {"goal_ids": ["a"], "replace_existing": "yes"},
    ):
        status, response, _ = await api.call("POST", path, json=body)
        assert (status, _error(response)[0]) == (400, "INVALID_REQUEST"), body
    for body in (
        {"goal_ids": ["a"], "goalIds": ["b"]},
        {"goal_ids": ["a"], "replace_existing": True, "replaceExisting": False},
    ):
        status, response, _ = await api.call("POST", path, json=body)
        assert (status, _error(response)[0]) == (400, "INVALID_REQUEST"), body
        assert "conflicting" in response["message"]
    api.players.calls.clear()
    status, _, _ = await api.call("POST", path, json={"goal_ids": ["a"], "goalIds": ["a"]})
    assert status == 200 and api.players.calls == [("batch_select", ("player-1", "c", ("a",), False))]


async def test_random_select_body(api: Api) -> None:
    path = "/v1/challenges/c/goals/random-select"
    for body in ({}, {"count": 0}, {"count": -3}, {"replace_existing": True}):
        status, response, _ = await api.call("POST", path, json=body)
        assert (status, _error(response)) == (400, ("INVALID_COUNT", "count must be greater than 0")), body
    for body in ({"count": "2"}, {"count": 1.5}, {"count": True}, {"count": None}, {"count": [1]}):
        status, response, _ = await api.call("POST", path, json=body)
        assert (status, _error(response)[0]) == (400, "INVALID_REQUEST"), body
    api.players.calls.clear()
    status, _, _ = await api.call("POST", path, data=b"")
    assert status == 400
    body = {"count": 3, "replaceExisting": True, "exclude_active": False}
    status, _, _ = await api.call("POST", path, json=body)
    assert status == 200
    assert api.players.calls == [("random_select", ("player-1", "c", 3, True, False))]


async def test_body_size_limit(api: Api) -> None:
    """A4: over `http_max_body_bytes` → 413, announced by Content-Length or streamed in chunks."""
    oversized = {"goal_ids": ["x" * MAX_BODY]}
    status, body, _ = await api.call("POST", "/v1/challenges/c/goals/batch-select", json=oversized)
    assert (status, _error(body)[0]) == (413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"goal_ids": ["'
        for _ in range(MAX_BODY // 100 + 1):
            yield b"y" * 100
        yield b'"]}'

    status, body, _ = await api.call("POST", "/v1/challenges/c/goals/batch-select", data=chunks())
    assert (status, _error(body)[0]) == (413, "PAYLOAD_TOO_LARGE")
    status, body, _ = await api.call("POST", "/v1/challenges/initialize", data=b" " * (MAX_BODY + 1))
    assert (status, _error(body)[0]) == (413, "PAYLOAD_TOO_LARGE")
    status, _, _ = await api.call(
        "POST", "/v1/challenges/c/goals/batch-select", json={"goal_ids": ["x" * (MAX_BODY - 40)]}
    )
    assert status == 200


# --- errors and headers --------------------------------------------------------------------------------


async def test_unexpected_failure_is_a_bare_500(api: Api) -> None:
    """A5: the cause stays in the log; the body is the fixed INTERNAL_ERROR text."""
    status, body, headers = await api.call("POST", "/v1/challenges/c/goals/explode/claim")
    assert (status, _error(body)) == (500, ("INTERNAL_ERROR", "Internal server error"))
    assert "X-Request-Id" in headers and "X-Catalog-Fingerprint" in headers


async def test_request_id_and_fingerprint_headers(api: Api, catalog: Catalog) -> None:
    status, _, headers = await api.call("GET", "/v1/challenges", headers={"X-Request-Id": "abc-123_XYZ"})
    assert status == 200 and headers["X-Request-Id"] == "abc-123_XYZ"
    assert headers["X-Catalog-Fingerprint"] == catalog.fingerprint
    for rejected in ("x" * 129, "has space", "caf\u00e9"):
        _, _, headers = await api.call("GET", "/v1/challenges", headers={"X-Request-Id": rejected})
        assert headers["X-Request-Id"] != rejected and len(headers["X-Request-Id"]) >= 32
    _, _, headers = await api.call("GET", "/nowhere", raw_path=True, headers={"X-Request-Id": "y" * 128})
    assert headers["X-Request-Id"] == "y" * 128
    assert headers["X-Catalog-Fingerprint"] == catalog.fingerprint


# --- metrics -------------------------------------------------------------------------------------------


def _requests_total(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("challenge_http_requests_total", labels) or 0.0


def _duration_count(route: str, method: str) -> float:
    labels = {"route": route, "method": method}
    return REGISTRY.get_sample_value("challenge_http_request_duration_seconds_count", labels) or 0.0


async def test_metrics_use_route_templates(api: Api) -> None:
    template = "/challenge/v1/challenges/{challenge_id}"
    before = (
        _requests_total(template, "GET", "200"),
        _requests_total(template, "GET", "404"),
        _requests_total("unmatched", "GET", "404"),
        _duration_count(template, "GET"),
        _requests_total(template, "other", "405"),
    )
    await api.call("GET", "/v1/challenges/season-1")
    await api.call("GET", "/v1/challenges/daily-grind")
    await api.call("GET", "/v1/challenges/unknown")
    await api.call("GET", "/elsewhere/x", raw_path=True)
    await api.call("PROPFIND", "/v1/challenges/season-1")
    after = (
        _requests_total(template, "GET", "200"),
        _requests_total(template, "GET", "404"),
        _requests_total("unmatched", "GET", "404"),
        _duration_count(template, "GET"),
        _requests_total(template, "other", "405"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1, 3, 1]
    assert (
        REGISTRY.get_sample_value(
            "challenge_http_requests_total",
            {"route": "/challenge/v1/challenges/season-1", "method": "GET", "status": "200"},
        )
        is None
    )

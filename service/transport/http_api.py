"""The player HTTP app (Starlette): player routes under base_path, health routes, the OpenAPI document,
HTTP metrics, and every failure as `{"errorCode","message"}` (docs/http-api.md#general-rules, docs/http-api.md#error-format, docs/http-api.md#endpoints, docs/http-api.md#health-and-readiness, docs/http-api.md#openapi)."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import Counter, Histogram
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.domain.catalog import Catalog
from service.domain.errors import DomainError
from service.domain.rules import utc_now
from service.telemetry.metrics import LATENCY_BUCKETS
from service.transport.admission import Admission
from service.transport.auth import Authenticator
from service.transport.errors import JSON_TYPE, ApiError, error_response, http_error, json_response
from service.transport.health import HEALTHY_BODY, Readiness
from service.transport.http_protocol import HTTP_REFUSED
from service.transport.openapi import encoded_openapi_document
from service.transport.payloads import (
    check_json_content_type,
    parse_batch_select,
    parse_random_select,
    parse_set_active,
    read_body,
)
from service.transport.responses import ResponseWriter

if TYPE_CHECKING:  # the use cases import the store and cache; the routes only call their methods
    from service.usecases.players import Players

log = logging.getLogger("challengectl.http")


def health_routes(readiness: Readiness, prefix: str = "") -> list[Route]:
    """`/healthz` (no I/O) and `/readyz` (dependency checks), optionally under a prefix."""

    async def healthz(request: Request) -> Response:
        return json_response(HEALTHY_BODY)

    async def readyz(request: Request) -> Response:
        ready, body = await readiness.check()
        return json_response(body, 200 if ready else 503, None if ready else {"Retry-After": "1"})

    return [
        Route(f"{prefix}/healthz", _Endpoint(healthz), methods=["GET"]),
        Route(f"{prefix}/readyz", _Endpoint(readyz), methods=["GET"]),
    ]


# --- player routes (docs/http-api.md#endpoints) --------------------------------------------------------------------


class _PathSegmentConvertor(Convertor[str]):
    """`[^/]*`: unlike Starlette's `str`, an empty segment matches, so the handler can answer
    400 `challenge_id is required` instead of a 404 (docs/http-api.md#general-rules)."""

    regex = "[^/]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segment", _PathSegmentConvertor())

_TRUE_VALUES = frozenset(("true", "1"))
_FALSE_VALUES = frozenset(("false", "0", ""))


class _JsonBody:
    """A 200 with a ready JSON body: two ASGI messages, without Starlette's per-response header building."""

    __slots__ = ("body",)
    _CONTENT_TYPE = (b"content-type", JSON_TYPE.encode())

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [self._CONTENT_TYPE, (b"content-length", b"%d" % len(self.body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def _json(body: bytes) -> _JsonBody:
    return _JsonBody(body)


# The query strings players send; anything else goes through the general parser.
_COMMON_QUERIES: dict[bytes, str | None] = {
    b"": None,
    b"active_only=true": "true",
    b"active_only=false": "false",
}


def _active_only(request: Request) -> bool:
    query: bytes = request.scope["query_string"]
    value = _COMMON_QUERIES[query] if query in _COMMON_QUERIES else request.query_params.get("active_only")
    if value is None:
        return False
    lowered = value.lower()
    if lowered in _TRUE_VALUES:
        return True
    if lowered in _FALSE_VALUES:
        return False
    raise ApiError(400, "INVALID_REQUEST", "active_only must be true or false")


def _path_id(request: Request, name: str) -> str:
    value: str = request.path_params[name]
    if not value:
        raise ApiError(400, "INVALID_REQUEST", f"{name} is required")
    return value


class _Endpoint:
    """A handler `Request -> Response` as the ASGI app of a `Route`. Unlike Starlette's own wrapper it adds
    no per-request exception layer: failures go up to `PlayerApi`, which answers them. A `Route` given an
    ASGI app sends it every method unless `methods` is set, so a handler can answer 405 with its own `Allow`."""

    __slots__ = ("_handler",)

    def __init__(self, handler: Callable[[Request], Awaitable[ASGIApp]]) -> None:
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._handler(Request(scope, receive))
        await response(scope, receive, send)


def player_routes(
    players: Players,
    authenticator: Authenticator,
    catalog: Catalog,
    base_path: str,
    max_body_bytes: int,
    clock: Callable[[], datetime] = utc_now,
) -> list[Route]:
    """The player endpoints and `{base_path}/openapi.json`, for `create_http_app(player_routes=...)`.

    Each handler checks, in docs/http-api.md#general-rules order: authentication → path ids → body → the use case.
    `clock` supplies the instant for the expiry fields of `GET /v1/challenges/{id}` (its result carries
    no `now`); pass the clock the `Players` use cases run on.
    """
    writer = ResponseWriter(catalog)
    openapi_body = encoded_openapi_document(base_path, __version__)

    async def body_of(request: Request) -> bytes:
        return await read_body(request.headers, request.stream(), max_body_bytes)

    async def json_body_of(request: Request) -> bytes:
        body = await body_of(request)
        if body:  # an empty body declares nothing, whatever its Content-Type says
            check_json_content_type(request.headers)
        return body

    async def list_challenges(request: Request) -> ASGIApp:
        user_id = await authenticator.authenticate(request.headers)
        active_only = _active_only(request)
        return _json(writer.challenge_list(await players.list_challenges(user_id, active_only)))

    async def get_challenge(request: Request) -> ASGIApp:
        user_id = await authenticator.authenticate(request.headers)
        challenge_id = _path_id(request, "challenge_id")
        active_only = _active_only(request)
        state = await players.get_challenge(user_id, challenge_id, active_only)
        return _json(writer.challenge(state, clock()))

    async def initialize(request: Request) -> ASGIApp:
        # Any method reaches this route, so that `{challenge_id}` never takes the literal `initialize`.
        if request.method != "POST":
            raise ApiError(405, "METHOD_NOT_ALLOWED", "method not allowed", {"Allow": "POST"})
        user_id = await authenticator.authenticate(request.headers)
        await body_of(request)  # ignored, but still bounded by the size limit
        return _json(writer.initialize(await players.initialize(user_id)))

    async def set_active(request: Request) -> ASGIApp:
        user_id = await authenticator.authenticate(request.headers)
        challenge_id, goal_id = _path_id(request, "challenge_id"), _path_id(request, "goal_id")
        parsed = parse_set_active(await json_body_of(request))
        return _json(writer.set_active(await players.set_active(user_id, challenge_id, goal_id, parsed.is_active)))

    async def batch_select(request: Request) -> ASGIApp:
        user_id = await authenticator.authenticate(request.headers)
        challenge_id = _path_id(request, "challenge_id")
        parsed = parse_batch_select(await json_body_of(request))
        result = await players.batch_select(user_id, challenge_id, parsed.goal_ids, parsed.replace_existing)
        return _json(writer.select(result))

    async def random_select(request: Request) -> ASGIApp:
        user_id = await authenticator.authenticate(request.headers)
        challenge_id = _path_id(request, "challenge_id")
        parsed = parse_random_select(await json_body_of(request))
        result = await players.random_select(
            user_id, challenge_id, parsed.count, parsed.replace_existing, parsed.exclude_active
        )
        return _json(writer.select(result))

    async def claim(request: Request) -> ASGIApp:
        user_id = await authenticator.authenticate(request.headers)
        challenge_id, goal_id = _path_id(request, "challenge_id"), _path_id(request, "goal_id")
        await body_of(request)  # ignored, but still bounded by the size limit
        return _json(writer.claim(await players.claim(user_id, challenge_id, goal_id)))

    async def rotation(request: Request) -> ASGIApp:
        await authenticator.authenticate(request.headers)
        challenge_id = _path_id(request, "challenge_id")
        return _json(writer.rotation_status(players.rotation_status(challenge_id)))

    async def openapi(request: Request) -> ASGIApp:
        return _json(openapi_body)

    challenges = f"{base_path}/v1/challenges"
    challenge = challenges + "/{challenge_id:segment}"
    goals = challenge + "/goals"
    return [
        Route(f"{base_path}/openapi.json", _Endpoint(openapi), methods=["GET"]),
        Route(challenges, _Endpoint(list_challenges), methods=["GET"]),
        Route(challenges + "/initialize", _Endpoint(initialize)),
        Route(challenge, _Endpoint(get_challenge), methods=["GET"]),
        Route(challenge + "/rotation", _Endpoint(rotation), methods=["GET"]),
        Route(goals + "/batch-select", _Endpoint(batch_select), methods=["POST"]),
        Route(goals + "/random-select", _Endpoint(random_select), methods=["POST"]),
        Route(goals + "/{goal_id:segment}/active", _Endpoint(set_active), methods=["PUT"]),
        Route(goals + "/{goal_id:segment}/claim", _Endpoint(claim), methods=["POST"]),
    ]


# --- the one ASGI layer: request ids, response headers, errors and metrics ------------------------------------------

HTTP_REQUESTS = Counter(
    "challenge_http_requests_total",
    "Player API requests by route template, method and status",
    ["route", "method", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "challenge_http_request_duration_seconds",
    "Player API request duration by route template and method",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
UNMATCHED_ROUTE = "unmatched"
# Request ids made here: 16 random hex digits per process, then a counter; unique without a random read
# (a getrandom call) per request.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()
# Scope key of a request that `early_answer` admitted (and counted in progress): when, by `perf_counter`.
_ADMITTED = "challengectl.admitted"
_OVERLOADED = HTTP_REFUSED.labels("overloaded")
_JSON_CONTENT_TYPE = (b"content-type", JSON_TYPE.encode())
_RETRY_AFTER = (b"retry-after", b"1")


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


# The status recorded for a request whose client went away before its answer (nginx's convention).
CLIENT_CLOSED_STATUS = 499
# Anything else a client sends is labelled `other`, so garbage methods cannot grow the label set.
_KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_CONVERTOR_SUFFIX = re.compile(r"\{(\w+):\w+\}")


class PlayerApi:
    """The player API's only ASGI layer around the router (docs/http-api.md#general-rules,
    docs/http-api.md#error-format, docs/http-api.md#admin-and-metrics). Per request it

    - keeps the caller's `X-Request-Id` (1-128 visible ASCII characters) or makes one, and adds it and
      `X-Catalog-Fingerprint` to the response;
    - answers every failure as `{"errorCode","message"}`: an `ApiError` as it is, the router's 404/405,
      anything else as a bare 500 with the cause in the log; a client that went away is not an error;
    - counts and times the request by its route template (`unmatched` when no route matched); label
      children are cached, so that costs two dict lookups, an increment and an observation.

    A request for a path without parameters (the listing, initialize, health) goes straight to its route,
    found in a dict, when the method is one the route takes; everything else goes through the router.
    """

    def __init__(
        self, router: Router, catalog_fingerprint: str, admitted_prefix: str, admission: Admission | None
    ) -> None:
        self.router = router
        self._static_routes = _static_routes(router)
        self.fingerprint = catalog_fingerprint.encode()
        self._admitted_prefix = admitted_prefix
        self._admission = admission
        self._route_labels: dict[str, str] = {}
        self._counters: dict[tuple[str, str, int], Callable[[], None]] = {}
        self._observers: dict[tuple[str, str], Callable[[float], None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        admission = self._admission
        # Timed from admission when the protocol admitted it: the wait for this task to run counts too.
        started = scope.pop(_ADMITTED, None)
        if started is None:
            answer = self.early_answer(scope)
            if answer is not None:
                status, headers, body = answer
                headers = [*headers, (b"content-length", b"%d" % len(body))]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            started = scope.pop(_ADMITTED, None)
            if started is None:
                admission = None  # not a guarded route
                started = time.perf_counter()
        request_id = _incoming_request_id(scope) or _new_request_id()
        scope["request_id"] = request_id
        scope["app"] = self  # makes the router raise its 404/405 instead of answering them in plain text
        extra = ((b"x-request-id", request_id.encode()), (b"x-catalog-fingerprint", self.fingerprint))
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            route = self._static_routes.get(scope["path"])
            if route is not None and (route.methods is None or scope["method"] in route.methods):
                # What the router would do for this route, without trying the routes before it.
                scope.update(router=self.router, route=route, endpoint=route.endpoint, path_params={})
                await route.app(scope, receive, send_with_headers)
            else:
                await self.router(scope, receive, send_with_headers)
        except ClientDisconnect:
            status = status or CLIENT_CLOSED_STATUS
        except Exception as exc:
            if status:
                raise  # the answer has started; uvicorn closes the connection
            await _error_for(scope, exc)(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            if admission is not None:
                admission.finished(elapsed)
            self._record(scope, status or 500, elapsed)

    def early_answer(self, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Admission control of a player request (docs/http-api.md#http-limits), asked by the HTTP protocol once
        the head is parsed, before any ASGI task exists: the whole 503 when it is refused, else None. An
        admitted request counts as in progress, and is timed, from here (a task waiting to run is load too,
        and its wait is part of how long requests take for the latency rule)."""
        admission = self._admission
        if admission is None or not scope["path"].startswith(self._admitted_prefix):
            return None
        refusal = admission.refusal()
        if refusal is None:
            admission.started()
            scope[_ADMITTED] = time.perf_counter()
            return None
        _OVERLOADED.inc()
        request_id = _incoming_request_id(scope) or _new_request_id()
        body = msgspec.json.encode({"errorCode": refusal.error_code, "message": refusal.message})
        headers = [
            _JSON_CONTENT_TYPE,
            _RETRY_AFTER,
            (b"x-request-id", request_id.encode()),
            (b"x-catalog-fingerprint", self.fingerprint),
        ]
        self._record(scope, 503, 0.0)
        return 503, headers, body

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = scope.get("route")
        route_label = self._route_label(getattr(route, "path", None))
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "other"
        count = self._counters.get((route_label, method, status))
        if count is None:
            count = self._counters[(route_label, method, status)] = HTTP_REQUESTS.labels(
                route_label, method, str(status)
            ).inc
        count()
        observe = self._observers.get((route_label, method))
        if observe is None:
            observe = self._observers[(route_label, method)] = HTTP_REQUEST_DURATION.labels(route_label, method).observe
        observe(elapsed)

    def _route_label(self, path: str | None) -> str:
        if path is None:
            return UNMATCHED_ROUTE
        label = self._route_labels.get(path)
        if label is None:
            label = self._route_labels[path] = _CONVERTOR_SUFFIX.sub(r"{\1}", path)
        return label


def _static_routes(router: Router) -> dict[str, Route]:
    """Routes of a path without parameters, by path; only where no earlier route also matches that path, so
    that the router would pick the same route."""
    static: dict[str, Route] = {}
    for index, route in enumerate(router.routes):
        if not isinstance(route, Route) or "{" in route.path or route.path in static:
            continue
        if not any(isinstance(e, Route) and e.path_regex.match(route.path) for e in router.routes[:index]):
            static[route.path] = route
    return static


def _error_for(scope: Scope, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return error_response(exc)
    if isinstance(exc, DomainError):
        return error_response(http_error(exc))
    if isinstance(exc, HTTPException):
        if exc.status_code == 405:
            return error_response(ApiError(405, "METHOD_NOT_ALLOWED", "method not allowed", dict(exc.headers or {})))
        if exc.status_code == 404:
            return error_response(ApiError(404, "ROUTE_NOT_FOUND", f"no route for {scope['path']}"))
        return error_response(ApiError(exc.status_code, "INVALID_REQUEST", str(exc.detail)))
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={"request_id": scope.get("request_id", ""), "route": scope.get("path", "")},
    )
    return error_response(ApiError(500, "INTERNAL_ERROR", "Internal server error"))


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if 1 <= len(value) <= 128 and all(0x21 <= byte <= 0x7E for byte in value):
                return value.decode()
            return None
    return None


def create_http_app(
    readiness: Readiness,
    base_path: str,
    catalog_fingerprint: str,
    player_routes: Sequence[BaseRoute] = (),
    admission: Admission | None = None,
) -> PlayerApi:
    """The player API app: health routes at the root and under base_path, then the player routes
    (see `player_routes`), behind the one `PlayerApi` layer; `admission` guards the `/v1/` routes."""
    # Player routes first: the router tries routes in order, and they carry the traffic.
    routes: list[BaseRoute] = [*player_routes, *health_routes(readiness), *health_routes(readiness, base_path)]
    router = Router(routes=routes, redirect_slashes=False)
    return PlayerApi(router, catalog_fingerprint, f"{base_path}/v1/", admission)

"""The admin app on admin_host:admin_port (docs/http-api.md#admin-and-metrics): metrics, effective config, health, and how the
pool and cache numbers of several processes (`serve --workers N`) combine into one body."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.telemetry.pool_stats import nearest_rank
from service.transport.errors import ApiError, error_response, json_response
from service.transport.health import Readiness
from service.transport.http_api import health_routes

if TYPE_CHECKING:
    from service.storage.cache import Cache
    from service.storage.store import Store

JsonView = Callable[[], "dict[str, Any] | Awaitable[dict[str, Any]]"]

OPEN_PATHS = ("/healthz", "/readyz")


class AdminTokenGuard:
    """When admin_token is set, every route but /healthz and /readyz needs `Bearer <admin_token>`."""

    def __init__(self, app: ASGIApp, admin_token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {admin_token}".encode() if admin_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.expected and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization")
            if given is None:
                await error_response(ApiError(401, "UNAUTHORIZED", "admin token required"))(scope, receive, send)
                return
            if given != self.expected:
                await error_response(ApiError(403, "FORBIDDEN", "admin token rejected"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(ApiError(405, "METHOD_NOT_ALLOWED", "method not allowed", dict(exc.headers or {})))
    return error_response(ApiError(exc.status_code, "ROUTE_NOT_FOUND", f"no route for {request.url.path}"))


def create_admin_app(
    readiness: Readiness,
    admin_token: str | None,
    json_views: Mapping[str, JsonView],
    reset_peaks: Callable[[], None | Awaitable[None]],
    metrics_registry: CollectorRegistry = REGISTRY,
) -> ASGIApp:
    """`json_views` maps admin paths (`/admin/config`, `/admin/pool`, `/admin/cache`, ...) to functions
    returning their JSON body (or a coroutine of it, when other processes are asked); each is served on
    GET. `POST /admin/reset-peaks` calls `reset_peaks`. `/metrics` exposes `metrics_registry`."""

    async def reset(request: Request) -> Response:
        await _resolved(reset_peaks())
        return Response(status_code=204)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    def json_route(path: str, view: JsonView) -> Route:
        async def endpoint(request: Request) -> Response:
            return json_response(await _resolved(view()))

        return Route(path, endpoint, methods=["GET"])

    routes = [
        *health_routes(readiness),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/reset-peaks", reset, methods=["POST"]),
        *(json_route(path, view) for path, view in json_views.items()),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _not_found})
    return AdminTokenGuard(app, admin_token)


async def _resolved(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def process_stats(store: Store, cache: Cache) -> dict[str, Any]:
    """One process's pool and cache numbers, with the raw acquire waits so that percentiles can be
    computed over the samples of every process (`combine_pool_stats`)."""
    return {
        "db": store.stats(),
        "db_acquire_waits_ms": store.usage.waits_ms(),
        "redis": cache.redis_pool_stats(),
        "cache": cache.stats(),
    }


# Keys of the `db` and `redis` bodies that are not summed over processes.
_DB_DERIVED = {"utilisation", "acquire_wait_ms_p50", "acquire_wait_ms_p95"}
_REDIS_ALL_OF = {"healthy"}


def combine_pool_stats(per_process: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `/admin/pool` body of an instance from its processes' `process_stats` (docs/http-api.md#admin-and-metrics): numbers
    summed (`peak_in_use` is the sum of the per-process peaks), utilisation and percentiles recomputed
    over everything, and Redis `healthy` only when every process is healthy."""
    db = _sum_numbers([stats["db"] for stats in per_process], skip=_DB_DERIVED)
    db["utilisation"] = db["in_use"] / db["max_size"] if db["max_size"] else 0.0
    waits = [wait for stats in per_process for wait in stats["db_acquire_waits_ms"]]
    db["acquire_wait_ms_p50"] = round(nearest_rank(waits, 0.50), 3)
    db["acquire_wait_ms_p95"] = round(nearest_rank(waits, 0.95), 3)
    redis = _sum_numbers([stats["redis"] for stats in per_process], skip=_REDIS_ALL_OF)
    redis["healthy"] = all(stats["redis"]["healthy"] for stats in per_process)
    return {"db": _in_order(db, per_process[0]["db"]), "redis": _in_order(redis, per_process[0]["redis"])}


def combine_cache_stats(per_process: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `/admin/cache` body of an instance: counters and `journal_pending` summed, `healthy` only when
    every process is healthy, `bypass` when any process bypasses, `hit_ratio` recomputed."""
    bodies = [stats["cache"] for stats in per_process]
    combined = _sum_numbers(bodies, skip={"enabled", "healthy", "bypass", "hit_ratio", "by_kind"})
    combined["enabled"] = any(body["enabled"] for body in bodies)
    combined["healthy"] = all(body["healthy"] for body in bodies)
    combined["bypass"] = any(body["bypass"] for body in bodies)
    lookups = combined["hits"] + combined["misses"]
    combined["hit_ratio"] = combined["hits"] / lookups if lookups else 0.0
    combined["by_kind"] = {
        kind: _sum_numbers([body["by_kind"][kind] for body in bodies], skip=set()) for kind in bodies[0]["by_kind"]
    }
    return _in_order(combined, bodies[0])


def _sum_numbers(bodies: Sequence[Mapping[str, Any]], skip: set[str]) -> dict[str, Any]:
    return {key: sum(body[key] for body in bodies) for key in bodies[0] if key not in skip}


def _in_order(combined: dict[str, Any], template: Mapping[str, Any]) -> dict[str, Any]:
    """The keys in the order of a single process's body, so that both bodies read the same."""
    return {key: combined[key] for key in template}

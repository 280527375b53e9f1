"""The admin app on admin_host:admin_port (SPEC §5.6): metrics, effective config, health."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ApiError, error_response, json_response
from service.health import Readiness
from service.http_api import health_routes

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
    json_views: Mapping[str, Callable[[], dict[str, Any]]],
    reset_peaks: Callable[[], None],
) -> ASGIApp:
    """`json_views` maps admin paths (`/admin/config`, `/admin/pool`, `/admin/cache`, ...) to functions
    returning their JSON body; each is served on GET. `POST /admin/reset-peaks` calls `reset_peaks`."""

    async def reset(request: Request) -> Response:
        reset_peaks()
        return Response(status_code=204)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    def json_route(path: str, view: Callable[[], dict[str, Any]]) -> Route:
        async def endpoint(request: Request) -> Response:
            return json_response(view())

        return Route(path, endpoint, methods=["GET"])

    routes = [
        *health_routes(readiness),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/reset-peaks", reset, methods=["POST"]),
        *(json_route(path, view) for path, view in json_views.items()),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _not_found})
    return AdminTokenGuard(app, admin_token)

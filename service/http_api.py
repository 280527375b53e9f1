"""The player HTTP app (Starlette): routes under base_path, health routes, and every failure as
`{"errorCode","message"}` (SPEC §5.1, §5.3, §5.5)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError, error_response, json_response
from service.health import HEALTHY_BODY, Readiness

log = logging.getLogger("challengectl.http")


def health_routes(readiness: Readiness, prefix: str = "") -> list[Route]:
    """`/healthz` (no I/O) and `/readyz` (dependency checks), optionally under a prefix."""

    async def healthz(request: Request) -> Response:
        return json_response(HEALTHY_BODY)

    async def readyz(request: Request) -> Response:
        ready, body = await readiness.check()
        return json_response(body, 200 if ready else 503, None if ready else {"Retry-After": "1"})

    return [
        Route(f"{prefix}/healthz", healthz, methods=["GET"]),
        Route(f"{prefix}/readyz", readyz, methods=["GET"]),
    ]


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(ApiError(405, "METHOD_NOT_ALLOWED", "method not allowed", dict(exc.headers or {})))
    if exc.status_code == 404:
        return error_response(ApiError(404, "ROUTE_NOT_FOUND", f"no route for {request.url.path}"))
    return error_response(ApiError(exc.status_code, "INVALID_REQUEST", str(exc.detail)))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"request_id": request.scope.get("request_id", ""),
                                            "route": request.url.path})
    return error_response(ApiError(500, "INTERNAL_ERROR", "Internal server error"))


class ResponseHeaders:
    """Pure ASGI middleware: `X-Request-Id` (kept when 1-128 visible ASCII chars, else a new UUID)
    and `X-Catalog-Fingerprint` on every response."""

    def __init__(self, app: ASGIApp, catalog_fingerprint: str) -> None:
        self.app = app
        self.fingerprint = catalog_fingerprint.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope["request_id"] = request_id
        extra = [(b"x-request-id", request_id.encode()), (b"x-catalog-fingerprint", self.fingerprint)]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


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
) -> ASGIApp:
    """The player API app: health routes at the root and under base_path, then the player routes."""
    routes: list[BaseRoute] = [*health_routes(readiness), *health_routes(readiness, base_path), *player_routes]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_exception, ApiError: _api_error, Exception: _unexpected},
    )
    app.router.redirect_slashes = False
    return ResponseHeaders(app, catalog_fingerprint)

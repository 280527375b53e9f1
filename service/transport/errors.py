"""The HTTP error body `{"errorCode","message"}` (docs/http-api.md#error-format), shared by the player API and the
admin app, and the HTTP status of each kind of domain error."""

from __future__ import annotations

import re

import msgspec
from starlette.responses import Response

from service.domain import errors as domain
from service.transport.timestamps import format_timestamp

JSON_TYPE = "application/json; charset=utf-8"
# Messages echo ids the caller sent (`challenge 'x' not found`); a longer run than this is shown cut, so a
# 60 KB id is not sent back whole. Real ids are at most 100 characters.
MAX_ECHOED_CHARS = 128
_LONG_RUN = re.compile(rf"[^\s'\"]{{{MAX_ECHOED_CHARS + 1},}}")


class ApiError(Exception):
    """A failure with its HTTP status, errorCode and a message safe to show to the caller."""

    def __init__(self, status: int, error_code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers or {}


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type=JSON_TYPE, headers=headers)


def error_response(error: ApiError) -> Response:
    headers = dict(error.headers)
    if error.status == 503:
        headers.setdefault("Retry-After", "1")
    return json_response({"errorCode": error.error_code, "message": shorten(error.message)}, error.status, headers)


HTTP_STATUS: dict[type[domain.DomainError], int] = {
    domain.InvalidRequest: 400,
    domain.NotFound: 404,
    domain.Conflict: 409,
    domain.Exhausted: 429,
    domain.InternalFailure: 500,
    domain.UpstreamFailed: 502,
    domain.Unavailable: 503,
}


def http_error(error: domain.DomainError) -> ApiError:
    """The HTTP form of a use case's failure: the status of its kind, its errorCode and its message."""
    status = next((HTTP_STATUS[kind] for kind in type(error).__mro__ if kind in HTTP_STATUS), 500)
    return ApiError(status, error.error_code, _http_message(error))


def _http_message(error: domain.DomainError) -> str:
    """The message as docs/http-api.md#endpoints words it; two messages name HTTP things (a route, a JSON timestamp)."""
    if isinstance(error, domain.GoalNotActive):
        return (
            f"Goal must be active to claim reward. Activate it first via PUT "
            f"/v1/challenges/{error.challenge_id}/goals/{error.goal_id}/active (goal_id: {error.goal_id})"
        )
    if isinstance(error, domain.AlreadyClaimed):
        return (
            f"Reward has already been claimed (goal_id: {error.goal_id}, "
            f"claimed_at: {format_timestamp(error.claimed_at)})"
        )
    return error.message


def shorten(message: str) -> str:
    """`message` with every run of more than MAX_ECHOED_CHARS non-blank, unquoted characters cut to that
    length plus `...`; short messages (all normal ones) are returned as they are."""
    if len(message) <= MAX_ECHOED_CHARS:
        return message
    return _LONG_RUN.sub(lambda run: run.group()[:MAX_ECHOED_CHARS] + "...", message)

"""The HTTP error body `{"errorCode","message"}` (docs/http-api.md#error-format), shared by the player API and the admin app."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

JSON_TYPE = "application/json; charset=utf-8"


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
    return json_response({"errorCode": error.error_code, "message": error.message}, error.status, headers)

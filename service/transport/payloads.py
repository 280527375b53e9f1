"""Player request bodies (docs/http-api.md#general-rules, docs/http-api.md#endpoints): reading under the size limit, decoding into typed Structs,
merging the snake_case and camelCase spellings, and the exact 400 messages.

The wire Structs accept both spellings of every field (they are also the OpenAPI request schemas);
`parse_*` turn them into the plain requests the handlers pass to the use cases.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
from msgspec import UNSET, Struct, UnsetType, field

from service.transport.errors import ApiError

# --- wire Structs (request schemas) ---------------------------------------------------------------


class SetActiveRequest(Struct):
    """Body of `PUT /v1/challenges/{challenge_id}/goals/{goal_id}/active`: `is_active` (or `isActive`)
    is required. Unknown fields are ignored."""

    is_active: bool | UnsetType = UNSET
    is_active_camel: bool | UnsetType = field(default=UNSET, name="isActive")


class BatchSelectRequest(Struct):
    """Body of `POST .../goals/batch-select`: a non-empty `goal_ids` (or `goalIds`) list;
    `replace_existing` (or `replaceExisting`) defaults to false."""

    goal_ids: list[str] | UnsetType = UNSET
    goal_ids_camel: list[str] | UnsetType = field(default=UNSET, name="goalIds")
    replace_existing: bool | UnsetType = UNSET
    replace_existing_camel: bool | UnsetType = field(default=UNSET, name="replaceExisting")


class RandomSelectRequest(Struct):
    """Body of `POST .../goals/random-select`: `count` > 0 is required; `replace_existing` and
    `exclude_active` (or their camelCase spellings) default to false."""

    count: int | UnsetType = UNSET
    replace_existing: bool | UnsetType = UNSET
    replace_existing_camel: bool | UnsetType = field(default=UNSET, name="replaceExisting")
    exclude_active: bool | UnsetType = UNSET
    exclude_active_camel: bool | UnsetType = field(default=UNSET, name="excludeActive")


REQUEST_STRUCTS: tuple[type[Struct], ...] = (SetActiveRequest, BatchSelectRequest, RandomSelectRequest)

# --- parsed requests (what the use cases receive) -------------------------------------------------


class SetActive(Struct, frozen=True):
    is_active: bool


class BatchSelect(Struct, frozen=True):
    goal_ids: tuple[str, ...]
    replace_existing: bool


class RandomSelect(Struct, frozen=True):
    count: int
    replace_existing: bool
    exclude_active: bool


# --- reading -----------------------------------------------------------------------------------


async def read_body(headers: Any, stream: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The request body, refused with 413 when `Content-Length` announces more than `max_bytes` or when
    more arrives (chunked or lying clients); nothing past the limit is kept."""
    announced = headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def check_json_content_type(headers: Any) -> None:
    """Refuse (415) a body declared as something other than JSON (`application/json` or `*/*+json`); a
    request without `Content-Type` is read as JSON, as before."""
    declared = headers.get("content-type")
    if declared is None:
        return
    media_type = declared.partition(";")[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "request body must be application/json")


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "PAYLOAD_TOO_LARGE", f"request body exceeds {max_bytes} bytes")


# --- decoding ----------------------------------------------------------------------------------

_WireT = TypeVar("_WireT", bound=Struct)
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {wire: msgspec.json.Decoder(wire) for wire in REQUEST_STRUCTS}
_ERROR_FIELD = re.compile(r" - at `\$\.(\w+)")


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_REQUEST", message)


def _decode(wire: type[_WireT], body: bytes, field_messages: dict[str, str]) -> _WireT:
    """Decode `body` into `wire`. An empty body counts as `{}`, so a missing field gets its own message.
    `field_messages` overrides the message of a type error on a given (top-level) field."""
    if not body.strip():
        body = b"{}"
    try:
        decoded: _WireT = _DECODERS[wire].decode(body)
    except msgspec.ValidationError as exc:
        detail = str(exc)
        if " - at " not in detail:
            raise _invalid("request body must be a JSON object") from None
        found = _ERROR_FIELD.search(detail)
        if found is not None and found.group(1) in field_messages:
            raise _invalid(field_messages[found.group(1)]) from None
        raise _invalid(f"invalid request body: {detail}") from None
    except msgspec.DecodeError:
        raise _invalid("malformed JSON in request body") from None
    except RecursionError:
        # msgspec walks nested values (also of ignored fields) recursively; a body nested ~1000 deep
        # exhausts the interpreter's stack long before the size limit.
        raise _invalid("request body is nested too deeply") from None
    return decoded


def _merge(snake: Any, camel: Any, snake_name: str, camel_name: str) -> Any:
    """The one value given for a field in either spelling; both given and different → 400."""
    if snake is UNSET:
        return camel
    if camel is not UNSET and camel != snake:
        raise _invalid(f"conflicting values for {snake_name} and {camel_name}")
    return snake


def _flag(snake: bool | UnsetType, camel: bool | UnsetType, snake_name: str, camel_name: str) -> bool:
    value = _merge(snake, camel, snake_name, camel_name)
    return False if value is UNSET else value


_IS_ACTIVE_REQUIRED = "is_active is required"
_GOAL_IDS_EMPTY = "goal_ids cannot be empty"


def parse_set_active(body: bytes) -> SetActive:
    """`is_active` (or `isActive`): missing or not a boolean → 400 `is_active is required`."""
    wire = _decode(SetActiveRequest, body, {"is_active": _IS_ACTIVE_REQUIRED, "isActive": _IS_ACTIVE_REQUIRED})
    value = _merge(wire.is_active, wire.is_active_camel, "is_active", "isActive")
    if value is UNSET:
        raise _invalid(_IS_ACTIVE_REQUIRED)
    return SetActive(is_active=value)


def parse_batch_select(body: bytes) -> BatchSelect:
    """A missing or empty `goal_ids` → 400 `goal_ids cannot be empty`; a non-list or non-string item →
    400 INVALID_REQUEST. Duplicates are kept: the use case removes them (docs/http-api.md#endpoints)."""
    wire = _decode(
        BatchSelectRequest,
        body,
        {
            "goal_ids": "goal_ids must be a list of strings",
            "goalIds": "goal_ids must be a list of strings",
        },
    )
    goal_ids = _merge(wire.goal_ids, wire.goal_ids_camel, "goal_ids", "goalIds")
    if goal_ids is UNSET or not goal_ids:
        raise _invalid(_GOAL_IDS_EMPTY)
    return BatchSelect(
        goal_ids=tuple(goal_ids),
        replace_existing=_flag(
            wire.replace_existing, wire.replace_existing_camel, "replace_existing", "replaceExisting"
        ),
    )


def parse_random_select(body: bytes) -> RandomSelect:
    """`count` missing or ≤ 0 → 400 INVALID_COUNT; a non-integer `count` → 400 INVALID_REQUEST."""
    wire = _decode(RandomSelectRequest, body, {"count": "count must be an integer"})
    if wire.count is UNSET or wire.count <= 0:
        raise ApiError(400, "INVALID_COUNT", "count must be greater than 0")
    return RandomSelect(
        count=wire.count,
        replace_existing=_flag(
            wire.replace_existing, wire.replace_existing_camel, "replace_existing", "replaceExisting"
        ),
        exclude_active=_flag(wire.exclude_active, wire.exclude_active_camel, "exclude_active", "excludeActive"),
    )

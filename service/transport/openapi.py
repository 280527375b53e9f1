"""The OpenAPI 3.1 document of the player API (docs/http-api.md#openapi), generated from the request and response
Structs with `msgspec.json.schema_components`; only the operations table below is written by hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import Struct

from service.transport import payloads, responses

COMPONENT_REF = "#/components/schemas/{name}"
BEARER_SCHEME = "bearerJwt"
MOCK_USER_SCHEME = "mockUserId"

# Failures every authenticated operation can return; operations add their own.
_COMMON_ERRORS: dict[int, str] = {
    401: "Missing or invalid credentials",
    403: "Token not accepted by this service",
    404: "No such route",
    405: "Method not allowed for this route",
    408: "Request head or body not received within the HTTP timeouts",
    414: "Request URL over http_max_header_bytes",
    431: "Request headers over http_max_header_bytes or http_max_headers",
    500: "Unexpected failure",
    503: "A dependency is unavailable (DEPENDENCY_UNAVAILABLE) or the service is overloaded (SERVICE_OVERLOADED)",
}


@dataclass(frozen=True)
class Operation:
    """One player endpoint: path (relative to base_path), method and its request/response schemas."""

    path: str
    method: str
    operation_id: str
    summary: str
    response: type[Struct]
    request: type[Struct] | None = None
    errors: tuple[tuple[int, str], ...] = ()
    query: tuple[dict[str, Any], ...] = ()


_CHALLENGE_PATH = "/v1/challenges/{challenge_id}"
_GOAL_PATH = _CHALLENGE_PATH + "/goals/{goal_id}"
_BAD_PATH_IDS = (400, "Empty path id or invalid body")
_NOT_FOUND = (404, "Unknown challenge or goal, or no such route")
_TOO_LARGE = (413, "Body over http_max_body_bytes")
_NOT_JSON = (415, "A non-empty body declared as something other than application/json")
_ACTIVE_ONLY = {
    "name": "active_only",
    "in": "query",
    "required": False,
    "description": "`true` or `1` (case-insensitive) lists only active goals; `false`, `0` or empty do not; "
    "anything else is 400",
    "schema": {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)?$"},
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/v1/challenges",
        "get",
        "listChallenges",
        "List challenges with the player's progress",
        responses.ChallengeList,
        errors=((400, "Bad active_only value"),),
        query=(_ACTIVE_ONLY,),
    ),
    Operation(
        "/v1/challenges/initialize",
        "post",
        "initializePlayer",
        "Assign default goals and return the player's active goals (body ignored)",
        responses.InitializeResponse,
        errors=(_TOO_LARGE,),
    ),
    Operation(
        _CHALLENGE_PATH,
        "get",
        "getChallenge",
        "One challenge with the player's progress",
        responses.Challenge,
        errors=(_BAD_PATH_IDS, _NOT_FOUND),
        query=(_ACTIVE_ONLY,),
    ),
    Operation(
        _GOAL_PATH + "/active",
        "put",
        "setGoalActive",
        "Activate or deactivate a goal",
        responses.SetActiveResponse,
        payloads.SetActiveRequest,
        errors=(_BAD_PATH_IDS, _NOT_FOUND, _TOO_LARGE, _NOT_JSON),
    ),
    Operation(
        _CHALLENGE_PATH + "/goals/batch-select",
        "post",
        "batchSelectGoals",
        "Activate the listed goals",
        responses.SelectResponse,
        payloads.BatchSelectRequest,
        errors=(_BAD_PATH_IDS, _NOT_FOUND, _TOO_LARGE, _NOT_JSON),
    ),
    Operation(
        _CHALLENGE_PATH + "/goals/random-select",
        "post",
        "randomSelectGoals",
        "Activate randomly chosen eligible goals",
        responses.SelectResponse,
        payloads.RandomSelectRequest,
        errors=((400, "Invalid body, INVALID_COUNT or INSUFFICIENT_GOALS"), _NOT_FOUND, _TOO_LARGE, _NOT_JSON),
    ),
    Operation(
        _GOAL_PATH + "/claim",
        "post",
        "claimReward",
        "Claim the reward of a completed goal (body ignored)",
        responses.ClaimResponse,
        errors=(
            (400, "Goal not claimable"),
            _NOT_FOUND,
            (409, "Already claimed"),
            _TOO_LARGE,
            (502, "The reward could not be granted"),
        ),
    ),
    Operation(
        _CHALLENGE_PATH + "/rotation",
        "get",
        "getRotationStatus",
        "The challenge's rotation periods",
        responses.RotationStatusResponse,
        errors=(_BAD_PATH_IDS, _NOT_FOUND),
    ),
)


def _path_parameters(path: str) -> list[dict[str, Any]]:
    names = [segment[1:-1] for segment in path.split("/") if segment.startswith("{")]
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}} for name in names
    ]


# --- request rules the Structs cannot state (docs/http-api.md#general-rules) -------------------------
# The document is as strict as payloads.py: a field is required in either spelling, two spellings of a
# flag must agree, goal_ids is non-empty, count is positive.


def _in_either_spelling(snake: str, camel: str) -> dict[str, Any]:
    return {"anyOf": [{"required": [snake]}, {"required": [camel]}]}


def _flags_agree(snake: str, camel: str) -> dict[str, Any]:
    disagree = [
        {"properties": {snake: {"const": first}, camel: {"const": not first}}, "required": [snake, camel]}
        for first in (True, False)
    ]
    return {"not": {"anyOf": disagree}}


def _one_spelling(snake: str, camel: str) -> dict[str, Any]:
    # Both spellings of a list are accepted when equal; a schema cannot compare them, so it allows one.
    return {"not": {"required": [snake, camel]}}


_REQUEST_RULES: dict[str, dict[str, Any]] = {
    "SetActiveRequest": {
        "allOf": [_in_either_spelling("is_active", "isActive"), _flags_agree("is_active", "isActive")]
    },
    "BatchSelectRequest": {
        "allOf": [
            _in_either_spelling("goal_ids", "goalIds"),
            _one_spelling("goal_ids", "goalIds"),
            _flags_agree("replace_existing", "replaceExisting"),
        ]
    },
    "RandomSelectRequest": {
        "required": ["count"],
        "allOf": [_flags_agree("replace_existing", "replaceExisting"), _flags_agree("exclude_active", "excludeActive")],
    },
}
_PROPERTY_RULES: dict[tuple[str, str], dict[str, Any]] = {
    ("BatchSelectRequest", "goal_ids"): {"minItems": 1},
    ("BatchSelectRequest", "goalIds"): {"minItems": 1},
    ("RandomSelectRequest", "count"): {"minimum": 1},
}


def _with_request_rules(schemas: dict[str, Any]) -> dict[str, Any]:
    for name, rules in _REQUEST_RULES.items():
        schemas[name].update(rules)
    for (name, field), rules in _PROPERTY_RULES.items():
        schemas[name]["properties"][field].update(rules)
    return schemas


def _json_content(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": COMPONENT_REF.format(name=schema_name)}}}


def _operation(op: Operation) -> dict[str, Any]:
    errors = dict(_COMMON_ERRORS)
    errors.update(dict(op.errors))
    operation: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "parameters": [*_path_parameters(op.path), *op.query],
        "responses": {
            "200": {"description": "OK", "content": _json_content(op.response.__name__)},
            **{
                str(status): {"description": description, "content": _json_content(responses.ErrorBody.__name__)}
                for status, description in sorted(errors.items())
            },
        },
    }
    if op.request is not None:
        operation["requestBody"] = {"required": True, "content": _json_content(op.request.__name__)}
    return operation


def openapi_document(base_path: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document; paths are relative to the `servers` URL, which is `base_path`."""
    _, schemas = msgspec.json.schema_components(
        [*responses.RESPONSE_STRUCTS, *payloads.REQUEST_STRUCTS], ref_template=COMPONENT_REF
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "challengectl player API",
            "version": version,
            "description": "Challenge progress, goal selection and reward claims. Snake_case and camelCase "
            "request field names are both accepted; giving both with different values is "
            "an INVALID_REQUEST.",
        },
        "servers": [{"url": base_path}],
        "paths": paths,
        "components": {
            "schemas": _with_request_rules(schemas),
            "securitySchemes": {
                BEARER_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "auth = jwt (default): the user id is the token's `sub`",
                },
                MOCK_USER_SCHEME: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Mock-User-Id",
                    "description": "auth = none (loopback only): the header is the user id",
                },
            },
        },
        "security": [{BEARER_SCHEME: []}, {MOCK_USER_SCHEME: []}],
    }


def encoded_openapi_document(base_path: str, version: str) -> bytes:
    """The document as the JSON bytes served at `{base_path}/openapi.json` (encoded once at startup)."""
    return msgspec.json.encode(openapi_document(base_path, version))

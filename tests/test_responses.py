"""The fast response writer against the schema Structs (docs/http-api.md#general-rules, docs/http-api.md#endpoints; L9, L10): for every object the
writer's bytes equal `msgspec.json.encode` of the reference Struct, every key appears once in schema
order, timestamps are RFC 3339 UTC, and equal states (however their datetimes are represented) render
to identical bytes."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import msgspec
import pytest

from service.config.resources import example_catalog_path
from service.domain.catalog import Catalog, load_catalog, parse_catalog
from service.domain.rules import ProgressRow, is_locked, view
from service.transport import responses
from service.usecases.players import (
    ChallengeState,
    ClaimResult,
    GoalState,
    InitializeResult,
    ListResult,
    Period,
    RotationStatus,
    SelectResult,
    SetActiveResult,
)

NOW = datetime(2030, 5, 17, 13, 45, 30, 987654, tzinfo=UTC)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
TIMESTAMP_KEYS = {"completedAt", "claimedAt", "assignedAt", "expiresAt", "startTime", "endTime"}

# Strings that need JSON escaping, so the pre-encoded fragments are exercised beyond plain ASCII.
_AWKWARD_CATALOG = json.dumps(
    {
        "challenges": [
            {
                "challengeId": "c-\u00e9t\u00e9",
                "name": 'Quote " backslash \\ tab\t </script>',
                "description": "emoji \U0001f3ae and \u2028 separator",
                "goals": [
                    {
                        "goalId": "g-base",
                        "name": 'Base "one"',
                        "eventSource": "login",
                        "defaultAssigned": True,
                        "requirement": {"statCode": "logins", "operator": ">=", "targetValue": 3},
                        "reward": {"type": "ITEM", "rewardId": "r\u00fcck", "quantity": 2},
                    },
                    {
                        "goalId": "g-daily",
                        "name": "Daily",
                        "description": "d",
                        "eventSource": "statistic",
                        "requirement": {
                            "statCode": "kills",
                            "operator": ">=",
                            "targetValue": 5,
                            "progressMode": "relative",
                        },
                        "reward": {"type": "WALLET", "rewardId": "COINS", "quantity": 10},
                        "prerequisites": ["g-base"],
                        "rotation": {
                            "enabled": True,
                            "type": "global",
                            "schedule": "daily",
                            "onExpiry": {"resetProgress": True, "allowReselection": True},
                        },
                    },
                    {
                        "goalId": "g-monthly",
                        "name": "Monthly",
                        "eventSource": "statistic",
                        "requirement": {
                            "statCode": "wins",
                            "operator": ">=",
                            "targetValue": 9,
                            "progressMode": "relative",
                        },
                        "reward": {"type": "WALLET", "rewardId": "GEMS", "quantity": 1},
                        "rotation": {
                            "enabled": True,
                            "type": "global",
                            "schedule": "monthly",
                            "onExpiry": {"resetProgress": False, "allowReselection": False},
                        },
                    },
                ],
            }
        ]
    }
).encode()


@pytest.fixture(scope="module", params=["example", "awkward"])
def catalog(request: pytest.FixtureRequest) -> Catalog:
    if request.param == "example":
        return load_catalog(example_catalog_path())
    return parse_catalog(_AWKWARD_CATALOG, "awkward.json")


def _row(
    goal_id: str,
    challenge_id: str,
    *,
    status: str,
    progress: int,
    is_active: bool,
    updated_at: datetime,
    completed: bool = False,
    claimed: bool = False,
    assigned: bool = True,
    baseline: int | None = None,
) -> ProgressRow:
    return ProgressRow(
        user_id="player-1",
        goal_id=goal_id,
        challenge_id=challenge_id,
        namespace="ns",
        progress=progress,
        status=status,
        completed_at=updated_at - timedelta(minutes=5, microseconds=1) if completed else None,
        claimed_at=updated_at if claimed else None,
        created_at=updated_at - timedelta(days=3),
        updated_at=updated_at,
        is_active=is_active,
        assigned_at=updated_at - timedelta(days=2, microseconds=500) if assigned else None,
        expires_at=None,
        baseline_value=baseline,
    )


def _rows(catalog: Catalog) -> dict[str, ProgressRow]:
    """A spread of row states over the catalog's goals; every fourth goal has no row."""
    kinds = [
        {
            "status": "in_progress",
            "progress": 2,
            "is_active": True,
            "updated_at": NOW - timedelta(hours=1),
            "baseline": 1,
        },
        {
            "status": "completed",
            "progress": 9,
            "is_active": True,
            "updated_at": NOW - timedelta(minutes=1),
            "completed": True,
        },
        {
            "status": "claimed",
            "progress": 40,
            "is_active": False,
            "updated_at": NOW - timedelta(days=40),
            "completed": True,
            "claimed": True,
            "assigned": False,
        },
        None,
    ]
    rows: dict[str, ProgressRow] = {}
    for index, goal in enumerate(catalog.goals):
        kind = kinds[index % len(kinds)]
        if kind is not None:
            rows[goal.goal_id] = _row(goal.goal_id, goal.challenge_id, **kind)  # type: ignore[arg-type]
    return rows


def _state(catalog: Catalog, goal_id: str, rows: dict[str, ProgressRow], now: datetime) -> GoalState:
    goal = catalog.goals_by_id[goal_id]
    row = rows.get(goal_id)
    return GoalState(goal, row, view(goal, row, now), is_locked(goal, rows, catalog.goals_by_id, now))


def _list_result(catalog: Catalog, rows: dict[str, ProgressRow], now: datetime = NOW) -> ListResult:
    return ListResult(
        tuple(
            ChallengeState(challenge, tuple(_state(catalog, goal.goal_id, rows, now) for goal in challenge.goals))
            for challenge in catalog.challenges
        ),
        now,
    )


def _initialize_result(catalog: Catalog, rows: dict[str, ProgressRow]) -> InitializeResult:
    assigned = tuple(_state(catalog, goal.goal_id, rows, NOW) for goal in catalog.goals if goal.goal_id in rows)
    return InitializeResult(assigned, 2, NOW)


def _select_result(catalog: Catalog, rows: dict[str, ProgressRow]) -> SelectResult:
    challenge = catalog.challenges[0]
    selected = tuple(_state(catalog, goal.goal_id, rows, NOW) for goal in challenge.goals)
    return SelectResult(challenge.challenge_id, selected, 3, tuple(g.goal_id for g in challenge.goals[:1]), NOW)


def _rotation_statuses(catalog: Catalog) -> Iterator[RotationStatus]:
    for challenge in catalog.challenges:
        rotating = next((goal for goal in challenge.goals if goal.rotation is not None), None)
        if rotating is None:
            yield RotationStatus(challenge.challenge_id, None, None, None)
        else:
            start = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
            yield RotationStatus(
                challenge.challenge_id,
                rotating,
                Period(start, start + timedelta(days=1), 36_869),
                Period(start + timedelta(days=1), start + timedelta(days=2), 0),
            )


def _rendered_pairs(catalog: Catalog) -> Iterator[tuple[str, bytes, msgspec.Struct]]:
    """(object name, writer bytes, reference Struct) for every response object the writer renders."""
    writer = responses.ResponseWriter(catalog)
    rows = _rows(catalog)
    listing = _list_result(catalog, rows)
    yield "list", writer.challenge_list(listing), responses.challenge_list_body(listing)
    yield "list-empty", writer.challenge_list(ListResult((), NOW)), responses.ChallengeList([])
    for state in listing.challenges:
        yield "challenge", writer.challenge(state, NOW), responses.challenge_body(state, NOW)
    empty_challenge = ChallengeState(catalog.challenges[0], ())
    yield ("challenge-no-goals", writer.challenge(empty_challenge, NOW), responses.challenge_body(empty_challenge, NOW))
    initialized = _initialize_result(catalog, rows)
    yield "initialize", writer.initialize(initialized), responses.initialize_body(initialized)
    selected = _select_result(catalog, rows)
    yield "select", writer.select(selected), responses.select_body(selected)
    for is_active, assigned_at in ((True, NOW), (False, None)):
        result = SetActiveResult("c1", "g1", is_active, assigned_at)
        yield "set-active", writer.set_active(result), responses.set_active_body(result)
    claimed = ClaimResult(catalog.goals[0].goal_id, catalog.goals[0].reward, NOW)
    yield "claim", writer.claim(claimed), responses.claim_body(claimed)
    for status in _rotation_statuses(catalog):
        yield "rotation", writer.rotation_status(status), responses.rotation_status_body(status)


def test_writer_bytes_equal_encoded_structs(catalog: Catalog) -> None:
    for name, rendered, reference in _rendered_pairs(catalog):
        assert rendered == msgspec.json.encode(reference), name
        # The Struct (the OpenAPI schema) also reads the bytes back: the writer cannot drift from it.
        assert msgspec.json.decode(rendered, type=type(reference)) == reference, name


def _keys_once(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
    return dict(pairs)


def _schema_keys(struct_type: type[msgspec.Struct]) -> list[str]:
    return list(struct_type.__struct_encode_fields__)


def _check_timestamps(node: object) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in TIMESTAMP_KEYS:
                assert value == "" or RFC3339.match(value), f"{key}={value!r}"
            _check_timestamps(value)
    elif isinstance(node, list):
        for item in node:
            _check_timestamps(item)


def test_listing_fields_present_once_in_schema_order(catalog: Catalog) -> None:
    rendered = responses.ResponseWriter(catalog).challenge_list(_list_result(catalog, _rows(catalog)))
    document = json.loads(rendered, object_pairs_hook=_keys_once)
    assert list(document) == ["challenges"]
    assert [c["challengeId"] for c in document["challenges"]] == [c.challenge_id for c in catalog.challenges]
    for challenge in document["challenges"]:
        assert list(challenge) == _schema_keys(responses.Challenge)
        for goal in challenge["goals"]:
            assert list(goal) == _schema_keys(responses.Goal)
            assert list(goal["requirement"]) == ["statCode", "operator", "targetValue", "progressMode"]
            assert list(goal["reward"]) == ["type", "rewardId", "quantity"]
    _check_timestamps(document)


def test_every_object_keys_once_and_timestamps_rfc3339(catalog: Catalog) -> None:
    for name, rendered, reference in _rendered_pairs(catalog):
        document = json.loads(rendered, object_pairs_hook=_keys_once)
        assert list(document) == [
            k
            for k in _schema_keys(type(reference))
            if getattr(reference, _attr(type(reference), k)) is not msgspec.UNSET
        ], name
        _check_timestamps(document)


def _attr(struct_type: type[msgspec.Struct], encoded_name: str) -> str:
    return struct_type.__struct_fields__[struct_type.__struct_encode_fields__.index(encoded_name)]


def test_goal_without_row_shows_defaults_and_expiry(catalog: Catalog) -> None:
    writer = responses.ResponseWriter(catalog)
    listing = _list_result(catalog, {})
    goals = [
        goal for challenge in json.loads(writer.challenge_list(listing))["challenges"] for goal in challenge["goals"]
    ]
    assert len(goals) == len(catalog.goals)
    for goal, model in zip(goals, catalog.goals, strict=True):
        assert (goal["progress"], goal["status"], goal["isActive"]) == (0, "not_started", False)
        assert goal["completedAt"] == goal["claimedAt"] == ""
        assert goal["locked"] is bool(model.prerequisites)
        if model.rotation is None:
            assert (goal["expiresAt"], goal["expiresInSeconds"]) == ("", 0)
        else:
            # A rotating goal carries its next boundary even without a row (docs/http-api.md#endpoints).
            assert RFC3339.match(goal["expiresAt"]) and 0 < goal["expiresInSeconds"] <= 31 * 86_400


def test_known_values_rendered() -> None:
    catalog = parse_catalog(_AWKWARD_CATALOG, "awkward.json")
    rows = {
        "g-daily": _row(
            "g-daily",
            "c-\u00e9t\u00e9",
            status="in_progress",
            progress=7,
            is_active=True,
            updated_at=NOW - timedelta(hours=2),
            baseline=4,
        )
    }
    state = _state(catalog, "g-daily", rows, NOW)
    rendered = json.loads(
        responses.ResponseWriter(catalog).select(SelectResult("c-\u00e9t\u00e9", (state,), 1, (), NOW))
    )
    goal = rendered["selectedGoals"][0]
    assert goal["progress"] == 3  # relative: 7 − baseline 4
    assert goal["assignedAt"] == "2030-05-15T11:45:30Z"  # microseconds truncated
    assert goal["expiresAt"] == "2030-05-18T00:00:00Z"
    assert goal["expiresInSeconds"] == 10 * 3600 + 14 * 60 + 29  # floor of 10:14:29.012346
    assert goal["target"] == 5 and goal["isActive"] is True
    listing = json.loads(responses.ResponseWriter(catalog).challenge_list(_list_result(catalog, rows)))
    challenge = listing["challenges"][0]
    assert challenge["name"] == 'Quote " backslash \\ tab\t </script>'
    assert challenge["description"] == "emoji \U0001f3ae and \u2028 separator"


def _shifted(row: ProgressRow, zone: timezone) -> ProgressRow:
    """The same row with every timestamp expressed in another time zone (same instants)."""

    def move(value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(zone)

    return dataclasses.replace(
        row,
        completed_at=move(row.completed_at),
        claimed_at=move(row.claimed_at),
        created_at=row.created_at.astimezone(zone),
        updated_at=row.updated_at.astimezone(zone),
        assigned_at=move(row.assigned_at),
        expires_at=move(row.expires_at),
    )


def test_parity_equal_states_render_identical_bytes(catalog: Catalog) -> None:
    """L9: a row read from the cache and the same row read from PostgreSQL are equal values, possibly with
    different tzinfo objects; both (and a second writer built from the same catalog) give the same bytes."""
    rows = _rows(catalog)
    first, second = responses.ResponseWriter(catalog), responses.ResponseWriter(catalog)
    now_elsewhere = NOW.astimezone(timezone(timedelta(hours=9)))
    # psycopg returns the session zone (e.g. ZoneInfo("UTC")); a decoded cache entry may use another.
    for zone in (timezone(timedelta(hours=-7), "X"), ZoneInfo("UTC"), timezone(timedelta(0))):
        other_zone_rows = {goal_id: _shifted(row, zone) for goal_id, row in rows.items()}
        assert first.challenge_list(_list_result(catalog, rows)) == second.challenge_list(
            _list_result(catalog, other_zone_rows, now_elsewhere)
        )
        assert first.initialize(_initialize_result(catalog, rows)) == second.initialize(
            _initialize_result(catalog, other_zone_rows)
        )
        assert first.select(_select_result(catalog, rows)) == second.select(_select_result(catalog, other_zone_rows))


def test_rotation_without_rotating_goal_has_no_periods() -> None:
    body = json.loads(responses.ResponseWriter.rotation_status(RotationStatus("c", None, None, None)))
    assert body == {
        "challengeId": "c",
        "rotation": {"enabled": False, "type": "", "schedule": "", "resetProgress": False, "allowReselection": False},
    }


def test_set_active_messages() -> None:
    on = json.loads(responses.ResponseWriter.set_active(SetActiveResult("c", "g", True, NOW)))
    off = json.loads(responses.ResponseWriter.set_active(SetActiveResult("c", "g", False, None)))
    assert on == {
        "challengeId": "c",
        "goalId": "g",
        "isActive": True,
        "assignedAt": "2030-05-17T13:45:30Z",
        "message": "Goal activated successfully",
    }
    assert off["message"] == "Goal deactivated successfully" and off["assignedAt"] == ""

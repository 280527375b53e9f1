"""Player response bodies (docs/http-api.md#error-format, docs/http-api.md#endpoints): the response schemas as msgspec Structs, and the fast
writer that renders use-case results to JSON bytes.

The Structs are the definition: the OpenAPI schemas are generated from them, and `*_body` functions
build them from use-case results. `ResponseWriter` produces the same bytes without building objects:
at startup it joins the catalog's pre-encoded fragments into per-goal and per-challenge byte pieces;
per request it appends only the dynamic fields (row values, view, locked, expiry). Tests hold the two
paths byte-identical for every object.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

from service.domain import catalog as catalog_model
from service.domain.rules import IMPLIED_VIEW, NO_ROW_VIEW, GoalView, ProgressRow
from service.transport.timestamps import expiry_fields, format_timestamp
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

# --- schemas ---------------------------------------------------------------------------------------

ErrorCode = Literal[
    "INVALID_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "CHALLENGE_NOT_FOUND",
    "GOAL_NOT_FOUND",
    "GOAL_NOT_COMPLETED",
    "GOAL_NOT_ACTIVE",
    "GOAL_ROTATED",
    "GOAL_LOCKED",
    "ALREADY_CLAIMED",
    "INVALID_COUNT",
    "INSUFFICIENT_GOALS",
    "REWARD_GRANT_FAILED",
    "DEPENDENCY_UNAVAILABLE",
    "INTERNAL_ERROR",
    "ROUTE_NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "REQUEST_TIMEOUT",
    "URI_TOO_LONG",
    "HEADERS_TOO_LARGE",
    "SERVICE_OVERLOADED",
]


class ErrorBody(Struct, rename="camel"):
    """Every error response (docs/http-api.md#error-format)."""

    error_code: ErrorCode
    message: str


class Requirement(Struct, rename="camel"):
    """What completes a goal (from the catalog)."""

    stat_code: str
    operator: str
    target_value: int
    progress_mode: str


class Reward(Struct, rename="camel"):
    """What claiming a completed goal grants (from the catalog)."""

    type: str
    reward_id: str
    quantity: int


class _CatalogGoal(Struct, rename="camel"):
    """The catalog fields a listing goal and a selected goal begin with."""

    goal_id: str
    name: str
    description: str
    requirement: Requirement
    reward: Reward


class Goal(_CatalogGoal):
    """A goal in challenge listings: catalog fields merged with the user's row as viewed at request time."""

    prerequisites: list[str]
    locked: bool
    progress: int
    status: str
    completed_at: str
    claimed_at: str
    is_active: bool
    expires_at: str
    expires_in_seconds: int


class Challenge(Struct, rename="camel"):
    challenge_id: str
    name: str
    description: str
    goals: list[Goal]


class ChallengeList(Struct):
    """Response of `GET /v1/challenges`."""

    challenges: list[Challenge]


class AssignedGoal(Struct, rename="camel"):
    """An active goal in the initialize response."""

    challenge_id: str
    goal_id: str
    name: str
    description: str
    is_active: bool
    assigned_at: str
    expires_at: str
    expires_in_seconds: int
    progress: int
    target: int
    status: str
    requirement: Requirement
    reward: Reward


class InitializeResponse(Struct, rename="camel"):
    assigned_goals: list[AssignedGoal]
    new_assignments: int
    total_active: int


class SetActiveResponse(Struct, rename="camel"):
    challenge_id: str
    goal_id: str
    is_active: bool
    assigned_at: str
    message: str


class SelectedGoal(_CatalogGoal):
    """A goal in the batch/random select responses, with its view after the write."""

    status: str
    progress: int
    target: int
    is_active: bool
    assigned_at: str
    expires_at: str
    expires_in_seconds: int


class SelectResponse(Struct, rename="camel"):
    challenge_id: str
    selected_goals: list[SelectedGoal]
    total_active_goals: int
    replaced_goals: list[str]


class ClaimResponse(Struct, rename="camel"):
    """Response of a successful claim."""

    goal_id: str
    status: Literal["claimed"]
    reward: Reward
    claimed_at: str


class RotationPeriod(Struct, rename="camel"):
    """One period of a rotation schedule: `[startTime, endTime)`."""

    start_time: str
    end_time: str
    expires_in_seconds: int


class Rotation(Struct, rename="camel"):
    """The challenge's first rotating goal's settings; the periods are absent without rotation."""

    enabled: bool
    type: str
    schedule: str
    reset_progress: bool
    allow_reselection: bool
    current_period: RotationPeriod | UnsetType = UNSET
    next_period: RotationPeriod | UnsetType = UNSET


class RotationStatusResponse(Struct, rename="camel"):
    challenge_id: str
    rotation: Rotation


RESPONSE_STRUCTS: tuple[type[Struct], ...] = (
    ChallengeList,
    Challenge,
    InitializeResponse,
    SetActiveResponse,
    SelectResponse,
    ClaimResponse,
    RotationStatusResponse,
    ErrorBody,
)

# --- reference builders: use-case results → Structs ------------------------------------------------


def _requirement(requirement: catalog_model.Requirement) -> Requirement:
    return Requirement(requirement.stat_code, requirement.operator, requirement.target_value, requirement.progress_mode)


def _reward(reward: catalog_model.Reward) -> Reward:
    return Reward(reward.type, reward.reward_id, reward.quantity)


def _catalog_goal(goal: catalog_model.Goal) -> dict[str, Any]:
    """The `_CatalogGoal` fields of a goal, as keyword arguments."""
    return {
        "goal_id": goal.goal_id,
        "name": goal.name,
        "description": goal.description,
        "requirement": _requirement(goal.requirement),
        "reward": _reward(goal.reward),
    }


def _is_active(state: GoalState) -> bool:
    """A real active row, or an implied default row (always active)."""
    return state.row.is_active if state.row is not None else state.view is IMPLIED_VIEW


def goal_body(state: GoalState, now: datetime) -> Goal:
    """The listing Goal of one goal state at `now`."""
    goal, goal_view = state.goal, state.view
    expires_at, expires_in = expiry_fields(goal, now)
    return Goal(
        **_catalog_goal(goal),
        prerequisites=list(goal.prerequisites),
        locked=state.locked,
        progress=goal_view.progress,
        status=goal_view.status,
        completed_at=format_timestamp(goal_view.completed_at),
        claimed_at=format_timestamp(goal_view.claimed_at),
        is_active=_is_active(state),
        expires_at=expires_at,
        expires_in_seconds=expires_in,
    )


def challenge_body(state: ChallengeState, now: datetime) -> Challenge:
    challenge = state.challenge
    return Challenge(
        challenge.challenge_id,
        challenge.name,
        challenge.description,
        [goal_body(goal_state, now) for goal_state in state.goals],
    )


def challenge_list_body(result: ListResult) -> ChallengeList:
    return ChallengeList([challenge_body(state, result.now) for state in result.challenges])


def assigned_goal_body(state: GoalState, now: datetime, implied_at: datetime | None = None) -> AssignedGoal:
    """`implied_at`: when the player's implied default rows were assigned."""
    goal, row = state.goal, state.row
    expires_at, expires_in = expiry_fields(goal, now)
    if row is not None:
        assigned_at = row.assigned_at
    else:
        assigned_at = implied_at if state.view is IMPLIED_VIEW else None
    return AssignedGoal(
        challenge_id=goal.challenge_id,
        goal_id=goal.goal_id,
        name=goal.name,
        description=goal.description,
        is_active=_is_active(state),
        assigned_at=format_timestamp(assigned_at),
        expires_at=expires_at,
        expires_in_seconds=expires_in,
        progress=state.view.progress,
        target=goal.requirement.target_value,
        status=state.view.status,
        requirement=_requirement(goal.requirement),
        reward=_reward(goal.reward),
    )


def initialize_body(result: InitializeResult) -> InitializeResponse:
    return InitializeResponse(
        [assigned_goal_body(state, result.now, result.implied_at) for state in result.assigned],
        result.new_assignments,
        len(result.assigned),
    )


def set_active_message(is_active: bool) -> str:
    return "Goal activated successfully" if is_active else "Goal deactivated successfully"


def set_active_body(result: SetActiveResult) -> SetActiveResponse:
    return SetActiveResponse(
        result.challenge_id,
        result.goal_id,
        result.is_active,
        format_timestamp(result.assigned_at),
        set_active_message(result.is_active),
    )


def selected_goal_body(state: GoalState, now: datetime) -> SelectedGoal:
    goal, row = state.goal, state.row
    expires_at, expires_in = expiry_fields(goal, now)
    return SelectedGoal(
        **_catalog_goal(goal),
        status=state.view.status,
        progress=state.view.progress,
        target=goal.requirement.target_value,
        is_active=row is not None and row.is_active,
        assigned_at=format_timestamp(row.assigned_at if row is not None else None),
        expires_at=expires_at,
        expires_in_seconds=expires_in,
    )


def select_body(result: SelectResult) -> SelectResponse:
    selected = [selected_goal_body(state, result.now) for state in result.selected]
    return SelectResponse(result.challenge_id, selected, result.total_active, list(result.replaced))


def claim_body(result: ClaimResult) -> ClaimResponse:
    return ClaimResponse(result.goal_id, "claimed", _reward(result.reward), format_timestamp(result.claimed_at))


def _period(period: Period | None) -> RotationPeriod | UnsetType:
    if period is None:
        return UNSET
    return RotationPeriod(format_timestamp(period.start), format_timestamp(period.end), period.expires_in_seconds)


def rotation_status_body(status: RotationStatus) -> RotationStatusResponse:
    rotation = status.goal.rotation if status.goal is not None else None
    if rotation is None:
        return RotationStatusResponse(status.challenge_id, Rotation(False, "", "", False, False))
    return RotationStatusResponse(
        status.challenge_id,
        Rotation(
            True,
            rotation.type,
            rotation.schedule,
            rotation.reset_progress,
            rotation.allow_reselection,
            _period(status.current),
            _period(status.next),
        ),
    )


# --- fast writer --------------------------------------------------------------------------------

_TRUE, _FALSE = b"true", b"false"
_EMPTY_STRING = b'""'
_encode = msgspec.json.encode


class _Instants(dict[datetime | None, bytes]):
    """`_timestamp` memoised over one response: a player's rows share few assignment instants."""

    def __missing__(self, dt: datetime | None) -> bytes:
        encoded = self[dt] = _timestamp(dt)
        return encoded


def _timestamp(dt: datetime | None) -> bytes:
    """`format_timestamp(dt)` as a JSON string. msgspec writes a zero-offset datetime without its
    microseconds exactly so (`Z` suffix) in half the time; other offsets and naive values go the slow way."""
    if dt is None:
        return _EMPTY_STRING
    if dt.tzinfo is not UTC and (dt.tzinfo is None or dt.utcoffset()):
        # format_timestamp yields only digits, '-', ':', 'T' and 'Z': no JSON escaping is needed.
        return b'"%s"' % format_timestamp(dt).encode()
    return _encode(dt.replace(microsecond=0))


class _GoalPieces:
    """Pre-joined static bytes of one goal in each object it appears in. A `*_head` piece carries every
    static field before the first dynamic one, up to and including that field's key."""

    __slots__ = (
        "assigned_head",
        "assigned_tail",
        "assigned_target",
        "implied",
        "implied_assigned_head",
        "implied_assigned_tail",
        "listing_head",
        "selected_head",
        "selected_target",
        "unassigned",
    )

    def __init__(self, fragments: dict[str, bytes]) -> None:
        goal_id, name, description = fragments["goalId"], fragments["name"], fragments["description"]
        requirement, reward = fragments["requirement"], fragments["reward"]
        # The catalog fields a listing goal and a selected goal begin with (`_CatalogGoal`).
        catalog_head = b"".join(
            (
                b'{"goalId":',
                goal_id,
                b',"name":',
                name,
                b',"description":',
                description,
                b',"requirement":',
                requirement,
                b',"reward":',
                reward,
            )
        )
        self.listing_head = catalog_head + b',"prerequisites":' + fragments["prerequisites"] + b',"locked":'
        # Without a row the listing object is static up to `expiresAt` (by `locked`: False, True).
        self.unassigned = tuple(self.listing_head + locked + _UNASSIGNED_VIEW for locked in (_FALSE, _TRUE))
        self.implied = tuple(self.listing_head + locked + _IMPLIED_VIEW for locked in (_FALSE, _TRUE))
        self.assigned_head = b"".join(
            (
                b'{"challengeId":',
                fragments["challengeId"],
                b',"goalId":',
                goal_id,
                b',"name":',
                name,
                b',"description":',
                description,
                b',"isActive":',
            )
        )
        self.assigned_target = b',"target":' + fragments["target"] + b',"status":'
        self.assigned_tail = b',"requirement":' + requirement + b',"reward":' + reward + b"}"
        # An implied row's assigned object: static but for `assignedAt` and the expiry, which follows it.
        self.implied_assigned_head = self.assigned_head + b'true,"assignedAt":'
        self.implied_assigned_tail = b',"progress":0' + self.assigned_target + b'"not_started"' + self.assigned_tail
        self.selected_head = catalog_head + b',"status":'
        self.selected_target = b',"target":' + fragments["target"] + b',"isActive":'


_NO_EXPIRY = b'"","expiresInSeconds":0'
_UNASSIGNED_VIEW = b',"progress":0,"status":"not_started","completedAt":"","claimedAt":"","isActive":false,"expiresAt":'
_IMPLIED_VIEW = b',"progress":0,"status":"not_started","completedAt":"","claimedAt":"","isActive":true,"expiresAt":'
# Bound of the memo of rendered row views; past it the memo starts over.
_VIEW_MEMO_MAX = 65_536


class _Expiry:
    """The `expiresAt` value and `expiresInSeconds` pair of one request's instant, encoded once per
    rotation schedule (every goal of a schedule shares them)."""

    __slots__ = ("_by_schedule", "_now")

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._by_schedule: dict[str, bytes] = {}

    def __call__(self, goal: catalog_model.Goal) -> bytes:
        if goal.rotation is None:
            return _NO_EXPIRY
        encoded = self._by_schedule.get(goal.rotation.schedule)
        if encoded is None:
            expires_at, expires_in = expiry_fields(goal, self._now)
            encoded = self._by_schedule[goal.rotation.schedule] = b'"%s","expiresInSeconds":%d' % (
                expires_at.encode(),
                expires_in,
            )
        return encoded


class _ImpliedMiddle(dict[str | None, bytes]):
    """The dynamic middle of an implied row's assigned object (`assignedAt` .. `expiresInSeconds`), by rotation
    schedule: every implied row of a player has the same assignment instant."""

    def __init__(self, assigned_at: bytes, expiry: _Expiry) -> None:
        super().__init__()
        self._prefix = assigned_at + b',"expiresAt":'
        self._expiry = expiry

    def __call__(self, goal: catalog_model.Goal) -> bytes:
        schedule = goal.rotation.schedule if goal.rotation is not None else None
        encoded = self.get(schedule)
        if encoded is None:
            encoded = self[schedule] = self._prefix + self._expiry(goal)
        return encoded


class _UntouchedAssigned:
    """The `assignedGoals` items of a player whose default goals are all implied: the static bytes between the
    implied middles, joined once, so that a response is one join (per schedule run)."""

    def __init__(self, pieces: dict[str, _GoalPieces], defaults: tuple[catalog_model.Goal, ...]) -> None:
        self._goals = defaults
        heads = [pieces[goal.goal_id].implied_assigned_head for goal in defaults]
        tails = [pieces[goal.goal_id].implied_assigned_tail for goal in defaults]
        # chunks[i] precedes the middle of goal i; the last chunk follows the last middle.
        self._chunks = [b"", *(tail + b"," for tail in tails[:-1])]
        self._chunks = [chunk + head for chunk, head in zip(self._chunks, heads, strict=False)] + tails[-1:]
        self._one_schedule = len({goal.rotation.schedule if goal.rotation else None for goal in defaults}) <= 1

    def __call__(self, middle: _ImpliedMiddle) -> bytes:
        if not self._goals:
            return b""
        if self._one_schedule:
            return middle(self._goals[0]).join(self._chunks)
        parts = [self._chunks[0]]
        for goal, chunk in zip(self._goals, self._chunks[1:], strict=True):
            parts += (middle(goal), chunk)
        return b"".join(parts)


class ResponseWriter:
    """Renders use-case results to the exact bytes of `msgspec.json.encode(<*_body>(result))`,
    from byte pieces built once from the catalog (docs/http-api.md#general-rules: per request only row data is serialised)."""

    def __init__(self, catalog: catalog_model.Catalog) -> None:
        self._goals = {goal_id: _GoalPieces(fragments) for goal_id, fragments in catalog.goal_fragments.items()}
        self._challenge_heads = {
            challenge_id: b"".join(
                (
                    b'{"challengeId":',
                    fragments["challengeId"],
                    b',"name":',
                    fragments["name"],
                    b',"description":',
                    fragments["description"],
                    b',"goals":[',
                )
            )
            for challenge_id, fragments in catalog.challenge_fragments.items()
        }
        self._statuses: dict[str, bytes] = {}
        # One goal of each rotation schedule of a challenge: an untouched challenge's body depends only on their expiry.
        self._schedule_goals = {
            challenge.challenge_id: tuple({g.rotation.schedule: g for g in challenge.goals if g.rotation}.values())
            for challenge in catalog.challenges
        }
        self._untouched_bodies: dict[tuple[str, int], tuple[tuple[bytes, ...], bytes]] = {}
        self._untouched_assigned = _UntouchedAssigned(self._goals, catalog.default_goals)
        # The dynamic middle of a listing goal (locked .. isActive) of a row without timestamps, by its values:
        # such rows of one catalog repeat few distinct combinations (most are not started at 0), so rendering
        # one is mostly a lookup.
        self._views: dict[tuple[Any, ...], bytes] = {}

    def _status(self, status: str) -> bytes:
        encoded = self._statuses.get(status)
        if encoded is None:
            encoded = self._statuses[status] = _encode(status)
        return encoded

    def _goal(self, state: GoalState, expiry: _Expiry) -> bytes:
        goal, row, view = state.goal, state.row, state.view
        pieces = self._goals[goal.goal_id]
        if row is None and view is NO_ROW_VIEW:
            return pieces.unassigned[state.locked] + expiry(goal) + b"}"
        if row is None and view is IMPLIED_VIEW:
            return pieces.implied[state.locked] + expiry(goal) + b"}"
        is_active = row is not None and row.is_active
        if view.completed_at is not None or view.claimed_at is not None:
            # A timestamp makes the combination all but unique: memoizing it would only hold memory.
            return pieces.listing_head + self._view(state.locked, view, is_active) + expiry(goal) + b"}"
        key = (state.locked, view.progress, view.status, is_active)
        middle = self._views.get(key)
        if middle is None:
            if len(self._views) >= _VIEW_MEMO_MAX:
                self._views.clear()
            middle = self._views[key] = self._view(state.locked, view, is_active)
        return pieces.listing_head + middle + expiry(goal) + b"}"

    def _view(self, locked: bool, view: GoalView | ProgressRow, is_active: bool) -> bytes:
        """The dynamic middle of a listing goal, from `locked` to the `expiresAt` key."""
        return b"".join(
            (
                _TRUE if locked else _FALSE,
                b',"progress":%d,"status":' % view.progress,
                self._status(view.status),
                b',"completedAt":',
                _timestamp(view.completed_at),
                b',"claimedAt":',
                _timestamp(view.claimed_at),
                b',"isActive":',
                _TRUE if is_active else _FALSE,
                b',"expiresAt":',
            )
        )

    def _challenge(self, state: ChallengeState, expiry: _Expiry) -> bytes:
        if state.untouched:  # the same for every untouched player: rendered once per expiry
            challenge_id = state.challenge.challenge_id
            # Full listing (every goal) or active listing (the default goals): the same goals when as many.
            key = (challenge_id, len(state.goals))
            signature = tuple(expiry(goal) for goal in self._schedule_goals[challenge_id])
            rendered = self._untouched_bodies.get(key)
            if rendered is None or rendered[0] != signature:
                rendered = self._untouched_bodies[key] = (signature, self._challenge_body(state, expiry))
            return rendered[1]
        return self._challenge_body(state, expiry)

    def _challenge_body(self, state: ChallengeState, expiry: _Expiry) -> bytes:
        return b"".join(
            (
                self._challenge_heads[state.challenge.challenge_id],
                b",".join([self._goal(goal_state, expiry) for goal_state in state.goals]),
                b"]}",
            )
        )

    def challenge(self, state: ChallengeState, now: datetime) -> bytes:
        """`GET /v1/challenges/{challenge_id}`: one Challenge, expiry computed at `now`."""
        return self._challenge(state, _Expiry(now))

    def challenge_list(self, result: ListResult) -> bytes:
        """`GET /v1/challenges`: `{"challenges": [...]}`."""
        expiry = _Expiry(result.now)
        return b'{"challenges":[' + b",".join([self._challenge(state, expiry) for state in result.challenges]) + b"]}"

    def _assigned_goal(self, state: GoalState, expiry: _Expiry, instants: _Instants, implied: _ImpliedMiddle) -> bytes:
        goal, row = state.goal, state.row
        pieces = self._goals[goal.goal_id]
        if row is None and state.view is IMPLIED_VIEW:
            return pieces.implied_assigned_head + implied(goal) + pieces.implied_assigned_tail
        return b"".join(
            (
                pieces.assigned_head,
                _TRUE if row is not None and row.is_active else _FALSE,
                b',"assignedAt":',
                instants[row.assigned_at if row is not None else None],
                b',"expiresAt":',
                expiry(goal),
                b',"progress":%d' % state.view.progress,
                pieces.assigned_target,
                self._status(state.view.status),
                pieces.assigned_tail,
            )
        )

    def initialize(self, result: InitializeResult) -> bytes:
        """`POST /v1/challenges/initialize`."""
        expiry = _Expiry(result.now)
        instants = _Instants()
        implied = _ImpliedMiddle(instants[result.implied_at], expiry)
        if result.untouched:
            assigned = self._untouched_assigned(implied)
        else:
            assigned = b",".join([self._assigned_goal(state, expiry, instants, implied) for state in result.assigned])
        return b'{"assignedGoals":[%s],"newAssignments":%d,"totalActive":%d}' % (
            assigned,
            result.new_assignments,
            len(result.assigned),
        )

    def _selected_goal(self, state: GoalState, expiry: _Expiry) -> bytes:
        goal, row = state.goal, state.row
        pieces = self._goals[goal.goal_id]
        return b"".join(
            (
                pieces.selected_head,
                self._status(state.view.status),
                b',"progress":%d' % state.view.progress,
                pieces.selected_target,
                _TRUE if row is not None and row.is_active else _FALSE,
                b',"assignedAt":',
                _timestamp(row.assigned_at if row is not None else None),
                b',"expiresAt":',
                expiry(goal),
                b"}",
            )
        )

    def select(self, result: SelectResult) -> bytes:
        """Batch and random select."""
        expiry = _Expiry(result.now)
        selected = b",".join([self._selected_goal(state, expiry) for state in result.selected])
        return b'{"challengeId":%s,"selectedGoals":[%s],"totalActiveGoals":%d,"replacedGoals":%s}' % (
            _encode(result.challenge_id),
            selected,
            result.total_active,
            _encode(result.replaced),
        )

    @staticmethod
    def set_active(result: SetActiveResult) -> bytes:
        """`PUT .../active`: a small object with no catalog part, encoded from its Struct."""
        return _encode(set_active_body(result))

    @staticmethod
    def claim(result: ClaimResult) -> bytes:
        return _encode(claim_body(result))

    @staticmethod
    def rotation_status(status: RotationStatus) -> bytes:
        return _encode(rotation_status_body(status))

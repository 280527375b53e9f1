"""Player use cases: list, get, initialize, set-active, batch/random select, claim, rotation status
(docs/http-api.md#endpoints, docs/rules.md). Results are plain data; `service/transport/responses.py` turns them into
JSON.

`Players` owns the order of the statements each use case runs, the read-your-writes protocol with
the cache (reads use a valid cached view, writes invalidate after commit and before returning,
docs/cache.md#entries-and-tokens, docs/cache.md#read-your-writes) and the documented errorCode and message of every
failure, raised as domain errors (`service/domain/errors.py`) that the transports map to their statuses.
The rules themselves (view, locked, eligibility, catch-up, periods) live in `service/domain/rules.py`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from prometheus_client import Counter
from psycopg.rows import args_row, tuple_row

from service.domain.catalog import Catalog, Challenge, Goal, Reward
from service.domain.errors import (
    AlreadyClaimed,
    DomainError,
    GoalNotActive,
    InternalFailure,
    InvalidRequest,
    NotFound,
    Unavailable,
    UpstreamFailed,
)
from service.domain.rules import (
    IMPLIED_VIEW,
    NO_ROW_VIEW,
    PROGRESS_MODE_ABSOLUTE,
    STATUS_CLAIMED,
    STATUS_COMPLETED,
    STATUS_NOT_STARTED,
    CatchUpPlan,
    GoalView,
    Initialization,
    ProgressRow,
    catch_up_targets,
    claim_guard_rotated,
    expires_at_for,
    expires_in_seconds,
    implied_row,
    is_locked,
    next_boundary,
    period_after,
    period_start,
    random_select_eligible,
    split_active_view,
    utc_now,
    view,
)
from service.storage.cache import Cache, CacheRead
from service.storage.default_sets import default_goal_set
from service.storage.store import Queries, Store, StoreUnavailable
from service.usecases.rewards import RewardGrant, RewardGranter, RewardGrantFailed


# Not frozen (like ProgressRow): a 500-goal listing builds 500 of them per request. Never mutated.
@dataclass(slots=True)
class GoalState:
    """One goal as a read shows it at `now`: its row (None without one), the view and `locked`. An implied default
    row (docs/data-model.md#implied-default-goals) has no row and IMPLIED_VIEW: active, not started."""

    goal: Goal
    row: ProgressRow | None
    view: GoalView | ProgressRow  # a plain goal's row serves as its view (same four fields, same values)
    locked: bool


@dataclass(frozen=True, slots=True)
class ChallengeState:
    challenge: Challenge
    goals: tuple[GoalState, ...]
    # The goals of a player without real rows, shared by every such player: the same body at the same expiry.
    untouched: bool = False


@dataclass(frozen=True, slots=True)
class ListResult:
    challenges: tuple[ChallengeState, ...]
    now: datetime


@dataclass(frozen=True, slots=True)
class InitializeResult:
    assigned: tuple[GoalState, ...]  # active rows of catalog goals, real or implied, catalog order
    new_assignments: int
    now: datetime
    implied_at: datetime | None = None  # when the implied rows were assigned (the player's initialization)
    untouched: bool = False  # `assigned` is every default goal, implied, in catalog order (no real row)


@dataclass(frozen=True, slots=True)
class SetActiveResult:
    challenge_id: str
    goal_id: str
    is_active: bool
    assigned_at: datetime | None


@dataclass(frozen=True, slots=True)
class SelectResult:
    challenge_id: str
    selected: tuple[GoalState, ...]
    total_active: int
    replaced: tuple[str, ...]
    now: datetime


@dataclass(frozen=True, slots=True)
class ClaimResult:
    goal_id: str
    reward: Reward
    claimed_at: datetime


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime
    expires_in_seconds: int


@dataclass(frozen=True, slots=True)
class RotationStatus:
    challenge_id: str
    goal: Goal | None  # the challenge's first rotating goal; None: no rotation
    current: Period | None
    next: Period | None


# ---------------------------------------------------------------------------------------------------
# The use cases

CLAIM_RESULT_OK = "ok"

INITIALIZE_TOTAL = Counter("challenge_initialize_total", "Initialize calls by path", ["path"])
_INITIALIZED_FAST, _INITIALIZED_SLOW = INITIALIZE_TOTAL.labels("fast"), INITIALIZE_TOTAL.labels("slow")
CLAIMS_TOTAL = Counter("challenge_claims_total", "Claims by result (errorCode or ok)", ["result"])

DB_ERROR_MESSAGE = "Database error occurred"

# The named statements the player operations run: a new connection of the player API's pool plans them once
# before it serves a request (service/storage/store.py `warm_connection`).
PLAYER_STATEMENTS = (
    "initialize_view",
    "register_default_goal_set",
    "player_rows",
    "active_view",
    "rotation_catch_up",
    "materialize_implied_goals",
    "user_progress",
    "challenge_progress",
    "goals_by_ids",
    "set_goal_active",
    "batch_set_goal_active",
    "deactivate_challenge_goals",
    "progress_for_update",
    "next_claim_generation",
    "record_claim",
)
# SQLSTATEs retried once before a 503 (docs/rules.md#batch-select): deadlock detected, serialization failure.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
_RETRY_PAUSE_S = (0.02, 0.08)

log = logging.getLogger("challengectl.players")

T = TypeVar("T")
Work = Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]

# Positional: the statements return the columns of user_goal_progress in table order, which is ProgressRow's.
_ROW = args_row(ProgressRow)


# A player's view: active rows, the inactive rows of prerequisites, and the initialization that implies the untouched
# default rows (None: every row is in the lists).
View = tuple[list[ProgressRow], list[ProgressRow], Initialization | None]
# `player_rows` and `initialize_view` return three columns of the initialization, `in_view`, then the 14 row columns.
_IN_VIEW = 3


def _unavailable(error: StoreUnavailable | None = None) -> Unavailable:
    """For an unreachable PostgreSQL the message names it and the reason (never host or credentials)."""
    message = f"{DB_ERROR_MESSAGE} (PostgreSQL: {error.reason})" if error is not None else DB_ERROR_MESSAGE
    return Unavailable("DEPENDENCY_UNAVAILABLE", message)


def _internal_error() -> InternalFailure:
    return InternalFailure("INTERNAL_ERROR", "Internal server error")


def _require_ids(challenge_id: str, goal_id: str | None = None) -> None:
    """Check 1 of every endpoint with path ids: empty segments are 400 (docs/http-api.md#general-rules)."""
    if not challenge_id:
        raise InvalidRequest("INVALID_REQUEST", "challenge_id is required")
    if goal_id is not None and not goal_id:
        raise InvalidRequest("INVALID_REQUEST", "goal_id is required")


def _goal_not_found(challenge_id: str, goal_id: str) -> NotFound:
    return NotFound("GOAL_NOT_FOUND", f"goal '{goal_id}' not found in challenge '{challenge_id}'")


def _not_completed(goal_id: str, status: str) -> InvalidRequest:
    return InvalidRequest(
        "GOAL_NOT_COMPLETED",
        f"Goal not completed. Please wait 1 second and try again. (goal_id: {goal_id}, status: {status})",
    )


def _catch_up_params(plan: CatchUpPlan, user_id: str) -> dict[str, Any]:
    """Parameters of the `rotation_catch_up` statement (arrays as lists, which bind as arrays)."""
    return {
        "user_id": user_id,
        "goal_ids": list(plan.goal_ids),
        "boundaries": list(plan.boundaries),
        "next_boundaries": list(plan.next_boundaries),
        "reset_flags": list(plan.reset_flags),
        "now": plan.now,
    }


class Players:
    """The player use cases of docs/http-api.md#endpoints over one catalog, one PostgreSQL pool and one cache.

    Each call takes `now` once from `clock` and passes it to every rule and statement (docs/data-model.md#time).
    Failures are `DomainError`s carrying the errorCode and message of docs/http-api.md#endpoints; Redis
    failures never fail a call (the cache degrades, docs/cache.md#degradation-and-recovery).
    """

    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        queries: Queries,
        cache: Cache,
        rewards: RewardGranter,
        namespace: str,
        reward_mode: str,
        claim_timeout_ms: int,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._queries = queries
        self._cache = cache
        self._rewards = rewards
        self._namespace = namespace
        self._reward_mode = reward_mode
        self._claim_timeout_s = claim_timeout_ms / 1000
        self._clock = clock
        goals_by_id = catalog.goals_by_id
        self._prerequisite_ids = list(catalog.prerequisite_ids)
        # Per challenge: prerequisites of its goals that live in other challenges, which
        # `challenge_progress` does not return (read with `goals_by_ids`).
        self._external_prerequisites = {
            challenge.challenge_id: sorted(
                {
                    prerequisite
                    for goal in challenge.goals
                    for prerequisite in goal.prerequisites
                    if goals_by_id[prerequisite].challenge_id != challenge.challenge_id
                }
            )
            for challenge in catalog.challenges
        }
        # The state of a goal without a row and without prerequisites is the same for every player at every
        # instant (the view of no row, not locked): listings share one object per goal instead of building it.
        self._unassigned_states = {
            goal.goal_id: GoalState(goal, None, NO_ROW_VIEW, False) for goal in catalog.goals if not goal.prerequisites
        }
        self._catalog_order = {goal.goal_id: index for index, goal in enumerate(catalog.goals)}
        # Plain goals (no rotation, absolute progress, no prerequisites): a row is its own view, never locked.
        self._plain_goal_ids = frozenset(
            goal.goal_id
            for goal in catalog.goals
            if goal.rotation is None
            and not goal.prerequisites
            and goal.requirement.progress_mode == PROGRESS_MODE_ABSOLUTE
        )
        # The default goal set (docs/data-model.md#implied-default-goals), recorded once per process before the first
        # initialize: the initialize statement then records one row per player, however many defaults there are.
        self._default_set = default_goal_set(catalog.default_goals)
        self._default_set_recorded = not catalog.default_goals
        # Implied default rows are built here, not read (docs/data-model.md#implied-default-goals). Their state is the
        # same for every player but for `locked`; a player without real rows has every prerequisite implied, so locked.
        self._default_ids = tuple(goal.goal_id for goal in catalog.default_goals)
        self._default_id_set = frozenset(self._default_ids)
        self._implied_states = {
            goal.goal_id: GoalState(goal, None, IMPLIED_VIEW, False)
            for goal in catalog.default_goals
            if not goal.prerequisites
        }
        self._untouched_states = tuple(
            GoalState(goal, None, IMPLIED_VIEW, bool(goal.prerequisites)) for goal in catalog.default_goals
        )
        self._rotating_defaults = tuple(goal for goal in catalog.default_goals if goal.rotation is not None)
        self._default_schedules = frozenset(goal.rotation.schedule for goal in catalog.default_goals if goal.rotation)
        # An initialized player without real rows reads the same as every other at one instant: its listings are these.
        self._untouched_listing = {
            challenge.challenge_id: ChallengeState(challenge, self._all_states(challenge, {}, utc_now(), True), True)
            for challenge in catalog.challenges
        }
        self._untouched_active = {
            challenge.challenge_id: ChallengeState(
                challenge,
                tuple(state for state in self._untouched_states if state.goal.challenge_id == challenge.challenge_id),
                True,
            )
            for challenge in catalog.challenges
        }

    # -- reads -------------------------------------------------------------------------------------

    async def list_challenges(self, user_id: str, active_only: bool) -> ListResult:
        """`GET /v1/challenges` (docs/http-api.md#endpoints): every catalog goal merged with the user's rows, or with
        `active_only` the goals with an active row (challenges left empty are omitted)."""
        now = self._clock()
        if active_only:
            active = self._active_challenges(*await self._active_view(user_id), now)
            return ListResult(tuple(state for state in active.values() if state.goals), now)
        rows_by_id, initialized = await self._db(
            user_id, "listing challenges", lambda conn: self._read_all(conn, user_id)
        )
        if initialized and not rows_by_id:
            return ListResult(tuple(self._untouched_listing.values()), now)
        challenges = tuple(
            ChallengeState(challenge, self._all_states(challenge, rows_by_id, now, initialized))
            for challenge in self._catalog.challenges
        )
        return ListResult(challenges, now)

    async def get_challenge(self, user_id: str, challenge_id: str, active_only: bool) -> ChallengeState:
        """`GET /v1/challenges/{challenge_id}` (docs/http-api.md#endpoints)."""
        _require_ids(challenge_id)
        challenge = self._challenge(challenge_id)
        now = self._clock()
        if active_only:
            return self._active_challenges(*await self._active_view(user_id), now)[challenge_id]
        rows_by_id = await self._db(
            user_id,
            f"reading challenge {challenge_id!r}",
            lambda conn: self._read_challenge_rows(conn, user_id, challenge),
        )
        return ChallengeState(challenge, self._all_states(challenge, rows_by_id, now, False))

    def rotation_status(self, challenge_id: str) -> RotationStatus:
        """`GET /v1/challenges/{challenge_id}/rotation` (docs/http-api.md#endpoints): the periods of the challenge's
        first rotating goal, or no periods when none rotates."""
        _require_ids(challenge_id)
        challenge = self._challenge(challenge_id)
        goal = next((g for g in challenge.goals if g.rotation is not None), None)
        if goal is None or goal.rotation is None:
            return RotationStatus(challenge_id, None, None, None)
        now = self._clock()
        schedule = goal.rotation.schedule
        start, end = period_start(schedule, now), next_boundary(schedule, now)
        next_start, next_end = period_after(schedule, now)
        return RotationStatus(
            challenge_id,
            goal,
            Period(start, end, expires_in_seconds(end, now)),
            Period(next_start, next_end, 0),
        )

    # -- initialize (docs/rules.md#initialize) --------------------------------------------------------------------

    async def initialize(self, user_id: str) -> InitializeResult:
        """`POST /v1/challenges/initialize`: config sync of the default goals, rotation catch-up, and
        the user's active goals. A returning player with a valid cached view costs one Redis MGET."""
        now = self._clock()
        read = await self._cache_read(user_id, include_synced=True)
        entry = read.entry
        inserted = 0
        # An empty view of an uninitialized player while default goals exist is not trusted: the slow path repairs it.
        trusted_view = entry is not None and (
            bool(entry.rows) or entry.init is not None or not self._catalog.default_goals
        )
        if read.synced and entry is not None and trusted_view:
            _INITIALIZED_FAST.inc()
            rows, pre, init = list(entry.rows), list(entry.pre), entry.init
        elif read.synced and entry is None:
            _INITIALIZED_FAST.inc()
            rows, pre, init = await self._db(
                user_id, "reading the active view", lambda conn: self._read_active_view(conn, user_id)
            )
            await self._cache_fill(user_id, read, (rows, pre, init))
        else:
            _INITIALIZED_SLOW.inc()
            inserted, (rows, pre, init) = await self._initialize_slow(user_id, read, now)
        rows = await self._catch_up(user_id, rows, pre, init, now)
        states = self._active_in_catalog_order(rows, pre, init, now)
        implied_at = init.initialized_at if init is not None else None
        return InitializeResult(tuple(states), inserted, now, implied_at, states is self._untouched_states)

    async def _initialize_slow(self, user_id: str, read: CacheRead, now: datetime) -> tuple[int, View]:
        """One `initialize_view` statement (insert the missing defaults, return the view), then one cache call
        that fills, invalidates when rows were inserted and sets the synced marker."""
        params = {
            "user_id": user_id,
            "namespace": self._namespace,
            "default_set_id": self._default_set.set_id,
            "now": now,
            "prereq_goal_ids": self._prerequisite_ids,
        }

        async def assign(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            if not self._default_set_recorded:
                await self._queries.rows(conn, "register_default_goal_set", self._default_set.params())
                self._default_set_recorded = True
            return await self._queries.rows(conn, "initialize_view", params, tuple_row)

        fetched = await self._db(user_id, "assigning the default goals", assign)
        initialized_at, namespace, recorded_now = fetched[0][:_IN_VIEW]
        inserted = 0
        if initialized_at is not None:
            view = self._view_of(fetched, initialized_at, namespace)
            if recorded_now:
                inserted = len(self._implied_ids(*view))
        else:
            # A concurrent first initialize committed after the statement's snapshot: read its rows in a new one.
            view = await self._db(
                user_id, "reading the active view", lambda conn: self._read_active_view(conn, user_id)
            )
        try:  # the cache never fails a request
            await self._cache.record_initialize(user_id, read, view[0], view[1], inserted > 0, view[2])
        except Exception:
            log.exception("recording the initialize in the cache failed for user %r", user_id)
        return inserted, view

    async def _catch_up(
        self,
        user_id: str,
        rows: list[ProgressRow],
        pre: list[ProgressRow],
        init: Initialization | None,
        now: datetime,
    ) -> list[ProgressRow]:
        """Bring stale active, not claimed rows into the current period (docs/rules.md#initialize step 3), implied
        rows of an earlier period included (they become real rows); returns the active rows, those among them.

        Errors are logged and the view is used instead: the next write catches the rows up.
        """
        rows = rows + self._stale_implied_rows(user_id, rows, pre, init, now)
        plan = catch_up_targets(self._catalog.goals_by_id, rows, now)
        if plan.is_empty:
            return rows
        try:
            async with self._store.connection() as conn:
                await self._materialize(conn, user_id, plan.goal_ids)
                changed = await self._queries.rows(conn, "rotation_catch_up", _catch_up_params(plan, user_id), _ROW)
        except (StoreUnavailable, psycopg.Error) as error:
            log.warning(
                "rotation catch-up of user %r failed for goals %s; answering from the view: %s",
                user_id,
                ", ".join(plan.goal_ids),
                error,
            )
            return rows
        if not changed:
            return rows
        await self._cache_invalidate(user_id)
        changed_by_id = {row.goal_id: row for row in changed}
        return [changed_by_id.get(row.goal_id, row) for row in rows]

    def _stale_implied_rows(
        self,
        user_id: str,
        rows: Sequence[ProgressRow],
        pre: Sequence[ProgressRow],
        init: Initialization | None,
        now: datetime,
    ) -> list[ProgressRow]:
        """The implied rows of rotating default goals assigned in an earlier period, as rows (the catch-up's)."""
        if init is None or not self._rotating_defaults:
            return []
        stale = {schedule for schedule in self._default_schedules if init.initialized_at < period_start(schedule, now)}
        if not stale:
            return []
        implied = set(self._implied_ids(rows, pre, init))
        return [
            implied_row(user_id, goal, init)
            for goal in self._rotating_defaults
            if goal.goal_id in implied and goal.rotation is not None and goal.rotation.schedule in stale
        ]

    # -- set active (docs/rules.md#set-active) --------------------------------------------------------------------

    async def set_active(self, user_id: str, challenge_id: str, goal_id: str, is_active: bool) -> SetActiveResult:
        """`PUT …/goals/{goal_id}/active`: upsert the row's `is_active`; idempotent."""
        _require_ids(challenge_id, goal_id)
        goal = self._goal_of(self._challenge(challenge_id), goal_id)
        now = self._clock()
        params = {
            "user_id": user_id,
            "goal_id": goal_id,
            "challenge_id": challenge_id,
            "namespace": self._namespace,
            "is_active": is_active,
            "expires_at": expires_at_for(goal, now),
            "now": now,
        }

        async def upsert(conn: psycopg.AsyncConnection[Any]) -> ProgressRow | None:
            return await self._queries.one(conn, "set_goal_active", params, _ROW)

        row = await self._db(user_id, f"setting goal {goal_id!r} active={is_active}", upsert)
        if row is None:
            log.error("set_goal_active returned no row for user %r, goal %r", user_id, goal_id)
            raise _internal_error()
        await self._cache_invalidate(user_id)
        return SetActiveResult(challenge_id, goal_id, row.is_active, row.assigned_at)

    # -- selects (docs/rules.md#batch-select, docs/rules.md#random-select) -------------------------------------------------------------------

    async def batch_select(
        self,
        user_id: str,
        challenge_id: str,
        goal_ids: Sequence[str],
        replace_existing: bool,
    ) -> SelectResult:
        """`POST …/goals/batch-select`: activate the listed goals (de-duplicated, all validated before
        any write), optionally deactivating the challenge's other active goals."""
        _require_ids(challenge_id)
        if not goal_ids:
            raise InvalidRequest("INVALID_REQUEST", "goal_ids cannot be empty")
        challenge = self._challenge(challenge_id)
        goals = [self._goal_of(challenge, goal_id) for goal_id in dict.fromkeys(goal_ids)]
        return await self._select(user_id, challenge, goals, replace_existing, self._clock())

    async def random_select(
        self,
        user_id: str,
        challenge_id: str,
        count: int,
        replace_existing: bool,
        exclude_active: bool,
    ) -> SelectResult:
        """`POST …/goals/random-select`: activate up to `count` eligible goals chosen uniformly at
        random (CSPRNG), then the batch-select write; `selected` is in catalog order."""
        _require_ids(challenge_id)
        if count <= 0:
            raise InvalidRequest("INVALID_COUNT", "count must be greater than 0")
        challenge = self._challenge(challenge_id)
        now = self._clock()
        rows_by_id = await self._db(
            user_id,
            f"reading challenge {challenge_id!r} for random select",
            lambda conn: self._read_challenge_rows(conn, user_id, challenge),
        )
        eligible = random_select_eligible(
            challenge, rows_by_id, self._catalog.goals_by_id, now, exclude_active or replace_existing
        )
        if not eligible:
            raise InvalidRequest(
                "INSUFFICIENT_GOALS",
                f"no goals available for selection (available: 0, requested: {count})",
            )
        chosen = secrets.SystemRandom().sample(eligible, min(count, len(eligible)))
        chosen.sort(key=lambda goal: goal.position)
        return await self._select(user_id, challenge, chosen, replace_existing, now)

    async def _select(
        self,
        user_id: str,
        challenge: Challenge,
        goals: Sequence[Goal],
        replace_existing: bool,
        now: datetime,
    ) -> SelectResult:
        """The batch-select write transaction (docs/rules.md#batch-select step 2), then invalidation."""
        challenge_id = challenge.challenge_id
        goal_ids = [goal.goal_id for goal in goals]
        activate_params = {
            "user_id": user_id,
            "namespace": self._namespace,
            "goal_ids": goal_ids,
            "challenge_ids": [challenge_id] * len(goals),
            "expires_at": [expires_at_for(goal, now) for goal in goals],
            "now": now,
        }
        # Prerequisites of the selected goals that `challenge_progress` does not return.
        challenge_goal_ids = [goal.goal_id for goal in challenge.goals]
        external_ids = sorted({p for goal in goals for p in goal.prerequisites} - set(challenge_goal_ids))

        async def write(conn: psycopg.AsyncConnection[Any]) -> tuple[list[str], dict[str, ProgressRow]]:
            async with conn.transaction():
                # Replacing deactivates the challenge's other goals, so all of its implied rows become real.
                await self._materialize(conn, user_id, challenge_goal_ids if replace_existing else goal_ids)
                deactivated: list[str] = []
                if replace_existing:
                    deactivated = [
                        row["goal_id"]
                        for row in await self._queries.rows(
                            conn,
                            "deactivate_challenge_goals",
                            {"user_id": user_id, "challenge_id": challenge_id, "keep_goal_ids": goal_ids},
                        )
                    ]
                activated = await self._queries.rows(conn, "batch_set_goal_active", activate_params, _ROW)
                rows = await self._queries.rows(
                    conn, "challenge_progress", {"user_id": user_id, "challenge_id": challenge_id}, _ROW
                )
                if external_ids:
                    rows += await self._queries.rows(
                        conn, "goals_by_ids", {"user_id": user_id, "goal_ids": external_ids}, _ROW
                    )
            rows_by_id = {row.goal_id: row for row in rows}
            # The upsert's own rows win: they are the selected goals' rows after the write.
            rows_by_id.update((row.goal_id, row) for row in activated)
            return deactivated, rows_by_id

        deactivated, rows_by_id = await self._db(
            user_id, f"selecting goals {goal_ids} in challenge {challenge_id!r}", write
        )
        await self._cache_invalidate(user_id)
        goals_by_id = self._catalog.goals_by_id
        replaced = tuple(
            goal_id
            for goal_id in sorted((g for g in deactivated if g in goals_by_id), key=lambda g: goals_by_id[g].position)
        )
        total_active = sum(
            1 for goal in challenge.goals if (row := rows_by_id.get(goal.goal_id)) is not None and row.is_active
        )
        selected = tuple(self._state(goal, rows_by_id, now) for goal in goals)
        return SelectResult(challenge_id, selected, total_active, replaced, now)

    # -- claim (docs/rules.md#claim) ---------------------------------------------------------------------------

    async def claim(self, user_id: str, challenge_id: str, goal_id: str) -> ClaimResult:
        """`POST …/goals/{goal_id}/claim`: checks 1–10 of docs/http-api.md#endpoints in order, the reward grant and
        the claimed mark in one transaction bounded by `claim_timeout_ms`, then invalidation."""
        try:
            result = await self._claim(user_id, challenge_id, goal_id)
        except DomainError as error:
            CLAIMS_TOTAL.labels(error.error_code).inc()
            raise
        CLAIMS_TOTAL.labels(CLAIM_RESULT_OK).inc()
        return result

    async def _claim(self, user_id: str, challenge_id: str, goal_id: str) -> ClaimResult:
        _require_ids(challenge_id, goal_id)
        challenge = self._challenge(challenge_id)
        goal = self._catalog.goals_by_id.get(goal_id)
        if goal is None or goal.challenge_id != challenge.challenge_id:
            raise NotFound(
                "GOAL_NOT_FOUND",
                f"Goal not found or removed from config (goal_id: {goal_id}, challenge_id: {challenge_id})",
            )
        now = self._clock()
        # The grant's deadline is on the granter's clock (monotonic); the timeout bounds everything else.
        deadline = time.monotonic() + self._claim_timeout_s

        async def claim_in_transaction(conn: psycopg.AsyncConnection[Any]) -> datetime:
            async with conn.transaction():
                row = await self._queries.one(
                    conn, "progress_for_update", {"user_id": user_id, "goal_id": goal_id}, _ROW
                ) or await self._implied_row(conn, user_id, goal_id)
                await self._check_claimable(conn, user_id, challenge_id, goal, row, now)
                return await self._grant_and_mark(conn, user_id, goal, now, deadline)

        try:
            async with asyncio.timeout(self._claim_timeout_s):
                claimed_at = await self._db(user_id, f"claiming goal {goal_id!r}", claim_in_transaction)
        except TimeoutError:
            log.warning(
                "claim of goal %r by user %r did not finish within %g s (database lock or latency)",
                goal_id,
                user_id,
                self._claim_timeout_s,
            )
            raise _unavailable() from None
        await self._cache_invalidate(user_id)
        return ClaimResult(goal_id, goal.reward, claimed_at)

    async def _check_claimable(
        self,
        conn: psycopg.AsyncConnection[Any],
        user_id: str,
        challenge_id: str,
        goal: Goal,
        row: ProgressRow | None,
        now: datetime,
    ) -> None:
        """Checks 4–9 of docs/http-api.md#endpoints on the locked row; the first failure raises."""
        goal_id = goal.goal_id
        if row is None:
            raise _not_completed(goal_id, STATUS_NOT_STARTED)
        if not row.is_active:
            raise GoalNotActive(challenge_id, goal_id)
        if claim_guard_rotated(goal, row, now):
            raise InvalidRequest(
                "GOAL_ROTATED",
                f"Goal has rotated and must be re-completed (goal_id: {goal_id}, challenge_id: {challenge_id})",
            )
        if row.status == STATUS_CLAIMED:
            raise AlreadyClaimed(goal_id, row.claimed_at)
        if row.status != STATUS_COMPLETED:
            raise _not_completed(goal_id, row.status)
        if goal.prerequisites:
            prerequisite_rows = await self._queries.rows(
                conn, "goals_by_ids", {"user_id": user_id, "goal_ids": list(goal.prerequisites)}, _ROW
            )
            rows_by_id = {prerequisite.goal_id: prerequisite for prerequisite in prerequisite_rows}
            if is_locked(goal, rows_by_id, self._catalog.goals_by_id, now):
                raise InvalidRequest("GOAL_LOCKED", f"Prerequisites not completed (goal_id: {goal_id})")

    async def _grant_and_mark(
        self,
        conn: psycopg.AsyncConnection[Any],
        user_id: str,
        goal: Goal,
        now: datetime,
        deadline: float,
    ) -> datetime:
        """Check 10 and the final writes: generation → grant → mark claimed and record the grant (one statement).
        The generation is a statement of its own after the row lock: read with the locking SELECT's snapshot it
        could miss a grant committed while the claim waited for the lock (a repeated generation)."""
        generation_row = await self._queries.one(
            conn,
            "next_claim_generation",
            {"namespace": self._namespace, "user_id": user_id, "goal_id": goal.goal_id},
        )
        generation = int(generation_row["generation"]) if generation_row else 1
        grant = RewardGrant(
            namespace=self._namespace,
            user_id=user_id,
            challenge_id=goal.challenge_id,
            goal_id=goal.goal_id,
            generation=generation,
            reward_type=goal.reward.type,
            reward_id=goal.reward.reward_id,
            quantity=goal.reward.quantity,
        )
        try:
            attempts = await self._rewards.grant(grant, deadline)
        except RewardGrantFailed as failure:
            log.warning(
                "reward grant failed for user %r, goal %r, idempotency key %s: %s",
                user_id,
                goal.goal_id,
                grant.idempotency_key,
                failure.reason,
            )
            raise UpstreamFailed("REWARD_GRANT_FAILED", failure.api_message()) from None
        marked = await self._queries.one(
            conn,
            "record_claim",
            {
                "user_id": user_id,
                "goal_id": goal.goal_id,
                "now": now,
                "namespace": self._namespace,
                "generation": generation,
                "challenge_id": goal.challenge_id,
                "idempotency_key": grant.idempotency_key,
                "reward_type": goal.reward.type,
                "reward_id": goal.reward.reward_id,
                "quantity": goal.reward.quantity,
                "mode": self._reward_mode,
                "attempts": attempts,
            },
        )
        if marked is None:
            # Impossible under the row lock (status was checked as completed); no grant was recorded either.
            log.error("record_claim changed no row for user %r, goal %r under the row lock", user_id, goal.goal_id)
            raise _internal_error()
        claimed_at: datetime = marked["claimed_at"]
        return claimed_at

    # -- catalog lookups ---------------------------------------------------------------------------

    def _challenge(self, challenge_id: str) -> Challenge:
        challenge = self._catalog.challenges_by_id.get(challenge_id)
        if challenge is None:
            raise NotFound("CHALLENGE_NOT_FOUND", f"challenge '{challenge_id}' not found")
        return challenge

    def _goal_of(self, challenge: Challenge, goal_id: str) -> Goal:
        goal = self._catalog.goals_by_id.get(goal_id)
        if goal is None or goal.challenge_id != challenge.challenge_id:
            raise _goal_not_found(challenge.challenge_id, goal_id)
        return goal

    # -- states ------------------------------------------------------------------------------------

    def _state(self, goal: Goal, rows_by_id: Mapping[str, ProgressRow], now: datetime) -> GoalState:
        row = rows_by_id.get(goal.goal_id)
        if row is not None and goal.goal_id in self._plain_goal_ids:
            # What `view` and `is_locked` return for a plain goal, without building a GoalView per row.
            return GoalState(goal, row, row, False)
        return GoalState(goal, row, view(goal, row, now), is_locked(goal, rows_by_id, self._catalog.goals_by_id, now))

    def _implied_state(self, goal: Goal, rows_by_id: Mapping[str, ProgressRow], now: datetime) -> GoalState:
        shared = self._implied_states.get(goal.goal_id)
        if shared is not None:
            return shared
        return GoalState(goal, None, IMPLIED_VIEW, is_locked(goal, rows_by_id, self._catalog.goals_by_id, now))

    def _all_states(
        self,
        challenge: Challenge,
        rows_by_id: Mapping[str, ProgressRow],
        now: datetime,
        initialized: bool,
    ) -> tuple[GoalState, ...]:
        """Every goal of the challenge; `initialized`: `rows_by_id` holds every real row of a player whose default goals
        without one are implied."""
        unassigned = self._unassigned_states
        defaults = self._default_id_set if initialized else frozenset()
        states = []
        for goal in challenge.goals:
            goal_id = goal.goal_id
            if goal_id in rows_by_id:
                states.append(self._state(goal, rows_by_id, now))
            elif goal_id in defaults:
                states.append(self._implied_state(goal, rows_by_id, now))
            else:
                states.append(unassigned.get(goal_id) or self._state(goal, rows_by_id, now))
        return tuple(states)

    @staticmethod
    def _view_rows(rows: Sequence[ProgressRow], pre: Sequence[ProgressRow]) -> dict[str, ProgressRow]:
        rows_by_id = {row.goal_id: row for row in pre}
        rows_by_id.update((row.goal_id, row) for row in rows)
        return rows_by_id

    def _implied_ids(
        self,
        rows: Sequence[ProgressRow],
        pre: Sequence[ProgressRow],
        init: Initialization | None,
    ) -> Sequence[str]:
        """The default goals of a view that are implied (no real row), in catalog order."""
        if init is None:
            return ()
        if not rows and not pre and not init.hidden:
            return self._default_ids
        real = init.real_goal_ids(rows, pre)
        return [goal_id for goal_id in self._default_ids if goal_id not in real]

    def _active_challenges(
        self,
        rows: Sequence[ProgressRow],
        pre: Sequence[ProgressRow],
        init: Initialization | None,
        now: datetime,
    ) -> dict[str, ChallengeState]:
        """Per challenge id, in catalog order: the challenge with its goals with an active row, real or implied."""
        states = self._active_in_catalog_order(rows, pre, init, now)
        if states is self._untouched_states:
            return self._untouched_active
        by_challenge: dict[str, list[GoalState]] = {
            challenge.challenge_id: [] for challenge in self._catalog.challenges
        }
        for state in states:
            by_challenge[state.goal.challenge_id].append(state)
        challenges = self._catalog.challenges_by_id
        return {
            challenge_id: ChallengeState(challenges[challenge_id], tuple(goals))
            for challenge_id, goals in by_challenge.items()
        }

    def _active_in_catalog_order(
        self,
        rows: Sequence[ProgressRow],
        pre: Sequence[ProgressRow],
        init: Initialization | None,
        now: datetime,
    ) -> Sequence[GoalState]:
        """The states of the catalog goals with an active row, real or implied, in catalog order; walks the player's
        rows rather than the catalog (a few active rows against hundreds of goals)."""
        implied = self._implied_ids(rows, pre, init)
        if not rows and not pre and implied is self._default_ids:
            return self._untouched_states
        rows_by_id = self._view_rows(rows, pre)
        order, goals_by_id = self._catalog_order, self._catalog.goals_by_id
        active = [row.goal_id for row in rows_by_id.values() if row.is_active and row.goal_id in order]
        active.extend(implied)
        active.sort(key=order.__getitem__)
        return [
            self._state(goals_by_id[goal_id], rows_by_id, now)
            if goal_id in rows_by_id
            else self._implied_state(goals_by_id[goal_id], rows_by_id, now)
            for goal_id in active
        ]

    # -- PostgreSQL reads --------------------------------------------------------------------------

    async def _active_view(self, user_id: str) -> View:
        """The user's active rows and the rows of their prerequisites: the cache when it holds a valid
        entry, otherwise one `player_rows` statement followed by a conditional fill (docs/cache.md#entries-and-tokens)."""
        read = await self._cache_read(user_id, include_synced=False)
        if read.entry is not None:
            return list(read.entry.rows), list(read.entry.pre), read.entry.init
        view = await self._db(user_id, "reading the active view", lambda conn: self._read_active_view(conn, user_id))
        await self._cache_fill(user_id, read, view)
        return view

    def _player_rows(self, conn: psycopg.AsyncConnection[Any], user_id: str, every_row: bool) -> Awaitable[list[Any]]:
        params = {"user_id": user_id, "prereq_goal_ids": self._prerequisite_ids, "every_row": every_row}
        return self._queries.rows(conn, "player_rows", params, tuple_row)

    def _recorded_elsewhere(self, default_set_id: str | None) -> bool:
        """The player was initialized with another default set (the catalog changed since): its implied rows are
        that set's, which only the `goal_progress` view knows (until the next initialize makes them real)."""
        return default_set_id is not None and default_set_id != self._default_set.set_id

    async def _read_active_view(self, conn: psycopg.AsyncConnection[Any], user_id: str) -> View:
        """`player_rows` (the view through `active_view` for a player of another default set)."""
        fetched = await self._player_rows(conn, user_id, False)
        default_set_id, initialized_at, namespace = fetched[0][:_IN_VIEW]
        if not self._recorded_elsewhere(default_set_id):
            return self._view_of(fetched, initialized_at, namespace)
        fetched = await self._queries.rows(
            conn, "active_view", {"user_id": user_id, "prereq_goal_ids": self._prerequisite_ids}, _ROW
        )
        rows, pre = split_active_view(fetched, self._catalog.goals_by_id)
        return rows, pre, None

    def _view_of(self, fetched: Sequence[Sequence[Any]], initialized_at: datetime | None, namespace: str) -> View:
        """The view in rows of `player_rows` or `initialize_view`: the active rows, the other rows in view (prerequisites),
        and the initialization with the default goals whose rows are out of view."""
        rows: list[ProgressRow] = []
        pre: list[ProgressRow] = []
        hidden: list[str] = []
        for values in fetched:
            goal_id = values[_IN_VIEW + 2]
            if goal_id is None:
                continue
            if not values[_IN_VIEW]:
                if goal_id in self._default_id_set:
                    hidden.append(goal_id)
                continue
            row = ProgressRow(*values[_IN_VIEW + 1 :])
            (rows if row.is_active else pre).append(row)
        init = Initialization(initialized_at, namespace, tuple(hidden)) if initialized_at is not None else None
        return rows, pre, init

    async def _read_all(self, conn: psycopg.AsyncConnection[Any], user_id: str) -> tuple[dict[str, ProgressRow], bool]:
        """Every real row of the player by goal_id, and whether its untouched default goals are implied (`player_rows`;
        `user_progress`, which holds the implied rows too, for a player of another default set)."""
        fetched = await self._player_rows(conn, user_id, True)
        default_set_id = fetched[0][0]
        if self._recorded_elsewhere(default_set_id):
            rows = await self._queries.rows(conn, "user_progress", {"user_id": user_id}, _ROW)
            return {row.goal_id: row for row in rows}, False
        first = _IN_VIEW + 1
        rows_by_id = {values[first + 1]: ProgressRow(*values[first:]) for values in fetched if values[first + 1]}
        return rows_by_id, default_set_id is not None

    async def _read_challenge_rows(
        self,
        conn: psycopg.AsyncConnection[Any],
        user_id: str,
        challenge: Challenge,
    ) -> dict[str, ProgressRow]:
        """`challenge_progress`, plus `goals_by_ids` for prerequisites in other challenges (if any)."""
        rows = await self._queries.rows(
            conn, "challenge_progress", {"user_id": user_id, "challenge_id": challenge.challenge_id}, _ROW
        )
        external = self._external_prerequisites[challenge.challenge_id]
        if external:
            rows += await self._queries.rows(conn, "goals_by_ids", {"user_id": user_id, "goal_ids": external}, _ROW)
        return {row.goal_id: row for row in rows}

    async def _materialize(self, conn: psycopg.AsyncConnection[Any], user_id: str, goal_ids: Sequence[str]) -> None:
        """Before a write to these goals' rows: their implied default rows become real rows with the same values
        (docs/data-model.md#implied-default-goals). Invisible to readers, so it needs no transaction with the write."""
        await self._queries.rows(conn, "materialize_implied_goals", {"user_id": user_id, "goal_ids": list(goal_ids)})

    async def _implied_row(self, conn: psycopg.AsyncConnection[Any], user_id: str, goal_id: str) -> ProgressRow | None:
        """The goal's row as readers see it when it has no real row: an implied default row, or None. A claim checks it
        as it would the real row (never claimable: not completed, or rotated)."""
        return await self._queries.one(conn, "goals_by_ids", {"user_id": user_id, "goal_ids": [goal_id]}, _ROW)

    async def _db(self, user_id: str, action: str, work: Work[T]) -> T:
        """Run `work` on a pooled connection. A deadlock or serialization failure is retried once;
        an unreachable, timed-out or persistently conflicting database becomes 503."""
        for attempt in (1, 2):
            try:
                async with self._store.connection() as conn:
                    return await work(conn)
            except StoreUnavailable as error:
                log.warning("database unavailable while %s for user %r: %s", action, user_id, error)
                raise _unavailable(error) from None
            except psycopg.Error as error:
                sqlstate = error.sqlstate or ""
                if sqlstate in _RETRYABLE_SQLSTATES and attempt == 1:
                    log.info("retrying %s for user %r after SQLSTATE %s", action, user_id, sqlstate)
                    # A short pause lets the surviving transaction take the locks we released and
                    # finish; retrying at once can recreate the same deadlock with it.
                    await asyncio.sleep(random.uniform(*_RETRY_PAUSE_S))
                    continue
                if sqlstate in _RETRYABLE_SQLSTATES or isinstance(error, psycopg.OperationalError):
                    log.warning(
                        "database error while %s for user %r (SQLSTATE %s): %s",
                        action,
                        user_id,
                        sqlstate or "none",
                        error,
                    )
                    raise _unavailable() from None
                log.error(
                    "unexpected database error while %s for user %r (SQLSTATE %s): %s",
                    action,
                    user_id,
                    sqlstate or "none",
                    error,
                )
                raise _internal_error() from error
        raise AssertionError("unreachable: the second attempt returns or raises")

    # -- cache (never fails a request) ------------------------------------------------------------

    async def _cache_read(self, user_id: str, include_synced: bool) -> CacheRead:
        try:
            return await self._cache.read_active(user_id, include_synced)
        except Exception:  # the cache degrades by itself; anything else must not fail the request
            log.exception("cache read failed for user %r; reading PostgreSQL", user_id)
            return CacheRead(user_id, None, None, False, True, -1)

    async def _cache_fill(self, user_id: str, read: CacheRead, view: View) -> None:
        """Conditional fill after `read` (docs/cache.md#entries-and-tokens)."""
        try:
            await self._cache.fill_active(user_id, read, *view)
        except Exception:
            log.exception("cache fill failed for user %r", user_id)

    async def _cache_invalidate(self, user_id: str) -> str | None:
        try:
            return await self._cache.invalidate(user_id)
        except Exception:
            log.exception("cache invalidation failed for user %r", user_id)
            return None

"""Listings, the single-challenge GET and rotation status (docs/http-api.md#endpoints, docs/rules.md#staleness-and-the-view, docs/rules.md#listing,
docs/rules.md#prerequisites-and-locked) against real PostgreSQL and Redis: L1–L3, L5–L9, L11, L12, T2–T5, T7, T10, I11 for listings."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest

from service.domain.errors import DomainError
from service.domain.rules import expires_in_seconds, is_locked, view
from service.storage.store import PoolConfig, Store, open_pool
from service.transport.errors import http_error
from service.transport.timestamps import expiry_fields
from service.usecases.players import GoalState, ListResult
from tests.support.players import (
    DAY_START,
    MAIN_CATALOG,
    NEXT_DAY,
    NEXT_WEEK,
    T0,
    WEEK_START,
    Clock,
    Env,
    api_error,
    closed_port,
    env_fixture,  # noqa: F401  (the `env` fixture)
    new_user,
    statements_run,
)

YESTERDAY = DAY_START - timedelta(hours=6)


def states(result: ListResult) -> dict[str, GoalState]:
    return {state.goal.goal_id: state for challenge in result.challenges for state in challenge.goals}


def shown(state: GoalState) -> tuple[int, str]:
    return state.view.progress, state.view.status


async def test_new_user_sees_every_goal_with_defaults(env: Env) -> None:
    """L1: every catalog goal, no rows: 0 / not_started / inactive / no timestamps; locked computed."""
    result = await env.players().list_challenges(new_user(), active_only=False)
    assert [c.challenge.challenge_id for c in result.challenges] == ["c1", "c2", "c3"]
    by_id = states(result)
    assert list(by_id) == [goal.goal_id for goal in MAIN_CATALOG.goals]  # catalog order
    for state in by_id.values():
        assert state.row is None
        assert shown(state) == (0, "not_started")
        assert state.view.completed_at is None and state.view.claimed_at is None
    assert {goal_id for goal_id, s in by_id.items() if s.locked} == {"c1-locked", "c2-b"}


async def test_seeded_rows_are_reflected(env: Env) -> None:
    """L2, L5: rows show their progress, status, timestamps and flag; unknown goals are ignored."""
    user = new_user()
    await env.seed(user, "c1-plain", progress=3, status="completed", completed_at=T0, is_active=False)
    await env.seed(user, "c3-a", progress=1, status="in_progress")
    await env.seed(user, "removed-goal", challenge_id="c3", progress=2)
    by_id = states(await env.players().list_challenges(user, active_only=False))
    assert shown(by_id["c1-plain"]) == (3, "completed") and by_id["c1-plain"].view.completed_at == T0
    assert by_id["c1-plain"].row is not None and not by_id["c1-plain"].row.is_active
    assert shown(by_id["c3-a"]) == (1, "in_progress") and by_id["c3-a"].row is not None
    assert "removed-goal" not in by_id


async def test_active_only_filters_goals_and_drops_empty_challenges(env: Env) -> None:
    """L3: only active goals; a challenge without one is omitted; never more than the full list."""
    user = new_user()
    await env.seed(user, "c1-plain")
    await env.seed(user, "c3-b")
    await env.seed(user, "c2-a", is_active=False)
    players = env.players()
    active = await players.list_challenges(user, active_only=True)
    full = await players.list_challenges(user, active_only=False)
    assert [(c.challenge.challenge_id, [s.goal.goal_id for s in c.goals]) for c in active.challenges] == [
        ("c1", ["c1-plain"]),
        ("c3", ["c3-b"]),
    ]
    assert len(states(active)) <= len(states(full))


async def test_locked_follows_prerequisites_in_any_challenge(env: Env) -> None:
    """L7: locked while a prerequisite lacks a row or is not completed/claimed; the active view keeps
    inactive prerequisite rows; prerequisites in other challenges count."""
    user = new_user()
    players = env.players()
    await env.seed(user, "c1-locked")
    await env.seed(user, "c2-b")
    full = states(await players.list_challenges(user, active_only=False))
    assert full["c1-locked"].locked and full["c2-b"].locked
    await env.seed(user, "c2-a", progress=1, status="in_progress", is_active=False)
    await env.cache().invalidate(user)
    assert states(await players.list_challenges(user, active_only=True))["c1-locked"].locked
    await env.seed(user, "c2-a", progress=2, status="completed", completed_at=T0, is_active=False)
    await env.seed(user, "c1-login", progress=1, status="claimed", completed_at=T0, claimed_at=T0)
    await env.cache().invalidate(user)
    for active_only in (False, True):
        by_id = states(await players.list_challenges(user, active_only=active_only))
        assert not by_id["c1-locked"].locked and not by_id["c2-b"].locked
    single = await players.get_challenge(user, "c1", active_only=False)
    assert not next(s for s in single.goals if s.goal.goal_id == "c1-locked").locked


async def test_get_one_challenge(env: Env) -> None:
    """L8: one challenge, all goals or its active part (possibly empty); unknown or empty ids fail."""
    user = new_user()
    await env.seed(user, "c3-c", progress=2, status="in_progress")
    players = env.players()
    full = await players.get_challenge(user, "c3", active_only=False)
    assert full.challenge.challenge_id == "c3" and len(full.goals) == 8
    active = await players.get_challenge(user, "c3", active_only=True)
    assert [(s.goal.goal_id, shown(s)) for s in active.goals] == [("c3-c", (2, "in_progress"))]
    assert (await players.get_challenge(user, "c2", active_only=True)).goals == ()
    error = await api_error(players.get_challenge(user, "nope", active_only=False))
    assert (error.status, error.error_code, error.message) == (404, "CHALLENGE_NOT_FOUND", "challenge 'nope' not found")
    error = await api_error(players.get_challenge(user, "", active_only=True))
    assert (error.status, error.error_code, error.message) == (400, "INVALID_REQUEST", "challenge_id is required")


async def test_cached_listing_equals_postgres_listing_and_runs_no_statement(env: Env) -> None:
    """L9, I11: the active_only listing served from the cache equals the one read from PostgreSQL,
    and a cache hit runs no statement."""
    user = new_user()
    await env.seed(user, "c1-locked", progress=4, status="in_progress")
    await env.seed(user, "c2-a", progress=2, status="completed", completed_at=T0, is_active=False)
    await env.seed(
        user, "c1-daily", progress=5, baseline_value=1, status="in_progress", updated_at=T0, expires_at=NEXT_DAY
    )
    await env.seed(user, "c3-h", progress=3, status="claimed", completed_at=T0, claimed_at=T0 + timedelta(seconds=1))
    players = env.players()
    before = statements_run()
    from_postgres = await players.list_challenges(user, active_only=True)
    assert statements_run() == before + 1
    from_cache = await players.list_challenges(user, active_only=True)
    assert statements_run() == before + 1
    assert from_cache == from_postgres
    assert states(from_cache)["c1-daily"].view.progress == 4
    assert not states(from_cache)["c1-locked"].locked
    single = await players.get_challenge(user, "c1", active_only=True)
    assert statements_run() == before + 1
    assert single == from_postgres.challenges[0]


async def test_rotation_view_at_read_time(env: Env) -> None:
    """L6, T2, T3, T4, T5, T7: after a boundary, reads show resetting goals reset (completed or in
    progress, and never-progressed rows stay not_started), carry-over goals unchanged, claimed
    goals without reselection claimed, reselectable claimed goals reopened; absolute goals and fresh
    rows keep their values; nothing is written."""
    user = new_user()
    await env.seed(
        user, "c1-daily", progress=8, baseline_value=1, status="completed", completed_at=YESTERDAY, updated_at=YESTERDAY
    )
    await env.seed(
        user, "c1-carry", progress=6, baseline_value=0, status="completed", completed_at=YESTERDAY, updated_at=YESTERDAY
    )
    await env.seed(
        user, "c2-weekly", progress=5, baseline_value=3, status="in_progress", updated_at=WEEK_START - timedelta(days=1)
    )
    await env.seed(user, "c2-monthly", progress=0, status="not_started", updated_at=YESTERDAY)
    await env.seed(user, "c1-plain", progress=2, status="in_progress", updated_at=YESTERDAY - timedelta(days=30))
    players = env.players()
    by_id = states(await players.list_challenges(user, active_only=False))
    assert shown(by_id["c1-daily"]) == (0, "not_started") and by_id["c1-daily"].view.completed_at is None
    assert shown(by_id["c1-carry"]) == (6, "completed") and by_id["c1-carry"].view.completed_at == YESTERDAY
    assert shown(by_id["c2-weekly"]) == (0, "not_started")
    assert shown(by_id["c2-monthly"]) == (0, "not_started")  # fresh this month: stored values
    assert shown(by_id["c1-plain"]) == (2, "in_progress")
    assert expiry_fields(by_id["c1-daily"].goal, T0) == ("2030-05-16T00:00:00Z", 12 * 3600)
    stored = await env.row(user, "c1-daily")
    assert stored is not None and stored.status == "completed"  # reads never write

    await env.seed(
        user,
        "c1-daily",
        progress=8,
        baseline_value=1,
        status="claimed",
        completed_at=YESTERDAY,
        claimed_at=YESTERDAY,
        updated_at=YESTERDAY,
    )
    await env.seed(
        user,
        "c2-weekly",
        progress=8,
        baseline_value=1,
        status="claimed",
        completed_at=YESTERDAY,
        claimed_at=YESTERDAY,
        updated_at=WEEK_START - timedelta(days=1),
    )
    by_id = states(await players.list_challenges(user, active_only=False))
    assert shown(by_id["c1-daily"]) == (0, "not_started") and by_id["c1-daily"].view.claimed_at is None
    assert shown(by_id["c2-weekly"]) == (7, "claimed")  # no reselection: claimed forever

    clock = Clock(datetime(2030, 6, 1, 0, 0, tzinfo=T0.tzinfo))  # exactly the monthly boundary
    await env.seed(user, "c2-monthly", progress=9, baseline_value=2, status="completed", completed_at=T0, updated_at=T0)
    monthly = states(await env.players(clock=clock).list_challenges(user, active_only=False))["c2-monthly"]
    assert shown(monthly) == (0, "not_started")
    assert expiry_fields(monthly.goal, clock.now) == ("2030-07-01T00:00:00Z", 30 * 86400)


async def test_expiry_is_global_and_bounded(env: Env) -> None:
    """L11, L12: two users see the same expiry for a rotating goal; expiresInSeconds stays within
    the schedule's length, and a weekly value is never below a daily one at the same instant."""
    players = env.players()
    first = states(await players.list_challenges(new_user(), active_only=False))
    second = states(await players.list_challenges(new_user(), active_only=False))
    for goal_id in ("c1-daily", "c2-weekly", "c2-monthly"):
        assert expiry_fields(first[goal_id].goal, T0) == expiry_fields(second[goal_id].goal, T0)
    instant = T0
    for _ in range(40):
        daily = expiry_fields(first["c1-daily"].goal, instant)[1]
        weekly = expiry_fields(first["c2-weekly"].goal, instant)[1]
        monthly = expiry_fields(first["c2-monthly"].goal, instant)[1]
        assert 0 <= daily <= 86400 and weekly <= 7 * 86400 and monthly <= 31 * 86400
        assert weekly >= daily
        instant += timedelta(hours=17, minutes=13)


def test_rotation_status(env: Env) -> None:
    """T10: daily and weekly periods, a challenge without rotation, unknown and empty ids."""
    players = env.players()
    daily = players.rotation_status("c1")
    assert daily.goal is not None and daily.goal.goal_id == "c1-daily"
    assert daily.current is not None and daily.next is not None
    assert (daily.current.start, daily.current.end, daily.current.expires_in_seconds) == (
        DAY_START,
        NEXT_DAY,
        expires_in_seconds(NEXT_DAY, T0),
    )
    assert (daily.next.start, daily.next.end, daily.next.expires_in_seconds) == (
        NEXT_DAY,
        NEXT_DAY + timedelta(days=1),
        0,
    )
    weekly = players.rotation_status("c2")
    assert weekly.goal is not None and weekly.goal.goal_id == "c2-weekly"
    assert weekly.current is not None and weekly.next is not None
    assert (weekly.current.start, weekly.current.end) == (WEEK_START, NEXT_WEEK)
    assert weekly.current.expires_in_seconds == 4 * 86400 + 12 * 3600
    assert (weekly.next.start, weekly.next.end) == (NEXT_WEEK, NEXT_WEEK + timedelta(days=7))
    assert players.rotation_status("c3") == type(daily)("c3", None, None, None)


def test_rotation_status_errors(env: Env) -> None:
    """T10: an unknown challenge is 404, an empty id 400."""
    players = env.players()
    with pytest.raises(DomainError) as unknown:
        players.rotation_status("nope")
    assert (http_error(unknown.value).status, unknown.value.error_code) == (404, "CHALLENGE_NOT_FOUND")
    with pytest.raises(DomainError) as empty:
        players.rotation_status("")
    assert (http_error(empty.value).status, empty.value.message) == (400, "challenge_id is required")


async def test_database_unavailable_reads_give_503(env: Env, pg_url: str) -> None:
    """K10 for reads: an unreachable PostgreSQL is 503 `Database error occurred (PostgreSQL: <reason>)` for the full
    listing, the single GET and the active listing on a cache miss."""
    dead_url = psycopg.conninfo.make_conninfo(pg_url, host="127.0.0.1", port=str(closed_port()))
    pool = await open_pool(dead_url, "service", PoolConfig(min_size=0, max_size=1, timeout_ms=200))
    try:
        players = env.players(store=Store(pool))
        for call in (
            players.list_challenges(new_user(), active_only=False),
            players.list_challenges(new_user(), active_only=True),
            players.get_challenge(new_user(), "c1", active_only=False),
        ):
            error = await api_error(call)
            assert (error.status, error.error_code) == (503, "DEPENDENCY_UNAVAILABLE")
            assert error.message.startswith("Database error occurred (PostgreSQL: ")
    finally:
        await pool.close()


async def test_listing_states_equal_the_rules_for_every_goal(env: Env) -> None:
    """The listing's shortcuts (one shared state per row-less goal, a plain goal's row as its view) show
    exactly what rules.view and rules.is_locked show, for goals of every kind, with and without rows."""
    user = new_user()
    for index, goal in enumerate(MAIN_CATALOG.goals):
        if index % 3 != 1:  # rows for goals of every kind (rotating, relative, with prerequisites, plain)
            completed = index % 2 == 0
            await env.seed(
                user,
                goal.goal_id,
                progress=index + 5,
                status="completed" if completed else "in_progress",
                completed_at=T0 - timedelta(days=2) if completed else None,
                updated_at=T0 - timedelta(days=2),
                baseline_value=2,
            )
    result = await env.players().list_challenges(user, active_only=False)
    rows = await env.rows(user)
    states = [state for challenge in result.challenges for state in challenge.goals]
    assert [state.goal.goal_id for state in states] == [goal.goal_id for goal in MAIN_CATALOG.goals]
    for state in states:
        row = rows.get(state.goal.goal_id)
        expected = view(state.goal, row, result.now)
        shown = (state.view.progress, state.view.status, state.view.completed_at, state.view.claimed_at)
        assert shown == (expected.progress, expected.status, expected.completed_at, expected.claimed_at)
        assert state.row == row
        assert state.locked == is_locked(state.goal, rows, MAIN_CATALOG.goals_by_id, result.now)

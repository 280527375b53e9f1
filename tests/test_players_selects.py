"""Set active, batch select and random select (docs/http-api.md#endpoints, docs/rules.md#set-active, docs/rules.md#random-select) against real
PostgreSQL and Redis: S1–S5, B1–B7, R1–R6, read-your-writes (Ch1) and the deadlock retry (docs/rules.md#batch-select)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg

from service.storage.store import PoolConfig, Store, open_pool
from service.transport.timestamps import format_timestamp
from service.usecases.players import ListResult, SelectResult
from tests.support.players import (
    DAY_START,
    NEXT_DAY,
    NEXT_WEEK,
    T0,
    Clock,
    Env,
    api_error,
    closed_port,
    env_fixture,  # noqa: F401  (the `env` fixture)
    new_user,
)

C3_IDS = [f"c3-{letter}" for letter in "abcdefgh"]


def active_ids(listing: ListResult) -> list[str]:
    return [state.goal.goal_id for challenge in listing.challenges for state in challenge.goals]


def selected_ids(result: SelectResult) -> list[str]:
    return [state.goal.goal_id for state in result.selected]


# --- set active ------------------------------------------------------------------------------------


async def test_set_active_creates_flips_and_is_idempotent(env: Env) -> None:
    """S1, T11: activation creates the row (assigned_at, expires_at = N); deactivation flips the flag;
    repeated calls give the same response; other players are untouched."""
    user, other = new_user(), new_user()
    clock = Clock()
    players = env.players(clock=clock)
    first = await players.set_active(user, "c1", "c1-daily", True)
    assert (first.challenge_id, first.goal_id, first.is_active, first.assigned_at) == ("c1", "c1-daily", True, T0)
    row = await env.row(user, "c1-daily")
    assert row is not None and row.expires_at == NEXT_DAY and row.status == "not_started"
    clock.advance(minutes=5)
    assert await players.set_active(user, "c1", "c1-daily", True) == first
    off = await players.set_active(user, "c1", "c1-daily", False)
    assert (off.is_active, off.assigned_at) == (False, T0)
    assert await players.set_active(user, "c1", "c1-daily", False) == off
    new_row = await players.set_active(user, "c1", "c1-plain", False)
    assert (new_row.is_active, new_row.assigned_at) == (False, None)
    assert await env.rows(other) == {}


async def test_set_active_validation(env: Env) -> None:
    """S2: empty ids 400; unknown challenge 404; unknown goal or a goal of another challenge 404."""
    players = env.players()
    user = new_user()
    cases = [
        (("", "c1-plain"), (400, "INVALID_REQUEST", "challenge_id is required")),
        (("c1", ""), (400, "INVALID_REQUEST", "goal_id is required")),
        (("nope", "c1-plain"), (404, "CHALLENGE_NOT_FOUND", "challenge 'nope' not found")),
        (("c1", "nope"), (404, "GOAL_NOT_FOUND", "goal 'nope' not found in challenge 'c1'")),
        (("c1", "c2-a"), (404, "GOAL_NOT_FOUND", "goal 'c2-a' not found in challenge 'c1'")),
    ]
    for (challenge_id, goal_id), expected in cases:
        error = await api_error(players.set_active(user, challenge_id, goal_id, True))
        assert (error.status, error.error_code, error.message) == expected
    assert await env.rows(user) == {}


async def test_deactivation_keeps_progress_and_claimed_goals_stay_claimed(env: Env) -> None:
    """S3, S4: deactivation keeps progress and assigned_at; re-activation keeps a claimed goal
    claimed, leaves updated_at alone and sets expires_at for a rotating goal."""
    user = new_user()
    players = env.players()
    stale = DAY_START - timedelta(hours=2)
    await env.seed(
        user,
        "c1-carry",
        progress=4,
        baseline_value=1,
        status="claimed",
        completed_at=stale,
        claimed_at=stale,
        updated_at=stale,
        assigned_at=stale,
        expires_at=DAY_START,
    )
    result = await players.set_active(user, "c1", "c1-carry", False)
    assert result.assigned_at == stale
    row = await env.row(user, "c1-carry")
    assert row is not None and (row.progress, row.status, row.assigned_at, row.is_active) == (
        4,
        "claimed",
        stale,
        False,
    )
    await players.set_active(user, "c1", "c1-carry", True)
    row = await env.row(user, "c1-carry")
    assert row is not None
    assert (row.status, row.updated_at, row.expires_at, row.assigned_at, row.is_active) == (
        "claimed",
        stale,
        NEXT_DAY,
        T0,
        True,
    )


async def test_set_active_is_visible_to_the_next_read(env: Env) -> None:
    """S5, Ch1: a cached active view is invalidated by set-active."""
    user = new_user()
    players = env.players()
    assert active_ids(await players.list_challenges(user, active_only=True)) == []
    await players.set_active(user, "c3", "c3-d", True)
    assert active_ids(await players.list_challenges(user, active_only=True)) == ["c3-d"]
    await players.set_active(user, "c3", "c3-d", False)
    assert active_ids(await players.list_challenges(user, active_only=True)) == []


# --- batch select ------------------------------------------------------------------------------------


async def test_batch_select_add_and_replace(env: Env) -> None:
    """B1, B2: add mode keeps other active goals; replace mode deactivates them and lists them in
    catalog order; re-selected goals are not listed; counts are the challenge's active goals."""
    user = new_user()
    players = env.players()
    added = await players.batch_select(user, "c3", ["c3-e", "c3-a"], replace_existing=False)
    assert selected_ids(added) == ["c3-e", "c3-a"]  # request order
    assert (added.total_active, added.replaced) == (2, ())
    added = await players.batch_select(user, "c3", ["c3-c"], replace_existing=False)
    assert (added.total_active, added.replaced) == (3, ())
    replaced = await players.batch_select(user, "c3", ["c3-b", "c3-c"], replace_existing=True)
    assert replaced.replaced == ("c3-a", "c3-e")
    assert replaced.total_active == 2
    rows = await env.rows(user)
    assert sorted(goal for goal, row in rows.items() if row.is_active) == ["c3-b", "c3-c"]


async def test_batch_select_ignores_removed_goals_in_replaced_and_totals(env: Env) -> None:
    """docs/http-api.md#endpoints: rows of goals no longer in the catalog may be deactivated but are not reported."""
    user = new_user()
    await env.seed(user, "old-goal", challenge_id="c3")
    result = await env.players().batch_select(user, "c3", ["c3-a"], replace_existing=True)
    assert (result.replaced, result.total_active) == ((), 1)
    old = await env.row(user, "old-goal")
    assert old is not None and not old.is_active


async def test_batch_select_is_idempotent_and_deduplicates(env: Env) -> None:
    """B3: duplicates are removed keeping the first occurrence; repeating the call changes nothing."""
    user = new_user()
    clock = Clock()
    players = env.players(clock=clock)
    first = await players.batch_select(user, "c3", ["c3-f", "c3-b", "c3-f"], replace_existing=True)
    assert selected_ids(first) == ["c3-f", "c3-b"] and first.total_active == 2
    clock.advance(minutes=1)
    again = await players.batch_select(user, "c3", ["c3-f", "c3-b"], replace_existing=True)
    assert selected_ids(again) == ["c3-f", "c3-b"] and again.replaced == () and again.total_active == 2
    assert [s.row.assigned_at for s in again.selected if s.row] == [T0, T0]


async def test_batch_select_validation_writes_nothing(env: Env) -> None:
    """B4: empty list 400; unknown challenge 404; an unknown id or an id of another challenge 404
    (never 500), with nothing written for the valid ids."""
    user = new_user()
    players = env.players()
    cases = [
        (("c3", []), (400, "INVALID_REQUEST", "goal_ids cannot be empty")),
        (("", ["c3-a"]), (400, "INVALID_REQUEST", "challenge_id is required")),
        (("nope", ["c3-a"]), (404, "CHALLENGE_NOT_FOUND", "challenge 'nope' not found")),
        (("c3", ["c3-a", "nope"]), (404, "GOAL_NOT_FOUND", "goal 'nope' not found in challenge 'c3'")),
        (("c3", ["c3-a", "c1-plain"]), (404, "GOAL_NOT_FOUND", "goal 'c1-plain' not found in challenge 'c3'")),
    ]
    for (challenge_id, goal_ids), expected in cases:
        error = await api_error(players.batch_select(user, challenge_id, goal_ids, replace_existing=True))
        assert (error.status, error.error_code, error.message) == expected
    assert await env.rows(user) == {}


async def test_batch_select_shows_real_rows_and_sets_expiry(env: Env) -> None:
    """B5, B6: selected goals show their real view values after the write; rotating goals get
    expires_at = N; assignedAt renders RFC 3339; completed, claimed and locked goals are selectable."""
    user = new_user()
    await env.seed(user, "c2-a", progress=2, status="completed", completed_at=T0, is_active=False)
    await env.seed(
        user, "c2-weekly", progress=3, baseline_value=1, status="in_progress", updated_at=T0, is_active=False
    )
    result = await env.players().batch_select(user, "c2", ["c2-a", "c2-weekly", "c2-b"], replace_existing=False)
    views = {s.goal.goal_id: (s.view.progress, s.view.status) for s in result.selected}
    assert views == {"c2-a": (2, "completed"), "c2-weekly": (2, "in_progress"), "c2-b": (0, "not_started")}
    assert result.total_active == 3
    weekly = next(s for s in result.selected if s.goal.goal_id == "c2-weekly")
    assert weekly.row is not None and weekly.row.expires_at == NEXT_WEEK
    assert format_timestamp(weekly.row.assigned_at) == "2030-05-15T12:00:00Z"
    locked_goal = next(s for s in result.selected if s.goal.goal_id == "c2-b")
    assert locked_goal.locked  # c1-login has no row; selection does not enforce prerequisites


async def test_batch_select_isolation_and_read_your_writes(env: Env) -> None:
    """B7, Ch1: another player's rows are untouched; the selecting player's cached view is replaced."""
    user, other = new_user(), new_user()
    players = env.players()
    await players.batch_select(other, "c3", ["c3-a"], replace_existing=False)
    assert active_ids(await players.list_challenges(user, active_only=True)) == []
    await players.batch_select(user, "c3", ["c3-g", "c3-h"], replace_existing=True)
    assert active_ids(await players.list_challenges(user, active_only=True)) == ["c3-g", "c3-h"]
    assert active_ids(await players.list_challenges(other, active_only=True)) == ["c3-a"]


# --- random select -----------------------------------------------------------------------------------


async def test_random_select_counts_and_partial_results(env: Env) -> None:
    """R1: `count` goals, distinct, of the challenge, in catalog order; fewer eligible → all of them."""
    user = new_user()
    players = env.players()
    result = await players.random_select(user, "c3", 3, replace_existing=False, exclude_active=False)
    ids = selected_ids(result)
    assert len(ids) == 3 == len(set(ids)) and set(ids) <= set(C3_IDS)
    assert ids == sorted(ids, key=C3_IDS.index)
    assert result.total_active == 3
    everything = await players.random_select(new_user(), "c3", 50, replace_existing=False, exclude_active=False)
    assert selected_ids(everything) == C3_IDS


async def test_random_select_errors(env: Env) -> None:
    """R2: count ≤ 0 → INVALID_COUNT (before the catalog lookup); unknown challenge 404; nothing
    eligible → INSUFFICIENT_GOALS with the requested count."""
    user = new_user()
    players = env.players()
    for count in (0, -3):
        error = await api_error(players.random_select(user, "nope", count, False, False))
        assert (error.status, error.error_code, error.message) == (400, "INVALID_COUNT", "count must be greater than 0")
    error = await api_error(players.random_select(user, "nope", 1, False, False))
    assert (error.status, error.error_code, error.message) == (404, "CHALLENGE_NOT_FOUND", "challenge 'nope' not found")
    await players.batch_select(user, "c3", C3_IDS, replace_existing=False)
    error = await api_error(players.random_select(user, "c3", 4, False, True))
    assert (error.status, error.error_code, error.message) == (
        400,
        "INSUFFICIENT_GOALS",
        "no goals available for selection (available: 0, requested: 4)",
    )


async def test_random_select_active_goal_rules(env: Env) -> None:
    """R3, R6: exclude_active skips active goals; replace_existing skips and deactivates them (they
    keep their progress); without either flag active goals may be selected again."""
    user = new_user()
    players = env.players()
    await env.seed(user, "c3-a", progress=2, status="in_progress")
    await env.seed(user, "c3-b")
    excluded = await players.random_select(user, "c3", 10, replace_existing=False, exclude_active=True)
    assert selected_ids(excluded) == C3_IDS[2:]
    user2 = new_user()
    await env.seed(user2, "c3-a", progress=2, status="in_progress")
    replaced = await players.random_select(user2, "c3", 10, replace_existing=True, exclude_active=False)
    assert selected_ids(replaced) == C3_IDS[1:]
    assert replaced.replaced == ("c3-a",)
    kept = await env.row(user2, "c3-a")
    assert kept is not None and (kept.is_active, kept.progress, kept.status) == (False, 2, "in_progress")
    assert format_timestamp(kept.assigned_at) == "2030-05-15T11:00:00Z"
    user3 = new_user()
    await env.seed(user3, "c3-a", progress=2, status="in_progress")
    again = await players.random_select(user3, "c3", 10, replace_existing=False, exclude_active=False)
    assert "c3-a" in selected_ids(again)


async def test_random_select_never_picks_completed_claimed_or_locked(env: Env) -> None:
    """R4: completed, claimed (view status) and locked goals are not eligible; a stale reset goal is."""
    user = new_user()
    stale = DAY_START - timedelta(hours=1)
    await env.seed(user, "c1-plain", progress=3, status="completed", completed_at=T0, is_active=False)
    await env.seed(user, "c1-login", progress=1, status="claimed", completed_at=T0, claimed_at=T0, is_active=False)
    await env.seed(
        user,
        "c1-daily",
        progress=9,
        baseline_value=0,
        status="completed",
        completed_at=stale,
        updated_at=stale,
        is_active=False,
    )
    players = env.players()
    for _ in range(5):
        result = await players.random_select(user, "c1", 10, replace_existing=False, exclude_active=False)
        # c1-locked waits for c2-a (no row); c1-daily rotated, so its view is not_started again.
        assert selected_ids(result) == ["c1-daily", "c1-carry"]


async def test_random_select_is_random(env: Env) -> None:
    """R5: repeated calls on a fixed catalog produce different selections (28 possible pairs)."""
    players = env.players()
    selections = set()
    for _ in range(12):
        result = await players.random_select(new_user(), "c3", 2, replace_existing=False, exclude_active=False)
        selections.add(tuple(selected_ids(result)))
    assert len(selections) > 1


async def test_random_select_read_your_writes(env: Env) -> None:
    """Ch1: the cached view is invalidated by random select."""
    user = new_user()
    players = env.players()
    assert active_ids(await players.list_challenges(user, active_only=True)) == []
    result = await players.random_select(user, "c3", 2, replace_existing=False, exclude_active=False)
    assert active_ids(await players.list_challenges(user, active_only=True)) == selected_ids(result)


# --- deadlocks and outages ---------------------------------------------------------------------------


async def test_deadlock_is_retried_once(env: Env, pg_url: str) -> None:
    """docs/rules.md#batch-select: batch select holds c3-a and waits for c3-b, held by another session that then asks
    for c3-a. PostgreSQL aborts the select (its session detects the deadlock first); the retry
    succeeds once the other session commits."""
    user = new_user()
    await env.seed(user, "c3-a", is_active=False)
    await env.seed(user, "c3-b", is_active=False)
    players = env.players()
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as other:
        async with other.transaction():
            await other.execute("SET LOCAL deadlock_timeout = '20s'")
            await other.execute(
                "SELECT 1 FROM user_goal_progress WHERE user_id = %s AND goal_id = 'c3-b' FOR UPDATE", (user,)
            )
            select = asyncio.create_task(players.batch_select(user, "c3", ["c3-a", "c3-b"], False))
            await wait_until_waiting(env)
            # Waits for c3-a until the select's session aborts (deadlock_timeout 1 s there).
            await other.execute(
                "UPDATE user_goal_progress SET progress = 1 WHERE user_id = %s AND goal_id = 'c3-a'", (user,)
            )
        result = await select
    assert selected_ids(result) == ["c3-a", "c3-b"] and result.total_active == 2
    row = await env.row(user, "c3-a")
    assert row is not None and row.is_active and row.progress == 1


async def wait_until_waiting(env: Env) -> None:
    for _ in range(250):
        async with env.store.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND application_name = 'challengectl-service'"
            )
            row = await cursor.fetchone()
        if row and row[0]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the batch select never waited for the row lock")


async def test_database_unavailable_writes_give_503(env: Env, pg_url: str) -> None:
    """K10 for writes: set-active, batch and random select answer 503 `Database error occurred (PostgreSQL: <reason>)`."""
    dead_url = psycopg.conninfo.make_conninfo(pg_url, host="127.0.0.1", port=str(closed_port()))
    pool = await open_pool(dead_url, "service", PoolConfig(min_size=0, max_size=1, timeout_ms=200))
    try:
        players = env.players(store=Store(pool))
        user = new_user()
        for call in (
            players.set_active(user, "c3", "c3-a", True),
            players.batch_select(user, "c3", ["c3-a"], True),
            players.random_select(user, "c3", 1, False, False),
        ):
            error = await api_error(call)
            assert (error.status, error.error_code) == (503, "DEPENDENCY_UNAVAILABLE")
            assert error.message.startswith("Database error occurred (PostgreSQL: ")
    finally:
        await pool.close()

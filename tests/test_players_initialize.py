"""Initialize (docs/http-api.md#endpoints, docs/rules.md#initialize) against real PostgreSQL and Redis: I1–I14, T9, T11 (insert and
catch-up), and read-your-writes of initialize (Ch1)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg

from service.storage.cache import open_redis, synced_key
from service.storage.default_sets import default_goal_set
from service.storage.store import PoolConfig, Store, open_pool
from service.transport.timestamps import expiry_fields
from tests.support.players import (
    DAY_START,
    DEFAULT_IDS,
    MAIN_CATALOG,
    NEXT_DAY,
    T0,
    Clock,
    Env,
    api_error,
    build_catalog,
    challenge_json,
    closed_port,
    env_fixture,  # noqa: F401  (the `env` fixture)
    goal_json,
    main_challenges,
    make_cache,
    new_user,
    statements_run,
)


def assigned_ids(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [state.goal.goal_id for state in result.assigned]


async def test_new_player_gets_every_default_goal(env: Env) -> None:
    """I1, I13, T11: defaults become active rows; rotating ones carry expires_at = N."""
    user = new_user()
    result = await env.players().initialize(user)
    assert result.new_assignments == len(DEFAULT_IDS)
    assert assigned_ids(result) == DEFAULT_IDS  # catalog order
    rows = await env.rows(user)
    assert sorted(rows) == sorted(DEFAULT_IDS)
    assert all(row.is_active and row.status == "not_started" and row.progress == 0 for row in rows.values())
    assert rows["c1-daily"].expires_at == NEXT_DAY
    assert rows["c1-login"].expires_at is None
    assert rows["c1-daily"].assigned_at == T0 and rows["c1-daily"].updated_at == T0
    by_id = {state.goal.goal_id: state for state in result.assigned}
    assert expiry_fields(by_id["c1-daily"].goal, result.now) == ("2030-05-16T00:00:00Z", 12 * 3600)
    assert expiry_fields(by_id["c1-login"].goal, result.now) == ("", 0)


async def test_second_call_is_the_fast_path_without_statements(env: Env) -> None:
    """I2, I4, I11: a returning player with a valid cached view costs no PostgreSQL statement."""
    user = new_user()
    players = env.players()
    first = await players.initialize(user)
    before = statements_run()
    second = await players.initialize(user)
    third = await players.initialize(user)
    assert statements_run() == before
    assert second.new_assignments == 0 and third.new_assignments == 0
    assert assigned_ids(second) == assigned_ids(first) == assigned_ids(third)
    assert [s.row for s in second.assigned] == [s.row for s in first.assigned]


async def test_marker_without_view_reads_postgres_once_and_refills(env: Env) -> None:
    """docs/rules.md#initialize step 1: marker present, view missing → one read statement, then the cache serves."""
    user = new_user()
    players = env.players()
    await players.initialize(user)
    await env.cache().invalidate(user)
    before = statements_run()
    result = await players.initialize(user)
    assert statements_run() == before + 1
    assert assigned_ids(result) == DEFAULT_IDS and result.new_assignments == 0
    before = statements_run()
    await players.initialize(user)
    assert statements_run() == before


async def test_reinitialize_keeps_progress_and_status(env: Env) -> None:
    """I3: existing rows are never modified by initialize."""
    user = new_user()
    players = env.players()
    await players.initialize(user)
    await env.seed(user, "c1-login", progress=1, status="completed", completed_at=T0, updated_at=T0)
    await env.cache().invalidate(user)
    result = await players.initialize(user)
    login = next(s for s in result.assigned if s.goal.goal_id == "c1-login")
    assert (login.view.progress, login.view.status) == (1, "completed")
    row = await env.row(user, "c1-login")
    assert row is not None and row.status == "completed" and row.progress == 1


async def test_players_are_isolated(env: Env) -> None:
    """I5: one player's rows never appear for another."""
    alice, bob = new_user("alice"), new_user("bob")
    players = env.players()
    await players.initialize(alice)
    await env.seed(alice, "c3-a")
    result = await players.initialize(bob)
    assert result.new_assignments == 2
    assert "c3-a" not in assigned_ids(result)
    assert sorted(await env.rows(bob)) == sorted(DEFAULT_IDS)


async def test_catalog_without_defaults_still_returns_active_goals(env: Env) -> None:
    """I6: nothing is inserted, and the player's active goals are returned."""
    catalog = build_catalog([challenge_json("nd", [goal_json("nd-1"), goal_json("nd-2")])])
    user = new_user()
    await env.seed(user, "nd-2", challenge_id="nd")
    result = await env.players(catalog).initialize(user)
    assert result.new_assignments == 0
    assert assigned_ids(result) == ["nd-2"]
    assert sorted(await env.rows(user)) == ["nd-2"]


async def test_concurrent_first_calls(env: Env) -> None:
    """I7: all succeed, at most one reports new assignments, all return every default."""
    user = new_user()
    players = env.players()
    results = await asyncio.gather(*(players.initialize(user) for _ in range(6)))
    assert all(assigned_ids(result) == DEFAULT_IDS for result in results)
    reporting = [result.new_assignments for result in results if result.new_assignments > 0]
    assert reporting == [len(DEFAULT_IDS)]


async def test_rows_committed_after_the_statement_snapshot_are_read_again(env: Env) -> None:
    """I7: another first initialize holds the player's initialization record while ours runs; once it commits, our
    statement skips it (ON CONFLICT) without seeing it (its snapshot is older), so the view is read in a new statement."""
    user = new_user()
    first_default = DEFAULT_IDS[0]
    players = env.players()
    await players.initialize(new_user())  # records the default set, so the next call runs initialize_view alone
    async with env.store.connection() as other, other.transaction():
        await other.execute(
            "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, assigned_at)"
            " VALUES (%s, %s, %s, 'ns-other', %s)",
            (user, first_default, MAIN_CATALOG.goals_by_id[first_default].challenge_id, T0),
        )
        await other.execute(
            "INSERT INTO user_initializations (user_id, namespace, default_set_id, initialized_at)"
            " VALUES (%s, 'ns-other', %s, %s)",
            (user, default_goal_set(MAIN_CATALOG.default_goals).set_id, T0),
        )
        task = asyncio.create_task(players.initialize(user))
        async with env.store.connection() as probe:
            for _ in range(500):  # until our statement waits on the row lock of the uncommitted record
                cursor = await probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE %s",
                    ("%FROM user_initializations%",),
                )
                if (await cursor.fetchone())[0]:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("initialize never waited on the concurrent insert")
    result = await task
    assert assigned_ids(result) == DEFAULT_IDS
    assert result.new_assignments == 0  # the concurrent first call assigned them
    assert {state.goal.goal_id: state.row.namespace for state in result.assigned if state.row}[
        first_default
    ] == "ns-other"
    cached = await env.cache().read_active(user, include_synced=True)
    assert cached.synced and cached.entry is not None
    assert [row.goal_id for row in cached.entry.rows] == [first_default]
    assert cached.entry.init is not None and cached.entry.init.namespace == "ns-other"
    implied = cached.entry.active_rows(user, MAIN_CATALOG.default_goals)
    assert sorted(row.goal_id for row in implied) == sorted(DEFAULT_IDS)


async def test_config_sync_assigns_defaults_added_later(env: Env) -> None:
    """I8, Ch5: a new default goal in a new catalog (new fingerprint) is assigned at the next
    initialize; existing rows, including a deactivated default, are untouched."""
    user = new_user()
    await env.players().initialize(user)
    await env.players().set_active(user, "c1", "c1-login", False)
    challenges = main_challenges()
    challenges[2]["goals"].append(goal_json("c3-new", default=True))
    catalog = build_catalog(challenges)
    assert catalog.fingerprint != MAIN_CATALOG.fingerprint
    result = await env.players(catalog).initialize(user)
    assert result.new_assignments == 1
    assert assigned_ids(result) == ["c1-daily", "c3-new"]
    login = await env.row(user, "c1-login")
    assert login is not None and not login.is_active


async def test_response_lists_active_goals_of_any_challenge_and_skips_removed_goals(env: Env) -> None:
    """I9: non-default active goals from every challenge are listed; rows of goals that left the
    catalog are omitted; inactive rows are not listed."""
    user = new_user()
    await env.seed(user, "c2-weekly", updated_at=T0)
    await env.seed(user, "c3-b")
    await env.seed(user, "c3-c", is_active=False)
    await env.seed(user, "gone-goal", challenge_id="c3")
    result = await env.players().initialize(user)
    assert assigned_ids(result) == ["c1-login", "c1-daily", "c2-weekly", "c3-b"]


async def test_stale_resetting_row_is_caught_up(env: Env) -> None:
    """I10, T11: a returning player's stale resetting row is reset in PostgreSQL and returned."""
    user = new_user()
    players = env.players()
    await players.initialize(user)
    yesterday = DAY_START - timedelta(hours=3)
    await env.seed(
        user,
        "c1-daily",
        progress=9,
        status="completed",
        baseline_value=2,
        completed_at=yesterday,
        updated_at=yesterday,
        expires_at=DAY_START,
    )
    await env.cache().invalidate(user)
    result = await players.initialize(user)
    daily = next(s for s in result.assigned if s.goal.goal_id == "c1-daily")
    assert (daily.view.progress, daily.view.status, daily.view.completed_at) == (0, "not_started", None)
    row = await env.row(user, "c1-daily")
    assert row is not None
    assert (row.status, row.baseline_value, row.completed_at) == ("not_started", None, None)
    assert row.updated_at == T0 and row.expires_at == NEXT_DAY
    assert row.progress == 9  # raw progress is kept; the NULL baseline displays 0


async def test_catch_up_on_the_fast_path_invalidates_the_cache(env: Env) -> None:
    """docs/rules.md#initialize step 3 + Ch1: the clock crosses a boundary while the view is cached; initialize catches
    the row up, and the next reads see the caught-up row."""
    user = new_user()
    clock = Clock()
    players = env.players(clock=clock)
    await players.initialize(user)
    await env.seed(
        user,
        "c1-daily",
        progress=6,
        status="completed",
        baseline_value=0,
        completed_at=T0,
        updated_at=T0,
        expires_at=NEXT_DAY,
    )
    await env.cache().invalidate(user)
    await players.initialize(user)  # refills the cache with the completed row
    clock.advance(days=1)
    result = await players.initialize(user)
    daily = next(s for s in result.assigned if s.goal.goal_id == "c1-daily")
    assert daily.view.status == "not_started"
    assert daily.row is not None and daily.row.status == "not_started" and daily.row.updated_at == clock.now
    listing = await players.list_challenges(user, active_only=True)
    cached = next(s for c in listing.challenges for s in c.goals if s.goal.goal_id == "c1-daily")
    assert cached.row is not None and cached.row.updated_at == clock.now


async def test_claimed_stale_rows_cause_no_catch_up_statement(env: Env) -> None:
    """docs/rules.md#initialize step 3: claimed stale rows are not sent to rotation_catch_up."""
    user = new_user()
    clock = Clock()
    players = env.players(clock=clock)
    await players.initialize(user)
    await env.seed(
        user, "c1-daily", progress=6, status="claimed", baseline_value=0, completed_at=T0, claimed_at=T0, updated_at=T0
    )
    await env.cache().invalidate(user)
    await players.initialize(user)
    clock.advance(days=1)
    before = statements_run()
    result = await players.initialize(user)
    assert statements_run() == before
    daily = next(s for s in result.assigned if s.goal.goal_id == "c1-daily")
    assert daily.view.status == "not_started"  # reselectable: the view shows it reopened
    row = await env.row(user, "c1-daily")
    assert row is not None and row.status == "claimed"


async def test_empty_cached_view_with_defaults_takes_the_slow_path(env: Env) -> None:
    """I12: an empty but valid cached view while defaults exist is not trusted: missing rows are
    repaired."""
    user = new_user()
    cache = env.cache()
    await cache.set_synced(user)
    read = await cache.read_active(user, include_synced=True)
    assert await cache.fill_active(user, read, [], [])
    assert (await cache.read_active(user, include_synced=True)).entry is not None
    result = await env.players(cache=cache).initialize(user)
    assert result.new_assignments == len(DEFAULT_IDS)
    assert assigned_ids(result) == DEFAULT_IDS


async def test_catch_up_does_not_overwrite_a_row_a_flush_moved(env: Env) -> None:
    """T9: the row is read stale, then a flush-like write moves it into the new period while the
    catch-up waits for its lock; the catch-up leaves the flushed values in place."""
    user = new_user()
    players = env.players()
    await players.initialize(user)
    yesterday = DAY_START - timedelta(hours=1)
    await env.seed(
        user, "c1-daily", progress=4, status="in_progress", baseline_value=1, updated_at=yesterday, expires_at=DAY_START
    )
    await env.cache().invalidate(user)
    async with env.store.connection() as flusher:
        async with flusher.transaction():
            await flusher.execute(
                "UPDATE user_goal_progress SET progress = 7, baseline_value = 5, status = 'in_progress',"
                " updated_at = %s WHERE user_id = %s AND goal_id = 'c1-daily'",
                (T0, user),
            )
            task = asyncio.create_task(players.initialize(user))
            await wait_for_lock_waiter(env, user)
        result = await task
    row = await env.row(user, "c1-daily")
    assert row is not None
    assert (row.progress, row.baseline_value, row.status, row.updated_at) == (7, 5, "in_progress", T0)
    assert assigned_ids(result) == DEFAULT_IDS


async def wait_for_lock_waiter(env: Env, user: str) -> None:
    """Wait until some session waits on a row lock for one of this user's statements."""
    for _ in range(200):
        async with env.store.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%%user_goal_progress%%' AND pid <> pg_backend_pid()"
            )
            row = await cursor.fetchone()
        if row and row[0]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no session of user {user} ever waited for the row lock")


async def test_initialize_invalidates_after_inserting(env: Env) -> None:
    """Ch1: a cached active_only listing from before the initialize is not served after it."""
    user = new_user()
    players = env.players()
    empty = await players.list_challenges(user, active_only=True)
    assert empty.challenges == ()
    await players.initialize(user)
    listing = await players.list_challenges(user, active_only=True)
    assert [s.goal.goal_id for c in listing.challenges for s in c.goals] == DEFAULT_IDS


async def test_redis_down_initialize_works_from_postgres(env: Env) -> None:
    """I14, Ch3: with Redis unreachable every call (reads and writes) succeeds from PostgreSQL; reads
    count as bypassed and invalidations are journaled."""
    client = open_redis(f"redis://127.0.0.1:{closed_port()}/0", max_connections=2, timeout_ms=200)
    try:
        cache = make_cache(client, env.redis_prefix, MAIN_CATALOG)
        players = env.players(cache=cache)
        user = new_user()
        first = await players.initialize(user)
        second = await players.initialize(user)
        assert first.new_assignments == 2 and second.new_assignments == 0
        assert assigned_ids(second) == DEFAULT_IDS
        listing = await players.list_challenges(user, active_only=True)
        assert [s.goal.goal_id for c in listing.challenges for s in c.goals] == DEFAULT_IDS
        await players.set_active(user, "c3", "c3-a", True)
        await players.batch_select(user, "c3", ["c3-b"], replace_existing=False)
        await env.seed(user, "c3-b", progress=3, status="completed", completed_at=T0)
        assert (await players.claim(user, "c3", "c3-b")).claimed_at == T0
        listing = await players.get_challenge(user, "c3", active_only=True)
        assert [(s.goal.goal_id, s.view.status) for s in listing.goals] == [
            ("c3-a", "not_started"),
            ("c3-b", "claimed"),
        ]
        stats = cache.stats()
        assert not stats["healthy"] and stats["bypassed"] >= 2
        assert stats["invalidation_failures"] >= 4  # journaled for the replay on recovery
    finally:
        await client.aclose()


async def test_synced_marker_is_set_after_the_slow_path(env: Env) -> None:
    """docs/rules.md#initialize step 2: the slow path sets `<p>:{u}:synced:<fp>` once the insert and the read succeeded."""
    user = new_user()
    await env.players().initialize(user)
    assert await env.redis_client.exists(synced_key(env.redis_prefix, user, MAIN_CATALOG.fingerprint)) == 1


async def test_database_unavailable_gives_503(env: Env, pg_url: str) -> None:
    """K10 for initialize: an unreachable PostgreSQL is 503 `Database error occurred (PostgreSQL: <reason>)`."""
    dead_url = psycopg.conninfo.make_conninfo(pg_url, host="127.0.0.1", port=str(closed_port()))
    pool = await open_pool(dead_url, "service", PoolConfig(min_size=0, max_size=1, timeout_ms=300))
    try:
        players = env.players(store=Store(pool))
        error = await api_error(players.initialize(new_user()))
        assert (error.status, error.error_code) == (503, "DEPENDENCY_UNAVAILABLE")
        assert error.message.startswith("Database error occurred (PostgreSQL: ")
    finally:
        await pool.close()


# --- default goals implied by the catalog (docs/data-model.md#implied-default-goals) -------------------------


async def _initializations(env: Env, user: str) -> int:
    async with env.store.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM user_initializations WHERE user_id = %s", (user,))
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_new_player_costs_one_record_and_no_progress_row(env: Env) -> None:
    """A first initialize writes one row whatever the number of defaults; the defaults read as inserted rows."""
    challenges = [challenge_json("big", [goal_json(f"big-{n:03}", default=True) for n in range(60)])]
    catalog = build_catalog(challenges)
    user = new_user()
    result = await env.players(catalog).initialize(user)
    assert result.new_assignments == 60 and len(result.assigned) == 60
    assert await env.rows(user, "user_goal_progress") == {}
    assert await _initializations(env, user) == 1
    rows = await env.rows(user)
    assert len(rows) == 60
    assert all(
        (row.is_active, row.status, row.assigned_at, row.created_at) == (True, "not_started", T0, T0)
        for row in rows.values()
    )
    again = await env.players(catalog).initialize(user)
    assert again.new_assignments == 0 and [s.row for s in again.assigned] == [s.row for s in result.assigned]


async def test_set_active_and_replace_select_make_implied_rows_real(env: Env) -> None:
    """S2, B2 on implied rows: deactivating keeps assigned_at of the initialization; replacing deactivates them."""
    user = new_user()
    players = env.players(clock=Clock(T0 + timedelta(hours=2)))
    await env.players().initialize(user)
    result = await players.set_active(user, "c1", "c1-login", False)
    assert (result.is_active, result.assigned_at) == (False, T0)
    real = await env.rows(user, "user_goal_progress")
    assert sorted(real) == ["c1-login"] and real["c1-login"].created_at == T0
    selected = await players.batch_select(user, "c1", ["c1-plain"], replace_existing=True)
    assert selected.replaced == ("c1-daily",) and selected.total_active == 1
    daily = (await env.rows(user, "user_goal_progress"))["c1-daily"]
    assert (daily.is_active, daily.assigned_at, daily.updated_at) == (False, T0, T0)
    listing = await players.list_challenges(user, active_only=True)
    assert [state.goal.goal_id for c in listing.challenges for state in c.goals] == ["c1-plain"]


async def test_catch_up_of_a_stale_implied_row_writes_a_real_row(env: Env) -> None:
    """T2 on an implied row: the next day's initialize catches the daily default up in PostgreSQL."""
    user = new_user()
    clock = Clock()
    players = env.players(clock=clock)
    await players.initialize(user)
    later = clock.advance(days=1)
    await env.cache().invalidate(user)
    await players.initialize(user)
    daily = (await env.rows(user, "user_goal_progress"))["c1-daily"]
    assert (daily.updated_at, daily.expires_at, daily.assigned_at) == (later, NEXT_DAY + timedelta(days=1), T0)


async def test_claiming_an_implied_goal_answers_as_for_the_inserted_row(env: Env) -> None:
    """K5 on an implied row: not completed (status not_started); a rotated resetting one is GOAL_ROTATED."""
    user = new_user()
    clock = Clock()
    players = env.players(clock=clock)
    await players.initialize(user)
    for goal_id in ("c1-login", "c1-daily"):
        error = await api_error(players.claim(user, "c1", goal_id))
        assert (error.error_code, error.message.endswith("status: not_started)")) == ("GOAL_NOT_COMPLETED", True)
    clock.advance(days=1)
    assert (await api_error(players.claim(user, "c1", "c1-daily"))).error_code == "GOAL_ROTATED"
    assert await env.rows(user, "user_goal_progress") == {}


async def test_a_removed_default_stays_for_the_player_and_a_new_one_is_assigned_now(env: Env) -> None:
    """I8 with a removal: the old set's implied rows become real unchanged; the new default is assigned at now."""
    user = new_user()
    await env.players().initialize(user)
    challenges = main_challenges()
    challenges[0]["goals"][1]["defaultAssigned"] = False  # c1-daily leaves the defaults
    challenges[2]["goals"].append(goal_json("c3-new", default=True))
    catalog = build_catalog(challenges)
    later = T0 + timedelta(hours=3)
    result = await env.players(catalog, clock=Clock(later)).initialize(user)
    assert result.new_assignments == 1
    assert [s.goal.goal_id for s in result.assigned] == [*DEFAULT_IDS, "c3-new"]
    real = await env.rows(user, "user_goal_progress")
    assert sorted(real) == sorted(DEFAULT_IDS)
    assert all((row.is_active, row.assigned_at) == (True, T0) for row in real.values())
    assert (await env.rows(user))["c3-new"].assigned_at == later
    assert await _initializations(env, user) == 1

"""Implied default goals built by the service (docs/data-model.md#implied-default-goals): initialize and the listings
render, byte for byte, what rendering every row of the `goal_progress` view renders, before and after real rows
replace implied ones (stat event, set-active, claim, rotation), from PostgreSQL and from the cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from service.domain.catalog import Catalog
from service.domain.rules import NO_ROW_VIEW, ProgressRow, is_locked, view
from service.transport.responses import (
    ChallengeList,
    InitializeResponse,
    ResponseWriter,
    assigned_goal_body,
    challenge_body,
)
from service.usecases.events import IncomingEvent, IngestConfig, Ingestor
from service.usecases.players import ChallengeState, GoalState, Players
from tests.support.players import (
    NAMESPACE,
    T0,
    Clock,
    Env,
    build_catalog,
    challenge_json,
    env_fixture,  # noqa: F401  (the `env` fixture)
    goal_json,
    make_cache,
    new_user,
)

CATALOG = build_catalog(
    [
        challenge_json(
            "c1",
            [
                goal_json("d-plain", target=5, default=True),
                goal_json("d-login", source="login", target=1, default=True),
                goal_json("d-daily", target=5, default=True, rotation=("daily", True, True)),
                goal_json("d-locked", target=2, default=True, prerequisites=("d-plain",)),
                goal_json("n-extra", target=3),
            ],
        ),
        challenge_json(
            "c2",
            [
                goal_json("d-weekly", target=4, default=True, rotation=("weekly", True, False)),
                goal_json("d-cross", target=2, default=True, prerequisites=("n-pre",)),
                goal_json("n-pre", target=1),
            ],
        ),
    ]
)
WRITERS = {CATALOG.fingerprint: ResponseWriter(CATALOG)}


def writer(catalog: Catalog) -> ResponseWriter:
    if catalog.fingerprint not in WRITERS:
        WRITERS[catalog.fingerprint] = ResponseWriter(catalog)
    return WRITERS[catalog.fingerprint]


async def real_rows(env: Env, user: str) -> dict[str, ProgressRow]:
    return await env.rows(user, "user_goal_progress")


def state_from_view(catalog: Catalog, goal_id: str, rows: dict[str, ProgressRow], now: datetime) -> GoalState:
    goal = catalog.goals_by_id[goal_id]
    row = rows.get(goal_id)
    locked = is_locked(goal, rows, catalog.goals_by_id, now)
    return GoalState(goal, row, view(goal, row, now) if row is not None else NO_ROW_VIEW, locked)


def listing_from_view(catalog: Catalog, rows: dict[str, ProgressRow], now: datetime, active_only: bool) -> bytes:
    challenges = []
    for challenge in catalog.challenges:
        goal_ids = [goal.goal_id for goal in challenge.goals]
        if active_only:
            goal_ids = [goal_id for goal_id in goal_ids if goal_id in rows and rows[goal_id].is_active]
            if not goal_ids:
                continue
        states = tuple(state_from_view(catalog, goal_id, rows, now) for goal_id in goal_ids)
        challenges.append(challenge_body(ChallengeState(challenge, states), now))
    return msgspec.json.encode(ChallengeList(challenges))


async def assert_renders_as_the_view(
    env: Env, players: Players, user: str, new_assignments: int = 0, catalog: Catalog = CATALOG
) -> None:
    """Initialize and both listings against the bodies built from the view's rows, each through both renderers."""
    result = await players.initialize(user)
    assert result.new_assignments == new_assignments
    rows = await env.rows(user)  # the goal_progress view: real and implied rows
    active = [goal.goal_id for goal in catalog.goals if goal.goal_id in rows and rows[goal.goal_id].is_active]
    expected = msgspec.json.encode(
        InitializeResponse(
            [assigned_goal_body(state_from_view(catalog, goal_id, rows, result.now), result.now) for goal_id in active],
            new_assignments,
            len(active),
        )
    )
    assert writer(catalog).initialize(result) == expected
    for active_only in (False, True):
        listing = await players.list_challenges(user, active_only)
        assert writer(catalog).challenge_list(listing) == listing_from_view(catalog, rows, listing.now, active_only)


async def test_implied_goals_render_as_the_view_through_real_rows_replacing_them(env: Env) -> None:
    clock = Clock(T0)
    user = new_user("implied")
    cached = env.players(CATALOG, clock=clock)
    uncached = env.players(CATALOG, clock=clock, cache=make_cache(None, env.redis_prefix, CATALOG))
    defaults = [goal.goal_id for goal in CATALOG.default_goals]

    await assert_renders_as_the_view(env, cached, user, new_assignments=len(defaults))
    assert await env.rows(user) and not await real_rows(env, user)  # every default implied, no real row
    await assert_renders_as_the_view(env, cached, user)  # from the cache
    await assert_renders_as_the_view(env, uncached, user)  # from PostgreSQL

    # A stat event completes d-plain (which unlocks d-locked): its row becomes real.
    config = IngestConfig(namespace=NAMESPACE, flush_interval_ms=20, redis_key_prefix=env.redis_prefix)
    ingestor = Ingestor(config, CATALOG, env.store, env.queries, env.cache(CATALOG))
    await ingestor.start()
    try:
        event = IncomingEvent("", user, NAMESPACE, "stat", "stat-d-plain", 7.0, 0.0, True, None)
        assert (await ingestor.submit([event], "publish")).accepted == 1
    finally:
        await ingestor.drain_and_stop(10)
    assert sorted(await real_rows(env, user)) == ["d-plain"]
    await assert_renders_as_the_view(env, cached, user)
    await assert_renders_as_the_view(env, uncached, user)

    # Deactivating a default leaves a real inactive row, out of the active view: not implied again.
    await cached.set_active(user, "c1", "d-login", False)
    await assert_renders_as_the_view(env, cached, user)
    await assert_renders_as_the_view(env, uncached, user)

    # Claiming, and activating a goal that is not a default.
    await cached.claim(user, "c1", "d-plain")
    await cached.set_active(user, "c2", "n-pre", True)
    await assert_renders_as_the_view(env, cached, user)
    await assert_renders_as_the_view(env, uncached, user)

    # The next day the implied rotating rows are stale: initialize's catch-up makes them real in the new period.
    clock.advance(days=8)
    await assert_renders_as_the_view(env, cached, user)
    assert {"d-daily", "d-weekly"} <= set(await real_rows(env, user))
    await assert_renders_as_the_view(env, uncached, user)
    daily = (await real_rows(env, user))["d-daily"]
    assert daily.expires_at == datetime(clock.now.year, clock.now.month, clock.now.day, tzinfo=UTC) + timedelta(days=1)


PLAIN_DEFAULTS = build_catalog(
    [
        challenge_json("p1", [goal_json(f"p1-{n}", target=n, default=True) for n in range(1, 4)]),
        challenge_json("p2", [goal_json("p2-weekly", default=True, rotation=("weekly", True, False))]),
        challenge_json("p3", [goal_json("p3-daily", rotation=("daily", True, False)), goal_json("p3-x")]),
    ]
)


async def test_untouched_players_share_bodies_that_follow_the_clock(env: Env) -> None:
    """Players without real rows get shared bodies (rendered once per expiry): still what their view renders."""
    clock = Clock(T0)
    players = env.players(PLAIN_DEFAULTS, clock=clock)
    first, second = new_user("untouched"), new_user("untouched")
    for user in (first, second):
        await assert_renders_as_the_view(env, players, user, 4, PLAIN_DEFAULTS)
    clock.advance(seconds=90)
    for user in (first, second):
        await assert_renders_as_the_view(env, players, user, 0, PLAIN_DEFAULTS)
    clock.advance(days=3)  # a new day: the weekly implied row is not stale yet (T0 is a Wednesday)
    await assert_renders_as_the_view(env, players, first, 0, PLAIN_DEFAULTS)
    assert not await real_rows(env, first)

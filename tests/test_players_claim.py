"""Claim (docs/http-api.md#endpoints, docs/rules.md#claim, docs/rules.md#rewards) against real PostgreSQL and Redis, with a local webhook server:
K1–K10, T4 (reselectable claimed goals), T7, the claim timeout and read-your-writes (Ch1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
import pytest
from aiohttp import web

from service.domain.errors import DomainError
from service.storage.store import PoolConfig, Store, open_pool
from service.transport.errors import http_error
from service.usecases.rewards import RewardConfig, RewardGranter, signature_header
from tests.support.players import (
    DAY_START,
    NAMESPACE,
    T0,
    Clock,
    Env,
    api_error,
    closed_port,
    env_fixture,  # noqa: F401  (the `env` fixture)
    new_user,
)

STALE = DAY_START - timedelta(hours=2)


def completed(**overrides: object) -> dict[str, object]:
    """Columns of a fresh, active, completed row."""
    values: dict[str, object] = {"progress": 5, "status": "completed", "completed_at": T0, "updated_at": T0}
    values.update(overrides)
    return values


def error_triple(error: object) -> tuple[int, str, str]:
    return error.status, error.error_code, error.message  # type: ignore[attr-defined]


def not_completed(goal_id: str, status: str) -> tuple[int, str, str]:
    return (
        400,
        "GOAL_NOT_COMPLETED",
        f"Goal not completed. Please wait 1 second and try again. (goal_id: {goal_id}, status: {status})",
    )


def not_active(challenge_id: str, goal_id: str) -> tuple[int, str, str]:
    path = f"/v1/challenges/{challenge_id}/goals/{goal_id}/active"
    return (
        400,
        "GOAL_NOT_ACTIVE",
        f"Goal must be active to claim reward. Activate it first via PUT {path} (goal_id: {goal_id})",
    )


def rotated(challenge_id: str, goal_id: str) -> tuple[int, str, str]:
    return (
        400,
        "GOAL_ROTATED",
        f"Goal has rotated and must be re-completed (goal_id: {goal_id}, challenge_id: {challenge_id})",
    )


def already_claimed(goal_id: str, claimed_at: str) -> tuple[int, str, str]:
    return 409, "ALREADY_CLAIMED", f"Reward has already been claimed (goal_id: {goal_id}, claimed_at: {claimed_at})"


def goal_not_found(challenge_id: str, goal_id: str) -> tuple[int, str, str]:
    return (
        404,
        "GOAL_NOT_FOUND",
        f"Goal not found or removed from config (goal_id: {goal_id}, challenge_id: {challenge_id})",
    )


LOCKED = "Prerequisites not completed (goal_id: {})"


# --- happy path and exactly-once ---------------------------------------------------------------------


async def test_claim_happy_path_records_the_grant(env: Env) -> None:
    """K1, K10 (namespace): the row becomes claimed at now; one grant row, generation 1, with the
    server namespace in its idempotency key; the reward is the catalog's."""
    user = new_user()
    await env.seed(user, "c3-a", **completed())
    result = await env.players().claim(user, "c3", "c3-a")
    assert (result.goal_id, result.claimed_at) == ("c3-a", T0)
    assert (result.reward.type, result.reward.reward_id, result.reward.quantity) == ("ITEM", "item-c3-a", 2)
    row = await env.row(user, "c3-a")
    assert row is not None and (row.status, row.claimed_at, row.updated_at) == ("claimed", T0, T0)
    grants = await env.grants(user)
    assert len(grants) == 1
    grant = grants[0]
    assert (grant["namespace"], grant["generation"], grant["idempotency_key"], grant["mode"]) == (
        NAMESPACE,
        1,
        f"{NAMESPACE}:{user}:c3-a:1",
        "log",
    )
    assert (grant["reward_type"], grant["reward_id"], grant["quantity"], grant["attempts"]) == (
        "ITEM",
        "item-c3-a",
        2,
        1,
    )
    assert (grant["challenge_id"], grant["granted_at"]) == ("c3", T0)


async def test_second_claim_is_409(env: Env) -> None:
    """K2: the exact ALREADY_CLAIMED message with the RFC 3339 claimed_at."""
    user = new_user()
    await env.seed(user, "c3-a", **completed())
    players = env.players()
    await players.claim(user, "c3", "c3-a")
    error = await api_error(players.claim(user, "c3", "c3-a"))
    assert error_triple(error) == already_claimed("c3-a", "2030-05-15T12:00:00Z")
    assert len(await env.grants(user)) == 1


async def test_players_are_isolated(env: Env) -> None:
    """K3: user B claiming a goal user A completed gets GOAL_NOT_COMPLETED (no row for B)."""
    alice, bob = new_user("alice"), new_user("bob")
    await env.seed(alice, "c3-a", **completed())
    error = await api_error(env.players().claim(bob, "c3", "c3-a"))
    assert error_triple(error) == not_completed("c3-a", "not_started")
    row = await env.row(alice, "c3-a")
    assert row is not None and row.status == "completed"


async def test_concurrent_claims_succeed_exactly_once(env: Env) -> None:
    """K4: 20 concurrent claims of one goal: exactly one succeeds, the others get 409."""
    user = new_user()
    await env.seed(user, "c3-b", **completed())
    players = env.players()
    outcomes = await asyncio.gather(*(players.claim(user, "c3", "c3-b") for _ in range(20)), return_exceptions=True)
    successes = [o for o in outcomes if not isinstance(o, BaseException)]
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(successes) == 1
    assert len(failures) == 19 and all(isinstance(f, DomainError) and http_error(f).status == 409 for f in failures)
    assert len(await env.grants(user)) == 1


async def test_a_grant_committed_during_the_lock_wait_counts_for_the_generation(env: Env) -> None:
    """docs/rules.md#claim: the generation is read after the row lock, by its own statement, so a grant committed
    while the claim waited for the lock is seen and the claim records the next generation (a generation read
    with the locking SELECT's earlier snapshot would repeat 1 and fail on the primary key)."""
    user = new_user()
    await env.seed(user, "c3-a", **completed())
    players = env.players()
    async with env.store.connection() as holder:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM user_goal_progress WHERE user_id = %s AND goal_id = 'c3-a' FOR UPDATE", (user,)
            )
            await holder.execute(
                "INSERT INTO reward_grants (namespace, user_id, goal_id, generation, challenge_id, idempotency_key,"
                " reward_type, reward_id, quantity, mode, attempts, granted_at)"
                " VALUES (%s, %s, 'c3-a', 1, 'c3', %s, 'ITEM', 'item-c3-a', 2, 'log', 1, %s)",
                (NAMESPACE, user, f"{NAMESPACE}:{user}:c3-a:1", T0),
            )
            claim = asyncio.create_task(players.claim(user, "c3", "c3-a"))
            await wait_until_blocked_by(env, holder.info.backend_pid)
        result = await claim
    assert result.claimed_at == T0
    assert [(g["generation"], g["idempotency_key"]) for g in await env.grants(user)] == [
        (1, f"{NAMESPACE}:{user}:c3-a:1"),
        (2, f"{NAMESPACE}:{user}:c3-a:2"),
    ]


async def wait_until_blocked_by(env: Env, holder_pid: int) -> None:
    """Wait until another session waits for a lock that the session `holder_pid` holds."""
    for _ in range(200):
        async with env.store.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder_pid,)
            )
            (waiting,) = await cursor.fetchone() or (0,)
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the claim never waited for the row lock")


# --- every error and the check order -----------------------------------------------------------------


async def test_each_claim_error_has_its_exact_message(env: Env) -> None:
    """K5: empty ids, unknown challenge, unknown goal or a goal of another challenge, no row,
    inactive, not completed (actual status), locked."""
    user = new_user()
    players = env.players()
    await env.seed(user, "c3-a", **completed(is_active=False))
    await env.seed(user, "c3-b", progress=1, status="in_progress")
    await env.seed(user, "c1-locked", **completed())
    cases = [
        (("", "c3-a"), (400, "INVALID_REQUEST", "challenge_id is required")),
        (("c3", ""), (400, "INVALID_REQUEST", "goal_id is required")),
        (("nope", "c3-a"), (404, "CHALLENGE_NOT_FOUND", "challenge 'nope' not found")),
        (("c3", "nope"), goal_not_found("c3", "nope")),
        (("c3", "c1-plain"), goal_not_found("c3", "c1-plain")),
        (("c3", "c3-c"), not_completed("c3-c", "not_started")),
        (("c3", "c3-a"), not_active("c3", "c3-a")),
        (("c3", "c3-b"), not_completed("c3-b", "in_progress")),
        (("c1", "c1-locked"), (400, "GOAL_LOCKED", LOCKED.format("c1-locked"))),
    ]
    for (challenge_id, goal_id), expected in cases:
        assert error_triple(await api_error(players.claim(user, challenge_id, goal_id))) == expected
    assert await env.grants(user) == []


async def test_check_order(env: Env, webhook: Webhook) -> None:
    """K6: for each adjacent pair of checks, a state violating both gives the earlier error."""
    user = new_user()
    players = env.players()
    # 1/2: an empty challenge id is also not in the catalog.
    assert error_triple(await api_error(players.claim(user, "", ""))) == (
        400,
        "INVALID_REQUEST",
        "challenge_id is required",
    )
    # 2/3: unknown challenge and unknown goal.
    assert (await api_error(players.claim(user, "nope", "nope"))).error_code == "CHALLENGE_NOT_FOUND"
    # 3/4: a goal of another challenge for which the user has no row.
    assert error_triple(await api_error(players.claim(user, "c3", "c2-a"))) == goal_not_found("c3", "c2-a")
    # 5/6: inactive and rotated.
    await env.seed(user, "c1-daily", **completed(is_active=False, updated_at=STALE, completed_at=STALE))
    assert error_triple(await api_error(players.claim(user, "c1", "c1-daily"))) == not_active("c1", "c1-daily")
    # 6/7: claimed, stale and reselectable: rotated wins over already claimed.
    await env.seed(user, "c1-daily", **completed(status="claimed", claimed_at=STALE, updated_at=STALE))
    assert error_triple(await api_error(players.claim(user, "c1", "c1-daily"))) == rotated("c1", "c1-daily")
    # 7/8: claimed is also "not completed": 409 wins.
    await env.seed(user, "c3-d", **completed(status="claimed", claimed_at=T0))
    assert (await api_error(players.claim(user, "c3", "c3-d"))).status == 409
    # 8/9: in progress and locked.
    await env.seed(user, "c1-locked", progress=2, status="in_progress")
    assert error_triple(await api_error(players.claim(user, "c1", "c1-locked"))) == not_completed(
        "c1-locked", "in_progress"
    )
    # 9/10: locked and a failing reward receiver: the receiver is never called.
    webhook.statuses = [500] * 10
    failing = env.players(rewards=webhook.granter(retries=0), reward_mode="webhook")
    await env.seed(user, "c1-locked", **completed())
    assert error_triple(await api_error(failing.claim(user, "c1", "c1-locked"))) == (
        400,
        "GOAL_LOCKED",
        LOCKED.format("c1-locked"),
    )
    assert webhook.requests == []


async def test_prerequisites_in_other_challenges_unlock_the_claim(env: Env) -> None:
    """docs/rules.md#prerequisites-and-locked at claim: completed or claimed prerequisites (any challenge, even inactive) unlock it."""
    user = new_user()
    await env.seed(user, "c2-b", **completed())
    await env.seed(user, "c2-a", **completed(is_active=False))
    players = env.players()
    assert (await api_error(players.claim(user, "c2", "c2-b"))).error_code == "GOAL_LOCKED"
    await env.seed(user, "c1-login", **completed(status="claimed", claimed_at=T0))
    assert (await players.claim(user, "c2", "c2-b")).goal_id == "c2-b"


# --- rotation ----------------------------------------------------------------------------------------


async def test_rotated_goal_is_refused_and_carry_over_goal_is_claimable(env: Env) -> None:
    """K7: a stale completed resetting row → GOAL_ROTATED with the stored status unchanged; a
    completed goal with resetProgress = false can be claimed after the boundary."""
    user = new_user()
    await env.seed(user, "c1-daily", **completed(updated_at=STALE, completed_at=STALE, baseline_value=0))
    await env.seed(user, "c1-carry", **completed(updated_at=STALE, completed_at=STALE, baseline_value=0))
    players = env.players()
    assert error_triple(await api_error(players.claim(user, "c1", "c1-daily"))) == rotated("c1", "c1-daily")
    row = await env.row(user, "c1-daily")
    assert row is not None and row.status == "completed" and row.updated_at == STALE
    assert (await players.claim(user, "c1", "c1-carry")).claimed_at == T0


async def test_reselectable_full_cycle(env: Env) -> None:
    """K8, T4: complete, claim, rotate (the view shows the goal reopened and the claim is refused),
    complete again in the new period, claim again: generation 2 with a new idempotency key."""
    user = new_user()
    clock = Clock()
    players = env.players(clock=clock)
    await env.seed(user, "c1-daily", **completed(baseline_value=0))
    await players.claim(user, "c1", "c1-daily")
    clock.advance(days=1)
    listing = await players.get_challenge(user, "c1", active_only=True)
    daily = next(s for s in listing.goals if s.goal.goal_id == "c1-daily")
    assert (daily.view.status, daily.view.progress) == ("not_started", 0)
    assert error_triple(await api_error(players.claim(user, "c1", "c1-daily"))) == rotated("c1", "c1-daily")
    # The first event of the new period reopens the row and completes it (the flush's write).
    await env.seed(
        user,
        "c1-daily",
        progress=11,
        baseline_value=5,
        status="completed",
        completed_at=clock.now,
        claimed_at=None,
        updated_at=clock.now,
    )
    second = await players.claim(user, "c1", "c1-daily")
    assert second.claimed_at == clock.now
    grants = await env.grants(user)
    assert [(g["generation"], g["idempotency_key"]) for g in grants] == [
        (1, f"{NAMESPACE}:{user}:c1-daily:1"),
        (2, f"{NAMESPACE}:{user}:c1-daily:2"),
    ]


async def test_claimed_goal_without_reselection_stays_claimed(env: Env) -> None:
    """T4: with allowReselection = false a claimed rotating goal is still claimed after a boundary."""
    user = new_user()
    await env.seed(
        user,
        "c2-weekly",
        **completed(
            status="claimed", claimed_at=T0 - timedelta(days=3), updated_at=T0 - timedelta(days=3), baseline_value=0
        ),
    )
    players = env.players(clock=Clock(T0 + timedelta(days=7)))
    error = await api_error(players.claim(user, "c2", "c2-weekly"))
    assert error.status == 409


# --- webhook mode ------------------------------------------------------------------------------------


@dataclass
class Webhook:
    """A local reward receiver answering the scripted statuses in turn (then 200)."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    granters: list[RewardGranter] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="scripted")

    def granter(self, retries: int = 3, secret: str | None = None) -> RewardGranter:
        async def record_sleep(seconds: float) -> None:
            # Backoff is observed, not waited for.
            self.sleeps.append(seconds)

        granter = RewardGranter(
            RewardConfig(mode="webhook", webhook_url=self.url, retries=retries, secret=secret, timeout_ms=2000),
            sleep=record_sleep,
            jitter=lambda: 1.0,
        )
        self.granters.append(granter)
        return granter


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    receiver = Webhook()
    app = web.Application()
    app.router.add_post("/grant", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/grant"
    yield receiver
    for granter in receiver.granters:
        await granter.close()
    await runner.cleanup()


async def test_webhook_success_is_signed_and_recorded(env: Env, webhook: Webhook) -> None:
    """K9: a 2xx succeeds; the Idempotency-Key and the signature header are sent; the grant row
    records mode webhook and the attempts made."""
    user = new_user()
    await env.seed(user, "c3-a", **completed())
    webhook.statuses = [503]
    players = env.players(rewards=webhook.granter(secret="s3cret"), reward_mode="webhook")
    await players.claim(user, "c3", "c3-a")
    assert len(webhook.requests) == 2 and webhook.sleeps == [0.5]
    headers, body = webhook.requests[-1]
    assert headers["Idempotency-Key"] == f"{NAMESPACE}:{user}:c3-a:1"
    assert headers["X-Challenge-Signature"] == signature_header("s3cret", body)
    (grant,) = await env.grants(user)
    assert (grant["mode"], grant["attempts"]) == ("webhook", 2)


async def test_webhook_rejection_fails_at_once_and_keeps_the_row_completed(env: Env, webhook: Webhook) -> None:
    """K9: a non-retryable 4xx → 502 with 0 retries; nothing is recorded, the row stays completed,
    and a retried claim sends the same Idempotency-Key."""
    user = new_user()
    await env.seed(user, "c3-a", **completed())
    webhook.statuses = [400]
    players = env.players(rewards=webhook.granter(), reward_mode="webhook")
    error = await api_error(players.claim(user, "c3", "c3-a"))
    assert error_triple(error) == (
        502,
        "REWARD_GRANT_FAILED",
        "Failed to grant reward via Platform Service after 0 retries (goal_id: c3-a)",
    )
    assert len(webhook.requests) == 1
    row = await env.row(user, "c3-a")
    assert row is not None and row.status == "completed" and row.claimed_at is None
    assert await env.grants(user) == []
    await players.claim(user, "c3", "c3-a")
    keys = [headers["Idempotency-Key"] for headers, _ in webhook.requests]
    assert keys == [f"{NAMESPACE}:{user}:c3-a:1"] * 2


async def test_webhook_retryable_failures_retry_with_backoff_then_502(env: Env, webhook: Webhook) -> None:
    """K9: retryable failures are retried with doubling, capped backoff and then give 502; no
    signature header without a secret."""
    user = new_user()
    await env.seed(user, "c3-a", **completed())
    webhook.statuses = [500, 429, 408, 502]
    players = env.players(rewards=webhook.granter(retries=3), reward_mode="webhook")
    error = await api_error(players.claim(user, "c3", "c3-a"))
    assert error_triple(error) == (
        502,
        "REWARD_GRANT_FAILED",
        "Failed to grant reward via Platform Service after 3 retries (goal_id: c3-a)",
    )
    assert webhook.sleeps == [0.5, 1.0, 2.0] and len(webhook.requests) == 4
    assert all("X-Challenge-Signature" not in headers for headers, _ in webhook.requests)
    row = await env.row(user, "c3-a")
    assert row is not None and row.status == "completed"


# --- read-your-writes, timeouts and outages ----------------------------------------------------------


async def test_claim_is_visible_to_the_next_cached_read(env: Env) -> None:
    """Ch1: the cached view is invalidated after the claim commits."""
    user = new_user()
    await env.seed(user, "c3-a", **completed())
    players = env.players()
    before = await players.get_challenge(user, "c3", active_only=True)
    assert before.goals[0].view.status == "completed"
    await players.claim(user, "c3", "c3-a")
    after = await players.get_challenge(user, "c3", active_only=True)
    assert after.goals[0].view.status == "claimed"


async def test_claim_waiting_on_a_locked_row_times_out_with_503(env: Env) -> None:
    """docs/rules.md#claim: the whole claim is bounded by claim_timeout_ms; a row held by another transaction makes
    it 503 `Database error occurred`, and nothing is written."""
    user = new_user()
    await env.seed(user, "c3-a", **completed())
    players = env.players(claim_timeout_ms=300)
    async with env.store.connection() as holder, holder.transaction():
        await holder.execute(
            "SELECT 1 FROM user_goal_progress WHERE user_id = %s AND goal_id = 'c3-a' FOR UPDATE", (user,)
        )
        error = await api_error(players.claim(user, "c3", "c3-a"))
    assert error_triple(error) == (503, "DEPENDENCY_UNAVAILABLE", "Database error occurred")
    row = await env.row(user, "c3-a")
    assert row is not None and row.status == "completed"
    assert (await players.claim(user, "c3", "c3-a")).goal_id == "c3-a"


async def test_statement_timeout_gives_503(env: Env, pg_url: str) -> None:
    """K10: a statement timeout (the lock wait outlives statement_timeout) is 503."""
    user = new_user()
    await env.seed(user, "c3-a", **completed())
    pool = await open_pool(pg_url, "service", PoolConfig(min_size=1, max_size=2, statement_timeout_ms=200))
    try:
        players = env.players(store=Store(pool))
        async with env.store.connection() as holder, holder.transaction():
            await holder.execute(
                "SELECT 1 FROM user_goal_progress WHERE user_id = %s AND goal_id = 'c3-a' FOR UPDATE", (user,)
            )
            error = await api_error(players.claim(user, "c3", "c3-a"))
        assert error_triple(error)[:2] == (503, "DEPENDENCY_UNAVAILABLE")
        assert error.message.startswith("Database error occurred (PostgreSQL: ")
    finally:
        await pool.close()


async def test_database_unavailable_gives_503(env: Env, pg_url: str) -> None:
    """K10: an unreachable PostgreSQL is 503 `Database error occurred (PostgreSQL: <reason>)`."""
    dead_url = psycopg.conninfo.make_conninfo(pg_url, host="127.0.0.1", port=str(closed_port()))
    pool = await open_pool(dead_url, "service", PoolConfig(min_size=0, max_size=1, timeout_ms=200))
    try:
        error = await api_error(env.players(store=Store(pool)).claim(new_user(), "c3", "c3-a"))
        assert error_triple(error)[:2] == (503, "DEPENDENCY_UNAVAILABLE")
        assert error.message.startswith("Database error occurred (PostgreSQL: ")
    finally:
        await pool.close()

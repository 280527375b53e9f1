"""Reward granting (docs/rules.md#rewards, docs/rules.md K9) against a real local webhook server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from service import __version__
from service.usecases.rewards import (
    RewardConfig,
    RewardGrant,
    RewardGranter,
    RewardGrantFailed,
    backoff_delay,
    uniform_jitter,
)

GRANT = RewardGrant(
    namespace="mygame",
    user_id="user-1",
    challenge_id="daily-quests",
    goal_id="login-today",
    generation=2,
    reward_type="WALLET",
    reward_id="COINS",
    quantity=100,
)
FAR_DEADLINE_S = 60.0


@dataclass
class RecordedRequest:
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass
class ScriptedWebhook:
    """Answers each POST with the next scripted status (then `default_status`) and records it."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    hang: bool = False
    requests: list[RecordedRequest] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            RecordedRequest(
                dict(request.headers), await request.read(), request.transport.get_extra_info("peername")[1]
            )
        )
        if self.hang:
            await self.release.wait()
        status = self.statuses.pop(0) if self.statuses else self.default_status
        return web.Response(status=status, text="scripted")


@pytest.fixture
async def webhook() -> AsyncIterator[ScriptedWebhook]:
    server = ScriptedWebhook()
    app = web.Application()
    app.router.add_post("/grant", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}/grant"
    yield server
    server.release.set()
    await runner.cleanup()


class FakeClock:
    """A monotonic clock that only moves when the granter 'sleeps'; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Harness:
    """A granter driven by a fake clock, so backoff is observed without waiting."""

    granter: RewardGranter
    clock: FakeClock

    def deadline(self, seconds: float = FAR_DEADLINE_S) -> float:
        return self.clock.now + seconds

    async def grant(self, seconds_to_deadline: float = FAR_DEADLINE_S) -> int:
        return await self.granter.grant(GRANT, self.deadline(seconds_to_deadline))


@pytest.fixture
async def harness_factory() -> AsyncIterator[Callable[..., Harness]]:
    """Builds harnesses (jitter 1.0 unless told); closes their granters afterwards."""
    harnesses: list[Harness] = []

    def make(config: RewardConfig, jitter: float = 1.0) -> Harness:
        clock = FakeClock()
        granter = RewardGranter(config, sleep=clock.sleep, jitter=lambda: jitter, clock=clock)
        harnesses.append(Harness(granter, clock))
        return harnesses[-1]

    yield make
    for harness in harnesses:
        await harness.granter.close()


def metric(name: str, mode: str, result: str) -> float:
    return REGISTRY.get_sample_value(name, {"mode": mode, "result": result}) or 0.0


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- success ---------------------------------------------------------------------------------------


async def test_2xx_succeeds_with_headers_body_and_verifiable_signature(webhook, harness_factory):
    webhook.statuses = [201]
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url, secret="s3cret"))
    successes_before = metric("challenge_reward_grants_total", "webhook", "success")

    attempts = await harness.grant()

    assert attempts == 1
    assert len(webhook.requests) == 1
    request = webhook.requests[0]
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == "mygame:user-1:login-today:2"
    assert request.headers["User-Agent"] == f"challengectl/{__version__}"
    expected_signature = hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Challenge-Signature"] == f"sha256={expected_signature}"

    body = json.loads(request.body)
    assert list(body) == [
        "idempotencyKey",
        "namespace",
        "userId",
        "challengeId",
        "goalId",
        "generation",
        "reward",
        "requestedAt",
    ]
    requested_at = body.pop("requestedAt")
    assert body == {
        "idempotencyKey": "mygame:user-1:login-today:2",
        "namespace": "mygame",
        "userId": "user-1",
        "challengeId": "daily-quests",
        "goalId": "login-today",
        "generation": 2,
        "reward": {"type": "WALLET", "rewardId": "COINS", "quantity": 100},
    }
    assert time.strptime(requested_at, "%Y-%m-%dT%H:%M:%SZ")
    assert metric("challenge_reward_grants_total", "webhook", "success") == successes_before + 1


async def test_no_signature_header_without_secret(webhook, harness_factory):
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url))

    await harness.grant()

    assert "X-Challenge-Signature" not in webhook.requests[0].headers
    assert webhook.requests[0].headers["Idempotency-Key"] == GRANT.idempotency_key


async def test_503_then_200_succeeds_on_the_retry_with_identical_body(webhook, harness_factory):
    webhook.statuses = [503]
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url, secret="k"))

    attempts = await harness.grant()

    assert attempts == 2
    assert harness.clock.sleeps == [0.5]
    first, second = webhook.requests
    assert first.body == second.body
    assert first.headers["X-Challenge-Signature"] == second.headers["X-Challenge-Signature"]


@pytest.mark.parametrize("status", [408, 429, 500, 502])
async def test_retryable_statuses_are_retried(webhook, harness_factory, status):
    webhook.statuses = [status, status]
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url))

    assert await harness.grant() == 3
    assert len(webhook.requests) == 3


async def test_two_grants_send_the_same_idempotency_key_over_one_kept_alive_connection(webhook, harness_factory):
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url))

    await harness.grant()
    await harness.grant()

    keys = [request.headers["Idempotency-Key"] for request in webhook.requests]
    assert keys == [GRANT.idempotency_key, GRANT.idempotency_key]
    assert json.loads(webhook.requests[0].body)["idempotencyKey"] == GRANT.idempotency_key
    assert webhook.requests[0].client_port == webhook.requests[1].client_port


# --- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 409])
async def test_non_retryable_4xx_fails_at_once(webhook, harness_factory, status):
    webhook.default_status = status
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url))
    failures_before = metric("challenge_reward_grants_total", "webhook", "failure")

    with pytest.raises(RewardGrantFailed) as failure:
        await harness.grant()

    assert failure.value.retries == 0
    assert str(status) in failure.value.reason
    assert failure.value.api_message() == (
        "Failed to grant reward via Platform Service after 0 retries (goal_id: login-today)"
    )
    assert len(webhook.requests) == 1
    assert harness.clock.sleeps == []
    assert metric("challenge_reward_grants_total", "webhook", "failure") == failures_before + 1


async def test_503_every_time_is_retried_then_fails_with_the_exact_message(webhook, harness_factory):
    webhook.default_status = 503
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url, retries=3))
    attempts_before = metric("challenge_reward_grant_attempts_total", "webhook", "retryable_status")

    with pytest.raises(RewardGrantFailed) as failure:
        await harness.grant()

    assert failure.value.retries == 3
    assert failure.value.api_message() == (
        "Failed to grant reward via Platform Service after 3 retries (goal_id: login-today)"
    )
    assert len(webhook.requests) == 4
    assert metric("challenge_reward_grant_attempts_total", "webhook", "retryable_status") == attempts_before + 4


async def test_a_server_that_never_answers_in_time_is_retried_as_a_timeout(webhook, harness_factory):
    webhook.hang = True
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url, timeout_ms=100, retries=2))

    with pytest.raises(RewardGrantFailed) as failure:
        await harness.grant()

    assert failure.value.retries == 2
    assert "did not answer" in failure.value.reason
    assert len(webhook.requests) == 3


async def test_connection_refused_is_retried_then_fails(harness_factory):
    url = f"http://127.0.0.1:{closed_port()}/grant"
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=url, retries=2))
    network_errors_before = metric("challenge_reward_grant_attempts_total", "webhook", "network_error")

    with pytest.raises(RewardGrantFailed) as failure:
        await harness.grant()

    assert failure.value.retries == 2
    assert "unreachable" in failure.value.reason
    assert harness.clock.sleeps == [0.5, 1.0]
    assert metric("challenge_reward_grant_attempts_total", "webhook", "network_error") == network_errors_before + 3
    assert url not in failure.value.api_message()


async def test_the_deadline_stops_retries_before_sleeping_past_it(webhook, harness_factory):
    webhook.default_status = 503
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url, retries=3))

    with pytest.raises(RewardGrantFailed) as failure:
        # 0.5 s of backoff fits before the deadline, the next 1.0 s does not.
        await harness.grant(1.2)

    assert failure.value.retries == 1
    assert harness.clock.sleeps == [0.5]
    assert len(webhook.requests) == 2
    assert "deadline" in failure.value.reason


async def test_a_passed_deadline_makes_no_request(webhook, harness_factory):
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url))

    with pytest.raises(RewardGrantFailed) as failure:
        await harness.grant(0.0)

    assert failure.value.retries == 0
    assert webhook.requests == []


async def test_the_attempt_timeout_is_cut_to_the_time_left_before_the_deadline(webhook):
    # Real clock and sleep: the attempt's own timeout (5 s) is longer than the time left (0.3 s).
    webhook.hang = True
    granter = RewardGranter(RewardConfig(mode="webhook", webhook_url=webhook.url, timeout_ms=5000))
    try:
        with pytest.raises(RewardGrantFailed) as failure:
            await asyncio.wait_for(granter.grant(GRANT, time.monotonic() + 0.3), timeout=4)
    finally:
        await granter.close()

    assert failure.value.retries == 0
    assert len(webhook.requests) == 1


# --- backoff ---------------------------------------------------------------------------------------


async def test_backoff_doubles_from_half_a_second_and_is_capped_at_two(webhook, harness_factory):
    webhook.default_status = 500
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url, retries=4), jitter=1.0)

    with pytest.raises(RewardGrantFailed):
        await harness.grant()

    assert harness.clock.sleeps == [0.5, 1.0, 2.0, 2.0]


async def test_backoff_applies_the_jitter_factor(webhook, harness_factory):
    webhook.default_status = 500
    harness = harness_factory(RewardConfig(mode="webhook", webhook_url=webhook.url, retries=3), jitter=0.8)

    with pytest.raises(RewardGrantFailed):
        await harness.grant()

    assert harness.clock.sleeps == pytest.approx([0.4, 0.8, 1.6])


def test_default_jitter_stays_within_twenty_percent():
    samples = [uniform_jitter() for _ in range(2000)]
    assert all(0.8 <= sample <= 1.2 for sample in samples)
    assert min(samples) < 0.85 and max(samples) > 1.15
    assert backoff_delay(5, 1.2) == pytest.approx(2.4)


# --- log mode and configuration --------------------------------------------------------------------


async def test_log_mode_logs_the_grant_and_returns_one_attempt(caplog):
    granter = RewardGranter(RewardConfig())
    successes_before = metric("challenge_reward_grants_total", "log", "success")

    with caplog.at_level(logging.INFO, logger="challengectl.rewards"):
        attempts = await granter.grant(GRANT, time.monotonic() + FAR_DEADLINE_S)

    assert attempts == 1
    (record,) = [r for r in caplog.records if r.name == "challengectl.rewards"]
    assert record.getMessage() == "reward granted"
    assert record.namespace == "mygame"
    assert record.user_id == "user-1"
    assert record.challenge_id == "daily-quests"
    assert record.goal_id == "login-today"
    assert record.generation == 2
    assert record.reward == {"type": "WALLET", "rewardId": "COINS", "quantity": 100}
    assert record.idempotency_key == "mygame:user-1:login-today:2"
    assert metric("challenge_reward_grants_total", "log", "success") == successes_before + 1
    await granter.close()


def test_idempotency_key_changes_with_the_generation():
    next_generation = RewardGrant(**{**GRANT.__dict__, "generation": 3})
    assert next_generation.idempotency_key == "mygame:user-1:login-today:3"
    assert next_generation.idempotency_key != GRANT.idempotency_key


def test_webhook_mode_without_url_is_refused():
    with pytest.raises(ValueError, match="requires a webhook URL"):
        RewardGranter(RewardConfig(mode="webhook"))
    with pytest.raises(ValueError, match="unknown reward mode"):
        RewardGranter(RewardConfig(mode="carrier-pigeon"))

"""Reward granting for claims (docs/rules.md#rewards): `log` mode writes a structured line, `webhook` mode POSTs.

The claim use case computes the generation and calls `RewardGranter.grant` inside its transaction with
the claim's deadline; a `RewardGrantFailed` becomes 502 `REWARD_GRANT_FAILED` (docs/http-api.md#endpoints row 10).
The webhook body and its idempotency key are a function of the grant alone, so a retried claim (same
generation) lets the receiver de-duplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiohttp
import msgspec
from prometheus_client import Counter

from service import __version__
from service.domain.backoff import doubling_backoff

if TYPE_CHECKING:
    from service.config.settings import Settings

REWARD_GRANTS = Counter(
    "challenge_reward_grants_total",
    "Reward grants by outcome (one per claim that reached the grant)",
    ["mode", "result"],
)
REWARD_GRANT_ATTEMPTS = Counter(
    "challenge_reward_grant_attempts_total",
    "Reward grant attempts, including webhook retries",
    ["mode", "result"],
)

MODE_LOG = "log"
MODE_WEBHOOK = "webhook"

BACKOFF_INITIAL_S = 0.5
BACKOFF_CAP_S = 2.0
JITTER_FRACTION = 0.2

_log = logging.getLogger("challengectl.rewards")


@dataclass(frozen=True)
class RewardGrant:
    """One reward to grant: the goal's catalog reward for one user and one claim generation."""

    namespace: str
    user_id: str
    challenge_id: str
    goal_id: str
    generation: int
    reward_type: str
    reward_id: str
    quantity: int

    @property
    def idempotency_key(self) -> str:
        """`<namespace>:<user_id>:<goal_id>:<generation>` (docs/data-model.md#table-reward_grants): stable across retried claims."""
        return f"{self.namespace}:{self.user_id}:{self.goal_id}:{self.generation}"


class RewardGrantFailed(Exception):
    """The reward could not be granted; `retries` counts the retries actually made."""

    def __init__(self, goal_id: str, retries: int, reason: str):
        super().__init__(f"reward grant failed for goal_id {goal_id} after {retries} retries: {reason}")
        self.goal_id = goal_id
        self.retries = retries
        self.reason = reason

    def api_message(self) -> str:
        """The 502 `REWARD_GRANT_FAILED` message of docs/http-api.md#endpoints row 10 (no URL, status or secret)."""
        return f"Failed to grant reward via Platform Service after {self.retries} retries (goal_id: {self.goal_id})"


@dataclass(frozen=True)
class RewardConfig:
    """How rewards are granted; `timeout_ms` is per webhook attempt, `retries` the most retries."""

    mode: str = MODE_LOG
    webhook_url: str | None = None
    timeout_ms: int = 2000
    retries: int = 3
    secret: str | None = None
    user_agent: str = f"challengectl/{__version__}"

    @classmethod
    def from_settings(cls, settings: Settings) -> RewardConfig:
        """The reward part of the service settings (docs/configuration.md#service-settings `reward_*`)."""
        return cls(
            mode=settings.reward_mode,
            webhook_url=settings.reward_webhook_url,
            timeout_ms=settings.reward_webhook_timeout_ms,
            retries=settings.reward_webhook_retries,
            secret=settings.reward_webhook_secret,
        )


def uniform_jitter() -> float:
    """A backoff multiplier drawn uniformly from [0.8, 1.2] (±20 %)."""
    return random.uniform(1.0 - JITTER_FRACTION, 1.0 + JITTER_FRACTION)


def backoff_delay(retry_index: int, jitter: float) -> float:
    """Seconds to wait before retry number `retry_index + 1`: 0.5 s doubling, capped at 2 s, times jitter."""
    return doubling_backoff(BACKOFF_INITIAL_S, BACKOFF_CAP_S, retry_index + 1) * jitter


def _rfc3339_utc(moment: datetime) -> str:
    """Second precision with `Z`, as everywhere on the wire (docs/http-api.md#general-rules)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def webhook_body(grant: RewardGrant, requested_at: datetime) -> bytes:
    """The exact JSON bytes POSTed to the webhook (and signed), keys in docs/rules.md#rewards order."""
    return msgspec.json.encode(
        {
            "idempotencyKey": grant.idempotency_key,
            "namespace": grant.namespace,
            "userId": grant.user_id,
            "challengeId": grant.challenge_id,
            "goalId": grant.goal_id,
            "generation": grant.generation,
            "reward": {"type": grant.reward_type, "rewardId": grant.reward_id, "quantity": grant.quantity},
            "requestedAt": _rfc3339_utc(requested_at),
        }
    )


def signature_header(secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the body>` for `X-Challenge-Signature`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _is_retryable_status(status: int) -> bool:
    return status in (408, 429) or 500 <= status <= 599


class _AttemptOutcome:
    """Why one webhook attempt did not succeed: a log reason, a metric label, and whether to retry."""

    __slots__ = ("reason", "result", "retryable")

    def __init__(self, reason: str, result: str, retryable: bool):
        self.reason = reason
        self.result = result
        self.retryable = retryable


class RewardGranter:
    """Grants rewards in the configured mode; one per process, closed at shutdown.

    `sleep`, `jitter` and `clock` are injectable so tests can observe backoff without waiting;
    `clock` must be the same clock as the deadlines passed to `grant` (`time.monotonic` by default).
    """

    def __init__(
        self,
        config: RewardConfig,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        jitter: Callable[[], float] = uniform_jitter,
        clock: Callable[[], float] = time.monotonic,
    ):
        if config.mode not in (MODE_LOG, MODE_WEBHOOK):
            raise ValueError(f"unknown reward mode {config.mode!r} (expected 'log' or 'webhook')")
        if config.mode == MODE_WEBHOOK and not config.webhook_url:
            raise ValueError("reward mode 'webhook' requires a webhook URL")
        self.config = config
        self._webhook_url = config.webhook_url or ""
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def grant(self, grant: RewardGrant, deadline: float) -> int:
        """Grant `grant` before `deadline` (a `clock()` instant); return the attempts made.

        Raises `RewardGrantFailed` when the reward was not granted.
        """
        if self.config.mode == MODE_LOG:
            return self._grant_by_log(grant)
        try:
            attempts = await self._grant_by_webhook(grant, deadline)
        except RewardGrantFailed:
            REWARD_GRANTS.labels(MODE_WEBHOOK, "failure").inc()
            raise
        REWARD_GRANTS.labels(MODE_WEBHOOK, "success").inc()
        return attempts

    async def close(self) -> None:
        """Close the webhook connection pool, if one was opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _grant_by_log(self, grant: RewardGrant) -> int:
        _log.info(
            "reward granted",
            extra={
                "namespace": grant.namespace,
                "user_id": grant.user_id,
                "challenge_id": grant.challenge_id,
                "goal_id": grant.goal_id,
                "reward": {"type": grant.reward_type, "rewardId": grant.reward_id, "quantity": grant.quantity},
                "generation": grant.generation,
                "idempotency_key": grant.idempotency_key,
            },
        )
        REWARD_GRANT_ATTEMPTS.labels(MODE_LOG, "success").inc()
        REWARD_GRANTS.labels(MODE_LOG, "success").inc()
        return 1

    async def _grant_by_webhook(self, grant: RewardGrant, deadline: float) -> int:
        # Built once: every attempt sends the same bytes, so the same key and signature.
        body = webhook_body(grant, datetime.now(UTC))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": grant.idempotency_key,
            "User-Agent": self.config.user_agent,
        }
        if self.config.secret:
            headers["X-Challenge-Signature"] = signature_header(self.config.secret, body)

        retries = 0
        while True:
            time_left = deadline - self._clock()
            if time_left <= 0:
                raise RewardGrantFailed(grant.goal_id, retries, "claim deadline reached before the attempt")
            outcome = await self._attempt(body, headers, min(self.config.timeout_ms / 1000, time_left))
            if outcome is None:
                return retries + 1
            _log.warning(
                "reward webhook attempt failed",
                extra={
                    "goal_id": grant.goal_id,
                    "user_id": grant.user_id,
                    "idempotency_key": grant.idempotency_key,
                    "attempt": retries + 1,
                    "reason": outcome.reason,
                },
            )
            if not outcome.retryable:
                raise RewardGrantFailed(grant.goal_id, retries, outcome.reason)
            if retries >= self.config.retries:
                raise RewardGrantFailed(grant.goal_id, retries, f"{outcome.reason}; retries exhausted")
            delay = backoff_delay(retries, self._jitter())
            if self._clock() + delay >= deadline:
                raise RewardGrantFailed(
                    grant.goal_id, retries, f"{outcome.reason}; claim deadline reached before the next retry"
                )
            await self._sleep(delay)
            retries += 1

    async def _attempt(self, body: bytes, headers: dict[str, str], timeout_s: float) -> _AttemptOutcome | None:
        """POST once; None on a 2xx, otherwise what went wrong."""
        session = self._client_session()
        try:
            async with session.post(
                self._webhook_url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                # Drain the body so the keep-alive connection goes back to the pool.
                await response.read()
                status = response.status
        except TimeoutError:
            outcome = _AttemptOutcome(f"webhook did not answer within {timeout_s:.3f} s", "timeout", True)
        except aiohttp.ClientError as error:
            outcome = _AttemptOutcome(f"webhook unreachable: {type(error).__name__}", "network_error", True)
        else:
            if 200 <= status <= 299:
                REWARD_GRANT_ATTEMPTS.labels(MODE_WEBHOOK, "success").inc()
                return None
            retryable = _is_retryable_status(status)
            outcome = _AttemptOutcome(
                f"webhook answered HTTP {status}", "retryable_status" if retryable else "rejected", retryable
            )
        REWARD_GRANT_ATTEMPTS.labels(MODE_WEBHOOK, outcome.result).inc()
        return outcome

    def _client_session(self) -> aiohttp.ClientSession:
        # Created on first use so that it belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

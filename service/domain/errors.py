"""The failures a use case reports to its caller, independent of any transport.

Each error has an `error_code` (a stable name, the HTTP API's errorCode) and a `message` safe to show to
the caller. The class says what kind of failure it is; the transports map the kind to their status
(service/transport/errors.py for HTTP, service/transport/grpc_api.py for gRPC).
"""

from __future__ import annotations

from datetime import datetime


class DomainError(Exception):
    """A use case refused or failed; `error_code` names the failure, `message` explains it."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


class InvalidRequest(DomainError):
    """The request, or the state it finds, does not allow the operation; retrying it unchanged fails again."""


class NotFound(DomainError):
    """The request names something that does not exist."""


class Conflict(DomainError):
    """The operation was already done."""


class Exhausted(DomainError):
    """A capacity is full right now; the caller should retry with backoff."""


class Unavailable(DomainError):
    """A dependency, or the service itself, cannot serve the request right now; the caller may retry."""


class UpstreamFailed(DomainError):
    """A service this one calls failed the operation."""


class InternalFailure(DomainError):
    """A failure that is the service's own fault; the details are in the log, not in the message."""


class GoalNotActive(InvalidRequest):
    """A claim of a goal whose row is not active. The transport tells the caller how to activate it."""

    def __init__(self, challenge_id: str, goal_id: str) -> None:
        super().__init__("GOAL_NOT_ACTIVE", f"Goal must be active to claim reward (goal_id: {goal_id})")
        self.challenge_id = challenge_id
        self.goal_id = goal_id


class AlreadyClaimed(Conflict):
    """A claim of a goal whose reward was already claimed at `claimed_at`."""

    def __init__(self, goal_id: str, claimed_at: datetime | None) -> None:
        super().__init__("ALREADY_CLAIMED", f"Reward has already been claimed (goal_id: {goal_id})")
        self.goal_id = goal_id
        self.claimed_at = claimed_at

"""Player use cases: list, get, initialize, set-active, batch/random select, claim, rotation status
(SPEC §5.4, §7). Results are plain data; `service/responses.py` turns them into JSON."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.catalog import Challenge, Goal, Reward
from service.rules import GoalView, ProgressRow


@dataclass(frozen=True, slots=True)
class GoalState:
    """One goal as a read shows it at `now`: its row (None without one), the view and `locked`."""

    goal: Goal
    row: ProgressRow | None
    view: GoalView
    locked: bool


@dataclass(frozen=True, slots=True)
class ChallengeState:
    challenge: Challenge
    goals: tuple[GoalState, ...]


@dataclass(frozen=True, slots=True)
class ListResult:
    challenges: tuple[ChallengeState, ...]
    now: datetime


@dataclass(frozen=True, slots=True)
class InitializeResult:
    assigned: tuple[GoalState, ...]  # active rows of catalog goals, catalog order
    new_assignments: int
    now: datetime


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

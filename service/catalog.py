"""challenges.json: model, validation, indexes, pre-serialised JSON fragments, fingerprint."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Requirement:
    stat_code: str
    operator: str
    target_value: int
    progress_mode: str  # "absolute" | "relative" ("" is normalised to "absolute")


@dataclass(frozen=True, slots=True)
class Reward:
    type: str  # "ITEM" | "WALLET"
    reward_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Rotation:
    """Only built for an enabled rotation; a disabled or absent one is `Goal.rotation = None`."""

    type: str  # "global"
    schedule: str  # "daily" | "weekly" | "monthly"
    reset_progress: bool
    allow_reselection: bool


@dataclass(frozen=True, slots=True)
class Goal:
    goal_id: str
    challenge_id: str
    name: str
    description: str
    event_source: str  # "login" | "statistic"
    default_assigned: bool
    requirement: Requirement
    reward: Reward
    prerequisites: tuple[str, ...]
    rotation: Rotation | None
    position: int  # catalog order across the whole file (0-based)


@dataclass(frozen=True, slots=True)
class Challenge:
    challenge_id: str
    name: str
    description: str
    goals: tuple[Goal, ...]
    position: int

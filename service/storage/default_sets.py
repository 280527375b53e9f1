"""The default goal set of a catalog as PostgreSQL records it (docs/data-model.md#implied-default-goals).

A set is identified by a hash of its members, so every process serving one catalog agrees on its id without
coordination, and a player's `user_initializations` row names the set that applied when it was recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.domain.catalog import Goal


@dataclass(frozen=True, slots=True)
class DefaultGoalSet:
    """The members of one default set, in goal_id order, and its id (32 hex characters)."""

    set_id: str
    goal_ids: tuple[str, ...]
    challenge_ids: tuple[str, ...]
    schedules: tuple[str | None, ...]

    def params(self) -> dict[str, Any]:
        """Parameters of the `register_default_goal_set` statement."""
        return {
            "default_set_id": self.set_id,
            "goal_ids": list(self.goal_ids),
            "challenge_ids": list(self.challenge_ids),
            "schedules": list(self.schedules),
        }


def default_goal_set(goals: Sequence[Goal]) -> DefaultGoalSet:
    """The set of `goals` (the catalog's default goals): what an implied row depends on is its goal, challenge and
    rotation schedule, so a change of any of them makes a new set."""
    members = sorted(
        (goal.goal_id, goal.challenge_id, goal.rotation.schedule if goal.rotation is not None else None)
        for goal in goals
    )
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).hexdigest()[:32]
    return DefaultGoalSet(
        digest,
        tuple(member[0] for member in members),
        tuple(member[1] for member in members),
        tuple(member[2] for member in members),
    )

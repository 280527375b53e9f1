"""Snapshots of one player's goals through the player API, and the changes between two snapshots
(`watch`, `events send --wait`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from challengectl.client import ApiClient


FINGERPRINT_HEADER = "x-catalog-fingerprint"


@dataclass(frozen=True)
class GoalState:
    """One goal of a player as the player API showed it."""

    challenge_id: str
    goal_id: str
    name: str
    progress: int
    target: int | None
    status: str
    is_active: bool
    stat_code: str


GoalKey = tuple[str, str]  # (challenge_id, goal_id)


@dataclass(frozen=True)
class GoalSnapshot:
    """Every goal of one poll, in API order, and the catalog fingerprint of the response."""

    goals: dict[GoalKey, GoalState]
    fingerprint: str | None
    taken_at: datetime


async def fetch_goals(
    api: ApiClient, user: str, *, challenge_id: str | None = None, active_only: bool = False
) -> GoalSnapshot:
    """One snapshot of `user`'s goals: `GET /v1/challenges` (or `/v1/challenges/{id}`), optionally
    `active_only`. Failures raise CliError with the exit code of docs/cli.md#exit-codes."""
    path = "/v1/challenges" if challenge_id is None else f"/v1/challenges/{quote(challenge_id, safe='')}"
    response = await api.send("GET", path, params={"active_only": True} if active_only else None, user=user)
    body = response.body
    challenges = [body] if challenge_id is not None else (body or {}).get("challenges", [])
    goals: dict[GoalKey, GoalState] = {}
    for challenge in challenges:
        for goal in challenge.get("goals", []):
            requirement = goal.get("requirement") or {}
            state = GoalState(
                challenge_id=challenge["challengeId"],
                goal_id=goal["goalId"],
                name=goal.get("name", ""),
                progress=int(goal.get("progress", 0)),
                target=requirement.get("targetValue"),
                status=goal.get("status", ""),
                is_active=bool(goal.get("isActive")),
                stat_code=requirement.get("statCode", ""),
            )
            goals[(state.challenge_id, state.goal_id)] = state
    fingerprint = next((value for name, value in response.headers.items() if name.lower() == FINGERPRINT_HEADER), None)
    return GoalSnapshot(goals, fingerprint, datetime.now(UTC))


def goal_changes(old: Mapping[GoalKey, GoalState] | None, new: Mapping[GoalKey, GoalState]) -> list[dict[str, Any]]:
    """The goals whose progress or status differ between two snapshots, in the new snapshot's order
    (goals that disappeared come last). Against no previous snapshot, every goal is listed with null
    old values. A goal that appeared or disappeared has null values on the side it is missing from."""
    previous = old or {}
    changes = []
    for key, state in new.items():
        before = previous.get(key)
        if before is None or (before.progress, before.status) != (state.progress, state.status):
            changes.append(_change(key, before, state))
    changes += [_change(key, before, None) for key, before in previous.items() if key not in new]
    return changes


def _change(key: GoalKey, before: GoalState | None, after: GoalState | None) -> dict[str, Any]:
    return {
        "challenge_id": key[0],
        "goal_id": key[1],
        "old_progress": before.progress if before else None,
        "new_progress": after.progress if after else None,
        "old_status": before.status if before else None,
        "new_status": after.status if after else None,
    }

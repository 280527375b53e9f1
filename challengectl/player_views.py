"""The player API's objects as the CLI shows them: URL paths of a challenge and a goal, one summary row
per goal and its table columns (`challenges` and `goals` render goals the same way)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from challengectl.output import Column


def challenge_path(challenge_id: str) -> str:
    """`/v1/challenges/<id>` with the id percent-encoded as one path segment."""
    return f"/v1/challenges/{quote(challenge_id, safe='')}"


def goal_path(challenge_id: str, goal_id: str, action: str) -> str:
    """`/v1/challenges/<c>/goals/<g>/<action>` with both ids percent-encoded."""
    return f"{challenge_path(challenge_id)}/goals/{quote(goal_id, safe='')}/{action}"


def format_reward(reward: Mapping[str, Any] | None) -> str:
    """`100 COINS (wallet)`, `1 banner-veteran (item)`."""
    if not reward:
        return ""
    return f"{reward.get('quantity')} {reward.get('rewardId')} ({str(reward.get('type', '')).lower()})"


def format_expires_in(seconds: int | None, expires_at: str | None) -> str:
    """A rotating goal's time to its next boundary (`2d 4h`, `3h 12m`, `45s`); empty for other goals."""
    if not expires_at:
        return ""
    remaining = max(0, int(seconds or 0))
    days, rest = divmod(remaining, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def goal_target(goal: Mapping[str, Any]) -> Any:
    """The goal's target: `target` (initialize, selects) or `requirement.targetValue` (listings)."""
    if "target" in goal:
        return goal["target"]
    return (goal.get("requirement") or {}).get("targetValue")


def goal_summary(goal: Mapping[str, Any]) -> dict[str, Any]:
    """One table/CSV row for an API goal object."""
    return {
        "goal": goal.get("goalId"),
        "status": goal.get("status"),
        "progress": f"{goal.get('progress', 0)}/{goal_target(goal)}",
        "active": goal.get("isActive"),
        "locked": goal.get("locked"),
        "expires_in": format_expires_in(goal.get("expiresInSeconds"), goal.get("expiresAt")),
        "reward": format_reward(goal.get("reward")),
    }


GOAL_COLUMNS = [
    Column("goal"),
    Column("status"),
    Column("progress", justify="right"),
    Column("active"),
    Column("locked"),
    Column("expires_in", "EXPIRES IN", justify="right"),
    Column("reward"),
]

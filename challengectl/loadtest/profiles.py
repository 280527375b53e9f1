"""Load-test profiles (docs/loadtest.md#profiles): each profile's catalog, users, phases, operation mix, endpoint
labels, success rules and p95 targets. Nothing here does I/O except `write_catalog`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.domain.catalog import Catalog, parse_catalog

CHALLENGE_COUNT = 10
GOALS_PER_CHALLENGE = 50
DEFAULT_USERS = 10_000

# (statCode, eventSource, target multiplier): challenge i uses entry (i - 1) mod 5; goal g targets g × multiplier.
STAT_CYCLE: tuple[tuple[str, str, int], ...] = (
    ("login_count", "login", 1),
    ("enemy_kills", "statistic", 10),
    ("games_played", "statistic", 2),
    ("headshots", "statistic", 5),
    ("wins", "statistic", 1),
)
STAT_CODES = tuple(code for code, _, _ in STAT_CYCLE)

# Endpoint labels in report order, with their default p95 targets in ms (docs/loadtest.md#profiles).
TARGET_P95_MS: dict[str, float] = {
    "initialize_new": 50.0,
    "initialize_returning": 10.0,
    "challenges": 200.0,
    "challenges_active": 200.0,
    "set_active": 100.0,
    "claim_lookup": 200.0,
    "claim": 200.0,
    "event_login": 500.0,
    "event_stat": 500.0,
    "event": 500.0,
}
ENDPOINT_LABELS = tuple(TARGET_P95_MS)
EVENT_LABELS = ("event_login", "event_stat")
DEFAULT_SUCCESS_MIN_PCT = 99.95

# The gameplay API mix: (label of the operation, cumulative probability).
GAMEPLAY_API_MIX: tuple[tuple[str, float], ...] = (
    ("initialize", 0.10),
    ("set_active", 0.25),
    ("claim", 0.30),
    ("challenges", 0.65),
    ("challenges_active", 1.00),
)
LOGIN_EVENT_SHARE = 0.20

# HTTP outcomes counted as success besides 200, by label: claim races caused by the mix itself.
EXTRA_SUCCESS: dict[str, frozenset[tuple[int, str]]] = {
    "claim": frozenset({(409, "ALREADY_CLAIMED"), (400, "GOAL_NOT_ACTIVE")}),
}


@dataclass(frozen=True)
class PhaseDefault:
    """A phase as the profile defines it: `kind` is `init` (initialize only) or `gameplay` (API mix and
    event stream together); `rate` is the API rate and `event_rate` the event rate (gameplay only)."""

    name: str
    kind: str
    duration_s: float
    rate: float
    event_rate: float = 0.0


@dataclass(frozen=True)
class Profile:
    """One load-test profile of docs/loadtest.md#profiles."""

    name: str
    all_goals_default: bool
    phases: tuple[PhaseDefault, ...]
    description: str

    def catalog_document(self) -> dict[str, Any]:
        """The catalog as the JSON document the service loads."""
        return {"challenges": [self._challenge(i) for i in range(1, CHALLENGE_COUNT + 1)]}

    def catalog_bytes(self) -> bytes:
        return (json.dumps(self.catalog_document(), indent=1) + "\n").encode()

    def catalog(self) -> Catalog:
        """The validated catalog, with the fingerprint the service will report for it."""
        return parse_catalog(self.catalog_bytes(), f"<profile {self.name}>")

    def _challenge(self, index: int) -> dict[str, Any]:
        stat_code, event_source, multiplier = STAT_CYCLE[(index - 1) % len(STAT_CYCLE)]
        challenge_id = challenge_id_of(index)
        goals = []
        for g in range(1, GOALS_PER_CHALLENGE + 1):
            goals.append(
                {
                    "goalId": goal_id_of(index, g),
                    "name": f"{stat_code} {g * multiplier}",
                    "description": f"reach {stat_code} >= {g * multiplier}",
                    "eventSource": event_source,
                    "defaultAssigned": self.all_goals_default or g == 1,
                    "requirement": {
                        "statCode": stat_code,
                        "operator": ">=",
                        "targetValue": g * multiplier,
                        "progressMode": "absolute",
                    },
                    "reward": {"type": "WALLET", "rewardId": "GEMS", "quantity": 10 * g},
                }
            )
        return {
            "challengeId": challenge_id,
            "name": f"Challenge {index:03d}",
            "description": f"{stat_code} ladder",
            "goals": goals,
        }


def challenge_id_of(index: int) -> str:
    return f"challenge-{index:03d}"


def goal_id_of(challenge_index: int, goal_index: int) -> str:
    return f"{challenge_id_of(challenge_index)}-goal-{goal_index:02d}"


def user_id_of(number: int) -> str:
    """`user-000001` for 1 (docs/loadtest.md#profiles user ids)."""
    return f"user-{number:06d}"


def all_goal_paths() -> list[tuple[str, str]]:
    """Every (challenge_id, goal_id) of the profile catalogs, in catalog order."""
    return [
        (challenge_id_of(c), goal_id_of(c, g))
        for c in range(1, CHALLENGE_COUNT + 1)
        for g in range(1, GOALS_PER_CHALLENGE + 1)
    ]


PROFILES: dict[str, Profile] = {
    "seed-m3": Profile(
        name="seed-m3",
        all_goals_default=False,
        phases=(PhaseDefault("init", "init", 60.0, 600.0), PhaseDefault("gameplay", "gameplay", 1800.0, 300.0, 500.0)),
        description="10 challenges x 50 goals, 10 default goals; init 600 RPS, gameplay 300 RPS API + 500 EPS",
    ),
    "all-active-500": Profile(
        name="all-active-500",
        all_goals_default=True,
        phases=(PhaseDefault("init", "init", 600.0, 300.0), PhaseDefault("gameplay", "gameplay", 1800.0, 300.0, 500.0)),
        description="seed-m3 with all 500 goals default-assigned; init 300 RPS for 10 min",
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called `name`; KeyError lists the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile '{name}' (known: {', '.join(PROFILES)})") from None


def write_catalog(profile: Profile, path: Path) -> str:
    """Write the profile's catalog to `path`; return its fingerprint."""
    data = profile.catalog_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return parse_catalog(data, str(path)).fingerprint

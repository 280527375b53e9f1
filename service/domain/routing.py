"""Routing of events to goals (docs/events.md#routing) and the goal definitions a flush passes to PostgreSQL (docs/events.md#flush).

Goals are grouped by buffer source: login goals under `login`, statistic goals under `stat:<statCode>`.
Routing follows the event source strictly: a login never reaches a statistic goal, even when the two
share a stat code, and vice versa.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.domain.buffer import SOURCE_LOGIN, STAT_SOURCE_PREFIX, Entry, stat_source
from service.domain.catalog import Catalog
from service.domain.rules import next_boundary, period_start


@dataclass(frozen=True, slots=True)
class _GoalDefinition:
    goal_id: str
    source: str
    progress_mode: str
    target: int
    schedule: str | None
    reset_progress: bool
    allow_reselection: bool


class GoalRouting:
    """The catalog's goals by buffer source (docs/events.md#routing): login goals under `login`, statistic goals under
    `stat:<statCode>`. Routing follows the event source strictly."""

    def __init__(self, catalog: Catalog) -> None:
        by_source: dict[str, list[_GoalDefinition]] = {}
        for goal in catalog.goals:
            source = SOURCE_LOGIN if goal.event_source == "login" else stat_source(goal.requirement.stat_code)
            rotation = goal.rotation
            by_source.setdefault(source, []).append(
                _GoalDefinition(
                    goal_id=goal.goal_id,
                    source=source,
                    progress_mode=goal.requirement.progress_mode,
                    target=goal.requirement.target_value,
                    schedule=rotation.schedule if rotation is not None else None,
                    reset_progress=rotation.reset_progress if rotation is not None else False,
                    allow_reselection=rotation.allow_reselection if rotation is not None else False,
                )
            )
        self._by_source = {source: tuple(goals) for source, goals in by_source.items()}

    def routes(self, source: str) -> bool:
        """Whether any goal is fed by `source`."""
        return source in self._by_source

    def routed_stat_sources(self) -> dict[str, str]:
        """The source of every stat code that feeds a goal, by stat code (one lookup routes a stat event)."""
        return {
            source.removeprefix(STAT_SOURCE_PREFIX): source
            for source in self._by_source
            if source.startswith(STAT_SOURCE_PREFIX)
        }

    def rows_fed(self, entry: Entry) -> int:
        """How many goal rows a flush of `entry` may write: the goals its source feeds."""
        return len(self._by_source.get(entry.source, ()))

    def statement_params(self, entries: Sequence[Entry], now: datetime) -> dict[str, Any]:
        """The parameters of `apply_event_updates` for a snapshot at instant `now` (docs/events.md#flush steps 2–3)."""
        boundaries: dict[str, tuple[datetime, datetime]] = {}
        goal_ids: list[str] = []
        goal_sources: list[str] = []
        modes: list[str] = []
        targets: list[int] = []
        starts: list[datetime | None] = []
        nexts: list[datetime | None] = []
        resets: list[bool] = []
        reselects: list[bool] = []
        for source in dict.fromkeys(entry.source for entry in entries):
            for goal in self._by_source.get(source, ()):
                goal_ids.append(goal.goal_id)
                goal_sources.append(goal.source)
                modes.append(goal.progress_mode)
                targets.append(goal.target)
                if goal.schedule is None:
                    starts.append(None)
                    nexts.append(None)
                else:
                    period = boundaries.get(goal.schedule)
                    if period is None:
                        period = boundaries[goal.schedule] = (
                            period_start(goal.schedule, now),
                            next_boundary(goal.schedule, now),
                        )
                    starts.append(period[0])
                    nexts.append(period[1])
                resets.append(goal.reset_progress)
                reselects.append(goal.allow_reselection)
        return {
            "entry_user_ids": [entry.user_id for entry in entries],
            "entry_sources": [entry.source for entry in entries],
            "entry_values": [entry.value for entry in entries],
            "entry_incs": [entry.inc for entry in entries],
            "entry_event_ats": [
                None if entry.value_at is None else datetime.fromtimestamp(entry.value_at, UTC) for entry in entries
            ],
            "goal_ids": goal_ids,
            "goal_sources": goal_sources,
            "goal_progress_modes": modes,
            "goal_targets": targets,
            "goal_boundaries": starts,
            "goal_next_boundaries": nexts,
            "goal_reset_flags": resets,
            "goal_reselect_flags": reselects,
            "now": now,
        }

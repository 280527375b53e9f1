"""challenges.json: model, validation, indexes, pre-serialised JSON fragments, fingerprint.

Loading follows docs/catalog.md: parse, apply defaults, copy each challenge's id onto its goals, validate every
rule V1–V26 (all errors, in file order), pre-serialise the static API fragments, compute the fingerprint.

Within one object the rules run in the order of their numbers (V3 type errors sit at the position of the
field's own rule), challenge-level rules before the challenge's goals; V25/V26 run as a second pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec


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


class CatalogError(Exception):
    """The catalog cannot be used. `errors` holds every problem in file order (docs/catalog.md#validation-rules messages);
    `warnings` holds what was found alongside them, for `config validate`."""

    def __init__(self, errors: list[str], warnings: Iterable[str] = ()) -> None:
        self.errors = list(errors)
        self.warnings = list(warnings)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclass(frozen=True)
class Catalog:
    """A validated catalog with its lookup indexes, fingerprint and pre-serialised JSON fragments.

    `goal_fragments[goal_id]` maps the camelCase fields `goalId`, `name`, `description`, `challengeId`,
    `requirement`, `reward`, `prerequisites` and `target` to their JSON-encoded values;
    `challenge_fragments[challenge_id]` does the same for `challengeId`, `name` and `description`.
    """

    path: str
    challenges: tuple[Challenge, ...] = field(repr=False)
    goals: tuple[Goal, ...] = field(repr=False)
    challenges_by_id: dict[str, Challenge] = field(repr=False)
    goals_by_id: dict[str, Goal] = field(repr=False)
    goals_by_stat_code: dict[str, tuple[Goal, ...]] = field(repr=False)
    login_goals: tuple[Goal, ...] = field(repr=False)
    default_goals: tuple[Goal, ...] = field(repr=False)
    prerequisite_ids: tuple[str, ...] = field(repr=False)
    fingerprint: str
    warnings: tuple[str, ...]
    goal_fragments: dict[str, dict[str, bytes]] = field(repr=False)
    challenge_fragments: dict[str, dict[str, bytes]] = field(repr=False)


MAX_LISTED = 20


def first_lines(lines: Sequence[str], limit: int = MAX_LISTED) -> list[str]:
    """At most `limit` of `lines`, then '... and N more' for the rest."""
    if len(lines) <= limit:
        return list(lines)
    return [*lines[:limit], f"... and {len(lines) - limit} more"]


def grouped_warnings(warnings: Iterable[str]) -> list[str]:
    """Warnings of the form '<location>: <text>' with the same text listed once, with a count and the first
    locations (a catalog whose 500 goals carry a legacy key gives one line, not 500), in first-seen order."""
    locations: dict[str, list[str]] = {}
    for warning in warnings:
        location, separator, text = warning.partition(": ")
        if not separator:
            location, text = "", warning
        locations.setdefault(text, []).append(location)
    lines = []
    for text, where in locations.items():
        if len(where) == 1:
            lines.append(f"{where[0]}: {text}" if where[0] else text)
        else:
            examples = ", ".join(where[:3]) + (", ..." if len(where) > 3 else "")
            lines.append(f"{text} ({len(where)}×: {examples})")
    return lines


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Read, validate and index the catalog at `path`; raise CatalogError listing every problem."""
    display_path = os.fspath(path)
    try:
        with open(display_path, "rb") as catalog_file:
            data = catalog_file.read()
    except OSError:
        # V1 covers a missing file as well as one that cannot be read (directory, permissions).
        raise CatalogError([f"catalog file not found: {display_path}"]) from None
    return parse_catalog(data, display_path)


def parse_catalog(data: bytes, path: str) -> Catalog:
    """Validate and index catalog bytes; `path` is only recorded. Raise CatalogError on any error."""
    document = _decode_json(data)
    reader = _CatalogReader()
    challenges = reader.read(document)
    if reader.errors:
        raise CatalogError(reader.errors, reader.warnings)
    return _build_catalog(path, challenges, reader.warnings)


# --- parsing -------------------------------------------------------------------------------------

_INT32_MAX = 2_147_483_647
_MAX_INTEGER_DIGITS = 30  # longer literals cannot fit any schema integer; keeps int() cheap


class _OversizedInteger:
    """An integer literal too long to convert; it fails every type check."""


def _parse_int(literal: str) -> int | _OversizedInteger:
    return int(literal) if len(literal) <= _MAX_INTEGER_DIGITS else _OversizedInteger()


def _decode_json(data: bytes) -> Any:
    """Parse UTF-8 JSON; numbers with a fraction or exponent become floats (V3 errors later)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", errors="replace")) + 1
        detail = f"invalid UTF-8 byte 0x{data[exc.start]:02x}"
        raise CatalogError([f"invalid JSON in catalog: {detail} (line {line}, column {column})"]) from None
    try:
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise CatalogError([f"invalid JSON in catalog: {exc.msg} (line {exc.lineno}, column {exc.colno})"]) from None


# --- validation ----------------------------------------------------------------------------------

_TOP_KEYS = ("challenges",)
_CHALLENGE_KEYS = ("challengeId", "name", "description", "goals")
_GOAL_KEYS = (
    "goalId",
    "name",
    "description",
    "eventSource",
    "defaultAssigned",
    "requirement",
    "reward",
    "prerequisites",
    "rotation",
)
_LEGACY_GOAL_KEYS = ("type", "daily")
_REQUIREMENT_KEYS = ("statCode", "operator", "targetValue", "progressMode")
_REWARD_KEYS = ("type", "rewardId", "quantity")
_ROTATION_KEYS = ("enabled", "type", "schedule", "onExpiry")
_ON_EXPIRY_KEYS = ("resetProgress", "allowReselection")

_EVENT_SOURCES = ("login", "statistic")
_PROGRESS_MODES = {"": "absolute", "absolute": "absolute", "relative": "relative"}
_REWARD_TYPES = ("ITEM", "WALLET")
_SCHEDULES = ("daily", "weekly", "monthly")
_MAX_ID_LENGTH = 100
_RESERVED_CHALLENGE_ID = "initialize"


def _empty(kind: str) -> Any:
    return {"string": "", "integer": 0, "boolean": False, "array": [], "object": {}}[kind]


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        # bool is an int subclass and floats include 1.0/1e3: neither is a JSON integer here.
        return type(value) is int and value <= _INT32_MAX
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    return isinstance(value, dict)


def _id_problem(identifier: str, reserved: str | None) -> str | None:
    """The V9 reason why a non-empty id is unusable, or None."""
    if len(identifier) > _MAX_ID_LENGTH:
        return f"longer than {_MAX_ID_LENGTH} characters"
    if any(char == "/" or char.isspace() or unicodedata.category(char) == "Cc" for char in identifier):
        return "contains '/', whitespace or a control character"
    if reserved is not None and identifier == reserved:
        return f"'{reserved}' is reserved"
    return None


def _camel_case(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _shape_mismatch(raw_challenges: list[Any]) -> str | None:
    """One error line when the whole file uses another catalog shape (snake_case keys, `id` for the IDs,
    as some exporters write it), instead of the thousands of per-field errors that shape would give."""
    challenges = [raw for raw in raw_challenges if isinstance(raw, dict)]
    goals = [goal for raw in challenges if isinstance(raw.get("goals"), list) for goal in raw["goals"]]
    goals = [goal for goal in goals if isinstance(goal, dict)]
    renames: dict[str, str] = {}
    for objects, known, id_key in ((challenges, _CHALLENGE_KEYS, "challengeId"), (goals, _GOAL_KEYS, "goalId")):
        for obj in objects:
            for key in obj:
                if key == "id" and id_key not in obj:
                    renames.setdefault(key, id_key)
                elif key not in known and _camel_case(key) in known:
                    renames.setdefault(key, _camel_case(key))
    without_ids = sum("challengeId" not in raw for raw in challenges) + sum("goalId" not in goal for goal in goals)
    if not renames or without_ids * 2 < len(challenges) + len(goals):
        return None
    examples = ", ".join(f"'{key}' → '{name}'" for key, name in list(renames.items())[:4])
    return (
        f"the file is not in the challenges.json shape: its objects use other key names ({examples}); "
        "rename the keys to the format's camelCase names (docs/catalog.md)"
    )


def _string_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass
class _GoalDraft:
    """A goal as read, with what the second pass needs to report on it."""

    goal: Goal
    error_prefix: str
    prerequisites: list[str]


class _CatalogReader:
    """Walks the parsed document once, building the model and collecting errors and warnings."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self._challenge_ids: set[str] = set()
        self._goal_ids: set[str] = set()
        self._goal_drafts: list[_GoalDraft] = []

    def read(self, document: Any) -> list[Challenge]:
        """Validate the whole document (both passes) and return the challenges as read."""
        if not isinstance(document, dict):
            self.errors.append("invalid type for 'catalog': expected object")
            return []
        self._warn_unknown_keys(document, _TOP_KEYS, "catalog")
        raw_challenges, valid = self._field(document, "challenges", "array", "")
        if valid and not raw_challenges:
            self.errors.append("config must have at least one challenge")
        mismatch = _shape_mismatch(raw_challenges)
        if mismatch:
            self.errors.append(mismatch)
            return []
        challenges: list[Challenge] = []
        for index, raw_challenge in enumerate(raw_challenges):
            if not isinstance(raw_challenge, dict):
                self.errors.append(f"invalid type for 'challenges[{index}]': expected object")
                continue
            challenges.append(self._challenge(raw_challenge, position=len(challenges)))
        self._check_prerequisites()
        return challenges

    # -- shared helpers --

    def _field(self, obj: Mapping[str, Any], key: str, kind: str, prefix: str, label: str = "") -> tuple[Any, bool]:
        """The value of `key`, its kind's empty value when absent or null, or (empty, False) after a V3 error."""
        value = obj.get(key)
        if value is None:
            return _empty(kind), True
        if _has_kind(value, kind):
            return value, True
        self.errors.append(f"{prefix}invalid type for '{label or key}': expected {kind}")
        return _empty(kind), False

    def _warn_unknown_keys(
        self,
        obj: Mapping[str, Any],
        known: tuple[str, ...],
        location: str,
        key_path: str = "",
        legacy: tuple[str, ...] = (),
    ) -> None:
        by_lower = {key.lower(): key for key in known}
        for key in obj:
            if key in known:
                continue
            if key in legacy:
                self.warnings.append(f"{location}: legacy key '{key_path}{key}' is ignored")
                continue
            hint = ""
            if key.lower() in by_lower:
                hint = f" (keys are case-sensitive: did you mean '{by_lower[key.lower()]}'?)"
            self.warnings.append(f"{location}: unknown key '{key_path}{key}' is ignored{hint}")

    def _required_string(self, raw: Mapping[str, Any], key: str, prefix: str, what: str) -> str:
        """A string field that must not be empty (`<what> cannot be empty`); '' after an error."""
        value, valid = self._field(raw, key, "string", prefix)
        if valid and not value:
            self.errors.append(f"{prefix}{what} cannot be empty")
        return str(value)

    def _unique_id(self, value: str, seen: set[str], prefix: str, kind: str) -> None:
        """V8/V21: `value` was not used by another challenge (goal) before."""
        if value in seen:
            self.errors.append(f"{prefix}duplicate {kind} ID: {value}")
        seen.add(value)

    def _valid_id(self, value: str, prefix: str, kind: str, reserved: str | None) -> None:
        """The id rules of `_id_problem`, reported against the challenge (goal)."""
        problem = _id_problem(value, reserved=reserved)
        if problem:
            self.errors.append(f"{prefix}{kind} ID '{value}' is invalid: {problem}")

    # -- challenge --

    def _challenge(self, raw: dict[str, Any], position: int) -> Challenge:
        prefix = f"invalid challenge '{_string_or_empty(raw.get('challengeId'))}': "
        challenge_id = self._required_string(raw, "challengeId", prefix, "challenge ID")
        name = self._required_string(raw, "name", prefix, "challenge name")
        description, _ = self._field(raw, "description", "string", prefix)
        raw_goals, valid = self._field(raw, "goals", "array", prefix)
        if valid and not raw_goals:
            self.errors.append(f"{prefix}challenge must have at least one goal")
        if challenge_id:
            self._unique_id(challenge_id, self._challenge_ids, prefix, "challenge")
            self._valid_id(challenge_id, prefix, "challenge", _RESERVED_CHALLENGE_ID)
        self._warn_unknown_keys(raw, _CHALLENGE_KEYS, f"challenge '{challenge_id}'")

        goals: list[Goal] = []
        for index, raw_goal in enumerate(raw_goals):
            if not isinstance(raw_goal, dict):
                self.errors.append(f"{prefix}invalid type for 'goals[{index}]': expected object")
                continue
            goals.append(self._goal(raw_goal, challenge_id))
        self._warn_mixed_schedules(challenge_id, goals)
        return Challenge(challenge_id, name, description, tuple(goals), position)

    def _warn_mixed_schedules(self, challenge_id: str, goals: list[Goal]) -> None:
        rotating = [goal for goal in goals if goal.rotation is not None]
        schedules = list(dict.fromkeys(goal.rotation.schedule for goal in rotating if goal.rotation))
        if len(schedules) > 1:
            first = rotating[0]
            self.warnings.append(
                f"challenge '{challenge_id}': rotating goals use different schedules ({', '.join(schedules)}); "
                f"the rotation status endpoint reports the first one, '{schedules[0]}' of goal '{first.goal_id}'"
            )

    # -- goal --

    def _goal(self, raw: dict[str, Any], challenge_id: str) -> Goal:
        location = f"goal '{_string_or_empty(raw.get('goalId'))}' in challenge '{challenge_id}'"
        prefix = f"invalid {location}: "
        goal_id = self._required_string(raw, "goalId", prefix, "goal ID")
        if goal_id:
            self._valid_id(goal_id, prefix, "goal", None)
        name = self._required_string(raw, "name", prefix, "goal name")
        description, _ = self._field(raw, "description", "string", prefix)
        event_source, valid = self._field(raw, "eventSource", "string", prefix)
        if valid and not event_source:
            self.errors.append(f"{prefix}event_source cannot be empty")
        elif valid and event_source not in _EVENT_SOURCES:
            self.errors.append(f"{prefix}invalid event_source '{event_source}' (must be 'login' or 'statistic')")
        default_assigned, _ = self._field(raw, "defaultAssigned", "boolean", prefix)
        requirement, mode_known = self._requirement(raw, prefix, location)
        reward = self._reward(raw, prefix, location)
        prerequisites = self._prerequisites(raw, prefix)
        if goal_id:
            self._unique_id(goal_id, self._goal_ids, prefix, "goal")
        rotation = self._rotation(raw, prefix, location, requirement.progress_mode if mode_known else None)
        self._warn_unknown_keys(raw, _GOAL_KEYS, location, legacy=_LEGACY_GOAL_KEYS)
        if default_assigned and prerequisites:
            self.warnings.append(
                f"{location}: default-assigned goal has prerequisites; "
                "every player gets it at initialize, locked until the prerequisites are met"
            )

        goal = Goal(
            goal_id=goal_id,
            challenge_id=challenge_id,
            name=name,
            description=description,
            event_source=event_source,
            default_assigned=default_assigned,
            requirement=requirement,
            reward=reward,
            prerequisites=tuple(prerequisites),
            rotation=rotation,
            position=len(self._goal_drafts),
        )
        self._goal_drafts.append(_GoalDraft(goal, prefix, prerequisites))
        return goal

    def _requirement(self, raw: dict[str, Any], prefix: str, location: str) -> tuple[Requirement, bool]:
        """The requirement, and whether its progress mode is a valid one (V24 needs to know)."""
        body, valid = self._field(raw, "requirement", "object", prefix)
        if not valid:
            return Requirement("", "", 0, "absolute"), False
        stat_code, valid = self._field(body, "statCode", "string", prefix)
        if valid and not stat_code:
            self.errors.append(f"{prefix}stat_code cannot be empty")
        operator, valid = self._field(body, "operator", "string", prefix)
        if valid and operator != ">=":
            self.errors.append(f"{prefix}unsupported operator '{operator}' (only '>=' supported)")
        target_value, valid = self._field(body, "targetValue", "integer", prefix)
        if valid and target_value <= 0:
            self.errors.append(f"{prefix}target_value must be positive")
        raw_mode, mode_valid = self._field(body, "progressMode", "string", prefix)
        progress_mode = _PROGRESS_MODES.get(raw_mode)
        if mode_valid and progress_mode is None:
            self.errors.append(f"{prefix}invalid progressMode '{raw_mode}'")
        self._warn_unknown_keys(body, _REQUIREMENT_KEYS, location, key_path="requirement.")
        mode_known = mode_valid and progress_mode is not None
        return Requirement(stat_code, operator, target_value, progress_mode or "absolute"), mode_known

    def _reward(self, raw: dict[str, Any], prefix: str, location: str) -> Reward:
        body, valid = self._field(raw, "reward", "object", prefix)
        if not valid:
            return Reward("", "", 0)
        reward_type, valid = self._field(body, "type", "string", prefix)
        if valid and reward_type not in _REWARD_TYPES:
            self.errors.append(f"{prefix}unsupported reward type '{reward_type}' (only 'ITEM' or 'WALLET' allowed)")
        reward_id, valid = self._field(body, "rewardId", "string", prefix)
        if valid and not reward_id:
            self.errors.append(f"{prefix}reward_id cannot be empty")
        quantity, valid = self._field(body, "quantity", "integer", prefix)
        if valid and quantity <= 0:
            self.errors.append(f"{prefix}reward quantity must be positive")
        self._warn_unknown_keys(body, _REWARD_KEYS, location, key_path="reward.")
        return Reward(reward_type, reward_id, quantity)

    def _prerequisites(self, raw: dict[str, Any], prefix: str) -> list[str]:
        items, _ = self._field(raw, "prerequisites", "array", prefix)
        prerequisites: list[str] = []
        for index, item in enumerate(items):
            if isinstance(item, str):
                prerequisites.append(item)
            else:
                self.errors.append(f"{prefix}invalid type for 'prerequisites[{index}]': expected string")
        return prerequisites

    def _rotation(self, raw: dict[str, Any], prefix: str, location: str, progress_mode: str | None) -> Rotation | None:
        """The enabled rotation, or None; a disabled rotation's other keys are neither validated nor checked."""
        body, valid = self._field(raw, "rotation", "object", prefix)
        if not valid:
            return None
        enabled, _ = self._field(body, "enabled", "boolean", prefix)
        if not enabled:
            return None
        schedule, valid = self._field(body, "schedule", "string", prefix)
        if valid and schedule not in _SCHEDULES:
            self.errors.append(f"{prefix}invalid rotation schedule '{schedule}'")
        rotation_type, valid = self._field(body, "type", "string", prefix)
        if valid and rotation_type != "global":
            self.errors.append(f"{prefix}invalid rotation type '{rotation_type}'")
        on_expiry, valid = self._field(body, "onExpiry", "object", prefix)
        reset_progress, _ = self._field(on_expiry, "resetProgress", "boolean", prefix, label="onExpiry.resetProgress")
        allow_reselection, _ = self._field(
            on_expiry, "allowReselection", "boolean", prefix, label="onExpiry.allowReselection"
        )
        if progress_mode == "absolute":
            self.errors.append(f"{prefix}rotation requires progressMode 'relative', got 'absolute'")
        self._warn_unknown_keys(body, _ROTATION_KEYS, location, key_path="rotation.")
        self._warn_unknown_keys(on_expiry, _ON_EXPIRY_KEYS, location, key_path="rotation.onExpiry.")
        if not reset_progress:
            self.warnings.append(
                f"{location}: rotation is enabled without onExpiry.resetProgress, "
                "so progress carries over between periods"
            )
        return Rotation(rotation_type, schedule, reset_progress, allow_reselection)

    # -- second pass --

    def _check_prerequisites(self) -> None:
        """V25 (unknown prerequisites) and V26 (cycles), per goal in file order."""
        graph: dict[str, list[str]] = {}
        for draft in self._goal_drafts:
            goal_id = draft.goal.goal_id
            if goal_id and goal_id not in graph:
                graph[goal_id] = [p for p in draft.prerequisites if p in self._goal_ids]
        cycles = _prerequisite_cycles(graph)
        for draft in self._goal_drafts:
            goal_id = draft.goal.goal_id
            for prerequisite in draft.prerequisites:
                if prerequisite not in self._goal_ids:
                    self.errors.append(
                        f"{draft.error_prefix}goal '{goal_id}' has invalid prerequisite: "
                        f"'{prerequisite}' does not exist"
                    )
            cycle = cycles.pop(goal_id, None)
            if cycle is not None:
                self.errors.append(f"{draft.error_prefix}prerequisite cycle detected: {' -> '.join(cycle)}")


def _prerequisite_cycles(graph: dict[str, list[str]]) -> dict[str, list[str]]:
    """One cycle path per strongly connected component that holds a cycle, keyed by its first goal.

    `graph` maps goal ids (in file order) to their existing prerequisites (in listed order). The path starts
    at the component's member that comes first in file order and, at each step, follows the first listed
    prerequisite from which the start can still be reached without revisiting a goal (docs/catalog.md#validation-rules, V26).
    """
    order = {goal_id: index for index, goal_id in enumerate(graph)}
    cycles: dict[str, list[str]] = {}
    for component in _strongly_connected_components(graph):
        start = min(component, key=order.__getitem__)
        if len(component) == 1 and start not in graph[start]:
            continue
        cycles[start] = _cycle_path(start, set(component), graph)
    return cycles


def _cycle_path(start: str, members: set[str], graph: dict[str, list[str]]) -> list[str]:
    path = [start]
    visited = {start}
    current = start
    while True:
        step = next(
            prerequisite
            for prerequisite in graph[current]
            if prerequisite == start
            or (
                prerequisite in members
                and prerequisite not in visited
                and _reaches(prerequisite, start, members, visited, graph)
            )
        )
        path.append(step)
        if step == start:
            return path
        visited.add(step)
        current = step


def _reaches(source: str, target: str, members: set[str], blocked: set[str], graph: dict[str, list[str]]) -> bool:
    """Whether `target` is reachable from `source` through members that are not blocked."""
    seen = {source}
    frontier = [source]
    while frontier:
        node = frontier.pop()
        for nxt in graph[node]:
            if nxt == target:
                return True
            if nxt in members and nxt not in blocked and nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return False


def _strongly_connected_components(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative so that long prerequisite chains cannot hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(graph[root]))]
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
    return components


# --- indexes, fragments, fingerprint --------------------------------------------------------------


def _build_catalog(path: str, challenges: list[Challenge], warnings: list[str]) -> Catalog:
    goals = tuple(goal for challenge in challenges for goal in challenge.goals)
    by_stat_code: dict[str, list[Goal]] = {}
    for goal in goals:
        if goal.event_source == "statistic":
            by_stat_code.setdefault(goal.requirement.stat_code, []).append(goal)
    return Catalog(
        path=path,
        challenges=tuple(challenges),
        goals=goals,
        challenges_by_id={challenge.challenge_id: challenge for challenge in challenges},
        goals_by_id={goal.goal_id: goal for goal in goals},
        goals_by_stat_code={code: tuple(routed) for code, routed in by_stat_code.items()},
        login_goals=tuple(goal for goal in goals if goal.event_source == "login"),
        default_goals=tuple(goal for goal in goals if goal.default_assigned),
        prerequisite_ids=tuple(sorted({p for goal in goals for p in goal.prerequisites})),
        fingerprint=catalog_fingerprint(challenges),
        warnings=tuple(warnings),
        goal_fragments={goal.goal_id: _goal_fragments(goal) for goal in goals},
        challenge_fragments={challenge.challenge_id: _challenge_fragments(challenge) for challenge in challenges},
    )


def requirement_json(requirement: Requirement) -> dict[str, Any]:
    """The API Requirement object (docs/http-api.md#endpoints), progressMode normalised."""
    values = (requirement.stat_code, requirement.operator, requirement.target_value, requirement.progress_mode)
    return dict(zip(("statCode", "operator", "targetValue", "progressMode"), values, strict=True))


def reward_json(reward: Reward) -> dict[str, Any]:
    """The API Reward object (docs/http-api.md#endpoints)."""
    return {"type": reward.type, "rewardId": reward.reward_id, "quantity": reward.quantity}


# The goal fields the API repeats verbatim in every response, encoded once (`_goal_model` spells them).
_GOAL_FRAGMENT_KEYS = ("goalId", "name", "description", "requirement", "reward", "prerequisites")


def _goal_fragments(goal: Goal) -> dict[str, bytes]:
    model = _goal_model(goal)
    fields = {key: model[key] for key in _GOAL_FRAGMENT_KEYS}
    fields.update(challengeId=goal.challenge_id, target=goal.requirement.target_value)
    return {key: msgspec.json.encode(value) for key, value in fields.items()}


def _challenge_fragments(challenge: Challenge) -> dict[str, bytes]:
    encode = msgspec.json.encode
    return {
        "challengeId": encode(challenge.challenge_id),
        "name": encode(challenge.name),
        "description": encode(challenge.description),
    }


def _rotation_model(rotation: Rotation | None) -> dict[str, Any]:
    if rotation is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "type": rotation.type,
        "schedule": rotation.schedule,
        "onExpiry": {"resetProgress": rotation.reset_progress, "allowReselection": rotation.allow_reselection},
    }


def _goal_model(goal: Goal) -> dict[str, Any]:
    # The copied challengeId is left out: it is not part of the file (docs/architecture.md#glossary, catalog fingerprint).
    return {
        "goalId": goal.goal_id,
        "name": goal.name,
        "description": goal.description,
        "eventSource": goal.event_source,
        "defaultAssigned": goal.default_assigned,
        "requirement": requirement_json(goal.requirement),
        "reward": reward_json(goal.reward),
        "prerequisites": list(goal.prerequisites),
        "rotation": _rotation_model(goal.rotation),
    }


def catalog_fingerprint(challenges: Iterable[Challenge]) -> str:
    """The docs/architecture.md#glossary fingerprint: 16 hex chars of the SHA-256 of the canonical JSON of the validated model."""
    model = {
        "challenges": [
            {
                "challengeId": challenge.challenge_id,
                "name": challenge.name,
                "description": challenge.description,
                "goals": [_goal_model(goal) for goal in challenge.goals],
            }
            for challenge in challenges
        ]
    }
    canonical = json.dumps(model, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

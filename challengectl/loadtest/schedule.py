"""Open-model schedules (docs/loadtest.md#measurement-model, docs/loadtest.md#loadtest-run): phases with constant or linearly ramping arrival rates,
the `--phase NAME=DURATION[@RATE[/EVENT_RATE]]` and duration syntaxes, and the planned op counts.

Operation `i` of a stream is due at the time its cumulative arrival count reaches `i`, independently
of how fast earlier operations complete; for a constant rate `r` that is `i / r`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from challengectl.durations import duration_seconds
from challengectl.loadtest.profiles import PhaseDefault, Profile

WARMUP_START_FRACTION = 0.10
_PHASE_OVERRIDE = re.compile(
    r"^(?P<name>[a-z][a-z0-9_-]*)=(?P<duration>[0-9.dhms]+)"
    r"(?:@(?P<rate>\d+(?:\.\d+)?)(?:/(?P<event_rate>\d+(?:\.\d+)?))?)?$"
)


class ScheduleError(ValueError):
    """A duration, phase override or rate that cannot be used; the message names the bad text."""


def parse_duration(text: str) -> float:
    """`90`, `20s`, `1m30s`, `30m`, `1h`, `250ms` → seconds (the rules of `challengectl.durations`)."""
    try:
        return duration_seconds(text)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from None


def format_duration(seconds: float) -> str:
    """`45 s`, `30 min`, `1 h 30 min`, `1 min 30 s` for report headers."""
    if seconds < 60:
        return f"{seconds:g} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = (
        ([f"{hours} h"] if hours else []) + ([f"{minutes} min"] if minutes else []) + ([f"{secs} s"] if secs else [])
    )
    return " ".join(parts)


@dataclass(frozen=True)
class Ramp:
    """An arrival rate going linearly from `start_rate` to `end_rate` over `duration_s` (equal = constant)."""

    duration_s: float
    start_rate: float
    end_rate: float

    @property
    def count(self) -> int:
        """Operations due in [0, duration): every i with cumulative(t_i) = i < cumulative(duration)."""
        expected = self.duration_s * (self.start_rate + self.end_rate) / 2
        return max(0, math.ceil(expected - 1e-9))

    def offset_of(self, i: int) -> float:
        """Seconds from the stream's start at which operation `i` (0-based) is due."""
        a, b = self.start_rate, self.end_rate
        if abs(b - a) < 1e-12:
            return i / a
        k = (b - a) / (2 * self.duration_s)
        return (-a + math.sqrt(a * a + 4 * k * i)) / (2 * k)


@dataclass(frozen=True)
class PhasePlan:
    """One phase as it will run. `kind` is `init` or `gameplay`; `offset_s` is its start relative to the
    run's start; `init_index_base` is the number of init-kind operations scheduled before this phase,
    so user assignment (`k mod users`) continues across `warmup` and `init`."""

    name: str
    kind: str
    duration_s: float
    rate: float
    event_rate: float
    offset_s: float = 0.0
    ramp_from: float = 1.0
    init_index_base: int = 0

    @property
    def api(self) -> Ramp:
        return Ramp(self.duration_s, self.rate * self.ramp_from, self.rate)

    @property
    def events(self) -> Ramp:
        return Ramp(self.duration_s, self.event_rate * self.ramp_from, self.event_rate)

    @property
    def is_warmup(self) -> bool:
        return self.name == "warmup"

    def as_option(self) -> dict[str, float | str]:
        """The phase as recorded in the report's `run.options.phases`."""
        entry: dict[str, float | str] = {
            "name": self.name,
            "kind": self.kind,
            "duration_s": self.duration_s,
            "rate": self.rate,
        }
        if self.kind == "gameplay":
            entry["event_rate"] = self.event_rate
        if self.ramp_from != 1.0:
            entry["ramp_from_rate"] = self.rate * self.ramp_from
        return entry


@dataclass(frozen=True)
class PhaseOverride:
    name: str
    duration_s: float
    rate: float | None
    event_rate: float | None


def parse_phase_override(text: str) -> PhaseOverride:
    """`init=20s@200`, `gameplay=40s@150/250` (API / event rate), `gameplay=2m` (duration only)."""
    match = _PHASE_OVERRIDE.match(text.strip())
    if match is None:
        raise ScheduleError(f"invalid --phase '{text}' (expected NAME=DURATION[@RATE[/EVENT_RATE]], e.g. init=20s@200)")
    rate = float(match["rate"]) if match["rate"] else None
    event_rate = float(match["event_rate"]) if match["event_rate"] else None
    return PhaseOverride(match["name"], parse_duration(match["duration"]), rate, event_rate)


def build_phases(
    profile: Profile,
    *,
    duration_s: float | None = None,
    overrides: list[PhaseOverride] | tuple[PhaseOverride, ...] = (),
    scale: float = 1.0,
    warmup_s: float = 0.0,
) -> list[PhasePlan]:
    """The phases of a run: the profile's, with `--duration` (gameplay length), `--phase` overrides and
    `--scale` (applied to every rate, explicit ones included), preceded by a `warmup` ramp from 10 % to
    100 % of the first phase's rates when `warmup_s` > 0. Phases of zero duration are left out.
    An override that sets only the API rate of `gameplay` keeps the profile's event/API ratio."""
    if scale <= 0:
        raise ScheduleError(f"--scale must be greater than 0 (got {scale:g})")
    defaults: dict[str, PhaseDefault] = {phase.name: phase for phase in profile.phases}
    if duration_s is not None:
        defaults["gameplay"] = replace(defaults["gameplay"], duration_s=duration_s)
    for override in overrides:
        if override.name not in defaults:
            raise ScheduleError(
                f"unknown phase '{override.name}' in --phase (phases of {profile.name}: {', '.join(defaults)})"
            )
        current = defaults[override.name]
        rate = override.rate if override.rate is not None else current.rate
        if override.event_rate is not None:
            event_rate = override.event_rate
        elif current.rate > 0:
            event_rate = current.event_rate * rate / current.rate
        else:
            event_rate = current.event_rate
        if override.event_rate is not None and current.kind != "gameplay":
            raise ScheduleError(f"phase '{override.name}' has no event stream; drop '/{override.event_rate:g}'")
        defaults[override.name] = replace(current, duration_s=override.duration_s, rate=rate, event_rate=event_rate)
    ordered = [defaults[phase.name] for phase in profile.phases if defaults[phase.name].duration_s > 0]
    if not ordered:
        raise ScheduleError("every phase has zero duration; nothing to run")
    for phase in ordered:
        if phase.rate <= 0 or (phase.kind == "gameplay" and phase.event_rate < 0):
            raise ScheduleError(f"phase '{phase.name}' needs a rate greater than 0")
    plans: list[PhasePlan] = []
    offset, init_base = 0.0, 0
    if warmup_s > 0:
        first = ordered[0]
        plans.append(
            PhasePlan(
                "warmup",
                first.kind,
                warmup_s,
                first.rate * scale,
                first.event_rate * scale,
                offset,
                WARMUP_START_FRACTION,
                init_base,
            )
        )
        offset += warmup_s
        if first.kind == "init":
            init_base += plans[-1].api.count
    for phase in ordered:
        plan = PhasePlan(
            phase.name,
            phase.kind,
            phase.duration_s,
            phase.rate * scale,
            phase.event_rate * scale,
            offset,
            1.0,
            init_base,
        )
        plans.append(plan)
        offset += phase.duration_s
        if phase.kind == "init":
            init_base += plan.api.count
    return plans


def planned_operations(plans: list[PhasePlan], event_batch: int = 1) -> list[dict[str, float | int | str]]:
    """Per phase: duration, rates and the number of API operations and events (for `--dry-run`)."""
    rows: list[dict[str, float | int | str]] = []
    for plan in plans:
        events = plan.events.count if plan.kind == "gameplay" else 0
        rows.append(
            {
                "phase": plan.name,
                "kind": plan.kind,
                "start_s": plan.offset_s,
                "duration_s": plan.duration_s,
                "rate": plan.rate,
                "event_rate": plan.event_rate if plan.kind == "gameplay" else 0,
                "ramp_from": plan.rate * plan.ramp_from,
                "api_operations": plan.api.count,
                "events": events,
                "event_calls": math.ceil(events / max(1, event_batch)),
            }
        )
    return rows

"""The report's per-second series (docs/loadtest.md#json-report, schema 1.1): for every endpoint and
second of the run (by scheduled time, as the latencies are measured) the sent, ok, error and dropped
counts and the p50/p95/p99 latency; the schedule's API and event rates per second; and where the
resource samples sit on the same clock."""

from __future__ import annotations

import math
from typing import Any

from challengectl.loadtest.generator import GeneratorResult
from challengectl.loadtest.profiles import EVENT_LABELS
from challengectl.loadtest.schedule import PhasePlan

PERCENTILES = (50, 95, 99)


def percentile_ms(sorted_us: list[int], percentile: float) -> float | None:
    """Nearest-rank percentile of sorted microseconds, in ms; None for no values."""
    if not sorted_us:
        return None
    rank = max(1, math.ceil(percentile / 100 * len(sorted_us)))
    return round(sorted_us[rank - 1] / 1000, 3)


def scheduled_rates(plans: list[PhasePlan], seconds: int) -> dict[str, list[float]]:
    """The schedule's API and event arrival rates at the middle of every second of the run."""
    api, events = [0.0] * seconds, [0.0] * seconds
    for second in range(seconds):
        middle = second + 0.5
        for plan in plans:
            if plan.offset_s <= middle < plan.offset_s + plan.duration_s:
                progress = (middle - plan.offset_s) / plan.duration_s
                for rates, ramp in ((api, plan.api), (events, plan.events if plan.kind == "gameplay" else None)):
                    if ramp is not None:
                        rates[second] = round(ramp.start_rate + (ramp.end_rate - ramp.start_rate) * progress, 2)
    return {"api": api, "events": events}


def endpoint_series(entries: dict[int, list[Any]], seconds: int) -> dict[str, list[Any]]:
    """The per-second arrays of one endpoint from its {second: [ok, errors, dropped, latencies µs]}."""
    series: dict[str, list[Any]] = {"sent": [], "ok": [], "errors": [], "dropped": []}
    for p in PERCENTILES:
        series[f"p{p}_ms"] = []
    for second in range(seconds):
        ok, errors, dropped, latencies = entries.get(second, (0, 0, 0, []))
        ordered = sorted(latencies)
        series["sent"].append(ok + errors)
        series["ok"].append(ok)
        series["errors"].append(errors)
        series["dropped"].append(dropped)
        for p in PERCENTILES:
            series[f"p{p}_ms"].append(percentile_ms(ordered, p))
    return series


def build_timeseries(
    result: GeneratorResult, plans: list[PhasePlan], resources_started_unix: float | None
) -> dict[str, Any]:
    """The `timeseries` section: `t_s` (second starts), `schedule` rates, `endpoints` arrays (an
    aggregate `event` entry too), and `resources_offset_s`, to add to a resource sample's `t_s` to put
    it on this clock (None when no samples were taken)."""
    planned = math.ceil(max(plan.offset_s + plan.duration_s for plan in plans))
    observed = max((second + 1 for second, _ in result.seconds), default=0)
    seconds = max(planned, observed)
    by_label: dict[str, dict[int, list[Any]]] = {}
    events: dict[int, list[Any]] = {}
    for (second, label), entry in result.seconds.items():
        by_label.setdefault(label, {})[second] = entry
        if label in EVENT_LABELS:
            merged = events.setdefault(second, [0, 0, 0, []])
            for index in range(3):
                merged[index] += entry[index]
            merged[3].extend(entry[3])
    endpoints = {label: endpoint_series(entries, seconds) for label, entries in sorted(by_label.items())}
    if events:
        endpoints["event"] = endpoint_series(events, seconds)
    return {
        "interval_s": 1,
        "t_s": list(range(seconds)),
        "schedule": scheduled_rates(plans, seconds),
        "endpoints": endpoints,
        "resources_offset_s": round(resources_started_unix - result.started_unix, 3)
        if resources_started_unix is not None and result.started_unix
        else None,
    }

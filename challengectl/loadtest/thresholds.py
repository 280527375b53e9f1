"""Threshold expressions and gates (docs/loadtest.md#thresholds-and-gates): `[PHASE/]LABEL:STAT OP VALUE[UNIT]`, the profile's
default targets, and their evaluation against a report's phases or overall (non-warm-up) numbers."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from challengectl.loadtest.profiles import DEFAULT_SUCCESS_MIN_PCT, EVENT_LABELS, TARGET_P95_MS

STATS = ("p50", "p90", "p95", "p99", "avg", "max", "success")
ALL_ENDPOINTS = "*"
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_EXPRESSION = re.compile(
    r"^\s*(?:(?P<phase>[a-z][a-z0-9_-]*)/)?(?P<label>\*|[a-z][a-z0-9_]*)\s*:\s*"
    r"(?P<stat>[a-z0-9]+)\s*(?P<op><=|>=|<|>)\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|%)?\s*$"
)


class ThresholdError(ValueError):
    """An expression that cannot be parsed; the message quotes it and shows the syntax."""


@dataclass(frozen=True)
class Threshold:
    """`value` is in ms for latency statistics and in % for `success`."""

    expr: str
    phase: str | None
    label: str
    stat: str
    op: str
    value: float

    @property
    def key(self) -> tuple[str | None, str, str]:
        return self.phase, self.label, self.stat


def parse_threshold(text: str) -> Threshold:
    """Parse `[PHASE/]LABEL:STAT OP VALUE[UNIT]`; latency units are ms (default) or s, success uses %."""
    match = _EXPRESSION.match(text)
    if match is None:
        raise ThresholdError(
            f"invalid threshold '{text}' (syntax: [PHASE/]LABEL:STAT OP VALUE[UNIT], "
            "e.g. initialize_new:p95<50ms or *:success>99.95%)"
        )
    stat, unit, value = match["stat"], match["unit"], float(match["value"])
    if stat not in STATS:
        raise ThresholdError(f"unknown statistic '{stat}' in '{text}' (one of {', '.join(STATS)})")
    if stat == "success":
        if unit not in (None, "%"):
            raise ThresholdError(f"'{text}': success is a percentage; write e.g. success>99.95%")
    elif unit == "%":
        raise ThresholdError(f"'{text}': {stat} is a latency; use ms or s")
    elif unit == "s":
        value *= 1000.0
    return Threshold(text.strip(), match["phase"], match["label"], stat, match["op"], value)


def default_thresholds(success_min: float = DEFAULT_SUCCESS_MIN_PCT) -> list[Threshold]:
    """The profile's targets: p95 per endpoint (events through the aggregate `event`) and overall success."""
    defaults = [
        parse_threshold(f"{label}:p95<{target:g}ms")
        for label, target in TARGET_P95_MS.items()
        if label not in EVENT_LABELS
    ]
    defaults.append(parse_threshold(f"*:success>{success_min:g}%"))
    return defaults


def effective_thresholds(
    explicit: Iterable[Threshold], use_defaults: bool = True, success_min: float = DEFAULT_SUCCESS_MIN_PCT
) -> list[Threshold]:
    """Defaults (unless disabled) with any default replaced by an explicit one of the same phase, label
    and statistic; explicit expressions follow in the order given."""
    explicit = list(explicit)
    replaced = {threshold.key for threshold in explicit}
    defaults = [t for t in default_thresholds(success_min) if t.key not in replaced] if use_defaults else []
    return defaults + explicit


def observed_value(report: dict[str, Any], threshold: Threshold) -> float | None:
    """The statistic the threshold gates: from the named phase, or from `overall` (non-warm-up phases).
    None when the endpoint had no operations."""
    if threshold.phase is None:
        scope = report.get("overall", {})
    else:
        scope = next((p for p in report.get("phases", []) if p["name"] == threshold.phase), {})
    entry = scope.get("all") if threshold.label == ALL_ENDPOINTS else scope.get("endpoints", {}).get(threshold.label)
    if not entry or not entry.get("count"):
        return None
    if threshold.stat == "success":
        return float(entry["success_pct"])
    if entry.get("count", 0) == entry.get("failures", {}).get("dropped", 0):
        return None
    return float(entry["latency_ms"][threshold.stat])


def evaluate(report: dict[str, Any], thresholds: Iterable[Threshold]) -> list[dict[str, Any]]:
    """One result per threshold: `pass` is True/False, or None when there was no data to judge."""
    results = []
    for threshold in thresholds:
        observed = observed_value(report, threshold)
        passed = None if observed is None else _OPERATORS[threshold.op](observed, threshold.value)
        results.append(
            {
                "expr": threshold.expr,
                "phase": threshold.phase,
                "label": threshold.label,
                "stat": threshold.stat,
                "op": threshold.op,
                "value": threshold.value,
                "unit": "%" if threshold.stat == "success" else "ms",
                "observed": observed,
                "pass": passed,
            }
        )
    return results

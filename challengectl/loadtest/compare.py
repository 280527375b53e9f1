"""`loadtest compare BASE CAND` (docs/loadtest.md#thresholds-and-gates): for each endpoint and metric, base and candidate values,
the change, target status and improved / unchanged / regressed against a tolerance."""

from __future__ import annotations

import re
from typing import Any

LATENCY_METRICS = ("p50", "p90", "p95", "p99", "avg", "max", "min")
METRICS = LATENCY_METRICS + ("success",)
DEFAULT_METRICS = ("p95", "p99", "avg", "success")
_TOLERANCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")


class CompareError(ValueError):
    """Unusable compare options; the message names the bad value."""


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise CompareError(f"unknown metric '{', '.join(unknown) or text}' (choose from {', '.join(METRICS)})")
    return names


def parse_tolerance(text: str) -> float:
    """`10%` or `10` → 10.0 (percent)."""
    match = _TOLERANCE.match(text)
    if match is None:
        raise CompareError(f"invalid tolerance '{text}' (expected a percentage such as 10%)")
    return float(match.group(1))


def _status_latency(base: float, cand: float, tolerance_pct: float) -> str:
    if cand > base * (1 + tolerance_pct / 100):
        return "regressed"
    if cand < base * (1 - tolerance_pct / 100):
        return "improved"
    return "unchanged"


def _status_success(base: float, cand: float, tolerance_pp: float) -> str:
    if cand < base - tolerance_pp:
        return "regressed"
    if cand > base + tolerance_pp:
        return "improved"
    return "unchanged"


def _target_pass(entry: dict[str, Any], metric: str, value: float | None) -> bool | None:
    target = entry.get("target_p95_ms")
    if metric != "p95" or target is None or value is None:
        return None
    return value < target


def compare_reports(
    base: dict[str, Any],
    cand: dict[str, Any],
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    tolerance_pct: float = 10.0,
    success_tolerance_pp: float = 0.05,
) -> dict[str, Any]:
    """The comparison as data: one row per (endpoint, metric) over the overall (non-warm-up) numbers.
    Latency change is `(cand − base) / base × 100` (positive = slower); success change is in points.
    An endpoint present in only one report gets status `missing` and is not a regression."""
    base_endpoints = base.get("overall", {}).get("endpoints", {})
    cand_endpoints = cand.get("overall", {}).get("endpoints", {})
    labels = list(base_endpoints) + [label for label in cand_endpoints if label not in base_endpoints]
    rows = []
    for label in labels + ["*"]:
        b = base.get("overall", {}).get("all", {}) if label == "*" else base_endpoints.get(label)
        c = cand.get("overall", {}).get("all", {}) if label == "*" else cand_endpoints.get(label)
        for metric in metrics:
            rows.append(_row(label, metric, b, c, tolerance_pct, success_tolerance_pp))
    regressions = [row for row in rows if row["status"] == "regressed"]
    return {
        "schema_version": "1.0",
        "base": {"path": None, "run_id": base.get("run", {}).get("id"), "label": base.get("run", {}).get("label")},
        "candidate": {"path": None, "run_id": cand.get("run", {}).get("id"), "label": cand.get("run", {}).get("label")},
        "tolerance_pct": tolerance_pct,
        "success_tolerance_pp": success_tolerance_pp,
        "metrics": list(metrics),
        "rows": rows,
        "regressions": len(regressions),
        "verdict": "regressed" if regressions else "ok",
    }


def _value(entry: dict[str, Any] | None, metric: str) -> float | None:
    if not entry or not entry.get("count"):
        return None
    if metric == "success":
        return float(entry["success_pct"])
    return float(entry.get("latency_ms", {}).get(metric, 0.0))


def _row(
    label: str,
    metric: str,
    base_entry: dict[str, Any] | None,
    cand_entry: dict[str, Any] | None,
    tolerance_pct: float,
    success_tolerance_pp: float,
) -> dict[str, Any]:
    base_value, cand_value = _value(base_entry, metric), _value(cand_entry, metric)
    row: dict[str, Any] = {
        "endpoint": label,
        "metric": metric,
        "unit": "%" if metric == "success" else "ms",
        "base": base_value,
        "candidate": cand_value,
        "change": None,
        "change_unit": None,
        "status": "missing",
        "base_target_pass": _target_pass(base_entry or {}, metric, base_value),
        "candidate_target_pass": _target_pass(cand_entry or {}, metric, cand_value),
    }
    if base_value is None or cand_value is None:
        return row
    if metric == "success":
        row.update(
            change=round(cand_value - base_value, 4),
            change_unit="pp",
            status=_status_success(base_value, cand_value, success_tolerance_pp),
        )
    elif base_value > 0:
        row.update(
            change=round((cand_value - base_value) / base_value * 100, 2),
            change_unit="%",
            status=_status_latency(base_value, cand_value, tolerance_pct),
        )
    else:
        row.update(status="unchanged" if cand_value == 0 else "regressed")
    return row

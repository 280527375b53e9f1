"""The versioned JSON report (docs/loadtest.md#json-report): built from the merged generator results, the phase plans,
resource snapshots and thresholds; loaded back (any 1.x) for `compare` and `report`.

Every endpoint entry also carries `latency_hdr`, the encoded HDR histogram of its latencies, so that
later tools can merge endpoints or phases exactly instead of averaging percentiles.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from challengectl.loadtest.profiles import ENDPOINT_LABELS, EVENT_LABELS, TARGET_P95_MS
from challengectl.loadtest.schedule import PhasePlan
from challengectl.loadtest.stats import EndpointStats, latency_summary_ms
from challengectl.loadtest.thresholds import Threshold, evaluate

if TYPE_CHECKING:
    from challengectl.loadtest.generator import GeneratorResult

SCHEMA_VERSION = "1.1"  # 1.1: the per-second `timeseries` section
GENERATOR_LAG_LIMIT_MS = 10.0
API_LABELS = ("initialize_new", "initialize_returning", "challenges", "challenges_active", "set_active", "claim_lookup")


class ReportError(Exception):
    """A report file that cannot be used: unreadable, not JSON, or another major schema version."""


def endpoint_entry(label: str, stats: EndpointStats) -> dict[str, Any]:
    """The report entry of one endpoint, with its default p95 target and whether it met it."""
    entry = stats.summary()
    target = TARGET_P95_MS.get(label)
    entry["target_p95_ms"] = target
    completed = stats.count - stats.failures.get("dropped", 0)
    entry["pass"] = None if target is None or completed == 0 else entry["latency_ms"]["p95"] < target
    return entry


def _endpoints(stats_by_label: dict[str, EndpointStats]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(endpoints in report order including the aggregate `event`, the `all` entry over every operation)."""
    endpoints: dict[str, Any] = {}
    everything = EndpointStats()
    events = EndpointStats()
    for label in ENDPOINT_LABELS:
        stats = stats_by_label.get(label)
        if stats is None:
            continue
        endpoints[label] = endpoint_entry(label, stats)
        everything.merge(stats)
        if label in EVENT_LABELS:
            events.merge(stats)
    if events.count:
        endpoints["event"] = endpoint_entry("event", events)
    return endpoints, {k: v for k, v in everything.summary().items() if k != "latency_hdr"}


def _phase_entry(plan: PhasePlan, result: GeneratorResult) -> dict[str, Any]:
    stats_by_label = {label: stats for (phase, label), stats in result.stats.items() if phase == plan.name}
    endpoints, everything = _endpoints(stats_by_label)

    def sent(labels: Iterable[str]) -> int:
        return sum(
            stats_by_label[label].count - stats_by_label[label].failures.get("dropped", 0)
            for label in labels
            if label in stats_by_label
        )

    entry: dict[str, Any] = {
        "name": plan.name,
        "kind": plan.kind,
        "start_s": plan.offset_s,
        "duration_s": plan.duration_s,
        "target_rate": plan.rate,
        "achieved_rate": round(sent(API_LABELS) / plan.duration_s, 2),
    }
    if plan.kind == "gameplay":
        entry["target_event_rate"] = plan.event_rate
        entry["achieved_event_rate"] = round(sent(EVENT_LABELS) / plan.duration_s, 2)
    if plan.ramp_from != 1.0:
        entry["ramp_from_rate"] = plan.rate * plan.ramp_from
    entry["endpoints"] = endpoints
    entry["all"] = everything
    entry["failures_per_minute"] = [
        {"minute": minute, "failed": failed, "total": total}
        for (phase, minute), (failed, total) in sorted(result.timeline.items())
        if phase == plan.name
    ]
    return entry


def _overall(plans: list[PhasePlan], result: GeneratorResult) -> dict[str, Any]:
    measured = {plan.name for plan in plans if not plan.is_warmup}
    merged: dict[str, EndpointStats] = {}
    for (phase, label), stats in result.stats.items():
        if phase in measured:
            merged.setdefault(label, EndpointStats()).merge(stats)
    endpoints, everything = _endpoints(merged)
    return {
        "count": everything["count"],
        "success_pct": everything["success_pct"],
        "claim_skipped": result.claim_skipped,
        "endpoints": endpoints,
        "all": everything,
    }


def generator_section(result: GeneratorResult) -> dict[str, Any]:
    """Generator health: send lag (actual send − scheduled), dropped operations, CPU, and whether the
    generator itself limited the run (lag p99 > 10 ms or anything dropped)."""
    lag = latency_summary_ms(result.lag)
    limited = lag["p99"] > GENERATOR_LAG_LIMIT_MS or result.dropped > 0
    reasons = []
    if lag["p99"] > GENERATOR_LAG_LIMIT_MS:
        reasons.append(f"send lag p99 {lag['p99']:.1f} ms > {GENERATOR_LAG_LIMIT_MS:g} ms")
    if result.dropped:
        reasons.append(f"{result.dropped} operations dropped at the in-flight cap")
    return {
        "lag_ms": {"p50": lag["p50"], "p99": lag["p99"], "max": lag["max"]},
        "dropped": result.dropped,
        "cpu_pct_max": round(result.cpu_pct_max, 1),
        "procs": result.procs,
        "generator_limited": limited,
        "limited_reasons": reasons,
    }


def verdict_of(thresholds: list[dict[str, Any]], generator: dict[str, Any]) -> str:
    """`fail` when a threshold failed; otherwise `invalid` when the generator fell behind (its numbers
    cannot be trusted to pass anything); otherwise `pass`."""
    if any(result["pass"] is False for result in thresholds):
        return "fail"
    if generator.get("generator_limited"):
        return "invalid"
    return "pass"


def build_report(
    *,
    tool: dict[str, Any],
    run: dict[str, Any],
    target: dict[str, Any],
    environment: dict[str, Any],
    plans: list[PhasePlan],
    result: GeneratorResult,
    thresholds: list[Threshold],
    resources: dict[str, Any],
    database: dict[str, Any],
    service_view: dict[str, Any] | None,
    timeseries: dict[str, Any] | None = None,
    baseline: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The complete report dict of docs/loadtest.md#json-report."""
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": tool,
        "run": run,
        "target": target,
        "environment": environment,
        "phases": [_phase_entry(plan, result) for plan in plans],
        "overall": _overall(plans, result),
        "generator": generator_section(result),
        "resources": resources,
        "database": database,
        "service_view": service_view,
        "timeseries": timeseries,
        "notes": notes or [],
    }
    report["thresholds"] = evaluate(report, thresholds)
    report["verdict"] = verdict_of(report["thresholds"], report["generator"])
    if baseline is not None:
        report["baseline"] = baseline
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report; refuse files that are not reports of schema major version 1."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ReportError(f"cannot read report {path}: {error.strerror or error}") from None
    except ValueError:
        raise ReportError(f"{path} is not a JSON report") from None
    if not isinstance(document, dict) or "schema_version" not in document:
        raise ReportError(f"{path} has no schema_version; it is not a loadtest report")
    version = str(document["schema_version"])
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ReportError(f"{path} has schema_version {version}; this tool reads {SCHEMA_VERSION.split('.')[0]}.x")
    return document


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def baseline_reference(path: str | Path, document: dict[str, Any]) -> dict[str, Any]:
    """The report's `baseline` entry for a baseline report at `path`."""
    run = document.get("run", {})
    return {"path": str(path), "run_id": run.get("id"), "label": run.get("label")}

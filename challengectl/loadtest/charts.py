"""The charts of a load-test report (docs/loadtest.md#reports), from its per-second `timeseries` and
resource samples: latency p50/p95/p99 per endpoint over time with the p95 targets, throughput against
the schedule, errors per endpoint, and the service's resources (CPU, RSS, DB pool, buffer, flush time,
cache hit ratio). The phases are shaded. With a second report the same charts overlay both runs, the
other run dashed. Reports older than schema 1.1 have no per-second series: only resource charts."""

from __future__ import annotations

from typing import Any

from challengectl.loadtest.profiles import ENDPOINT_LABELS, EVENT_LABELS
from challengectl.loadtest.report import API_LABELS
from challengectl.loadtest.svgchart import Band, Chart, Series, Target, color_of

TIME_AXIS = "seconds since the start of the run"
RESOURCE_CHARTS = (
    ("cpu", "Service CPU", "CPU % (100 = one core)", ("service_cpu_pct",)),
    ("rss", "Service memory", "RSS MB", ("service_rss_mb",)),
    ("pool", "DB pool", "connections", ("db_pool_in_use", "db_pool_waiting")),
    ("buffer", "Event buffer", "entries", ("buffer_entries",)),
    ("flush", "Flush time", "flush p95 ms", ("flush_ms_p95_interval", "flush_ms_p95")),
    ("cache", "Cache hit ratio", "hit ratio %", ("cache_hit_ratio_pct",)),
)


def _bands(report: dict[str, Any]) -> list[Band]:
    return [Band(phase["name"], phase["start_s"], phase["start_s"] + phase["duration_s"]) for phase in report["phases"]]


def _label(report: dict[str, Any]) -> str:
    return str(report.get("run", {}).get("label") or report.get("run", {}).get("id") or "run")


def _runs(report: dict[str, Any], other: dict[str, Any] | None) -> list[tuple[dict[str, Any], str, bool]]:
    """(report, name prefix, dashed) of every run drawn: the report solid, the other one dashed."""
    if other is None:
        return [(report, "", False)]
    return [(report, f"{_label(report)}: ", False), (other, f"{_label(other)}: ", True)]


def _endpoint_labels(reports: list[dict[str, Any]]) -> list[str]:
    present = {label for report in reports for label in (report.get("timeseries") or {}).get("endpoints", {})}
    return [label for label in ENDPOINT_LABELS if label in present]


def latency_charts(report: dict[str, Any], other: dict[str, Any] | None = None) -> list[Chart]:
    """p50, p95 (with each endpoint's target) and p99 over time, one line per endpoint and run."""
    runs = [run for run in _runs(report, other) if run[0].get("timeseries")]
    if not runs:
        return []
    labels = _endpoint_labels([run[0] for run in runs])
    charts = []
    for percentile in ("p50", "p95", "p99"):
        chart = Chart(
            f"Latency {percentile} per endpoint (from the scheduled time)",
            TIME_AXIS,
            f"{percentile} latency ms (log scale)",
            bands=_bands(report),
            log_y=True,
            chart_id=f"latency-{percentile}",
        )
        for doc, prefix, dashed in runs:
            series = doc["timeseries"]
            for index, label in enumerate(labels):
                if label in series["endpoints"]:
                    chart.series.append(
                        Series(
                            prefix + label,
                            series["t_s"],
                            series["endpoints"][label][f"{percentile}_ms"],
                            color_of(index),
                            dashed,
                        )
                    )
        if percentile == "p95":
            endpoints = report.get("overall", {}).get("endpoints", {})
            for index, label in enumerate(labels):
                target = (endpoints.get(label) or {}).get("target_p95_ms")
                if target is not None:
                    chart.targets.append(Target(label, target, color_of(index)))
        charts.append(chart)
    return charts


def _sum(endpoints: dict[str, Any], labels: tuple[str, ...], field: str, length: int) -> list[float]:
    return [sum(endpoints[label][field][i] for label in labels if label in endpoints) for i in range(length)]


def throughput_chart(report: dict[str, Any], other: dict[str, Any] | None = None) -> Chart | None:
    """API operations and events sent and answered OK per second against the schedule's rates."""
    runs = [run for run in _runs(report, other) if run[0].get("timeseries")]
    if not runs:
        return None
    chart = Chart(
        "Throughput against the schedule",
        TIME_AXIS,
        "operations per second",
        bands=_bands(report),
        chart_id="throughput",
    )
    for doc, prefix, dashed in runs:
        series = doc["timeseries"]
        endpoints, xs = series["endpoints"], series["t_s"]
        lines = [
            ("API scheduled", series["schedule"]["api"], 0, True),
            ("API sent", _sum(endpoints, API_LABELS, "sent", len(xs)), 0, False),
            ("API ok", _sum(endpoints, API_LABELS, "ok", len(xs)), 2, False),
        ]
        if any(series["schedule"]["events"]):
            lines += [
                ("events scheduled", series["schedule"]["events"], 1, True),
                ("events sent", _sum(endpoints, EVENT_LABELS, "sent", len(xs)), 1, False),
                ("events ok", _sum(endpoints, EVENT_LABELS, "ok", len(xs)), 3, False),
            ]
        for name, values, color, scheduled in lines:
            chart.series.append(Series(prefix + name, xs, values, color_of(color), dashed, dotted=scheduled))
    return chart


def errors_chart(report: dict[str, Any], other: dict[str, Any] | None = None) -> Chart | None:
    """Failed and dropped operations per second, one line per endpoint and run."""
    runs = [run for run in _runs(report, other) if run[0].get("timeseries")]
    if not runs:
        return None
    labels = _endpoint_labels([run[0] for run in runs])
    chart = Chart(
        "Errors per endpoint (failed + dropped)", TIME_AXIS, "per second", bands=_bands(report), chart_id="errors"
    )
    for doc, prefix, dashed in runs:
        series = doc["timeseries"]
        for index, label in enumerate(labels):
            entry = series["endpoints"].get(label)
            if entry is not None:
                values = [e + d for e, d in zip(entry["errors"], entry["dropped"], strict=True)]
                chart.series.append(Series(prefix + label, series["t_s"], values, color_of(index), dashed))
    return chart


def resource_charts(report: dict[str, Any], other: dict[str, Any] | None = None) -> list[Chart]:
    """One chart per resource quantity that was sampled, on the run's clock."""
    charts = []
    for chart_id, title, unit, fields in RESOURCE_CHARTS:
        chart = Chart(title, TIME_AXIS, unit, bands=_bands(report), chart_id=f"resource-{chart_id}")
        for doc, prefix, dashed in _runs(report, other):
            rows = (doc.get("resources") or {}).get("series") or []
            offset = (doc.get("timeseries") or {}).get("resources_offset_s") or 0.0
            for index, name in enumerate(fields):
                values = [row.get(name) for row in rows]
                if any(isinstance(value, (int, float)) for value in values):
                    xs = [max(0.0, row["t_s"] + offset) for row in rows]
                    chart.series.append(Series(prefix + name, xs, values, color_of(index), dashed))
        if chart.series:
            charts.append(chart)
    return charts


def report_charts(report: dict[str, Any], other: dict[str, Any] | None = None) -> list[Chart]:
    """Every chart of the report (overlaid with `other` when given), in reading order."""
    charts = latency_charts(report, other)
    charts += [chart for chart in (throughput_chart(report, other), errors_chart(report, other)) if chart]
    return charts + resource_charts(report, other)

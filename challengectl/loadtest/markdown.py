"""The Markdown report (docs/loadtest.md#markdown-report), in the shape of a phase-comparison analysis: header, executive
summary, one section per endpoint, resource utilisation, failure analysis, summary comparison,
findings and recommendations, appendix. Rendered from the JSON report alone (no network)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from challengectl.bottleneck import CPU_SATURATED_PCT, POOL_PRESSURE_PCT
from challengectl.loadtest import findings as findings_module
from challengectl.loadtest.profiles import DEFAULT_SUCCESS_MIN_PCT
from challengectl.loadtest.schedule import format_duration

TITLES = {
    "initialize_new": "Initialize (new players)",
    "initialize_returning": "Initialize (returning players, fast path)",
    "challenges": "List challenges",
    "challenges_active": "List challenges (active_only)",
    "set_active": "Set goal active",
    "claim_lookup": "Claim lookup (GET active_only before a claim)",
    "claim": "Claim reward",
    "event": "Event processing (gRPC, login + stat)",
    "event_login": "Login events",
    "event_stat": "Stat events",
}
# The service's route template (without base path) and method behind each label, for the service view.
ROUTES = {
    "initialize_new": "POST /v1/challenges/initialize",
    "initialize_returning": "POST /v1/challenges/initialize",
    "challenges": "GET /v1/challenges",
    "challenges_active": "GET /v1/challenges",
    "claim_lookup": "GET /v1/challenges",
    "set_active": "PUT /v1/challenges/{challenge_id}/goals/{goal_id}/active",
    "claim": "POST /v1/challenges/{challenge_id}/goals/{goal_id}/claim",
}
_ROWS = (
    ("p95", "p95 latency"),
    ("p90", "p90 latency"),
    ("p99", "p99 latency"),
    ("p50", "p50 latency"),
    ("avg", "Average"),
    ("min", "Min"),
    ("max", "Max"),
)
DASH = "—"


def fmt_ms(value: float | None) -> str:
    """820 µs, 7.58 ms, 130.5 ms, 200 ms, 5.00 s, 1.0 min."""
    if value is None:
        return DASH
    if value < 1:
        return f"{value * 1000:.0f} µs"
    if value < 10:
        return f"{value:.2f}".rstrip("0").rstrip(".") + " ms"
    if value < 1000:
        return f"{value:.1f}".rstrip("0").rstrip(".") + " ms"
    if value < 60_000:
        return f"{value / 1000:.2f} s"
    return f"{value / 60_000:.1f} min"


def fmt_pct(value: float | None, digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f} %"


def fmt_int(value: float | None) -> str:
    return DASH if value is None else f"{int(round(value)):,}"


def latency_change(base: float | None, run: float | None) -> str:
    """`(baseline − run) / baseline × 100 %` as "N % faster" or "N % slower"."""
    if base is None or run is None or base <= 0:
        return DASH
    change = (base - run) / base * 100
    if abs(change) < 0.5:
        return "unchanged"
    return f"{change:.0f} % faster" if change > 0 else f"{-change:.0f} % slower"


def points_change(base: float | None, run: float | None) -> str:
    """Difference in percentage points."""
    if base is None or run is None:
        return DASH
    return f"{run - base:+.2f} pp"


def _status(passed: bool | None) -> str:
    return DASH if passed is None else ("✓ PASS" if passed else "✗ FAIL")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines + [""]


class MarkdownReport:
    """Renders one report, optionally against a baseline report."""

    def __init__(
        self,
        report: dict[str, Any],
        baseline: dict[str, Any] | None = None,
        chart_files: list[tuple[str, str]] | None = None,
    ) -> None:
        self.report = report
        self.baseline = baseline
        self.chart_files = chart_files or []
        self.overall = report.get("overall", {})
        self.base_overall = (baseline or {}).get("overall", {})
        self.findings = report.get("findings") or findings_module.generate(report)
        self.success_target = next(
            (t["value"] for t in report.get("thresholds", []) if t.get("label") == "*" and t.get("stat") == "success"),
            DEFAULT_SUCCESS_MIN_PCT,
        )

    def render(self) -> str:
        lines: list[str] = []
        for section in (
            self._header,
            self._executive_summary,
            self._charts,
            self._endpoint_sections,
            self._resources,
            self._failures,
            self._summary_comparison,
            self._findings,
            self._appendix,
        ):
            lines += section()
        return "\n".join(lines).rstrip() + "\n"

    # -- helpers ------------------------------------------------------------------------------------

    def _endpoint(self, label: str) -> dict[str, Any]:
        return self.overall.get("endpoints", {}).get(label, {})

    def _base_endpoint(self, label: str) -> dict[str, Any] | None:
        return self.base_overall.get("endpoints", {}).get(label) if self.baseline else None

    def _labels(self) -> list[str]:
        return list(self.overall.get("endpoints", {}))

    def _summary_labels(self) -> list[str]:
        """Endpoints of the summaries: every label except the event halves the aggregate `event` covers."""
        labels = self._labels()
        return [label for label in labels if not (label in ("event_login", "event_stat") and "event" in labels)]

    def _threshold_for(self, label: str, stat: str = "p95") -> dict[str, Any] | None:
        return next(
            (
                t
                for t in self.report.get("thresholds", [])
                if t.get("label") == label and t.get("stat") == stat and not t.get("phase")
            ),
            None,
        )

    # -- 1. header ----------------------------------------------------------------------------------

    def _header(self) -> list[str]:
        run = self.report.get("run", {})
        title = f"# {run.get('profile', '?')} load test — {run.get('label') or run.get('id', 'run')}"
        if self.baseline:
            base_run = self.baseline.get("run", {})
            title += f" vs {base_run.get('label') or base_run.get('id', 'baseline')}"
        phases = self.report.get("phases", [])
        parts = []
        for phase in phases:
            text = f"{phase['name']} {format_duration(phase['duration_s'])} @ {phase['target_rate']:g} RPS"
            if phase.get("ramp_from_rate") is not None:
                text = (
                    f"{phase['name']} {format_duration(phase['duration_s'])} ramp "
                    f"{phase['ramp_from_rate']:g} → {phase['target_rate']:g} RPS"
                )
            if phase.get("kind") == "gameplay":
                text += f" API + {phase.get('target_event_rate', 0):g} EPS"
            parts.append(text)
        has_events = any(p.get("kind") == "gameplay" and p.get("target_event_rate") for p in phases)
        total = sum(p.get("all", {}).get("count", 0) for p in phases)
        lines = [
            title,
            "",
            f"**Date:** {run.get('started_at', '?')} (UTC)  ",
            f"**Test duration:** {' + '.join(parts)}  ",
            f"**Total operations:** {total:,}  ",
            f"**Test type:** {'combined load test (API + events)' if has_events else 'API load test'}, "
            f"open model (latency from the scheduled time)  ",
            f"**Change under test:** {run.get('notes') or DASH}",
        ]
        if run.get("interrupted"):
            lines += [
                "",
                "> **Interrupted:** the run was stopped before its schedule ended; numbers cover the part that ran.",
            ]
        return lines + ["", "---", ""]

    # -- 2. executive summary -----------------------------------------------------------------------

    def _verdict_line(self) -> str:
        thresholds = self.report.get("thresholds", [])
        judged = [t for t in thresholds if t.get("pass") is not None]
        met = sum(1 for t in judged if t["pass"])
        verdict = self.report.get("verdict")
        if verdict == "fail":
            return f"**VERDICT: ✗ FAIL ({met} of {len(judged)} targets met)**"
        if verdict == "invalid":
            return (
                f"**VERDICT: ! INVALID — every target met ({met} of {len(judged)}), but the generator fell "
                "behind, so the run does not count as a pass**"
            )
        return f"**VERDICT: ✓ PASS ({met} of {len(judged)} targets met)**"

    def _executive_summary(self) -> list[str]:
        lines = ["## Executive summary", "", self._verdict_line(), ""]
        generator = self.report.get("generator", {})
        if generator.get("generator_limited"):
            lines += [
                f"> **Generator-limited:** {'; '.join(generator.get('limited_reasons', []))}. The load "
                "was not delivered on schedule; treat these numbers as a lower bound on the damage, not "
                "as a measurement of the service.",
                "",
            ]
        lines += ["### Key findings", ""]
        for label in self._summary_labels():
            entry = self._endpoint(label)
            threshold = self._threshold_for(label)
            observed = entry.get("latency_ms", {}).get("p95")
            target = threshold["value"] if threshold else entry.get("target_p95_ms")
            passed = threshold.get("pass") if threshold else entry.get("pass")
            marker = "!" if passed is None else ("✓" if passed else "✗")
            text = f"- {marker} **{TITLES.get(label, label)}** (`{label}`): p95 {fmt_ms(observed)}"
            if target:
                text += f" vs target {fmt_ms(target)}"
                if observed and not passed and target > 0:
                    text += f" — **{observed / target:.1f}× the target**"
            base = self._base_endpoint(label)
            if base:
                text += f"; {latency_change(base['latency_ms']['p95'], observed)} than baseline ({fmt_ms(base['latency_ms']['p95'])})"
            success_pct = entry.get("success_pct")
            if success_pct is not None and success_pct < 100:
                text += f"; success {fmt_pct(success_pct)}"
            lines.append(text)
        success = self.overall.get("success_pct")
        success_line = (
            f"- {'✓' if (success or 0) > self.success_target else '✗'} **Overall success:** {fmt_pct(success)} "
        )
        success_line += f"of {self.overall.get('count', 0):,} operations (target > {self.success_target:g} %)"
        if self.baseline:
            success_line += f"; {points_change(self.base_overall.get('success_pct'), success)} vs baseline"
        lines += [success_line, "", f"**Bottom line:** {self._bottom_line()}", "", "---", ""]
        return lines

    def _bottom_line(self) -> str:
        failing = []
        for label in self._summary_labels():
            threshold = self._threshold_for(label)
            observed = self._endpoint(label).get("latency_ms", {}).get("p95")
            if threshold and threshold.get("pass") is False and observed:
                failing.append((observed / threshold["value"], label, observed, threshold["value"]))
        parts = []
        if failing:
            ratio, label, observed, target = max(failing)
            parts.append(
                f"{len(failing)} endpoint(s) miss their p95 target; the worst is `{label}` at "
                f"{fmt_ms(observed)} ({ratio:.1f}× its {fmt_ms(target)} target)"
            )
        else:
            parts.append("every endpoint with data meets its p95 target")
        if self.baseline:
            improved = regressed = 0
            for label in self._summary_labels():
                base = self._base_endpoint(label)
                if not base:
                    continue
                b, r = base["latency_ms"]["p95"], self._endpoint(label)["latency_ms"]["p95"]
                improved += r < b * 0.9
                regressed += r > b * 1.1
            parts.append(f"against the baseline, p95 improved on {improved} and regressed on {regressed} endpoint(s)")
        if self.findings:
            parts.append(f"first finding: {self.findings[0]['advice']}")
        return "; ".join(parts) + "."

    # -- 3. per-endpoint sections -------------------------------------------------------------------

    def _endpoint_sections(self) -> list[str]:
        lines = ["## Detailed performance", ""]
        for number, label in enumerate(self._labels(), start=1):
            entry = self._endpoint(label)
            base = self._base_endpoint(label)
            threshold = self._threshold_for(label)
            target = threshold["value"] if threshold else entry.get("target_p95_ms")
            lines += [f"### {number}. {TITLES.get(label, label)} (`{label}`)", ""]
            rows = []
            for key, name in _ROWS:
                value = entry.get("latency_ms", {}).get(key)
                base_value = base["latency_ms"].get(key) if base else None
                status = DASH
                if key == "p95" and target:
                    status = _status(threshold["pass"] if threshold else entry.get("pass"))
                rows.append([name, fmt_ms(base_value), fmt_ms(value), status, latency_change(base_value, value)])
            success = entry.get("success_pct")
            base_success = base.get("success_pct") if base else None
            success_status = _status(success > self.success_target) if success is not None else DASH
            rows.append(
                [
                    "Success rate",
                    fmt_pct(base_success),
                    fmt_pct(success),
                    success_status,
                    points_change(base_success, success),
                ]
            )
            failed = entry.get("count", 0) - entry.get("ok", 0)
            base_failed = f"{base['count'] - base['ok']:,} / {base['count']:,}" if base else DASH
            rows.append(["Failed / total", base_failed, f"{failed:,} / {entry.get('count', 0):,}", DASH, DASH])
            rows.append(
                [
                    "**Target**",
                    f"p95 < {fmt_ms(target)}" if (target and base) else DASH,
                    f"p95 < {fmt_ms(target)}" if target else DASH,
                    DASH,
                    DASH,
                ]
            )
            lines += _table(["Metric", "Baseline", "This run", "Status", "Improvement"], rows)
            lines += ["**Analysis:**", ""] + [f"- {text}" for text in self._analysis(label, entry, target, base)] + [""]
        lines += self._phase_breakdown() + ["---", ""]
        return lines

    def _analysis(
        self, label: str, entry: dict[str, Any], target: float | None, base: dict[str, Any] | None
    ) -> list[str]:
        notes = []
        latency, service = entry.get("latency_ms", {}), entry.get("service_time_ms", {})
        p95 = latency.get("p95")
        if target and p95 is not None:
            if p95 < target:
                notes.append(
                    f"p95 {fmt_ms(p95)} meets the {fmt_ms(target)} target with "
                    f"{(target - p95) / target * 100:.0f} % headroom"
                )
            else:
                notes.append(f"p95 {fmt_ms(p95)} is {p95 / target:.1f}× the {fmt_ms(target)} target")
        service_p95 = service.get("p95")
        if p95 is not None and service_p95 is not None:
            waiting = p95 - service_p95
            if waiting > max(1.0, 0.1 * p95):
                notes.append(
                    f"{fmt_ms(waiting)} of the p95 passed before the request left the generator "
                    f"(service time p95 {fmt_ms(service_p95)}): send lag or a full connection pool"
                )
            else:
                notes.append(
                    f"requests left on schedule: service time p95 {fmt_ms(service_p95)} is nearly all of the latency"
                )
        failures = entry.get("failures", {})
        if failures:
            top = ", ".join(f"`{name}` × {count:,}" for name, count in list(failures.items())[:3])
            notes.append(f"{sum(failures.values()):,} failures: {top}")
        route = ROUTES.get(label)
        view = (self.report.get("service_view") or {}).get("http", {})
        match = next(
            (
                v
                for k, v in view.items()
                if route and k.startswith(route.split()[0] + " ") and k.endswith(route.split()[1])
            ),
            None,
        )
        if match:
            bucket = match["p95_bucket_ms"]
            notes.append(
                f"the service's own histogram for `{route}` (every label on that route) puts p95 at "
                f"~{fmt_ms(match['p95_ms'])} (bucket {bucket[0]:g}–{bucket[1] if bucket[1] is not None else '∞'} ms) "
                f"over {match['count']:,} requests"
            )
        if base:
            notes.append(
                f"against the baseline: p95 {latency_change(base['latency_ms']['p95'], p95)}, "
                f"average {latency_change(base['latency_ms']['avg'], latency.get('avg'))}"
            )
        return notes

    def _phase_breakdown(self) -> list[str]:
        rows = []
        for phase in self.report.get("phases", []):
            duration = phase.get("duration_s") or 1
            for label, entry in phase.get("endpoints", {}).items():
                latency = entry.get("latency_ms", {})
                rows.append(
                    [
                        phase["name"],
                        f"`{label}`",
                        f"{entry['count']:,}",
                        f"{entry['count'] / duration:.1f}/s",
                        fmt_ms(latency.get("p50")),
                        fmt_ms(latency.get("p90")),
                        fmt_ms(latency.get("p95")),
                        fmt_ms(latency.get("p99")),
                        fmt_ms(latency.get("avg")),
                        fmt_ms(latency.get("min")),
                        fmt_ms(latency.get("max")),
                        fmt_pct(entry.get("success_pct")),
                    ]
                )
        if not rows:
            return []
        return ["### Per phase", ""] + _table(
            ["Phase", "Endpoint", "Count", "Rate", "p50", "p90", "p95", "p99", "Avg", "Min", "Max", "Success"], rows
        )

    # -- 4. resources -------------------------------------------------------------------------------

    def _resources(self) -> list[str]:
        resources = self.report.get("resources", {})
        summary, capacity = resources.get("summary", {}), resources.get("capacity", {})
        generator = self.report.get("generator", {})

        def stat(field: str, key: str) -> float | None:
            return summary.get(field, {}).get(key)

        def util(peak: float | None, cap: float | None) -> str:
            return fmt_pct(100.0 * peak / cap, 1) if peak is not None and cap else DASH

        def one_decimal(value: float | None) -> str:
            return f"{value:.1f}" if value is not None else DASH

        def percent(value: float | None) -> str:
            return fmt_pct(value, 1)

        def series(
            label: str,
            field: str,
            text: Callable[[float | None], str],
            avg_text: Callable[[float | None], str] | None = None,
            capacity_key: str | None = None,
            peak: float | None = None,
        ) -> list[str]:
            """A sampled series' row: peak (the highest sample unless given) and average, and with
            `capacity_key` the capacity and the peak's share of it."""
            peak = stat(field, "max") if peak is None else peak
            cap = capacity.get(capacity_key) if capacity_key else None
            limit = [fmt_int(cap), util(peak, cap)] if capacity_key else [DASH, DASH]
            return [label, text(peak), (avg_text or text)(stat(field, "avg")), *limit]

        cores = findings_module.service_cores(self.report)
        pool_peak = stat("db_pool_peak_in_use", "max")
        if pool_peak is None:
            pool_peak = stat("db_pool_in_use", "max")
        buffer_peak = stat("buffer_peak_entries", "max") or stat("buffer_entries", "max")
        rows = [
            [
                "Service CPU",
                fmt_pct(stat("service_cpu_pct", "max"), 0),
                fmt_pct(stat("service_cpu_pct", "avg"), 0),
                f"{cores} core(s)",
                util(stat("service_cpu_pct", "max"), cores * 100),
            ],
            [
                "Service RSS",
                f"{stat('service_rss_mb', 'max') or 0:.0f} MB" if stat("service_rss_mb", "max") else DASH,
                f"{stat('service_rss_mb', 'avg'):.0f} MB" if stat("service_rss_mb", "avg") else DASH,
                DASH,
                DASH,
            ],
            series("DB pool in use", "db_pool_in_use", fmt_int, one_decimal, "db_pool_max", pool_peak),
            series("DB pool waiting", "db_pool_waiting", fmt_int, one_decimal),
            series("PostgreSQL connections", "pg_connections_total", fmt_int, one_decimal, "pg_max_connections"),
            series("PostgreSQL active sessions", "pg_connections_active", fmt_int, one_decimal),
            series("Redis hit ratio (server-wide)", "redis_hit_ratio_pct", percent),
            series("Redis ops/s", "redis_ops_per_s", fmt_int),
            series("Service cache hit ratio", "cache_hit_ratio_pct", percent),
            series("Event buffer entries", "buffer_entries", fmt_int, fmt_int, "buffer_capacity", buffer_peak),
            series("Flush p95", "flush_ms_p95", fmt_ms),
            [
                "Generator send lag",
                f"p99 {fmt_ms(generator.get('lag_ms', {}).get('p99'))}, max "
                f"{fmt_ms(generator.get('lag_ms', {}).get('max'))}",
                f"p50 {fmt_ms(generator.get('lag_ms', {}).get('p50'))}",
                "p99 < 10 ms",
                "✗ limited" if generator.get("generator_limited") else "✓ on schedule",
            ],
            ["Generator dropped operations", fmt_int(generator.get("dropped")), DASH, DASH, DASH],
            [
                "Generator CPU (per process)",
                fmt_pct(generator.get("cpu_pct_max"), 0),
                DASH,
                f"{generator.get('procs', 1)} process(es)",
                DASH,
            ],
        ]
        lines = [
            "## Resource utilisation",
            "",
            f"Sampled every {resources.get('interval_s', '?')} s ({len(resources.get('series', []))} samples). "
            "Peak is the highest sample; CPU % is of one core.",
            "",
        ]
        lines += _table(["Resource", "Peak", "Average", "Capacity", "Utilisation"], rows)
        pool_pct = findings_module.pool_peak_pct(self.report)
        assessment = []
        if pool_pct is not None:
            assessment.append(
                f"DB pool peaked at {pool_pct:.0f} % of its maximum — {findings_module.pool_assessment(self.report)}"
            )
        cpu = stat("service_cpu_pct", "max")
        if cpu is not None:
            assessment.append(
                f"service CPU peaked at {cpu:.0f} % of one core with {cores} core(s) available to "
                f"its processes ({'saturated' if cpu >= CPU_SATURATED_PCT * cores else 'headroom left'})"
            )
        for note in resources.get("notes", []):
            assessment.append(f"note: {note}")
        if assessment:
            lines += ["**Assessment:**", ""] + [f"- {a}" for a in assessment] + [""]
        return lines + ["---", ""]

    # -- 5. failures --------------------------------------------------------------------------------

    def _failures(self) -> list[str]:
        lines = ["## Failure analysis", "", "### Success rate by phase", ""]
        rows = []
        for phase in self.report.get("phases", []):
            everything = phase.get("all", {})
            failed = everything.get("count", 0) - everything.get("ok", 0)
            rows.append(
                [
                    phase["name"] + (" (excluded)" if phase["name"] == "warmup" else ""),
                    fmt_pct(everything.get("success_pct")),
                    f"{failed:,}",
                    f"{everything.get('count', 0):,}",
                    f"> {self.success_target:g} %",
                ]
            )
        everything = self.overall.get("all", {})
        rows.append(
            [
                "**overall**",
                fmt_pct(everything.get("success_pct")),
                f"{everything.get('count', 0) - everything.get('ok', 0):,}",
                f"{everything.get('count', 0):,}",
                f"> {self.success_target:g} %",
            ]
        )
        lines += _table(["Phase", "Success rate", "Failures", "Total", "Target"], rows)
        lines += ["### Failures by endpoint", ""]
        rows = []
        for label in self._labels():
            if label == "event":
                continue
            entry = self._endpoint(label)
            failed = entry.get("count", 0) - entry.get("ok", 0)
            rate = 100.0 * failed / entry["count"] if entry.get("count") else 0.0
            top = ", ".join(f"{name} × {count:,}" for name, count in list(entry.get("failures", {}).items())[:3])
            rows.append([f"`{label}`", f"{failed:,}", f"{entry.get('count', 0):,}", fmt_pct(rate), top or DASH])
        lines += _table(["Endpoint", "Failed", "Total", "Failure rate", "Top classes"], rows)
        lines += ["### Failures over time", ""]
        rows = [
            [
                phase["name"],
                str(minute["minute"] + 1),
                f"{minute['failed']:,}",
                f"{minute['total']:,}",
                fmt_pct(100.0 * minute["failed"] / minute["total"] if minute["total"] else 0.0),
            ]
            for phase in self.report.get("phases", [])
            for minute in phase.get("failures_per_minute", [])
        ]
        lines += _table(["Phase", "Minute", "Failed", "Operations", "Failure rate"], rows)
        causes = self._failure_causes()
        if causes:
            lines += ["### Root causes by failure class", ""] + [f"- {c}" for c in causes] + [""]
        return lines + ["---", ""]

    def _failure_causes(self) -> list[str]:
        totals: dict[str, int] = {}
        for label in self._labels():
            if label == "event":
                continue
            for failure, count in self._endpoint(label).get("failures", {}).items():
                totals[failure] = totals.get(failure, 0) + count
        explanations = {
            "dropped": "the in-flight cap (`--max-inflight`) was reached, so the generator did not send them",
            "timeout": "no response within the request timeout",
            "connect_error": "the connection was refused or reset: the service was down, restarting or overloaded",
        }
        causes = []
        for failure, count in sorted(totals.items(), key=lambda item: -item[1]):
            if failure in explanations:
                why = explanations[failure]
            elif "DEPENDENCY_UNAVAILABLE" in failure:
                why = "PostgreSQL unavailable or DB pool acquire timeouts"
            elif failure.startswith("grpc_RESOURCE_EXHAUSTED"):
                why = "the event buffer was full (backpressure)"
            elif failure.startswith("grpc_DEADLINE_EXCEEDED") or failure.startswith("grpc_CANCELLED"):
                why = "the event was not committed before the call's deadline"
            elif failure.startswith("grpc_UNAVAILABLE"):
                why = "the gRPC server was unreachable or not ready"
            elif failure.startswith("http_5"):
                why = "a server-side error"
            else:
                why = "a request the service refused"
            causes.append(f"`{failure}` × {count:,}: {why}")
        return causes

    # -- 6. summary comparison ----------------------------------------------------------------------

    def _summary_comparison(self) -> list[str]:
        rows = []
        for label in self._summary_labels():
            entry = self._endpoint(label)
            threshold = self._threshold_for(label)
            base = self._base_endpoint(label)
            value = entry.get("latency_ms", {}).get("p95")
            base_value = base["latency_ms"]["p95"] if base else None
            rows.append(
                [
                    f"`{label}` p95",
                    fmt_ms(threshold["value"]) if threshold else fmt_ms(entry.get("target_p95_ms")),
                    fmt_ms(base_value),
                    fmt_ms(value),
                    _status(threshold.get("pass") if threshold else entry.get("pass")),
                    latency_change(base_value, value),
                ]
            )
        success = self.overall.get("success_pct")
        base_success = self.base_overall.get("success_pct") if self.baseline else None
        rows.append(
            [
                "Overall success",
                f"> {self.success_target:g} %",
                fmt_pct(base_success),
                fmt_pct(success),
                _status(success > self.success_target) if success is not None else DASH,
                points_change(base_success, success),
            ]
        )
        pool = findings_module.pool_peak_pct(self.report)
        base_pool = findings_module.pool_peak_pct(self.baseline) if self.baseline else None
        rows.append(
            [
                "DB pool peak use",
                f"< {POOL_PRESSURE_PCT:g} %",
                fmt_pct(base_pool, 0),
                fmt_pct(pool, 0),
                _status(pool < POOL_PRESSURE_PCT) if pool is not None else DASH,
                points_change(base_pool, pool),
            ]
        )
        return (
            ["## Summary comparison", ""]
            + _table(["Metric", "Target", "Baseline", "This run", "Status", "Improvement"], rows)
            + ["---", ""]
        )

    # -- 7. findings --------------------------------------------------------------------------------

    def _findings(self) -> list[str]:
        lines = ["## Findings and recommendations", ""]
        if not self.findings:
            return lines + [
                "No rule fired: no saturated pool, CPU, cache, buffer, burst or generator limit was observed.",
                "",
                "---",
                "",
            ]
        for number, finding in enumerate(self.findings, start=1):
            lines.append(f"{number}. **{finding['advice']}** — observed: {finding['finding']}.")
        return lines + ["", "---", ""]

    # -- charts (SVG files beside the report) -------------------------------------------------------

    def _charts(self) -> list[str]:
        if not self.chart_files:
            return []
        lines = ["## Over time", ""]
        for title, path in self.chart_files:
            lines += [f"![{title}]({path})", ""]
        return lines

    # -- 8. appendix --------------------------------------------------------------------------------

    def _appendix(self) -> list[str]:
        run, target = self.report.get("run", {}), self.report.get("target", {})
        environment, tool = self.report.get("environment", {}), self.report.get("tool", {})
        options = run.get("options", {})
        lines = ["## Appendix", "", "### Run options", ""]
        rows = [[key, f"`{value}`"] for key, value in options.items() if key != "phases"]
        rows += [[f"phase {p['name']}", f"`{p}`"] for p in options.get("phases", [])]
        rows += [
            ["run id", f"`{run.get('id')}`"],
            ["started / finished", f"{run.get('started_at')} / {run.get('finished_at')}"],
        ]
        lines += _table(["Option", "Value"], rows)
        lines += ["### Service", ""]
        rows = [
            ["API", f"`{target.get('api_url')}`"],
            ["gRPC", f"`{target.get('grpc_addr')}`"],
            ["service version", str(target.get("service_version"))],
            ["catalog fingerprint", f"`{target.get('catalog_fingerprint')}`"],
            ["ack mode", str(target.get("ack_mode"))],
        ]
        rows += [[f"setting `{k}`", f"`{v}`"] for k, v in (target.get("settings") or {}).items()]
        lines += _table(["Item", "Value"], rows)
        lines += ["### Versions and environment", ""]
        rows = [
            ["challengectl", f"{tool.get('version')} ({tool.get('git_sha') or 'no git sha'})"],
            ["python", str(environment.get("python"))],
            ["host", str(environment.get("hostname"))],
            ["CPUs", str(environment.get("cpus"))],
            ["generator processes", str(environment.get("generator_procs"))],
        ]
        lines += _table(["Item", "Value"], rows)
        view = self.report.get("service_view") or {}
        if view.get("http") or view.get("grpc"):
            lines += ["### Service-side view (Prometheus `/metrics`, same window)", ""]
            rows = [
                [
                    f"`{key}`",
                    f"{value['count']:,}",
                    fmt_ms(value["p95_ms"]),
                    f"{value['p95_bucket_ms'][0]:g}–{value['p95_bucket_ms'][1] if value['p95_bucket_ms'][1] is not None else '∞'} ms",
                ]
                for kind in ("http", "grpc")
                for key, value in view.get(kind, {}).items()
            ]
            lines += _table(["Route / method", "Requests", "p95 (estimate)", "p95 bucket"], rows)
        top = self.report.get("database", {}).get("top_queries") or []
        if top:
            lines += ["### Top statements (`pg_stat_statements`, by total time)", ""]
            rows = [
                [f"{q['calls']:,}", fmt_ms(q["total_ms"]), fmt_ms(q["mean_ms"]), f"`{q['query'][:120]}`"]
                for q in top[:10]
            ]
            lines += _table(["Calls", "Total", "Mean", "Query"], rows)
        notes = self.report.get("notes", [])
        if notes:
            lines += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
        return lines


def render_markdown(
    report: dict[str, Any],
    baseline: dict[str, Any] | None = None,
    chart_files: list[tuple[str, str]] | None = None,
) -> str:
    """The Markdown report of docs/loadtest.md#markdown-report for `report`, compared with `baseline` when given;
    `chart_files` are (title, relative path) of chart images to embed (`htmlreport.write_chart_files`)."""
    return MarkdownReport(report, baseline, chart_files).render()

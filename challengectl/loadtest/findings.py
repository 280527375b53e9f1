"""Findings and recommendations generated from a report (docs/loadtest.md#markdown-report section 7): pool saturation, a pool
that is not the bottleneck, CPU-bound service, low cache hit ratio, event flush falling behind,
cold-start bursts, generator-limited runs, dependency failures and sequential scans."""

from __future__ import annotations

from typing import Any

POOL_SATURATED_PCT = 80.0
POOL_IDLE_PCT = 30.0
CPU_BOUND_PCT = 90.0
CACHE_LOW_PCT = 90.0
BUFFER_HIGH_PCT = 50.0


def _max(report: dict[str, Any], field: str) -> float | None:
    entry = report.get("resources", {}).get("summary", {}).get(field)
    return entry["max"] if entry else None


def _avg(report: dict[str, Any], field: str) -> float | None:
    entry = report.get("resources", {}).get("summary", {}).get(field)
    return entry["avg"] if entry else None


def _delta(report: dict[str, Any], field: str) -> float:
    entry = report.get("resources", {}).get("summary", {}).get(field)
    return (entry["max"] - entry["min"]) if entry else 0.0


def pool_peak_pct(report: dict[str, Any]) -> float | None:
    """Peak DB pool use as % of its maximum: the service's `peak_in_use` when it reports one, else the
    highest sampled `in_use`."""
    capacity = report.get("resources", {}).get("capacity", {}).get("db_pool_max")
    peak = _max(report, "db_pool_peak_in_use")
    if peak is None:
        peak = _max(report, "db_pool_in_use")
    if not capacity or peak is None:
        return None
    return round(100.0 * peak / capacity, 1)


def service_cores(report: dict[str, Any]) -> int:
    """Cores the service's processes can use: its HTTP worker count, bounded by the host's CPUs."""
    cpus = int(report.get("environment", {}).get("cpus") or 1)
    workers = report.get("target", {}).get("settings", {}).get("workers") or 1
    return max(1, min(cpus, int(workers)))


def _failures_by_class(report: dict[str, Any]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for label, entry in report.get("overall", {}).get("endpoints", {}).items():
        if label == "event":
            continue
        for failure, count in entry.get("failures", {}).items():
            totals[failure] = totals.get(failure, 0) + count
    return totals


def _burst_phases(report: dict[str, Any]) -> list[str]:
    """Phases longer than a minute where most failures happened in their first minute."""
    bursts = []
    for phase in report.get("phases", []):
        minutes = phase.get("failures_per_minute", [])
        failed = sum(m["failed"] for m in minutes)
        first = next((m["failed"] for m in minutes if m["minute"] == 0), 0)
        if len(minutes) > 1 and failed > 0 and first >= 0.5 * failed:
            bursts.append(phase["name"])
    return bursts


def generate(report: dict[str, Any]) -> list[dict[str, str]]:
    """Findings in the documented order (docs/loadtest.md); each has `id`, `finding` (what was seen) and `advice`."""
    findings: list[dict[str, str]] = []
    latency_failed = any(t.get("pass") is False and t.get("stat") != "success" for t in report.get("thresholds", []))
    pool_pct = pool_peak_pct(report)
    timeouts = _delta(report, "db_pool_acquire_timeouts")
    if (pool_pct is not None and pool_pct >= POOL_SATURATED_PCT) or timeouts > 0:
        observed = (
            f"DB pool peak {pool_pct if pool_pct is not None else '?'} % of max, {int(timeouts)} acquire timeouts"
        )
        active = _max(report, "pg_connections_active")
        pool_peak = _max(report, "db_pool_peak_in_use") or _max(report, "db_pool_in_use")
        if active is not None and pool_peak and active < pool_peak / 2:
            # Checked-out connections that PostgreSQL sees idle are held by a busy service, not by slow SQL.
            observed += (
                f"; PostgreSQL active sessions peaked at {active:.0f}, so most checked-out connections "
                "were idle in PostgreSQL while the service was busy"
            )
        findings.append(
            {
                "id": "pool_saturated",
                "finding": observed,
                "advice": "pool saturated: raise db_pool_max (check max_connections headroom with `challengectl pool`)",
            }
        )
    elif pool_pct is not None and pool_pct < POOL_IDLE_PCT and latency_failed:
        findings.append(
            {
                "id": "pool_not_bottleneck",
                "finding": f"DB pool peak {pool_pct} % of max while latency targets fail",
                "advice": "the pool is not the bottleneck: check query time (`db queries`, `explain`) and CPU",
            }
        )
    cpu = _max(report, "service_cpu_pct")
    cores = service_cores(report)
    if cpu is not None and cpu >= CPU_BOUND_PCT * cores:
        findings.append(
            {
                "id": "cpu_bound",
                "finding": f"service CPU peaked at {cpu:.0f} % ({cores} core(s) available to its processes)",
                "advice": "CPU-bound: profile the hot endpoint or scale out (`--workers`, or more instances)",
            }
        )
    cache_ratio = _avg(report, "cache_hit_ratio_pct")
    if cache_ratio is not None and cache_ratio < CACHE_LOW_PCT:
        findings.append(
            {
                "id": "cache_low",
                "finding": f"service cache hit ratio averaged {cache_ratio:.1f} %",
                "advice": "low cache hit ratio: check invalidation churn and `cache_ttl_s`",
            }
        )
    capacity = report.get("resources", {}).get("capacity", {}).get("buffer_capacity")
    buffer_peak = _max(report, "buffer_peak_entries") or _max(report, "buffer_entries")
    exhausted = _delta(report, "buffer_exhausted")
    if (capacity and buffer_peak is not None and buffer_peak >= BUFFER_HIGH_PCT / 100 * capacity) or exhausted > 0:
        findings.append(
            {
                "id": "flush_behind",
                "finding": f"event buffer peak {buffer_peak:.0f} of {capacity} entries, {int(exhausted)} exhausted",
                "advice": "event flush cannot keep up: check flush p95 and database load; raise `flush_workers`",
            }
        )
    bursts = _burst_phases(report)
    if bursts:
        findings.append(
            {
                "id": "cold_start_burst",
                "finding": f"failures clustered in the first minute of phase {', '.join(bursts)}",
                "advice": "cold-start burst: rerun with `--warmup`",
            }
        )
    generator = report.get("generator", {})
    if generator.get("generator_limited"):
        findings.append(
            {
                "id": "generator_limited",
                "finding": "; ".join(generator.get("limited_reasons", [])) or "the generator fell behind",
                "advice": "results are limited by the generator: rerun with more `--procs` or on a separate host",
            }
        )
    failures = _failures_by_class(report)
    unavailable = sum(count for failure, count in failures.items() if "DEPENDENCY_UNAVAILABLE" in failure)
    if unavailable:
        findings.append(
            {
                "id": "dependency_unavailable",
                "finding": f"{unavailable} requests failed with DEPENDENCY_UNAVAILABLE",
                "advice": "database unavailable or pool timeouts during the run",
            }
        )
    tables = report.get("database", {}).get("table_stats", {})
    before = tables.get("before", {}).get("user_goal_progress", {}).get("seq_scan")
    after = tables.get("after", {}).get("user_goal_progress", {}).get("seq_scan")
    if before is not None and after is not None and after > before:
        findings.append(
            {
                "id": "seq_scan",
                "finding": f"{after - before} sequential scans of user_goal_progress during the run",
                "advice": "a hot query is not using an index: run `challengectl explain <name>`",
            }
        )
    return findings

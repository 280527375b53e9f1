"""Findings and recommendations generated from a report (docs/loadtest.md#markdown-report section 7): the
bottleneck causes ordered by evidence (`challengectl.bottleneck`: CPU, a pool held by a busy service,
PostgreSQL waits, a busy PostgreSQL, the generator), then a pool that is not the bottleneck, low cache hit
ratio, event flush falling behind, cold-start bursts, dependency failures and sequential scans."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from challengectl.bottleneck import Evidence, diagnose

POOL_IDLE_PCT = 30.0
CACHE_LOW_PCT = 90.0
BUFFER_HIGH_PCT = 50.0


def _max(report: dict[str, Any], field: str) -> float | None:
    entry = report.get("resources", {}).get("summary", {}).get(field)
    return entry["max"] if entry else None


def _min(report: dict[str, Any], field: str) -> float | None:
    entry = report.get("resources", {}).get("summary", {}).get(field)
    return entry["min"] if entry else None


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


def evidence(report: dict[str, Any]) -> Evidence:
    """The bottleneck evidence of a run: the peaks of its resource samples."""
    generator = report.get("generator", {})
    return Evidence(
        service_cpu_pct=_max(report, "service_cpu_pct"),
        service_cores=service_cores(report),
        machine_cpu_pct=_max(report, "machine_cpu_pct"),
        pool_max=report.get("resources", {}).get("capacity", {}).get("db_pool_max"),
        pool_in_use=_max(report, "db_pool_peak_in_use") or _max(report, "db_pool_in_use"),
        pool_waiting=_max(report, "db_pool_waiting"),
        pool_timeouts=_delta(report, "db_pool_acquire_timeouts"),
        pg_active=_max(report, "pg_connections_active"),
        pg_waiting=_max(report, "pg_connections_waiting"),
        pg_free_connections=_min(report, "pg_connections_free"),
        generator_limited=bool(generator.get("generator_limited")),
        generator_reasons=list(generator.get("limited_reasons", [])),
    )


POOL_VERDICTS = {
    "pool_saturated": "it is the bottleneck (PostgreSQL is busy with its sessions and has headroom)",
    "pool_held_idle": "it is not the limit: PostgreSQL ran few of its sessions while the service was busy",
    "pg_waits": "its sessions waited on locks or I/O in PostgreSQL",
    "pg_busy": "PostgreSQL is busy with its sessions and has little headroom",
}


def pool_assessment(report: dict[str, Any]) -> str:
    """What the pool's peak means, by the same rule as the findings."""
    pool_verdicts = [verdict.id for verdict in diagnose(evidence(report)) if verdict.id in POOL_VERDICTS]
    return POOL_VERDICTS[pool_verdicts[0]] if pool_verdicts else "it is not the bottleneck"


def generate(report: dict[str, Any]) -> list[dict[str, str]]:
    """Findings, each with `id`, `finding` (what was seen) and `advice`: first the bottleneck causes in the
    order of `challengectl.bottleneck` (CPU, pool held idle, PostgreSQL waits, pool, generator), then the
    other observations (docs/loadtest.md#markdown-report)."""
    seen = evidence(report)
    findings = [asdict(verdict) for verdict in diagnose(seen)]
    latency_failed = any(t.get("pass") is False and t.get("stat") != "success" for t in report.get("thresholds", []))
    pool_pct = pool_peak_pct(report)
    if not seen.pool_pressure and pool_pct is not None and pool_pct < POOL_IDLE_PCT and latency_failed:
        findings.append(
            {
                "id": "pool_not_bottleneck",
                "finding": f"DB pool peak {pool_pct} % of max while latency targets fail",
                "advice": "the pool is not the bottleneck: check query time (`db queries`, `explain`) and CPU",
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

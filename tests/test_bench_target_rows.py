"""The verdict logic of the issue 10 row scripts (bench/target_rows.py): capacity stepping, RSS flatness and
the issue's targets evaluated on a load-test report. The scripts themselves are long runs, not tests."""

from __future__ import annotations

from typing import Any

import pytest

from bench.target_rows import (
    NO_FAILURES,
    SEED_M3_ROW,
    all_met,
    capacity_search,
    rss_trend,
    target_results,
)


def run_scales(scales: list[float], passing: set[float], stop_after: int = 1) -> tuple[list, float | None, list]:
    ran: list[float] = []

    def passes(scale: float) -> bool:
        ran.append(scale)
        return scale in passing

    results, capacity = capacity_search(scales, passes, stop_after)
    return results, capacity, ran


def test_capacity_runs_ascending_and_stops_at_the_first_failure() -> None:
    results, capacity, ran = run_scales([2.0, 1.0, 1.4, 2.6], {1.0, 1.4})
    assert ran == [1.0, 1.4, 2.0]
    assert results == [(1.0, True), (1.4, True), (2.0, False)]
    assert capacity == 1.4


def test_capacity_ignores_a_pass_above_a_failed_scale() -> None:
    results, capacity, ran = run_scales([1.0, 1.4, 1.7, 2.0, 2.3], {1.0, 1.7}, stop_after=2)
    assert ran == [1.0, 1.4, 1.7, 2.0, 2.3]
    assert capacity == 1.0


def test_capacity_is_none_when_the_lowest_scale_fails() -> None:
    results, capacity, ran = run_scales([1.0, 1.4], set())
    assert ran == [1.0] and results == [(1.0, False)] and capacity is None


def test_rss_that_stops_growing_before_the_window_is_flat() -> None:
    # +10 MB/min for the first 5 minutes, then a constant 150 MB for 5 minutes (a sample every 5 s).
    samples = [(t, 100.0 + min(t, 300.0) / 6) for t in range(0, 601, 5)]
    trend = rss_trend(samples, window_s=300)
    assert (trend.start_mb, trend.end_mb, trend.max_mb) == (100.0, 150.0, 150.0)
    assert trend.slope_mb_per_min == pytest.approx(0.0, abs=1e-9)
    assert trend.flat()


def test_rss_growing_through_the_window_is_not_flat() -> None:
    samples = [(t, 100.0 + t / 60) for t in range(0, 601, 5)]  # 1 MB/min
    trend = rss_trend(samples, window_s=300)
    assert trend.slope_mb_per_min == pytest.approx(1.0)
    assert trend.growth_mb == pytest.approx(5.0)
    assert not trend.flat()
    assert trend.flat(tolerance_mb=6.0)


def test_rss_growth_within_two_percent_of_a_large_process_is_flat() -> None:
    samples = [(t, 180.0 + t / 100) for t in range(0, 301, 5)]  # +3 MB over 5 min, 2 % of 183 MB is 3.66
    assert rss_trend(samples, window_s=300).flat()


def test_rss_peaks_above_a_flat_floor_are_flat() -> None:
    # A 130 MB floor with bursts of +30 MB for 20 s late in the window (calls in flight, then answered).
    samples = [(t, 160.0 if t % 120 >= 100 and t >= 400 else 130.0) for t in range(0, 601, 5)]
    trend = rss_trend(samples, window_s=300)
    assert trend.growth_mb > 6.0  # the line through every sample climbs with the late bursts
    assert trend.floor_slope_mb_per_min == pytest.approx(0.0)
    assert trend.flat()


def test_rss_floor_rising_under_peaks_is_not_flat() -> None:
    # The floor rises 1 MB/min; every minute has a short burst of +20 MB on top of it.
    samples = [(t, 100.0 + t / 60 + (20.0 if t % 60 < 10 else 0.0)) for t in range(0, 601, 5)]
    trend = rss_trend(samples, window_s=300)
    assert trend.floor_slope_mb_per_min == pytest.approx(1.0, abs=0.05)
    assert not trend.flat()


def test_rss_needs_two_samples() -> None:
    with pytest.raises(ValueError):
        rss_trend([(0.0, 1.0)], window_s=300)


def endpoint(p95: float, count: int = 100, success_pct: float = 100.0) -> dict[str, Any]:
    return {
        "count": count,
        "ok": round(count * success_pct / 100),
        "success_pct": success_pct,
        "failures": {},
        "latency_ms": {"p50": p95 / 2, "p90": p95, "p95": p95, "p99": p95, "avg": p95 / 2, "max": p95},
    }


def report_of(endpoints: dict[str, dict[str, Any]], success_pct: float) -> dict[str, Any]:
    everything = endpoint(max(e["latency_ms"]["p95"] for e in endpoints.values()), success_pct=success_pct)
    return {"overall": {"endpoints": endpoints, "all": everything}, "phases": []}


def test_seed_m3_row_names_the_missed_targets() -> None:
    report = report_of(
        {
            "initialize_new": endpoint(8.9),
            "initialize_returning": endpoint(9.4),  # target 5 ms
            "challenges": endpoint(7.2),
            "challenges_active": endpoint(9.4),
            "set_active": endpoint(11.2),  # target 10 ms
            "claim": endpoint(18.2),
            "event": endpoint(80.7),
        },
        success_pct=100.0,
    )
    results = target_results(report, SEED_M3_ROW)
    assert [r["expr"] for r in results if r["pass"] is False] == [
        "initialize_returning:p95<=5ms",
        "set_active:p95<=10ms",
    ]
    assert not all_met(results)


def test_zero_failed_means_every_operation_succeeded_and_no_data_is_not_met() -> None:
    report = report_of({"initialize_new": endpoint(30.0)}, success_pct=99.99)
    results = target_results(report, ("initialize_new:p95<=50ms", "claim:p95<=20ms", NO_FAILURES))
    assert [r["pass"] for r in results] == [True, None, False]
    assert not all_met(results[:2])
    assert all_met(results[:1])

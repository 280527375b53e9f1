"""The report's per-second series and its SVG charts as pure functions (docs/loadtest.md#reports):
nearest-rank percentiles per second, the schedule's rates of ramps, one path per series with gaps
where data is missing, labelled axes, log ticks by decade, escaped names, and the charts of a
schema 1.0 report (no series: resources only)."""

from __future__ import annotations

import re
from collections import Counter

from challengectl.loadtest.charts import report_charts
from challengectl.loadtest.generator import GeneratorResult
from challengectl.loadtest.schedule import PhasePlan
from challengectl.loadtest.stats import new_histogram
from challengectl.loadtest.svgchart import Band, Chart, Series, Target, render_svg
from challengectl.loadtest.timeseries import build_timeseries, percentile_ms, scheduled_rates

PLANS = [
    PhasePlan("init", "init", 2.0, 10.0, 0.0, offset_s=0.0),
    PhasePlan("gameplay", "gameplay", 2.0, 20.0, 40.0, offset_s=2.0, ramp_from=0.5),
]


def _result(seconds: dict[tuple[int, str], list]) -> GeneratorResult:
    return GeneratorResult({}, new_histogram(), 0, 0, {}, 0.0, False, 1, seconds, started_unix=1000.0)


def test_percentiles_are_nearest_rank() -> None:
    values = sorted(range(1000, 101_000, 1000))  # 1..100 ms
    assert percentile_ms(values, 50) == 50.0 and percentile_ms(values, 95) == 95.0 and percentile_ms(values, 99) == 99.0
    assert percentile_ms([], 95) is None and percentile_ms([7000], 50) == 7.0


def test_schedule_follows_phases_and_ramps() -> None:
    rates = scheduled_rates(PLANS, 4)
    assert rates["api"][:2] == [10.0, 10.0] and rates["events"][:2] == [0.0, 0.0]
    # gameplay ramps 10 → 20 API/s and 20 → 40 events/s over 2 s; rates at 0.25 and 0.75 of it
    assert rates["api"][2:] == [12.5, 17.5] and rates["events"][2:] == [25.0, 35.0]


def test_series_count_every_second_and_aggregate_the_events() -> None:
    seconds = {
        (0, "initialize_new"): [9, 1, 0, [2000] * 9 + [30_000]],
        (1, "initialize_new"): [10, 0, 2, [3000] * 10],
        (3, "event_login"): [4, 0, 0, [1000, 2000, 3000, 4000]],
        (3, "event_stat"): [1, 1, 0, [8000, 9000]],
    }
    series = build_timeseries(_result(seconds), PLANS, resources_started_unix=998.5)
    assert series["t_s"] == [0, 1, 2, 3] and series["resources_offset_s"] == -1.5
    init = series["endpoints"]["initialize_new"]
    assert init["sent"] == [10, 10, 0, 0] and init["errors"] == [1, 0, 0, 0] and init["dropped"] == [0, 2, 0, 0]
    assert init["p50_ms"] == [2.0, 3.0, None, None] and init["p99_ms"][0] == 30.0
    event = series["endpoints"]["event"]
    assert event["sent"][3] == 6 and event["ok"][3] == 5 and event["p99_ms"][3] == 9.0


def _paths(svg: str) -> dict[str, str]:
    return dict(re.findall(r'<path class="series" data-series="([^"]*)" d="([^"]*)"', svg))


def test_svg_has_one_path_per_series_with_gaps_axes_and_escaped_names() -> None:
    chart = Chart(
        "Latency <p95> & more",
        "seconds",
        "ms",
        series=[
            Series("a&b", [0, 1, 2, 3], [1.0, None, 3.0, 4.0], "#000"),
            Series("other", [0, 1, 2, 3], [5.0, 6.0, 7.0, 8.0], "#111", dash=True),
        ],
        bands=[Band("init", 0, 2), Band("gameplay", 2, 4)],
        targets=[Target("a&b", 2.5, "#000")],
    )
    svg = render_svg(chart)
    paths = _paths(svg)
    assert set(paths) == {"a&amp;b", "other"}
    assert Counter(paths["a&amp;b"].split()[i][0] for i in range(3)) == Counter({"M": 2, "L": 1})  # a gap
    assert "Latency &lt;p95&gt; &amp; more" in svg and 'class="target"' in svg
    assert re.search(r'class="axis-label x-label"[^>]*>seconds<', svg)
    assert re.search(r'class="axis-label y-label"[^>]*>ms<', svg)
    assert svg.count('class="phase"') == 2 and ">gameplay<" in svg
    ticks = re.findall(r'class="tick"[^>]*>([^<]*)<', svg)
    assert "0" in ticks and "8" in ticks


def test_log_axis_ticks_by_decade() -> None:
    chart = Chart("t", "x", "y", series=[Series("s", [0, 1], [0.5, 2500.0], "#000")], log_y=True)
    ticks = re.findall(r'class="tick" x="\d+" y="[\d.]+" text-anchor="end">([^<]*)<', render_svg(chart))
    assert ticks == ["0.1", "1", "10", "100", "1,000", "10,000"]


def test_a_report_without_series_charts_its_resources_only() -> None:
    report = {
        "schema_version": "1.0",
        "phases": [{"name": "gameplay", "start_s": 0, "duration_s": 10}],
        "resources": {"series": [{"t_s": 0, "service_cpu_pct": 10.0}, {"t_s": 5, "service_cpu_pct": 30.0}]},
    }
    charts = report_charts(report)
    assert [chart.chart_id for chart in charts] == ["resource-cpu"]

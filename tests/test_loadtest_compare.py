"""Thresholds, `loadtest compare` arithmetic and `loadtest report` on fixed report documents
(docs/loadtest.md#json-report, docs/loadtest.md#markdown-report; P4): gate expressions and defaults, improved/unchanged/regressed against the
tolerances, exit 99 on a regression, exit 2 for another schema major version, Markdown re-rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from challengectl.loadtest.compare import compare_reports, parse_tolerance
from challengectl.loadtest.markdown import latency_change, points_change, render_markdown
from challengectl.loadtest.thresholds import (
    ThresholdError,
    default_thresholds,
    effective_thresholds,
    evaluate,
    parse_threshold,
)
from tests.support.cli import run_cli


def endpoint(p95: float, avg: float, success: float, count: int = 1000, target: float | None = 50.0) -> dict[str, Any]:
    ok = round(count * success / 100)
    return {
        "count": count,
        "ok": ok,
        "success_pct": success,
        "failures": {"http_503:DEPENDENCY_UNAVAILABLE": count - ok} if count > ok else {},
        "latency_ms": {
            "p50": avg / 2,
            "p90": p95 * 0.8,
            "p95": p95,
            "p99": p95 * 1.5,
            "avg": avg,
            "min": 0.5,
            "max": p95 * 3,
        },
        "service_time_ms": {"p95": p95},
        "target_p95_ms": target,
        "pass": p95 < target if target else None,
    }


def report(label: str, endpoints: dict[str, dict[str, Any]], success: float) -> dict[str, Any]:
    count = sum(e["count"] for e in endpoints.values())
    everything = {
        "count": count,
        "ok": round(count * success / 100),
        "success_pct": success,
        "failures": {},
        "latency_ms": {"p50": 1, "p90": 2, "p95": 3, "p99": 4, "avg": 1, "min": 0.1, "max": 9},
    }
    return {
        "schema_version": "1.0",
        "run": {
            "id": f"id-{label}",
            "label": label,
            "profile": "seed-m3",
            "started_at": "2025-11-11T00:00:00Z",
            "notes": "pool 25 → 100",
        },
        "phases": [
            {
                "name": "init",
                "kind": "init",
                "duration_s": 60,
                "target_rate": 600,
                "endpoints": endpoints,
                "all": everything,
                "failures_per_minute": [{"minute": 0, "failed": 3, "total": count}],
            }
        ],
        "overall": {"count": count, "success_pct": success, "endpoints": endpoints, "all": everything},
        "generator": {"lag_ms": {"p50": 0.5, "p99": 2.0, "max": 4.0}, "dropped": 0, "generator_limited": False},
        "resources": {
            "interval_s": 5,
            "series": [],
            "capacity": {"db_pool_max": 100},
            "summary": {
                "db_pool_in_use": {"min": 1, "avg": 10, "max": 27},
                "service_cpu_pct": {"min": 5, "avg": 40, "max": 60},
            },
        },
        "target": {"settings": {"workers": 1}},
        "environment": {"cpus": 2},
        "thresholds": evaluate({"overall": {"endpoints": endpoints, "all": everything}}, default_thresholds()),
        "verdict": "fail",
    }


BASE = report(
    "phase-9",
    {
        "initialize_new": endpoint(9300.0, 6110.0, 91.6),
        "challenges": endpoint(61.73, 26.41, 99.9, target=200.0),
        "set_active": endpoint(100.0, 49.25, 99.9, target=100.0),
    },
    98.05,
)
CAND = report(
    "phase-10",
    {
        "initialize_new": endpoint(5000.0, 1160.0, 95.6),
        "challenges": endpoint(55.37, 26.0, 99.88, target=200.0),
        "set_active": endpoint(120.0, 27.46, 99.9, target=100.0),
    },
    95.6,
)


def rows_by(comparison: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["endpoint"], row["metric"]): row for row in comparison["rows"]}


def test_compare_arithmetic_on_fixed_inputs() -> None:
    comparison = compare_reports(BASE, CAND, ("p95", "avg", "success"), tolerance_pct=10, success_tolerance_pp=0.05)
    rows = rows_by(comparison)
    init_p95 = rows[("initialize_new", "p95")]
    assert (init_p95["base"], init_p95["candidate"]) == (9300.0, 5000.0)
    assert init_p95["change"] == pytest.approx(-46.24, abs=0.01) and init_p95["status"] == "improved"
    assert (init_p95["base_target_pass"], init_p95["candidate_target_pass"]) == (False, False)
    # 55.37 vs 61.73: −10.30 % is beyond the 10 % tolerance → improved; avg −1.55 % → unchanged.
    assert rows[("challenges", "p95")]["change"] == pytest.approx(-10.30, abs=0.01)
    assert rows[("challenges", "p95")]["status"] == "improved"
    assert rows[("challenges", "avg")]["status"] == "unchanged"
    # 100 → 120 ms is +20 %: a regression, and the target flips from FAIL (not < 100) to FAIL.
    assert (
        rows[("set_active", "p95")]["change"] == pytest.approx(20.0)
        and rows[("set_active", "p95")]["status"] == "regressed"
    )
    # Success drops of 0.02 pp are within 0.05 pp; +4.0 pp is an improvement; the overall −2.45 pp regresses.
    assert rows[("challenges", "success")]["change"] == pytest.approx(-0.02)
    assert rows[("challenges", "success")]["status"] == "unchanged"
    assert rows[("initialize_new", "success")]["status"] == "improved"
    assert rows[("*", "success")]["change"] == pytest.approx(-2.45) and rows[("*", "success")]["status"] == "regressed"
    assert comparison["regressions"] == 2 and comparison["verdict"] == "regressed"
    assert parse_tolerance("5%") == 5.0 and parse_tolerance("7.5") == 7.5


def test_latency_and_points_improvement_wording() -> None:
    assert latency_change(9300.0, 5000.0) == "46 % faster"
    assert latency_change(100.0, 120.0) == "20 % slower"
    assert latency_change(None, 3.0) == "—"
    assert points_change(91.6, 95.6) == "+4.00 pp"


def test_threshold_expressions_defaults_and_evaluation() -> None:
    gate = parse_threshold("gameplay/challenges:p99<400ms")
    assert (gate.phase, gate.label, gate.stat, gate.op, gate.value) == ("gameplay", "challenges", "p99", "<", 400.0)
    assert parse_threshold("initialize_new:p95<0.05s").value == pytest.approx(50.0)
    assert parse_threshold("*:success>=99.9%").stat == "success"
    for bad in ("initialize_new:p95", "x:p42<1ms", "*:success>99ms", "init/challenges:p95<5%"):
        with pytest.raises(ThresholdError):
            parse_threshold(bad)
    defaults = {t.expr for t in default_thresholds()}
    assert {
        "initialize_new:p95<50ms",
        "initialize_returning:p95<10ms",
        "event:p95<500ms",
        "*:success>99.95%",
    } <= defaults
    effective = effective_thresholds([parse_threshold("initialize_new:p95<9000ms")])
    assert [t.expr for t in effective if t.label == "initialize_new"] == ["initialize_new:p95<9000ms"]
    assert effective_thresholds([], use_defaults=False) == []
    results = {
        r["expr"]: r
        for r in evaluate(
            CAND, effective + [parse_threshold("init/set_active:p95<=120ms"), parse_threshold("claim:p95<200ms")]
        )
    }
    assert results["initialize_new:p95<9000ms"]["pass"] is True
    assert results["init/set_active:p95<=120ms"] == {
        **results["init/set_active:p95<=120ms"],
        "observed": 120.0,
        "pass": True,
    }
    assert results["*:success>99.95%"]["pass"] is False
    assert results["claim:p95<200ms"]["pass"] is None  # no claims in the run: no data, not a failure


def test_markdown_has_every_section_in_order_with_the_baseline() -> None:
    text = render_markdown(CAND, BASE)
    assert text.startswith("# seed-m3 load test — phase-10 vs phase-9\n")
    headings = [
        "## Executive summary",
        "## Detailed performance",
        "## Resource utilisation",
        "## Failure analysis",
        "## Summary comparison",
        "## Findings and recommendations",
        "## Appendix",
    ]
    positions = [text.index(heading) for heading in headings]
    assert positions == sorted(positions)
    assert "**VERDICT: ✗ FAIL" in text
    assert "| p95 latency | 9.30 s | 5.00 s | ✗ FAIL | 46 % faster |" in text
    assert "| Metric | Target | Baseline | This run | Status | Improvement |" in text
    assert "| Endpoint | Failed | Total | Failure rate | Top classes |" in text
    assert "DEPENDENCY_UNAVAILABLE" in text and "database unavailable or pool timeouts" in text
    assert "the pool is not the bottleneck" in text  # pool peak 27 % of 100 while targets fail


def write(tmp_path: Path, name: str, document: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def test_compare_command_exits_99_on_regression_and_0_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, cand = write(tmp_path, "base.json", BASE), write(tmp_path, "cand.json", CAND)
    code, out, err = run_cli(["-o", "json", "loadtest", "compare", base, cand], capsys)
    assert code == 99, err
    data = json.loads(out)
    # set_active p95 and p99 (+20 %) and the overall success (−2.45 pp)
    assert data["regressions"] == 3 and data["base"]["path"] == base
    code, out, _ = run_cli(["-o", "json", "loadtest", "compare", base, base], capsys)
    assert code == 0 and json.loads(out)["regressions"] == 0
    code, _, err = run_cli(
        ["-o", "json", "loadtest", "compare", base, cand, "--metric", "p95", "--tolerance", "25%"], capsys
    )
    assert code == 0, err
    code, out, _ = run_cli(["-o", "table", "loadtest", "compare", base, cand], capsys)
    assert code == 99 and "✗ regressed" in out and "FAIL → FAIL" in out


def test_other_schema_major_version_is_refused_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write(tmp_path, "base.json", BASE)
    future = write(tmp_path, "future.json", {**CAND, "schema_version": "2.0"})
    code, _, err = run_cli(["loadtest", "compare", base, future], capsys)
    # (asyncio may log a garbage-collected task of an earlier test to stderr first; look for the Error line)
    error_lines = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert code == 2 and len(error_lines) == 1 and "schema_version 2.0" in error_lines[0]
    minor = write(tmp_path, "minor.json", {**CAND, "schema_version": "1.3"})
    assert run_cli(["-o", "json", "loadtest", "compare", base, minor], capsys)[0] == 99


def test_report_command_rerenders_markdown_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, cand = write(tmp_path, "base.json", BASE), write(tmp_path, "cand.json", CAND)
    code, out, err = run_cli(["loadtest", "report", cand, "--baseline", base], capsys)
    assert code == 0, err
    assert out.startswith("# seed-m3 load test — phase-10 vs phase-9")
    again = tmp_path / "again.json"
    assert run_cli(["loadtest", "report", cand, "--format", "json", "--out", str(again)], capsys)[0] == 0
    assert json.loads(again.read_text())["run"]["label"] == "phase-10"
    assert run_cli(["loadtest", "report", str(tmp_path / "missing.json")], capsys)[0] == 2


def test_findings_rules_fire_on_their_evidence() -> None:
    from challengectl.loadtest.findings import generate

    saturated = json.loads(json.dumps(CAND))
    saturated["resources"]["summary"].update(
        {
            "db_pool_in_use": {"min": 0, "avg": 12, "max": 20},
            "db_pool_acquire_timeouts": {"min": 4, "avg": 5, "max": 7},
            "pg_connections_active": {"min": 1, "avg": 1.5, "max": 3},
            "service_cpu_pct": {"min": 50, "avg": 80, "max": 97},
            "cache_hit_ratio_pct": {"min": 10, "avg": 40, "max": 60},
        }
    )
    saturated["resources"]["capacity"]["db_pool_max"] = 20
    saturated["generator"].update({"generator_limited": True, "limited_reasons": ["12 operations dropped"]})
    saturated["database"] = {
        "table_stats": {
            "before": {"user_goal_progress": {"seq_scan": 3}},
            "after": {"user_goal_progress": {"seq_scan": 40}},
        }
    }
    found = {f["id"]: f for f in generate(saturated)}
    assert list(found) == [
        "cpu_bound",
        "pool_held_idle",
        "generator_limited",
        "cache_low",
        "dependency_unavailable",
        "seq_scan",
    ]
    assert "3 active session(s) of 20 checked out" in found["pool_held_idle"]["finding"]
    assert found["pool_held_idle"]["advice"].startswith("do not raise db_pool_max")
    assert "37 sequential scans" in found["seq_scan"]["finding"]
    assert found["generator_limited"]["advice"].startswith("results are limited by the generator")

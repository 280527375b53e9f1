"""A short scaled `seed-m3` run against a real `challengectl serve` with PostgreSQL and Redis
(docs/loadtest.md; P3): the JSON report conforms to schema 1.1, the Markdown report has every section of docs/loadtest.md#markdown-report,
the report's counts equal the service's own Prometheus counters for the same window and its p95 falls
within one histogram bucket of the service's; a second run compared with the first through
`loadtest compare` and `--baseline`. The per-second series add up to the report's totals, and the HTML
reports (one run, and `compare --html` overlaying two) are drawn by headless Chromium with one line per
endpoint, labelled axes and the phases shaded (docs/loadtest.md#reports)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from challengectl.loadtest.profiles import get_profile, write_catalog
from challengectl.loadtest.stats import decode, new_histogram
from service.telemetry.metrics import LATENCY_BUCKETS
from tests.conftest import new_database
from tests.support.browser import CHROMIUM, SKIP_REASON, drawn_points, measure_charts
from tests.support.scratch import scratch_dir
from tests.support.serve import ServeProcess, base_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_PATH = "/challenge"
MIN_REQUESTS_FOR_P95 = 100
# Generator labels behind each HTTP route of the service (the claim POST has its own route).
ROUTE_LABELS = {
    ("POST", "/v1/challenges/initialize"): ("initialize_new", "initialize_returning"),
    ("GET", "/v1/challenges"): ("challenges", "challenges_active", "claim_lookup"),
    ("PUT", "/v1/challenges/{challenge_id}/goals/{goal_id}/active"): ("set_active",),
    ("POST", "/v1/challenges/{challenge_id}/goals/{goal_id}/claim"): ("claim",),
}
GRPC_LABELS = {
    "accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService/OnMessage": "event_login",
    "accelbyte.social.statistic.v1.StatisticStatItemUpdatedService/OnMessage": "event_stat",
}
ENDPOINT_SCHEMA = {
    "type": "object",
    "required": ["count", "ok", "success_pct", "failures", "latency_ms", "service_time_ms", "target_p95_ms", "pass"],
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "ok": {"type": "integer", "minimum": 0},
        "success_pct": {"type": "number", "minimum": 0, "maximum": 100},
        "failures": {"type": "object", "additionalProperties": {"type": "integer"}},
        "latency_ms": {
            "type": "object",
            "required": ["p50", "p90", "p95", "p99", "avg", "min", "max"],
            "additionalProperties": {"type": "number", "minimum": 0},
        },
        "service_time_ms": {"type": "object", "required": ["p95"]},
        "target_p95_ms": {"type": ["number", "null"]},
        "pass": {"type": ["boolean", "null"]},
    },
}
REPORT_SCHEMA_1_1 = {
    "type": "object",
    "required": [
        "schema_version",
        "tool",
        "run",
        "target",
        "environment",
        "phases",
        "overall",
        "generator",
        "resources",
        "database",
        "thresholds",
        "verdict",
        "timeseries",
    ],
    "properties": {
        "schema_version": {"const": "1.1"},
        "tool": {"type": "object", "required": ["name", "version", "git_sha"]},
        "run": {
            "type": "object",
            "required": ["id", "label", "notes", "profile", "started_at", "finished_at", "interrupted", "options"],
            "properties": {
                "interrupted": {"type": "boolean"},
                "options": {"type": "object", "required": ["scale", "users", "event_rpc", "seed", "phases"]},
            },
        },
        "target": {
            "type": "object",
            "required": ["api_url", "grpc_addr", "service_version", "catalog_fingerprint", "ack_mode", "settings"],
        },
        "environment": {"type": "object", "required": ["hostname", "cpus", "python", "generator_procs"]},
        "phases": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "duration_s", "target_rate", "achieved_rate", "endpoints"],
                "properties": {"endpoints": {"type": "object", "additionalProperties": ENDPOINT_SCHEMA}},
            },
        },
        "overall": {
            "type": "object",
            "required": ["count", "success_pct", "endpoints"],
            "properties": {"endpoints": {"type": "object", "additionalProperties": ENDPOINT_SCHEMA}},
        },
        "generator": {
            "type": "object",
            "required": ["lag_ms", "dropped", "cpu_pct_max", "generator_limited"],
            "properties": {"lag_ms": {"type": "object", "required": ["p50", "p99", "max"]}},
        },
        "resources": {
            "type": "object",
            "required": ["interval_s", "series", "summary"],
            "properties": {
                "series": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["t_s"]}}
            },
        },
        "database": {"type": "object", "required": ["top_queries", "table_stats"]},
        "thresholds": {"type": "array", "items": {"type": "object", "required": ["expr", "observed", "pass"]}},
        "verdict": {"enum": ["pass", "fail", "invalid"]},
        "timeseries": {
            "type": "object",
            "required": ["interval_s", "t_s", "schedule", "endpoints", "resources_offset_s"],
            "properties": {
                "schedule": {"type": "object", "required": ["api", "events"]},
                "endpoints": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["sent", "ok", "errors", "dropped", "p50_ms", "p95_ms", "p99_ms"],
                    },
                },
            },
        },
        "baseline": {"type": "object", "required": ["path", "run_id", "label"]},
    },
}
MARKDOWN_SECTIONS = (
    "## Executive summary",
    "## Detailed performance",
    "## Resource utilisation",
    "## Failure analysis",
    "## Summary comparison",
    "## Findings and recommendations",
    "## Appendix",
)


@pytest.fixture(scope="module")
def seed_service(pg_admin_url: str, redis_url: str) -> Iterator[dict[str, Any]]:
    """A real service with the seed-m3 catalog on its own database and Redis key prefix."""
    workdir = scratch_dir("loadtest-")
    catalog = workdir / "seed-m3.json"
    write_catalog(get_profile("seed-m3"), catalog)
    secret = workdir / "jwt.secret"
    secret.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    secret.chmod(0o600)
    prefix = f"lt{uuid.uuid4().hex[:8]}"
    with new_database(pg_admin_url, "challengectl_loadtest") as database_url:
        env = base_env(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            CHALLENGE_CATALOG_PATH=str(catalog),
            CHALLENGE_JWT_SECRET_FILE=str(secret),
            CHALLENGE_REDIS_KEY_PREFIX=prefix,
        )
        serve = ServeProcess(env).start()
        try:
            serve.wait_ready()
            cli = {
                **env,
                "PYTHONPATH": str(REPO_ROOT),
                "CHALLENGE_API_URL": serve.api(BASE_PATH),
                "CHALLENGE_GRPC_ADDR": f"127.0.0.1:{serve.grpc_port}",
                "CHALLENGE_ADMIN_URL": serve.admin(""),
            }
            yield {"serve": serve, "env": cli, "workdir": workdir}
        finally:
            serve.stop()


def scrape(serve: ServeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(serve.admin("/metrics"), timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    """Sum over the samples of `name` whose labels include `labels`, after minus before."""

    def total(samples: dict) -> float:
        return sum(
            value
            for (sample, sample_labels), value in samples.items()
            if sample == name and labels.items() <= dict(sample_labels).items()
        )

    return total(after) - total(before)


def bucket_index(seconds: float) -> int:
    """Index of the service histogram bucket (docs/http-api.md#admin-and-metrics bounds) holding a duration."""
    return next((i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS))


def prometheus_p95_bucket(before: dict, after: dict, name: str, **labels: str) -> int:
    counts = [delta(before, after, f"{name}_bucket", le=_le(bound), **labels) for bound in LATENCY_BUCKETS]
    total = delta(before, after, f"{name}_count", **labels)
    rank = math.ceil(0.95 * total)
    return next((i for i, cumulative in enumerate(counts) if cumulative >= rank), len(LATENCY_BUCKETS))


def _le(bound: float) -> str:
    return repr(float(bound))


def merged_p95_seconds(report: dict[str, Any], labels: tuple[str, ...]) -> float | None:
    histogram = new_histogram()
    for label in labels:
        for phase in report["phases"]:
            entry = phase["endpoints"].get(label)
            if entry:
                histogram.add(decode(entry["latency_hdr"]))
    if histogram.get_total_count() == 0:
        return None
    return histogram.get_value_at_percentile(95) / 1_000_000


def run_loadtest(service: dict[str, Any], args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "challengectl", "loadtest", *args],
        env=service["env"],
        cwd=service["workdir"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_short_seed_run_reports_agree_with_the_service_metrics(seed_service: dict[str, Any]) -> None:
    serve: ServeProcess = seed_service["serve"]
    before = scrape(serve)
    done = run_loadtest(
        seed_service,
        [
            "run",
            "--profile",
            "seed-m3",
            "--reset",
            "--yes",
            "--phase",
            "init=3s@40",
            "--duration",
            "4s",
            "--scale",
            "1",
            "--phase",
            "gameplay=4s@60/100",
            "--procs",
            "2",
            "--sample-interval",
            "1s",
            "--label",
            "first",
            "--notes",
            "short scaled run",
            "--out",
            "first.json",
            "-o",
            "json",
        ],
    )
    after = scrape(serve)
    assert done.returncode in (0, 99), done.stderr
    report = json.loads((seed_service["workdir"] / "first.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA_1_1)
    assert [p["name"] for p in report["phases"]] == ["init", "gameplay"]
    assert report["phases"][0]["endpoints"]["initialize_new"]["count"] == 120  # 40/s × 3 s, fresh after --reset
    assert report["generator"]["procs"] == 2 and report["run"]["interrupted"] is False
    assert report["target"]["catalog_fingerprint"] == get_profile("seed-m3").catalog().fingerprint
    assert report["resources"]["series"] and "service_cpu_pct" in report["resources"]["summary"]
    assert "pg_connections_total" in report["resources"]["summary"]
    assert any(row.get("flush_ms_p95_interval") for row in report["resources"]["series"])  # events were flushed
    expected_exit = 0 if report["verdict"] == "pass" else 99
    assert done.returncode == expected_exit
    # Counts agree exactly with the service's own counters; p95 within one histogram bucket.
    assert report["generator"]["dropped"] == 0
    compared_p95 = 0
    for (method, route), labels in ROUTE_LABELS.items():
        template = BASE_PATH + route
        served = delta(before, after, "challenge_http_requests_total", method=method, route=template)
        sent = sum(report["overall"]["endpoints"].get(label, {}).get("count", 0) for label in labels)
        assert served == sent, (method, route)
        # p95 is compared where it is a statistic rather than the second-largest sample. The generator's
        # latency also holds the time a request waits before the service's handler starts its timer, so it
        # may sit one bucket above the service's own.
        p95 = merged_p95_seconds(report, labels)
        if p95 is not None and served >= MIN_REQUESTS_FOR_P95:
            service_bucket = prometheus_p95_bucket(
                before, after, "challenge_http_request_duration_seconds", method=method, route=template
            )
            assert abs(bucket_index(p95) - service_bucket) <= 1, (method, route, p95)
            compared_p95 += 1
    assert compared_p95 >= 2  # initialize and the challenge listing carry enough requests
    for method, label in GRPC_LABELS.items():
        served = delta(before, after, "challenge_grpc_requests_total", method=method)
        assert served == report["overall"]["endpoints"][label]["count"], method
    markdown = (seed_service["workdir"] / "first.md").read_text()
    assert markdown.startswith("# seed-m3 load test — first\n")
    positions = [markdown.index(section) for section in MARKDOWN_SECTIONS]
    assert positions == sorted(positions)
    assert "**Change under test:** short scaled run" in markdown
    assert "| Resource | Peak | Average | Capacity | Utilisation |" in markdown
    # The per-second series add up to the totals: every operation sits in the second it was scheduled in.
    series = report["timeseries"]
    assert len(series["t_s"]) == 7 and series["schedule"]["api"][0] == 40 and series["schedule"]["api"][5] == 60
    for label, entry in report["overall"]["endpoints"].items():
        if label in series["endpoints"]:
            per_second = series["endpoints"][label]
            assert sum(per_second["sent"]) + sum(per_second["dropped"]) == entry["count"], label
            assert sum(per_second["ok"]) == entry["ok"], label
    init_new = series["endpoints"]["initialize_new"]
    assert sum(init_new["sent"][:3]) == 120 and all(p is not None for p in init_new["p95_ms"][:3])
    # The Markdown report embeds the same charts, as SVG files beside it.
    assert "![Latency p95 per endpoint" in markdown and "](first-charts/latency-p95.svg)" in markdown
    assert (seed_service["workdir"] / "first-charts" / "latency-p95.svg").read_text().startswith("<svg")
    assert (seed_service["workdir"] / "first.html").exists()


def test_second_run_compares_against_the_first(seed_service: dict[str, Any]) -> None:
    workdir = seed_service["workdir"]
    if not (workdir / "first.json").exists():
        pytest.skip("needs the first run")
    done = run_loadtest(
        seed_service,
        [
            "run",
            "--profile",
            "seed-m3",
            "--phase",
            "init=2s@40",
            "--duration",
            "3s",
            "--scale",
            "1",
            "--phase",
            "gameplay=3s@60/100",
            "--procs",
            "1",
            "--sample-interval",
            "1s",
            "--label",
            "second",
            "--baseline",
            "first.json",
            "--out",
            "second.json",
        ],
    )
    assert done.returncode in (0, 99), done.stderr
    assert "already has rows" in done.stderr  # no --reset: the init phase measures returning players
    second = json.loads((workdir / "second.json").read_text())
    jsonschema.validate(second, REPORT_SCHEMA_1_1)
    assert second["baseline"]["label"] == "first"
    assert second["phases"][0]["endpoints"]["initialize_returning"]["count"] == 80
    assert (workdir / "second.md").read_text().startswith("# seed-m3 load test — second vs first\n")
    compared = run_loadtest(
        seed_service, ["compare", "first.json", "second.json", "--metric", "p95,success", "-o", "json"]
    )
    comparison = json.loads(compared.stdout)
    assert compared.returncode == (99 if comparison["regressions"] else 0), compared.stderr
    first = json.loads((workdir / "first.json").read_text())
    for row in comparison["rows"]:
        if row["endpoint"] == "*" or row["status"] == "missing":
            continue
        base = first["overall"]["endpoints"][row["endpoint"]]
        cand = second["overall"]["endpoints"][row["endpoint"]]
        if row["metric"] == "p95":
            assert row["base"] == base["latency_ms"]["p95"] and row["candidate"] == cand["latency_ms"]["p95"]
            assert row["change"] == pytest.approx((row["candidate"] - row["base"]) / row["base"] * 100, abs=0.01)
        else:
            assert row["change"] == pytest.approx(cand["success_pct"] - base["success_pct"], abs=1e-4)


def _check_latency_chart(chart: dict[str, Any], reports: list[tuple[str, dict[str, Any]]]) -> None:
    """One drawn line per endpoint (and run), as long as the data has neighbouring points."""
    expected = {
        prefix + label: entry["p95_ms"]
        for prefix, report in reports
        for label, entry in report["timeseries"]["endpoints"].items()
    }
    assert {series["name"] for series in chart["series"]} == set(expected)
    for series in chart["series"]:
        if drawn_points(expected[series["name"]]) > 0:
            assert series["length"] > 0 and series["width"] > 0, series


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_html_reports_are_drawn_in_a_browser(seed_service: dict[str, Any]) -> None:
    workdir = seed_service["workdir"]
    if not (workdir / "second.json").exists():
        pytest.skip("needs both runs")
    first = json.loads((workdir / "first.json").read_text())
    charts = {chart["id"]: chart for chart in measure_charts(workdir / "first.html")}
    assert {"latency-p50", "latency-p95", "latency-p99", "throughput", "errors"} <= set(charts)
    assert {"resource-cpu", "resource-pool"} <= set(charts)
    for chart in charts.values():
        assert chart["width"] > 500 and chart["height"] > 200, chart["id"]
        assert [axis["text"] for axis in chart["axes"]][0] == "seconds since the start of the run"
        assert all(axis["text"] and axis["width"] > 0 for axis in chart["axes"]) and len(chart["axes"]) == 2
        assert chart["ticks"] >= 4 and chart["phases"] == ["init", "gameplay"], chart["id"]
        assert any(series["length"] > 0 for series in chart["series"]), chart["id"]
    _check_latency_chart(charts["latency-p95"], [("", first)])
    assert charts["latency-p95"]["targets"] >= 1
    throughput = {series["name"] for series in charts["throughput"]["series"]}
    assert {"API scheduled", "API sent", "events scheduled", "events sent"} <= throughput

    done = run_loadtest(seed_service, ["compare", "first.json", "second.json", "--html", "compare.html", "-o", "json"])
    assert done.returncode in (0, 99), done.stderr
    second = json.loads((workdir / "second.json").read_text())
    overlay = {chart["id"]: chart for chart in measure_charts(workdir / "compare.html")}
    _check_latency_chart(overlay["latency-p95"], [("second: ", second), ("first: ", first)])
    names = {series["name"] for series in overlay["resource-cpu"]["series"]}
    assert names == {"second: service_cpu_pct", "first: service_cpu_pct"}

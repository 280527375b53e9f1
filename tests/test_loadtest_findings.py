"""The bottleneck rule on recorded sample shapes: the first finding names the real limit, and raising
db_pool_max is advised only when PostgreSQL is busy with the pool's sessions and has headroom."""

from __future__ import annotations

from typing import Any

import pytest

from challengectl.bottleneck import Evidence, diagnose
from challengectl.loadtest.findings import generate, pool_assessment
from challengectl.loadtest.markdown import render_markdown
from challengectl.loadtest.snapshots import ResourceSampler


def sample(**fields: float) -> dict[str, Any]:
    base = {
        "service_cpu_pct": 40.0,
        "machine_cpu_pct": 50.0,
        "db_pool_in_use": 4,
        "db_pool_peak_in_use": 4,
        "db_pool_waiting": 0,
        "db_pool_acquire_timeouts": 0,
        "pg_connections_active": 3,
        "pg_connections_waiting": 0,
        "pg_connections_free": 70,
    }
    return base | fields


def report_of(samples: list[dict[str, Any]], *, limited: bool = False, cpus: int = 2) -> dict[str, Any]:
    """A report whose resource summary is computed from `samples` exactly as a run computes it."""
    sampler = ResourceSampler("http://127.0.0.1:1", None, None, None, interval_s=5)
    sampler.series = [{"t_s": 5.0 * index, **row} for index, row in enumerate(samples)]
    return {
        "resources": {"summary": sampler.summary(), "capacity": {"db_pool_max": 20}, "series": sampler.series},
        "generator": {"generator_limited": limited, "limited_reasons": ["send lag p99 120 ms"] if limited else []},
        "target": {"settings": {"workers": 1}},
        "environment": {"cpus": cpus},
    }


# The seed-m3 run at scale 1.0: the service's one core saturated, 20 of 20 connections checked out with
# 217 waiters, while PostgreSQL ran at most 5 active sessions.
SEED_M3 = [
    sample(service_cpu_pct=62, db_pool_in_use=12, db_pool_peak_in_use=12, pg_connections_active=2),
    sample(service_cpu_pct=99, db_pool_in_use=20, db_pool_peak_in_use=20, db_pool_waiting=217, pg_connections_active=5),
    sample(service_cpu_pct=98, db_pool_in_use=20, db_pool_peak_in_use=20, db_pool_waiting=180, pg_connections_active=3),
]

SHAPES = {
    "seed-m3 CPU-bound loop holding connections": (
        SEED_M3,
        False,
        "cpu_bound",
        "more database connections would not help",
    ),
    "pool held idle, CPU below saturation": (
        [sample(), sample(service_cpu_pct=70, db_pool_in_use=20, db_pool_peak_in_use=20, db_pool_waiting=40)],
        False,
        "pool_held_idle",
        "do not raise db_pool_max",
    ),
    "PostgreSQL sessions waiting on locks": (
        [
            sample(),
            sample(
                db_pool_in_use=20,
                db_pool_peak_in_use=20,
                db_pool_waiting=30,
                pg_connections_active=19,
                pg_connections_waiting=15,
            ),
        ],
        False,
        "pg_waits",
        "PostgreSQL-side waits",
    ),
    "PostgreSQL busy with the pool, headroom left": (
        [sample(), sample(db_pool_in_use=20, db_pool_peak_in_use=20, db_pool_waiting=12, pg_connections_active=18)],
        False,
        "pool_saturated",
        "raise db_pool_max",
    ),
    "PostgreSQL busy with the pool, no headroom": (
        [
            sample(),
            sample(
                db_pool_in_use=20,
                db_pool_peak_in_use=20,
                db_pool_waiting=12,
                pg_connections_active=18,
                pg_connections_free=2,
            ),
        ],
        False,
        "pg_busy",
        "speed up the hot statements",
    ),
    "machine out of CPU": (
        [sample(), sample(machine_cpu_pct=97)],
        False,
        "machine_cpu_bound",
        "the machine is out of CPU",
    ),
    "generator behind its schedule": ([sample(), sample()], True, "generator_limited", "limited by the generator"),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_first_finding_names_the_real_limit(shape: str) -> None:
    samples, limited, first_id, advice = SHAPES[shape]
    findings = generate(report_of(samples, limited=limited))
    assert findings[0]["id"] == first_id
    assert advice in findings[0]["advice"]
    raises_pool = [finding["id"] for finding in findings if finding["advice"].startswith("raise db_pool_max")]
    assert raises_pool == (["pool_saturated"] if first_id == "pool_saturated" else [])


def test_seed_m3_report_no_longer_blames_the_pool() -> None:
    report = report_of(SEED_M3)
    findings = generate(report)
    assert [finding["id"] for finding in findings] == ["cpu_bound", "pool_held_idle"]
    assert "at most 5 active session(s) of 20 checked out" in findings[1]["finding"]
    assert pool_assessment(report).startswith("it is not the limit")
    report |= {"findings": findings, "run": {"label": "seed"}, "phases": [], "overall": {}, "thresholds": []}
    text = render_markdown(report)
    bottom_line = next(line for line in text.splitlines() if line.startswith("**Bottom line:**"))
    assert "CPU-bound" in bottom_line and "raise db_pool_max" not in bottom_line
    assert "it is the bottleneck" not in text


def test_no_evidence_no_verdict() -> None:
    assert diagnose(Evidence()) == []
    assert diagnose(Evidence(pool_max=20, pool_in_use=20, pool_waiting=5))[0].advice.startswith(
        "check whether PostgreSQL is busy"
    )


def test_pool_command_applies_the_same_rule() -> None:
    """`pool` (and doctor's `pool` row) judge one snapshot by the same rule: the seed-m3 shape."""
    from challengectl.commands.pool import bottleneck

    app = {"db": {"max_size": 20, "in_use": 20, "waiting": 217}}
    server = {"service_active": 5, "service_waiting": 0, "available": 97, "total": 27, "free": 70}
    verdict = bottleneck(app, server)
    assert verdict is not None and verdict["id"] == "pool_held_idle"
    assert verdict["advice"].startswith("do not raise db_pool_max")
    busy = bottleneck(app, server | {"service_active": 19})
    assert busy is not None and busy["advice"].startswith("raise db_pool_max")
    assert bottleneck({"db": {"max_size": 20, "in_use": 3, "waiting": 0}}, server) is None

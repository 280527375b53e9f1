"""`challengectl pool` against a real serve under HTTP load (docs/cli.md#commands pool, docs/diagnostics.md#postgresql, docs/diagnostics.md#the-service; X10), and the
peak / acquire-wait figures that `Store` adds to `/admin/pool` (docs/http-api.md#admin-and-metrics)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from challengectl.cli import main
from service.storage.store import PoolConfig, Store
from tests.support.load import LOAD_SECRET as SECRET
from tests.support.load import HttpLoad, wait_for_a_steady_pool_size
from tests.support.serve import ServeProcess, http_get, service_env

pytestmark = pytest.mark.integration

LOAD_CONCURRENCY = 24
SAMPLES = 3


@pytest.fixture(scope="module")
def serve(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[ServeProcess]:
    with ServeProcess(service_env(pg_url, redis_url, redis_prefix, SECRET)) as process:
        yield process


def pool_command(
    serve: ServeProcess, pg_url: str, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any], str]:
    """`challengectl -o json pool ...` in-process: (exit code, the report, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(["--admin-url", serve.admin(""), "--database-url", pg_url, "-o", "json", "pool", *args])
    out, err = capsys.readouterr()
    # A failed gate also writes {"error": ...} after the report; the report comes first.
    return int(done.value.code or 0), json.JSONDecoder().raw_decode(out)[0], err


def test_pool_agrees_with_pg_stat_activity_while_a_load_runs(
    serve: ServeProcess, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with HttpLoad(serve, LOAD_CONCURRENCY) as load:
        wait_for_a_steady_pool_size(serve)
        reports = []
        for _ in range(SAMPLES):
            code, report, err = pool_command(serve, pg_url, capsys)
            assert code == 0, err
            reports.append(report)
    assert not load.failures
    for report in reports:
        db, server = report["app"]["db"], report["server"]
        # Both sides are read concurrently; a connection being opened or closed meanwhile may differ by one.
        assert abs(server["by_application"].get("challengectl-service", 0) - db["size"]) <= 1, report
        assert report["utilisation_pct"]["app_db"] == round(100 * db["in_use"] / db["max_size"], 1)
        assert report["utilisation_pct"]["server"] == round(100 * server["total"] / server["available"], 1)
        assert server["available"] == (
            server["max_connections"] - server["superuser_reserved_connections"] - server["reserved_connections"]
        )
        assert server["by_application"]["challengectl-cli"] >= 1
        assert db["peak_in_use"] >= max(db["in_use"], 1)
        assert "connections" in report["advice"] and report["over_max_util"] == []
    assert reports[-1]["app"]["db"]["acquire_count"] > reports[0]["app"]["db"]["acquire_count"]


def test_max_util_gates_with_exit_99(serve: ServeProcess, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, report, err = pool_command(serve, pg_url, capsys, "--max-util", "0")
    assert code == 99
    assert "server" in report["over_max_util"]  # this very command holds a connection
    assert "Error: utilisation above --max-util 0 %" in err

    code, report, err = pool_command(serve, pg_url, capsys, "--max-util", "100")
    assert code == 0, err
    assert report["over_max_util"] == [] and report["max_util_pct"] == 100


def test_max_util_with_watch_is_a_usage_error(
    serve: ServeProcess, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--admin-url", serve.admin(""), "--database-url", pg_url, "pool", "--watch", "--max-util", "80"])
    assert done.value.code == 2
    assert "one-shot gate" in capsys.readouterr().err


def test_admin_pool_reports_the_measured_peak_and_waits(serve: ServeProcess) -> None:
    db = http_get(serve.admin("/admin/pool"))[1]["db"]
    assert {"peak_in_use", "acquire_wait_ms_p50", "acquire_wait_ms_p95"} <= set(db)
    assert db["acquire_wait_ms_p50"] <= db["acquire_wait_ms_p95"]


async def test_store_tracks_the_peak_and_the_acquire_waits(pg_url: str) -> None:
    store = await Store.open(pg_url, "service", PoolConfig(min_size=1, max_size=2, open_timeout_s=5))
    try:
        async with store.connection(), store.connection():
            assert store.stats()["peak_in_use"] == 2
        stats = store.stats()
        assert (stats["in_use"], stats["peak_in_use"]) == (0, 2)
        store.reset_peaks()
        assert store.stats()["peak_in_use"] == 0

        hold_s = 0.2
        async with store.connection(), store.connection():
            blocked = asyncio.create_task(_acquire_once(store))
            await asyncio.sleep(hold_s)  # the third acquire waits until one of these two is returned
        await blocked
        stats = store.stats()
        assert stats["peak_in_use"] == 2
        assert stats["acquire_wait_ms_p95"] >= hold_s * 1000 * 0.9
        assert stats["acquire_wait_ms_p50"] < stats["acquire_wait_ms_p95"]
    finally:
        await store.close()


async def _acquire_once(store: Store) -> None:
    async with store.connection():
        pass


def test_sizing_advice_counts_the_main_process_when_workers_run() -> None:
    from challengectl.commands.pool import sizing_advice

    server = {"total": 5, "available": 97, "max_connections": 100, "by_application": {"challengectl-service": 5}}
    single = {"workers": {"value": 0}, "db_pool_max": {"value": 20}, "flush_workers": {"value": 4}}
    one = sizing_advice(single, server)
    default = sizing_advice({**single, "workers": {"value": 1}}, server)
    two = sizing_advice({**single, "workers": {"value": 2}}, server)
    assert "1 process(es) × pool max 20 + 4 flusher = 24 connections" in one
    assert "2 process(es) × pool max 20 + 4 flusher = 44 connections" in default  # 1 worker + the main process
    assert "3 process(es) × pool max 20 + 4 flusher = 64 connections" in two  # 2 workers + the main process
    assert two.endswith("at most 1 instance(s) at full pools")

"""Diagnostics are right on a fresh install: after `users init --count 1000` the tables are analyzed and
`explain active-goals --fail-on warn` passes; with the expected index dropped it still fails (exit 99).
`db analyze` analyzes the project's tables on demand; without pg_stat_statements `db queries` shows the service's
own per-named-query timings."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from challengectl.cli import main
from service.config.resources import example_catalog_path
from tests.conftest import new_database
from tests.test_serve import ServeProcess, base_env

pytestmark = pytest.mark.integration

SECRET = "fresh-install-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def fresh(pg_admin_url: str, redis_url: str) -> Iterator[tuple[ServeProcess, str]]:
    """A `serve` on a database of its own, as a first start creates it (migrations, empty tables)."""
    with new_database(pg_admin_url, "challengectl_fresh") as url:
        env = base_env(
            DATABASE_URL=url,
            REDIS_URL=redis_url,
            CHALLENGE_JWT_SECRET=SECRET,
            CHALLENGE_REDIS_KEY_PREFIX=f"fresh{uuid.uuid4().hex[:8]}",
        )
        with ServeProcess(env) as serve:
            yield serve, url


@pytest.fixture(autouse=True)
def cli_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh: tuple[ServeProcess, str]) -> None:
    for name in ("CHALLENGE_API_URL", "CHALLENGE_ADMIN_URL", "CHALLENGE_TOKEN", "CHALLENGE_USER", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("DATABASE_URL", fresh[1])
    monkeypatch.setenv("CHALLENGE_CATALOG_PATH", str(example_catalog_path()))
    monkeypatch.setenv("CHALLENGE_JWT_SECRET", SECRET)


def run(serve: ServeProcess, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    flags = ["--api-url", f"http://127.0.0.1:{serve.http_port}/challenge", "--admin-url", serve.admin("")]
    with pytest.raises(SystemExit) as done:
        main([*flags, *args])
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def test_explain_passes_after_seeding_and_fails_without_the_index(fresh, capsys) -> None:
    serve, url = fresh
    code, _, err = run(serve, ["users", "init", "--count", "1000", "--concurrency", "16"], capsys)
    assert code == 0, err
    assert "analyzed user_goal_progress" in err
    code, out, err = run(serve, ["explain", "active-goals", "--fail-on", "warn", "-o", "json"], capsys)
    assert code == 0, (out, err)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP INDEX idx_ugp_user_active")
    try:
        code, out, _ = run(serve, ["explain", "active-goals", "--fail-on", "warn", "-o", "json"], capsys)
        assert code == 99
        findings = json.loads(out)["analysis"]["findings"]
        assert [f["severity"] for f in findings if f["rule"] == "expected_index_not_used"] == ["warn"]
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE INDEX idx_ugp_user_active ON user_goal_progress (user_id) WHERE is_active")


def test_db_analyze_lists_the_tables(fresh, capsys) -> None:
    serve, _ = fresh
    code, out, err = run(serve, ["db", "analyze", "-o", "json"], capsys)
    assert code == 0, err
    assert [item["table"] for item in json.loads(out)["items"]] == ["user_goal_progress", "reward_grants"]


def test_db_queries_without_pg_stat_statements_shows_the_services_own_timings(fresh, capsys) -> None:
    serve, _ = fresh
    assert run(serve, ["users", "init", "queries-player"], capsys)[0] == 0  # named queries for the service to time
    code, out, err = run(serve, ["db", "queries", "-o", "json"], capsys)
    assert code == 0, err
    body = json.loads(out)
    assert body["source"] == "service_metrics" and "pg_stat_statements" in body["reason"]
    names = [item["query_name"] for item in body["items"]]
    assert names and all(item["calls"] > 0 and item["mean_ms"] >= 0 for item in body["items"])
    assert "the service's own timings per named query" in err

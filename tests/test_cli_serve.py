"""`serve --check` and `db migrate` from the CLI, run in-process (docs/catalog.md#validation-rules, docs/data-model.md#migrations, docs/cli.md#exit-codes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.config.resources import example_catalog_path
from tests.support.cli import isolate_cli, run_cli


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path, clear_urls=False, CHALLENGE_JWT_SECRET="k" * 32)


BAD_CATALOGS = {
    "missing file": (None, "catalog file not found: "),
    "invalid json": ('{"challenges": [', "invalid JSON in catalog: "),
    "bad event source": (
        '{"challenges":[{"challengeId":"c","name":"C","goals":[{"goalId":"g","name":"G","eventSource":"kills",'
        '"requirement":{"statCode":"k","operator":">=","targetValue":1},"reward":{"type":"ITEM","rewardId":"i","quantity":1}}]}]}',
        "invalid goal 'g' in challenge 'c': invalid event_source 'kills' (must be 'login' or 'statistic')",
    ),
    "prerequisite cycle": (
        '{"challenges":[{"challengeId":"c","name":"C","goals":['
        '{"goalId":"a","name":"A","eventSource":"login","prerequisites":["b"],'
        '"requirement":{"statCode":"l","operator":">=","targetValue":1},"reward":{"type":"ITEM","rewardId":"i","quantity":1}},'
        '{"goalId":"b","name":"B","eventSource":"login","prerequisites":["a"],'
        '"requirement":{"statCode":"l","operator":">=","targetValue":1},"reward":{"type":"ITEM","rewardId":"i","quantity":1}}]}]}',
        "invalid goal 'a' in challenge 'c': prerequisite cycle detected: a -> b -> a",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CATALOGS))
def test_check_rejects_a_bad_catalog_with_exit_2_and_the_rule(case, tmp_path, pg_url, capsys) -> None:
    content, message = BAD_CATALOGS[case]
    catalog = tmp_path / "bad.json"
    if content is not None:
        catalog.write_text(content)
    code, out, err = run_cli(["--database-url", pg_url, "serve", "--check", "--catalog", str(catalog)], capsys)
    assert code == 2
    assert message in err
    assert err.startswith("Error: invalid catalog")
    assert "Hint: " in err and "Traceback" not in err


def test_check_reports_ok_for_a_valid_setup(pg_url, redis_url, capsys) -> None:
    args = [
        "--database-url",
        pg_url,
        "--redis-url",
        redis_url,
        "serve",
        "--check",
        "--catalog",
        str(example_catalog_path()),
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "settings: ok" in out and "catalog: ok" in out and "redis: reachable" in out
    assert "postgres: reachable" in out


def test_check_refuses_invalid_settings(pg_url, capsys) -> None:
    code, _, err = run_cli(["--database-url", pg_url, "serve", "--check", "--base-path", "/x/"], capsys)
    assert code == 2
    assert "invalid setting 'base_path'" in err


def test_db_migrate_applies_once_then_nothing(fresh_db, capsys) -> None:
    code, out, err = run_cli(["--database-url", fresh_db, "-o", "json", "db", "migrate", "--yes"], capsys)
    assert code == 0, err
    first = json.loads(out)
    assert first["applied"] == [
        "0001_create_user_goal_progress",
        "0002_create_reward_grants",
        "0003_user_goal_progress_value_event_at",
        "0004_implied_default_goals",
    ]
    code, out, _ = run_cli(["--database-url", fresh_db, "-o", "json", "db", "migrate", "--yes"], capsys)
    assert code == 0 and json.loads(out)["applied"] == []
    code, out, _ = run_cli(["--database-url", fresh_db, "-o", "json", "db", "migrate", "--status"], capsys)
    assert json.loads(out) == {
        "applied": [1, 2, 3, 4],
        "pending": [],
        "checksum_mismatches": [],
        "unknown_versions": [],
    }


def test_db_migrate_refuses_without_yes_off_a_tty(fresh_db, capsys) -> None:
    code, _, err = run_cli(["--database-url", fresh_db, "db", "migrate"], capsys)
    assert code == 2
    assert "Hint: add --yes" in err


def test_db_migrate_reports_an_unreachable_database(capsys) -> None:
    code, _, err = run_cli(["--database-url", "postgresql://u:pw@127.0.0.1:1/db", "db", "migrate", "--yes"], capsys)
    assert code == 5
    assert "pw" not in err and err.startswith("Error: ")


def test_check_accepts_worker_processes_and_zero_and_refuses_negative(pg_url, capsys) -> None:
    args = ["--database-url", pg_url, "serve", "--check", "--catalog", str(example_catalog_path()), "--workers"]
    code, out, err = run_cli([*args, "2"], capsys)
    assert code == 0, err
    assert "settings: ok" in out
    assert run_cli([*args, "0"], capsys)[0] == 0
    code, _, err = run_cli([*args, "-1"], capsys)
    assert code == 2
    assert "workers" in err and "Traceback" not in err

"""`challengectl explain` (docs/cli.md#explain, X7) against real PostgreSQL with a seeded table of realistic size:
the plan, the indexes used and the findings; a missing index and a duplicate of the primary key; every
named query explained without changing the database; the refusals and exit codes. Also the parameter
derivation from a sample user's rows, on the bundled example catalog."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from challengectl.database import APPLICATION_NAME
from challengectl.errors import CliError
from challengectl.explain_runner import (
    ExplainSession,
    ParamDefaults,
    SampleUser,
    Statement,
    UserRow,
    ad_hoc_statement,
    derive_params,
    parse_param_overrides,
    parse_param_value,
)
from service.config.resources import example_catalog_path
from service.domain.catalog import load_catalog
from service.storage.default_sets import default_goal_set
from service.storage.migrations import apply_migrations
from service.storage.registry import load_registry
from tests.conftest import new_database
from tests.support.cli import isolate_cli, run_cli

USERS = 20_000
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CREATE_ACTIVE = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ugp_user_active ON user_goal_progress (user_id) WHERE is_active;"
)

# Every user gets the catalog's default goals (active); three users in four also get the others, a third
# of those active. Progress and status vary; about 220 000 rows in one statement.
SEED_PROGRESS = """
INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress, status, is_active,
                                assigned_at, created_at, updated_at)
SELECT 'user-' || lpad(u::text, 6, '0'), g.goal_id, g.challenge_id, 'accelbyte', (u * 7 + g.n::int) %% 50,
       CASE WHEN (u * 7 + g.n::int) %% 50 = 0 THEN 'not_started' ELSE 'in_progress' END,
       g.default_assigned OR u %% 3 = 0, now(), now(), now()
  FROM generate_series(1, %(users)s) AS u
 CROSS JOIN unnest(%(goal_ids)s::text[], %(challenge_ids)s::text[], %(defaults)s::boolean[])
       WITH ORDINALITY AS g (goal_id, challenge_id, default_assigned, n)
 WHERE g.default_assigned OR u %% 4 <> 0
"""
SEED_GRANTS = """
INSERT INTO reward_grants (namespace, user_id, goal_id, generation, challenge_id, idempotency_key, reward_type,
                           reward_id, quantity, mode)
SELECT 'accelbyte', 'user-' || lpad(u::text, 6, '0'), 's1-welcome', 1, 'season-1',
       'accelbyte:user-' || lpad(u::text, 6, '0') || ':s1-welcome:1', 'ITEM', 'welcome-pack', 1, 'log'
  FROM generate_series(1, %(users)s, 4) AS u
"""
FINGERPRINT = (
    "SELECT (SELECT count(*) || ':' || coalesce(sum(hashtextextended(t::text, 0)), 0) FROM user_goal_progress t), "
    "(SELECT count(*) || ':' || coalesce(sum(hashtextextended(r::text, 0)), 0) FROM reward_grants r)"
)


@pytest.fixture(scope="module")
def seeded_url(pg_admin_url: str) -> Iterator[str]:
    """A migrated database with USERS players of the example catalog (≈220k rows), vacuumed and analysed."""
    catalog = load_catalog(example_catalog_path())
    with new_database(pg_admin_url, "challengectl_explain") as url:
        apply_migrations(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                SEED_PROGRESS,
                {
                    "users": USERS,
                    "goal_ids": [g.goal_id for g in catalog.goals],
                    "challenge_ids": [g.challenge_id for g in catalog.goals],
                    "defaults": [g.default_assigned for g in catalog.goals],
                },
            )
            conn.execute(SEED_GRANTS, {"users": USERS})
            conn.execute("VACUUM ANALYZE user_goal_progress")
            conn.execute("VACUUM ANALYZE reward_grants")
        yield url


@pytest.fixture(autouse=True)
def cli_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path, CHALLENGE_CATALOG_PATH=str(example_catalog_path()))


def run_db_cli(args: list[str], capsys: pytest.CaptureFixture[str], database_url: str) -> tuple[int, str, str]:
    return run_cli(["--database-url", database_url, *args], capsys)


def explain_json(args: list[str], capsys: pytest.CaptureFixture[str], url: str, expect_code: int = 0) -> dict[str, Any]:
    code, out, err = run_db_cli(["explain", *args, "-o", "json"], capsys, url)
    assert code == expect_code, err
    return json.loads(out)


def rules_of(report: dict[str, Any], *severities: str) -> list[str]:
    return [f["rule"] for f in report["analysis"]["findings"] if not severities or f["severity"] in severities]


def fingerprint(url: str) -> tuple[str, str]:
    with psycopg.connect(url) as conn:
        return conn.execute(FINGERPRINT).fetchone()


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


# --- the plan, the indexes and the findings ------------------------------------------------------


def test_active_goals_uses_the_partial_index_without_warnings(seeded_url: str, capsys) -> None:
    report = explain_json(["active-goals"], capsys, seeded_url)
    assert report["query"]["name"] == "active_goals"
    assert report["query"]["sql"] == load_registry().get("active_goals").sql
    user = report["sample_user"]
    assert user["chosen_by"] == "typical" and user["active_rows"] >= 7
    assert report["params"] == {"user_id": user["user_id"]}
    assert report["plan"][0]["Plan"]["Actual Rows"] == user["active_rows"]  # ANALYZE ran, the raw plan is there
    analysis = report["analysis"]
    assert {"index": "idx_ugp_user_active", "table": "user_goal_progress", "role": "scan"}.items() <= next(
        use for use in analysis["indexes_used"] if use["index"] == "idx_ugp_user_active"
    ).items()
    assert analysis["expected_index_used"] is True
    assert rules_of(report, "warn", "crit") == []
    assert analysis["totals"]["execution_ms"] > 0 and analysis["totals"]["shared_hit_blocks"] > 0


def test_the_table_view_shows_header_tree_totals_indexes_and_findings(seeded_url: str, capsys) -> None:
    code, out, err = run_db_cli(["explain", "active_goals", "--user", "user-000042", "-o", "table"], capsys, seeded_url)
    assert code == 0, err
    for expected in (
        "Query",
        "active_goals (read)",
        "user-000042 (given; 12 rows",
        "WHERE user_id = %(user_id)s::text",
        "#1 Sort",
        "Index Cond:",
        "rows est",
        "→ actual",
        "Totals",
        "Execution",
        "Buffers",
        "Indexes used",
        "idx_ugp_user_active",
        "✓ expected",
        "Findings",
    ):
        assert expected in out, expected


def test_format_text_prints_postgresqls_own_plan(seeded_url: str, capsys) -> None:
    code, out, err = run_db_cli(["explain", "active-goals", "--format", "text", "-o", "table"], capsys, seeded_url)
    assert code == 0, err
    assert "Plan (PostgreSQL text)" in out and "Bitmap Index Scan on idx_ugp_user_active" in out
    assert "#1 Sort" not in out
    report = explain_json(["active-goals", "--format", "text"], capsys, seeded_url)
    assert "Index Cond" in report["text_plan"] and report["plan"][0]["Plan"]


@pytest.mark.slow
def test_a_missing_expected_index_then_a_seq_scan_are_flagged(seeded_url: str, capsys) -> None:
    execute(seeded_url, "DROP INDEX idx_ugp_user_active")
    try:
        # The primary key still serves user_id lookups: the expected index is missing, but no seq scan.
        report = explain_json(["active-goals"], capsys, seeded_url)
        finding = next(f for f in report["analysis"]["findings"] if f["rule"] == "expected_index_not_used")
        assert finding["severity"] == "warn" and CREATE_ACTIVE in finding["advice"]
        assert rules_of(report, "crit") == []
        assert run_db_cli(["explain", "active-goals", "--fail-on", "warn"], capsys, seeded_url)[0] == 99
        assert run_db_cli(["explain", "active-goals", "--fail-on", "crit"], capsys, seeded_url)[0] == 0

        execute(seeded_url, "ALTER TABLE user_goal_progress DROP CONSTRAINT user_goal_progress_pkey")
        report = explain_json(["active-goals"], capsys, seeded_url)
        crit = [f for f in report["analysis"]["findings"] if f["severity"] == "crit"]
        # active_goals scans the table for the real rows and for the anti-join of the implied ones
        # (docs/data-model.md#implied-default-goals): each scan is flagged.
        assert {f["rule"] for f in crit} == {"seq_scan_large_table"}
        assert all("Seq Scan on user_goal_progress" in f["node"] for f in crit) and CREATE_ACTIVE in crit[0]["advice"]
        code, out, err = run_db_cli(["explain", "active-goals", "--fail-on", "crit", "-o", "table"], capsys, seeded_url)
        assert code == 99
        assert "Seq Scan on user_goal_progress" in out and "✗ CRIT" in out
        assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ugp_user_active" in out
        assert "--fail-on crit" in err
    finally:
        execute(
            seeded_url,
            "ALTER TABLE user_goal_progress ADD CONSTRAINT user_goal_progress_pkey PRIMARY KEY (user_id, goal_id) ",
            "CREATE INDEX IF NOT EXISTS idx_ugp_user_active ON user_goal_progress (user_id) WHERE is_active",
            "ANALYZE user_goal_progress",
        )
    assert rules_of(explain_json(["active-goals"], capsys, seeded_url), "warn", "crit") == []


@pytest.mark.slow
def test_an_index_duplicating_the_primary_key_is_flagged(seeded_url: str, capsys) -> None:
    execute(
        seeded_url,
        "CREATE INDEX ugp_user_goal_copy ON user_goal_progress (user_id, goal_id)",
        "ANALYZE user_goal_progress",
    )
    try:
        report = explain_json(["user-goal-count"], capsys, seeded_url)
        finding = next(f for f in report["analysis"]["findings"] if f["rule"] == "duplicate_of_primary_key")
        assert "ugp_user_goal_copy" in finding["message"] and "user_goal_progress_pkey" in finding["message"]
        assert "DROP INDEX CONCURRENTLY ugp_user_goal_copy;" in finding["advice"]
        assert run_db_cli(["explain", "user-goal-count", "--fail-on", "warn"], capsys, seeded_url)[0] == 99
    finally:
        execute(seeded_url, "DROP INDEX ugp_user_goal_copy")
    assert "duplicate_of_primary_key" not in rules_of(explain_json(["user-goal-count"], capsys, seeded_url))


@pytest.mark.slow
def test_every_named_query_is_explained_and_the_database_is_unchanged(seeded_url: str, capsys) -> None:
    before = fingerprint(seeded_url)
    registry = load_registry()
    for query in registry:
        report = explain_json([query.name.replace("_", "-"), "--analyze", "--yes"], capsys, seeded_url)
        assert report["query"]["name"] == query.name
        assert set(report["params"]) == set(query.param_names)
        root = report["plan"][0]["Plan"]
        assert "Actual Rows" in root, query.name
        if query.kind == "write":
            assert report["analysis"]["totals"]["wal_records"] is not None, query.name
        assert report["analysis"]["expected_index_used"] is True, (query.name, report["analysis"]["indexes_used"])
        assert rules_of(report, "crit") == [], query.name
    assert fingerprint(seeded_url) == before


def test_the_flush_writes_for_real_and_is_rolled_back(seeded_url: str, capsys) -> None:
    before = fingerprint(seeded_url)
    report = explain_json(["apply_event_updates", "--user", "user-000008", "--yes"], capsys, seeded_url)
    params = report["params"]
    assert params["entry_user_ids"] == ["user-000008"] and params["entry_incs"] == [1]
    assert report["analysis"]["totals"]["wal_records"] > 0  # rows were updated inside the transaction
    assert fingerprint(seeded_url) == before


# --- sampling and parameters ---------------------------------------------------------------------


def test_heavy_sample_picks_a_user_with_the_most_rows(seeded_url: str, capsys) -> None:
    report = explain_json(["user-progress", "--sample", "heavy"], capsys, seeded_url)
    assert report["sample_user"]["chosen_by"] == "heavy" and report["sample_user"]["rows"] == 12


def test_param_overrides_are_bound_by_declared_type(seeded_url: str, capsys) -> None:
    report = explain_json(
        ["goals-by-ids", "--user", "user-000004", "--param", "goal_ids=s1-welcome,daily-login"], capsys, seeded_url
    )
    assert report["params"] == {"user_id": "user-000004", "goal_ids": ["s1-welcome", "daily-login"]}
    assert report["plan"][0]["Plan"]["Actual Rows"] == 2
    # Every parameter given: no user is sampled at all.
    report = explain_json(["user-goal-count", "--param", "user_id=nobody"], capsys, seeded_url)
    assert report["sample_user"] is None and report["plan"][0]["Plan"]["Actual Rows"] == 1
    code, _, err = run_db_cli(["explain", "user-goal-count", "--param", "goal=x"], capsys, seeded_url)
    assert code == 2 and "no parameter 'goal'" in err


def test_a_user_without_rows_and_an_empty_table_exit_3(seeded_url: str, fresh_db: str, capsys) -> None:
    code, _, err = run_db_cli(["explain", "active-goals", "--user", "nobody"], capsys, seeded_url)
    assert code == 3 and "has no rows" in err
    apply_migrations(fresh_db)
    code, _, err = run_db_cli(["explain", "active-goals"], capsys, fresh_db)
    assert code == 3
    assert "user_goal_progress is empty" in err and "challengectl users init --count 100" in err


# --- ad-hoc statements, refusals, exit codes -----------------------------------------------------


def test_an_ad_hoc_select_is_explained_without_analyze(seeded_url: str, capsys) -> None:
    report = explain_json(
        ["--sql", "SELECT count(*) FROM user_goal_progress WHERE status = 'claimed'"], capsys, seeded_url
    )
    assert report["query"]["name"] is None and report["options"]["analyze"] is False
    assert "Actual Rows" not in report["plan"][0]["Plan"]
    assert "seq_scan_large_table" in rules_of(report, "crit")


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM user_goal_progress",
        "UPDATE user_goal_progress SET progress = 0",
        "WITH gone AS (DELETE FROM user_goal_progress RETURNING 1) SELECT count(*) FROM gone",
        "SELECT * FROM user_goal_progress LIMIT 1 FOR UPDATE",
        "SELECT 1; SELECT 2",
    ],
)
def test_write_lock_or_multiple_statements_via_sql_are_refused(seeded_url: str, statement: str, capsys) -> None:
    before = fingerprint(seeded_url)
    code, _, err = run_db_cli(["explain", "--sql", statement, "--analyze"], capsys, seeded_url)
    assert code == 2 and err.startswith("Error: ") and "Hint: " in err
    assert fingerprint(seeded_url) == before


def test_write_queries_need_confirmation_on_a_non_embedded_database(seeded_url: str, capsys) -> None:
    code, _, err = run_db_cli(["explain", "delete-user-data"], capsys, seeded_url)
    assert code == 2 and "Hint: add --yes" in err
    # Without ANALYZE nothing executes, so nothing needs confirming.
    report = explain_json(["delete-user-data", "--no-analyze"], capsys, seeded_url)
    assert "Actual Rows" not in report["plan"][0]["Plan"]


def test_unknown_name_exits_3_with_close_matches(seeded_url: str, capsys) -> None:
    code, _, err = run_db_cli(["explain", "active-gaols"], capsys, seeded_url)
    assert code == 3 and "active_goals" in err


def test_db_explain_is_the_same_command(seeded_url: str, capsys) -> None:
    direct = explain_json(["active-goals", "--no-analyze"], capsys, seeded_url)
    code, out, err = run_db_cli(["db", "explain", "active-goals", "--no-analyze", "-o", "json"], capsys, seeded_url)
    assert code == 0, err
    via_db = json.loads(out)
    assert via_db.keys() == direct.keys()
    assert via_db["plan"][0]["Plan"]["Node Type"] == direct["plan"][0]["Plan"]["Node Type"]


def test_list_shows_every_named_query(seeded_url: str, capsys) -> None:
    _, out, _ = run_db_cli(["explain", "--list", "-o", "json"], capsys, seeded_url)
    listed = {item["name"]: item for item in json.loads(out)["items"]}
    assert set(listed) == set(load_registry().names())
    assert listed["active_goals"]["kind"] == "read" and listed["active_goals"]["expect_index"] == "idx_ugp_user_active"


def test_a_held_row_lock_hits_lock_timeout_as_a_critical_finding(seeded_url: str, capsys) -> None:
    released = threading.Event()
    locked = threading.Event()

    def hold_lock() -> None:
        with psycopg.connect(seeded_url) as conn:
            conn.execute("SELECT 1 FROM user_goal_progress WHERE user_id = 'user-000005' FOR UPDATE")
            locked.set()
            released.wait(30)
            conn.rollback()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        report = explain_json(
            ["progress-for-update", "--user", "user-000005", "--yes", "--fail-on", "crit"],
            capsys,
            seeded_url,
            expect_code=99,
        )
    finally:
        released.set()
        holder.join()
    assert report["timeout"] == "lock_timeout" and report["plan"] is None
    assert rules_of(report, "crit") == ["timeout"]
    assert "db activity --blocking" in report["analysis"]["findings"][0]["advice"]


def test_statement_timeout_is_a_critical_finding(seeded_url: str, capsys) -> None:
    report = explain_json(
        [
            "--sql",
            "SELECT count(*) FROM user_goal_progress a CROSS JOIN generate_series(1, 50)",
            "--analyze",
            "--statement-timeout",
            "20ms",
        ],
        capsys,
        seeded_url,
    )
    assert report["timeout"] == "statement_timeout" and rules_of(report, "crit") == ["timeout"]


def test_sessions_identify_as_the_cli(seeded_url: str) -> None:
    with ExplainSession(seeded_url) as session, session.transaction() as conn:
        row = conn.execute(
            "SELECT current_setting('application_name'), current_setting('transaction_read_only'), "
            "current_setting('lock_timeout'), current_setting('TimeZone')"
        ).fetchone()
        assert row == (APPLICATION_NAME, "on", "1s", "UTC")


# --- parameter derivation (no database) ----------------------------------------------------------


def _row(goal_id: str, active: bool = True, progress: int = 4) -> UserRow:
    catalog = load_catalog(example_catalog_path())
    return UserRow(goal_id, catalog.goals_by_id[goal_id].challenge_id, "accelbyte", progress, "in_progress", active)


def _statement(name: str) -> Statement:
    return Statement.named(load_registry().get(name))


DEFAULTS = ParamDefaults(namespace="accelbyte", reward_mode="log")


def test_flush_parameters_come_from_the_active_rows_of_one_source() -> None:
    catalog = load_catalog(example_catalog_path())
    stat_user = SampleUser(
        "u1",
        "given",
        (
            _row("daily-matches", progress=4),
            _row("monthly-matches"),
            _row("s1-veteran", active=False),
            _row("s1-welcome"),
        ),
    )
    params = derive_params(_statement("apply_event_updates"), stat_user, catalog, DEFAULTS, NOW)
    assert params["entry_sources"] == ["stat:matches_played"] and params["entry_values"] == [5]
    assert params["entry_incs"] == [1] and params["entry_user_ids"] == ["u1"]
    assert params["goal_ids"] == ["daily-matches", "monthly-matches"]  # not the inactive s1-veteran
    assert params["goal_boundaries"][0] == datetime(2024, 5, 1, tzinfo=UTC)

    login_user = SampleUser("u2", "given", (_row("daily-login"), _row("s1-regular"), _row("weekly-wins")))
    params = derive_params(_statement("apply_event_updates"), login_user, catalog, DEFAULTS, NOW)
    assert params["entry_sources"] == ["login"] and params["entry_values"] == [None]
    assert params["goal_ids"] == ["s1-regular", "daily-login"]  # catalog order, as the flusher passes them


def test_derived_parameters_of_the_other_queries() -> None:
    catalog = load_catalog(example_catalog_path())
    user = SampleUser("u3", "typical", (_row("daily-login"), _row("s1-welcome"), _row("s1-veteran", active=False)))
    view = derive_params(_statement("active_view"), user, catalog, DEFAULTS, NOW)
    assert view == {"user_id": "u3", "prereq_goal_ids": list(catalog.prerequisite_ids)}
    deactivate = derive_params(_statement("deactivate_challenge_goals"), user, catalog, DEFAULTS, NOW)
    assert deactivate == {"user_id": "u3", "challenge_id": "daily-grind", "keep_goal_ids": ["daily-login"]}
    grant = derive_params(_statement("record_claim"), user, catalog, DEFAULTS, NOW, generation=3)
    assert grant["idempotency_key"] == "accelbyte:u3:daily-login:3" and grant["mode"] == "log"
    reward = catalog.goals_by_id["daily-login"].reward
    assert (grant["reward_type"], grant["reward_id"], grant["quantity"]) == (
        reward.type,
        reward.reward_id,
        reward.quantity,
    )
    registered = derive_params(_statement("register_default_goal_set"), user, catalog, DEFAULTS, NOW)
    assert registered["goal_ids"] == ["daily-login", "s1-welcome"] and registered["schedules"] == ["daily", None]
    initialized = derive_params(_statement("initialize_view"), user, catalog, DEFAULTS, NOW)
    assert initialized["default_set_id"] == default_goal_set(catalog.default_goals).set_id
    catch_up = derive_params(_statement("rotation_catch_up"), user, catalog, DEFAULTS, NOW)
    assert catch_up["next_boundaries"] == [datetime(2024, 5, 2, tzinfo=UTC), None]


def test_param_values_follow_the_declared_types() -> None:
    assert parse_param_value("a, b", "text[]", NOW) == ["a", "b"]
    assert parse_param_value('["a", null]', "text[]", NOW) == ["a", None]
    assert parse_param_value("7", "bigint", NOW) == 7
    assert parse_param_value("false", "boolean", NOW) is False
    assert parse_param_value("now", "timestamptz", NOW) == NOW
    assert parse_param_value("2024-01-02T03:04:05Z", "timestamptz", NOW) == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_param_value("null", "text", NOW) is None
    with pytest.raises(CliError) as bad:
        parse_param_overrides(["seconds=soon"], _statement("backdate_user_goals"), NOW)
    assert bad.value.exit_code == 2 and "not an integer" in bad.value.message


def test_ad_hoc_placeholders_take_the_registrys_types() -> None:
    statement = ad_hoc_statement(
        "SELECT * FROM user_goal_progress WHERE user_id = %(user_id)s AND goal_id = ANY (%(goal_ids)s::text[]);",
        load_registry(),
    )
    assert statement.param_types == {"user_id": "text", "goal_ids": "text[]"} and not statement.sql.endswith(";")

"""`db activity|queries|indexes|tables` run through `challengectl.cli.main` against a real PostgreSQL
(docs/cli.md#commands, docs/cli.md#destructive-actions, docs/diagnostics.md#postgresql; X8, X9): duplicate and expected indexes with suggest --create, a real
blocking chain with cancel, table sizes and the goals-per-user histogram, the pg_stat_statements
column sets and the missing-extension exit, confirmations, snake_case JSON and NDJSON watch ticks."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from challengectl import database
from challengectl import pg_diagnostics as pgd
from service.runtime.embedded import PGSERVER_OS_USER
from service.storage.migrations import apply_migrations
from service.storage.registry import load_registry
from tests.servers import free_port
from tests.support.cli import isolate_cli, run_cli

SNAKE_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
WAIT_LIMIT_S = 15.0


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path, clear_urls=False)


@pytest.fixture
def migrated_db(fresh_db: str) -> str:
    apply_migrations(fresh_db)
    return fresh_db


def run_db_cli(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    return run_cli(["--database-url", url, *args], capsys)


def run_json(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> Any:
    code, out, err = run_db_cli(capsys, url, "-o", "json", *args)
    assert code == 0, err
    data = json.loads(out)
    assert_snake_case(data)
    return data


def assert_snake_case(value: Any, where: str = "$") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert SNAKE_KEY.match(key), f"{where}.{key} is not snake_case"
            assert_snake_case(item, f"{where}.{key}")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            assert_snake_case(item, f"{where}[{position}]")


def execute(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def seed_progress(url: str, rows_per_user: dict[str, tuple[int, int]]) -> None:
    """user → (rows, active rows): the first `active` goals of the user are active."""
    with psycopg.connect(url, autocommit=True) as conn:
        for user, (rows, active) in rows_per_user.items():
            conn.execute(
                "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, is_active) "
                "SELECT %s, 'g' || lpad(n::text, 3, '0'), 'c1', 'ns', n <= %s FROM generate_series(1, %s) AS n",
                (user, active, rows),
            )


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


# --- db indexes (X9) ------------------------------------------------------------------------------


def test_indexes_flag_duplicates_of_the_primary_key_and_report_the_expected_ones(migrated_db, capsys):
    execute(migrated_db, "CREATE INDEX ugp_user_goal_copy ON user_goal_progress (user_id, goal_id)")
    execute(migrated_db, "CREATE INDEX ugp_user_plain ON user_goal_progress (user_id)")
    # Another operator class serves other lookups (LIKE prefixes): not a duplicate.
    execute(migrated_db, "CREATE INDEX ugp_user_pattern ON user_goal_progress (user_id varchar_pattern_ops)")

    report = run_json(capsys, migrated_db, "db", "indexes", "--min-stats-age", "0s")

    duplicates = {item["index_name"]: item for item in report["duplicates"]["items"]}
    assert set(duplicates) == {"ugp_user_goal_copy", "ugp_user_plain"}
    for item in duplicates.values():
        assert item["duplicate_of"] == "user_goal_progress_pkey" and item["duplicate_of_primary"] is True
    assert duplicates["ugp_user_goal_copy"]["same_columns"] is True
    assert duplicates["ugp_user_plain"]["columns"] == ["user_id"]
    assert duplicates["ugp_user_plain"]["advice"] == 'DROP INDEX CONCURRENTLY IF EXISTS "ugp_user_plain"'

    expected = {item["index_name"]: item for item in report["expected"]["items"]}
    assert {name: item["status"] for name, item in expected.items()} == {
        "user_goal_progress_pkey": "present",
        "idx_ugp_user_active": "present",
    }
    assert report["suggest"]["items"] == []

    usage = {item["index_name"]: item for item in report["usage"]["items"]}
    assert {"user_goal_progress_pkey", "idx_ugp_user_active", "reward_grants_pkey", "ugp_user_plain"} <= set(usage)
    assert all(item["size_bytes"] > 0 and item["valid"] for item in usage.values())

    unused = {item["index_name"]: item for item in report["unused"]["items"]}
    # Never scanned extra indexes; primary keys and the expected partial index are never "unused".
    assert set(unused) == {"ugp_user_goal_copy", "ugp_user_plain", "ugp_user_pattern"}
    assert {item["verdict"] for item in unused.values()} == {"unused"}
    assert report["unused"]["stats_age_s"] >= 0

    code, table, _ = run_db_cli(capsys, migrated_db, "-o", "table", "db", "indexes", "duplicates")
    assert code == 0 and "ugp_user_goal_copy" in table and "user_goal_progress_pkey" in table


def test_a_dropped_expected_index_is_missing_and_suggest_create_rebuilds_it(migrated_db, capsys):
    execute(migrated_db, "DROP INDEX idx_ugp_user_active")
    statement = (
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ugp_user_active ON user_goal_progress (user_id) WHERE is_active"
    )

    expected = run_json(capsys, migrated_db, "db", "indexes", "expected")
    assert {item["index_name"]: item["status"] for item in expected["items"]} == {
        "user_goal_progress_pkey": "present",
        "idx_ugp_user_active": "missing",
    }
    suggest = run_json(capsys, migrated_db, "db", "indexes", "suggest")
    assert [(item["index_name"], item["statements"]) for item in suggest["items"]] == [
        ("idx_ugp_user_active", [statement])
    ]

    code, _, err = run_db_cli(capsys, migrated_db, "db", "indexes", "suggest", "--create")
    assert code == 2 and "Hint: add --yes" in err
    code, _, err = run_db_cli(capsys, migrated_db, "db", "indexes", "suggest", "--create", "--dry-run")
    assert code == 0 and statement in err
    assert execute(migrated_db, "SELECT to_regclass('idx_ugp_user_active')") == [(None,)]

    created = run_json(capsys, migrated_db, "db", "indexes", "suggest", "--create", "--yes")
    assert created["created"] == ["idx_ugp_user_active"]
    assert {item["status"] for item in created["expected"]} == {"present"}
    assert execute(
        migrated_db,
        "SELECT i.indisvalid, pg_get_expr(i.indpred, i.indrelid) FROM pg_index i "
        "WHERE i.indexrelid = to_regclass('idx_ugp_user_active')",
    ) == [(True, "is_active")]


def test_indexes_on_an_unmigrated_database_point_at_db_migrate(fresh_db, capsys):
    code, _, err = run_db_cli(capsys, fresh_db, "db", "indexes")
    assert code == 1 and "user_goal_progress does not exist" in err and "challengectl db migrate" in err


def test_create_only_goes_with_suggest(migrated_db, capsys):
    code, _, err = run_db_cli(capsys, migrated_db, "db", "indexes", "expected", "--create", "--yes")
    assert code == 2 and "--create applies to 'db indexes suggest' only" in err


# --- db activity (X9) -----------------------------------------------------------------------------


@pytest.fixture
def blocked_update(migrated_db: str) -> Iterator[dict[str, Any]]:
    """A session holding a row lock (idle in transaction) and another whose UPDATE of that row waits
    for it in a thread; released (rolled back) at the end."""
    seed_progress(migrated_db, {"lock-user": (1, 1)})
    holder = psycopg.connect(migrated_db, application_name="test-holder")
    holder.execute("SELECT progress FROM user_goal_progress WHERE user_id = 'lock-user' FOR UPDATE")
    waiter = psycopg.connect(migrated_db, application_name="test-waiter", autocommit=True)
    scene: dict[str, Any] = {
        "url": migrated_db,
        "holder_pid": holder.info.backend_pid,
        "waiter_pid": waiter.info.backend_pid,
    }

    def update() -> None:
        try:
            waiter.execute("UPDATE user_goal_progress SET progress = progress + 1 WHERE user_id = 'lock-user'")
            scene["outcome"] = "updated"
        except psycopg.errors.QueryCanceled:
            scene["outcome"] = "cancelled"

    thread = threading.Thread(target=update, daemon=True)
    thread.start()
    scene["thread"] = thread
    wait_for(
        lambda: (
            execute(migrated_db, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (scene["waiter_pid"],))
            == [("Lock",)]
        ),
        "the UPDATE to wait for the row lock",
    )
    try:
        yield scene
    finally:
        holder.rollback()
        holder.close()
        thread.join(WAIT_LIMIT_S)
        waiter.close()


def test_activity_blocking_shows_the_blocked_session_and_its_blocker(blocked_update, capsys):
    url, holder_pid, waiter_pid = blocked_update["url"], blocked_update["holder_pid"], blocked_update["waiter_pid"]

    report = run_json(capsys, url, "db", "activity", "--blocking")
    item = next(entry for entry in report["items"] if entry["pid"] == waiter_pid)
    assert item["blocker_pids"] == [holder_pid]
    assert item["application_name"] == "test-waiter" and item["query"].startswith("UPDATE user_goal_progress")
    assert item["lock_type"] == "transactionid" and item["lock_mode"] == "ShareLock"
    assert item["relation"] == "user_goal_progress" and item["lock_wait_ms"] >= 0
    [blocker] = item["blockers"]
    assert blocker["pid"] == holder_pid and blocker["state"] == "idle in transaction"
    assert blocker["query"].endswith("FOR UPDATE") and blocker["xact_age_ms"] >= item["lock_wait_ms"] - 1000
    assert blocker["blocked_by"] == []

    code, tree, _ = run_db_cli(capsys, url, "-o", "table", "db", "activity", "--blocking")
    assert code == 0 and f"pid {waiter_pid}" in tree and f"blocked by pid {holder_pid}" in tree


def test_activity_lists_sessions_by_state_and_long_running_queries(blocked_update, capsys):
    url, holder_pid, waiter_pid = blocked_update["url"], blocked_update["holder_pid"], blocked_update["waiter_pid"]

    report = run_json(capsys, url, "db", "activity", "--min-duration", "0s")
    applications = {
        entry["application_name"]: entry["connections"] for entry in report["connections"]["by_application"]
    }
    assert applications["challengectl-cli"] >= 1 and applications["test-waiter"] == 1
    limits = report["connections"]
    assert limits["usable_connections"] == (
        limits["max_connections"] - limits["superuser_reserved_connections"] - limits["reserved_connections"]
    )
    running = {entry["pid"]: entry for entry in report["long_running"]["items"]}
    assert running[waiter_pid]["wait_event_type"] == "Lock" and running[waiter_pid]["state"] == "active"
    # Idle in transaction is not idle: it shows, timed from the start of its transaction (longest first).
    assert running[holder_pid]["state"] == "idle in transaction"
    assert list(running).index(holder_pid) < list(running).index(waiter_pid)

    idle = run_json(capsys, url, "db", "activity", "--state", "idle in transaction", "--min-duration", "0s")
    assert [entry["pid"] for entry in idle["long_running"]["items"]] == [holder_pid]
    far = run_json(capsys, url, "db", "activity", "--min-duration", "1h")
    assert far["long_running"]["items"] == []


def test_activity_cancel_needs_confirmation_then_cancels_the_blocked_query(blocked_update, capsys):
    url, waiter_pid = blocked_update["url"], blocked_update["waiter_pid"]

    code, _, err = run_db_cli(capsys, url, "db", "activity", "--cancel", str(waiter_pid))
    assert code == 2 and "Error: refusing to cancel the running query of backend" in err and "Hint: add --yes" in err
    assert blocked_update["thread"].is_alive()

    result = run_json(capsys, url, "db", "activity", "--cancel", str(waiter_pid), "--yes")
    assert result == {"pid": waiter_pid, "action": "cancel", "signalled": True}
    blocked_update["thread"].join(WAIT_LIMIT_S)
    assert blocked_update["outcome"] == "cancelled"


def test_activity_signal_of_an_unknown_pid_is_not_found(migrated_db, capsys):
    code, _, err = run_db_cli(capsys, migrated_db, "db", "activity", "--terminate", "2147483000", "--yes")
    assert code == 3 and "no PostgreSQL backend with pid 2147483000" in err


def test_activity_watch_streams_one_ndjson_object_per_tick_when_piped(migrated_db, capsys):
    code, out, err = run_db_cli(capsys, migrated_db, "db", "activity", "--watch", "--count", "2", "--interval", "50ms")
    assert code == 0, err
    ticks = [json.loads(line) for line in out.splitlines()]
    assert len(ticks) == 2
    for tick in ticks:
        assert_snake_case(tick)
        assert tick["ts"].endswith("Z") and tick["connections"]["in_database"] >= 1


def test_activity_watch_reports_failed_ticks_and_exits_5_without_a_good_one(capsys):
    code, out, err = run_db_cli(
        capsys, "postgresql://postgres@127.0.0.1:1/nothing", "db", "activity", "--watch", "--count", "1"
    )
    assert code == 5 and out == ""
    assert "Warning: poll failed:" in err and "unreachable" in err and "retrying in" in err
    assert "Hint: check --database-url / DATABASE_URL" in err


# --- db tables ------------------------------------------------------------------------------------


def test_tables_show_sizes_exact_counts_and_the_goals_per_user_histogram(migrated_db, capsys):
    seed_progress(migrated_db, {"solo": (1, 1), "few": (4, 0), "many": (7, 3)})

    report = run_json(capsys, migrated_db, "db", "tables", "--exact", "--histogram")
    tables = {item["table_name"]: item for item in report["tables"]["items"]}
    assert set(tables) == {"user_goal_progress", "reward_grants"} and report["missing_tables"] == []
    progress = tables["user_goal_progress"]
    assert (progress["exact_rows"], progress["distinct_users"]) == (12, 3)
    assert progress["table_bytes"] > 0 and progress["indexes_bytes"] > 0
    assert progress["total_bytes"] == progress["table_bytes"] + progress["indexes_bytes"]
    assert progress["n_tup_ins"] == 12 and progress["live_rows"] == 12
    assert (tables["reward_grants"]["exact_rows"], tables["reward_grants"]["distinct_users"]) == (0, 0)
    assert report["database"]["size_bytes"] > progress["total_bytes"]
    assert report["settings"]["server_version_num"] >= 110000

    histogram = report["histogram"]
    counts = {bucket["label"]: (bucket["users_all"], bucket["users_active"]) for bucket in histogram["buckets"]}
    assert list(counts) == ["1", "2-5", "6-10", "11-20", "21-50", "51-100", "101-200", "201-500", ">500"]
    assert counts["1"] == (1, 1) and counts["2-5"] == (1, 1) and counts["6-10"] == (1, 0)
    assert sum(all_users for all_users, _ in counts.values()) == 3
    assert (histogram["users"], histogram["users_without_active"]) == (3, 1)
    assert (histogram["mean_rows"], histogram["max_rows"]) == (4.0, 7)
    assert (histogram["mean_active_rows"], histogram["max_active_rows"]) == (1.33, 3)

    sampled = run_json(capsys, migrated_db, "db", "tables", "--histogram", "--sample", "100")
    assert sampled["histogram"]["sample_pct"] == 100 and sampled["histogram"]["users"] == 3
    assert "exact_rows" not in sampled["tables"]["items"][0]

    code, table, _ = run_db_cli(capsys, migrated_db, "-o", "table", "db", "tables", "--histogram")
    assert code == 0 and "rows per user" in table and "user_goal_progress" in table
    code, csv_text, _ = run_db_cli(capsys, migrated_db, "-o", "csv", "db", "tables")
    assert code == 0 and csv_text.splitlines()[0].startswith("table_name,total_bytes")


def test_tables_against_an_unreachable_server_exit_5(capsys):
    code, _, err = run_db_cli(capsys, "postgresql://postgres@127.0.0.1:1/nothing", "db", "tables")
    assert code == 5 and "PostgreSQL 127.0.0.1:1/nothing unreachable" in err
    assert "Hint: check --database-url / DATABASE_URL" in err


# --- db queries (X8) ------------------------------------------------------------------------------

PG13_COLUMNS = {
    "userid",
    "dbid",
    "queryid",
    "query",
    "plans",
    "total_plan_time",
    "calls",
    "total_exec_time",
    "min_exec_time",
    "max_exec_time",
    "mean_exec_time",
    "stddev_exec_time",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "blk_read_time",
    "blk_write_time",
}
PG12_COLUMNS = {
    "userid",
    "dbid",
    "queryid",
    "query",
    "calls",
    "total_time",
    "min_time",
    "max_time",
    "mean_time",
    "stddev_time",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "blk_read_time",
    "blk_write_time",
}
PG17_COLUMNS = (PG13_COLUMNS - {"blk_read_time", "blk_write_time"}) | {"shared_blk_read_time", "shared_blk_write_time"}


def test_statement_sql_uses_exec_time_columns_from_postgresql_13():
    columns = pgd.statement_columns(PG13_COLUMNS)
    text = pgd.top_statements_sql("public", columns, "mean").as_string(None)
    assert 's."total_exec_time" AS total_ms' in text and 's."mean_exec_time" AS mean_ms' in text
    assert 's."max_exec_time" AS max_ms' in text and 's."total_plan_time" AS total_plan_ms' in text
    assert 's."blk_read_time" + s."blk_write_time" AS io_ms' in text
    assert '"public"."pg_stat_statements"' in text and "ORDER BY mean_ms DESC" in text
    assert "total_time" not in text.replace("total_exec_time", "").replace("total_plan_time", "")


def test_statement_sql_uses_time_columns_up_to_postgresql_12():
    columns = pgd.statement_columns(PG12_COLUMNS)
    text = pgd.top_statements_sql("monitoring", columns, "io").as_string(None)
    assert 's."total_time" AS total_ms' in text and 's."mean_time" AS mean_ms' in text
    assert 's."stddev_time" AS stddev_ms' in text and "NULL::float8 AS total_plan_ms" in text
    assert "exec_time" not in text and '"monitoring"."pg_stat_statements"' in text
    assert "ORDER BY io_ms DESC NULLS LAST, shared_blks_read DESC" in text


def test_statement_sql_uses_shared_blk_times_from_postgresql_17():
    text = pgd.top_statements_sql("public", pgd.statement_columns(PG17_COLUMNS), "total").as_string(None)
    assert 's."shared_blk_read_time" + s."shared_blk_write_time" AS io_ms' in text


def test_statements_are_labelled_with_their_registry_names():
    registry = {query.name: query.sql for query in load_registry()}
    server_text = pgd.as_server_text(registry["active_goals"])
    assert "%(" not in server_text and "$1" in server_text
    entry = pgd.StatementStats(
        queryid=1,
        calls=3,
        total_ms=3.0,
        mean_ms=1.0,
        min_ms=0.5,
        max_ms=1.5,
        stddev_ms=0.1,
        total_plan_ms=None,
        rows=9,
        share_pct=50.0,
        shared_blks_hit=10,
        shared_blks_read=0,
        io_ms=None,
        query="  " + "\n ".join(server_text.split()) + " ",
    )
    other = pgd.StatementStats(**{**entry.__dict__, "query": "SELECT 1"})
    labelled = pgd.label_statements([entry, other], registry)
    assert [item.query_name for item in labelled] == ["active_goals", None]


def preloaded(url: str) -> bool:
    [(libraries,)] = execute(url, "SHOW shared_preload_libraries")
    return "pg_stat_statements" in [name.strip() for name in libraries.split(",")]


def test_queries_without_the_extension_exit_5_with_the_hint(migrated_db, capsys):
    # No service answers either, so its own timings cannot stand in (tests/test_fresh_install_diagnostics.py).
    closed = f"http://127.0.0.1:{free_port()}"
    code, out, err = run_db_cli(capsys, migrated_db, "--admin-url", closed, "-o", "json", "db", "queries")
    assert code == 5
    assert "the service's own timings are unavailable too" in err
    assert "Hint: add pg_stat_statements to shared_preload_libraries and run CREATE EXTENSION pg_stat_statements" in err
    assert "not created in database" in err
    assert json.loads(out)["error"]["exit_code"] == 5


def test_queries_with_the_extension_created_but_not_preloaded_exit_5(migrated_db, capsys):
    if not execute(migrated_db, "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'"):
        pytest.skip("pg_stat_statements is not installed on this server")
    execute(migrated_db, "CREATE EXTENSION pg_stat_statements")
    # The view's actual columns decide the column set (PostgreSQL 13+ here: *_exec_time).
    with database.connect(migrated_db, 10_000, 10) as conn:
        view = pgd.statement_stats_view(conn)
        server_version_num = pgd.server_info(conn).server_version_num
    assert view.columns.total == ("total_exec_time" if server_version_num >= 130000 else "total_time")

    code, _, err = run_db_cli(capsys, migrated_db, "db", "queries", "--reset")
    assert code == 2 and "refusing to reset pg_stat_statements" in err and "Hint: add --yes" in err
    if preloaded(migrated_db):
        return  # the happy path is covered below, on a private cluster
    closed = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_db_cli(capsys, migrated_db, "--admin-url", closed, "db", "queries", "--by", "mean")
    assert code == 5 and "missing from shared_preload_libraries" in err
    assert "Hint: add pg_stat_statements to shared_preload_libraries and run CREATE EXTENSION pg_stat_statements" in err


def postgres_bindir() -> Path | None:
    """The server binaries of the machine's PostgreSQL installation (pg_config), if any."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
    return bindir if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists() else None


@pytest.fixture(scope="module")
def preloaded_pg_url() -> Iterator[str]:
    """A private PostgreSQL cluster started with shared_preload_libraries = pg_stat_statements (the
    machine's server cannot be restarted with it), initialised from the installed server binaries."""
    bindir = postgres_bindir()
    if bindir is None or not list((bindir.parent / "lib").glob("pg_stat_statements.*")):
        pytest.skip("no local PostgreSQL server binaries with pg_stat_statements to start a private cluster")
    # postgres refuses to run as root: run it as the unprivileged user the embedded server uses.
    run_as = PGSERVER_OS_USER if os.geteuid() == 0 else None
    if run_as is not None:
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            pytest.skip(f"running as root and there is no OS user {run_as} to run postgres as")
    base = Path(tempfile.mkdtemp(prefix="challengectl-pgss-"))
    base.chmod(0o755)
    if run_as is not None:
        shutil.chown(base, user=run_as)
    data, port = base / "data", free_port()
    options = f"-c shared_preload_libraries=pg_stat_statements -c port={port} -c listen_addresses=127.0.0.1 -k {base}"
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
        user=run_as,
        cwd=base,
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o", options, "start"],
        user=run_as,
        cwd=base,
        check=True,
        capture_output=True,
        timeout=120,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        execute(url, "CREATE EXTENSION pg_stat_statements")
        apply_migrations(url)
        yield url
    finally:
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            user=run_as,
            cwd=base,
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


def test_queries_list_the_top_statements_labelled_with_registry_names(preloaded_pg_url, capsys):
    url = preloaded_pg_url
    statement = load_registry().get("user_goal_count").sql
    with psycopg.connect(url, autocommit=True) as conn:
        for user in ("a", "b", "c"):
            conn.execute(statement, {"user_id": user})

    report = run_json(capsys, url, "db", "queries", "--filter", "goal_progress", "--by", "calls")
    assert report["order_by"] == "calls" and report["columns"]["total"] == "total_exec_time"
    top = report["items"][0]
    assert top["query_name"] == "user_goal_count" and top["calls"] == 3
    assert top["total_ms"] >= top["max_ms"] >= top["mean_ms"] >= top["min_ms"] >= 0
    assert 0 < top["share_pct"] <= 100

    limited = run_json(capsys, url, "db", "queries", "--limit", "1", "--min-calls", "2")
    assert limited["total"] == 1 and limited["items"][0]["calls"] >= 2
    nothing = run_json(capsys, url, "db", "queries", "--filter", "no statement has this text")
    assert nothing["items"] == []
    code, table, _ = run_db_cli(capsys, url, "-o", "table", "db", "queries", "--by", "calls", "--min-calls", "3")
    assert code == 0 and "user_goal_count" in table and "total_exec_time" in table

    reset = run_json(capsys, url, "db", "queries", "--reset", "--yes")
    assert reset == {"reset": True, "database": "postgres"}
    after = run_json(capsys, url, "db", "queries", "--filter", "goal_progress")
    assert all(item["query_name"] != "user_goal_count" for item in after["items"])


def test_queries_reject_an_unknown_order(migrated_db, capsys):
    code, _, err = run_db_cli(capsys, migrated_db, "db", "queries", "--by", "speed")
    assert code == 2 and "use --by total|mean|calls|rows|io" in err

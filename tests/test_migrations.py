"""Migration runner and schema against real PostgreSQL (docs/data-model.md#table-user_goal_progress, docs/data-model.md#migrations, docs/rules.md H5 and the index part of H6).

Each test gets its own throwaway database, because the runner's behaviour depends on what is already
recorded in it.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import psycopg
import pytest

from service.config.resources import migrations_dir
from service.storage.migrations import (
    Migration,
    MigrationError,
    apply_migrations,
    discover_migrations,
    migration_status,
    schema_version,
)


def _query(url: str, statement: str, params: tuple | None = None) -> list[tuple]:
    """Run one statement (or, without params, several) and return the rows of the first result."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _recorded(url: str) -> list[tuple[int, str, str]]:
    return [
        (version, name, checksum)
        for version, name, checksum in _query(
            url, "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        )
    ]


def _write(directory: Path, files: dict[str, str]) -> Path:
    for file_name, text in files.items():
        (directory / file_name).write_text(text)
    return directory


# --- discovery -------------------------------------------------------------------------------------


def test_bundled_migrations_are_discovered_in_order_with_file_checksums() -> None:
    migrations = discover_migrations()
    assert [(m.version, m.name) for m in migrations] == [
        (1, "create_user_goal_progress"),
        (2, "create_reward_grants"),
        (3, "user_goal_progress_value_event_at"),
        (4, "implied_default_goals"),
    ]
    for migration in migrations:
        assert migration.path.parent == migrations_dir()
        assert migration.checksum == hashlib.sha256(migration.path.read_bytes()).hexdigest()
        assert migration.no_transaction is False


def test_no_transaction_marker_and_bad_file_names_are_detected(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "0001_table.sql": "CREATE TABLE IF NOT EXISTS t (x int);\n",
            "0002_index.sql": ("-- migrate: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x);\n"),
        },
    )
    assert [m.no_transaction for m in discover_migrations(tmp_path)] == [False, True]

    (tmp_path / "3_short.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match="3_short.sql"):
        discover_migrations(tmp_path)


def test_no_transaction_file_with_two_statements_is_refused_before_connecting(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {"0001_two.sql": "-- migrate: no-transaction\nCREATE TABLE a (x int);\nCREATE TABLE b (x int);\n"},
    )
    with pytest.raises(MigrationError, match="0001_two.sql") as raised:
        apply_migrations("postgresql://nobody@127.0.0.1:1/none", directory=tmp_path)
    assert raised.value.exit_code == 1


# --- H5: applying ----------------------------------------------------------------------------------


def test_fresh_database_gets_every_migration_recorded_with_its_checksum(fresh_db: str) -> None:
    assert schema_version(fresh_db) is None
    assert [m.version for m in apply_migrations(fresh_db, dry_run=True)] == [1, 2, 3, 4]
    assert _query(fresh_db, "SELECT to_regclass('schema_migrations') IS NULL") == [(True,)]

    applied = apply_migrations(fresh_db)

    assert [m.version for m in applied] == [1, 2, 3, 4]
    assert _recorded(fresh_db) == [(m.version, m.name, m.checksum) for m in discover_migrations()]
    assert schema_version(fresh_db) == 4
    status = migration_status(fresh_db)
    assert status.applied == [1, 2, 3, 4] and status.pending == [] and status.up_to_date


def test_second_run_applies_nothing(fresh_db: str) -> None:
    apply_migrations(fresh_db)
    applied_at = _query(fresh_db, "SELECT version, applied_at FROM schema_migrations ORDER BY version")

    assert apply_migrations(fresh_db) == []
    applied_at_again = _query(fresh_db, "SELECT version, applied_at FROM schema_migrations ORDER BY version")
    assert applied_at_again == applied_at


def _apply_concurrently(url: str, directory: Path | None, runners: int = 2) -> list[list[Migration]]:
    barrier = threading.Barrier(runners)
    results: list[list[Migration]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(apply_migrations(url, directory=directory, application_name="challengectl-test"))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a migration runner hung"
    assert errors == []
    return results


def test_two_instances_migrating_at_once_apply_each_file_once(fresh_db: str) -> None:
    results = _apply_concurrently(fresh_db, None)

    applied_versions = sorted(m.version for result in results for m in result)
    assert applied_versions == [1, 2, 3, 4]
    assert [version for version, _, _ in _recorded(fresh_db)] == [1, 2, 3, 4]


def test_waiting_instance_does_not_deadlock_a_concurrent_index_build(fresh_db: str, tmp_path: Path) -> None:
    # The first runner sleeps while holding the lock, so the second is waiting for it when the first
    # builds an index concurrently (which waits for every older snapshot in the database).
    directory = _write(
        tmp_path,
        {
            "0001_table.sql": "CREATE TABLE IF NOT EXISTS t (x int);\nSELECT pg_sleep(0.3);\n",
            "0002_index.sql": ("-- migrate: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n"),
        },
    )
    results = _apply_concurrently(fresh_db, directory)

    assert sorted(m.version for result in results for m in result) == [1, 2]
    assert _query(fresh_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_x'::regclass") == [(True,)]


# --- H5: refusals ----------------------------------------------------------------------------------


def test_checksum_mismatch_is_refused_with_exit_code_2(fresh_db: str) -> None:
    apply_migrations(fresh_db)
    _query(fresh_db, "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")

    with pytest.raises(MigrationError, match="checksum mismatch") as raised:
        apply_migrations(fresh_db)
    assert raised.value.exit_code == 2
    assert migration_status(fresh_db).checksum_mismatches == [1]


def test_unknown_recorded_version_is_refused_with_exit_code_2(fresh_db: str) -> None:
    apply_migrations(fresh_db)
    _query(
        fresh_db,
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'from_the_future', 'x')",
    )

    with pytest.raises(MigrationError, match="9999") as raised:
        apply_migrations(fresh_db)
    assert raised.value.exit_code == 2
    status = migration_status(fresh_db)
    assert status.unknown_versions == [9999] and not status.up_to_date


def test_refusal_happens_before_anything_is_applied(fresh_db: str, tmp_path: Path) -> None:
    first = _write(tmp_path, {"0001_a.sql": "CREATE TABLE IF NOT EXISTS a (x int);\n"})
    apply_migrations(fresh_db, directory=first)
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE IF NOT EXISTS a (x bigint);\n")
    (tmp_path / "0002_b.sql").write_text("CREATE TABLE IF NOT EXISTS b (x int);\n")

    with pytest.raises(MigrationError) as raised:
        apply_migrations(fresh_db, directory=tmp_path)
    assert raised.value.exit_code == 2
    assert _query(fresh_db, "SELECT to_regclass('b') IS NULL") == [(True,)]


def test_foreign_schema_migrations_table_is_refused_naming_it(fresh_db: str) -> None:
    _query(
        fresh_db,
        "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);"
        " INSERT INTO schema_migrations VALUES (3, false)",
    )

    with pytest.raises(MigrationError, match=r"public\.schema_migrations") as raised:
        apply_migrations(fresh_db)
    assert raised.value.exit_code == 2
    assert "version bigint, dirty boolean" in str(raised.value)
    assert _query(fresh_db, "SELECT to_regclass('user_goal_progress') IS NULL") == [(True,)]
    assert migration_status(fresh_db).foreign_table is True
    with pytest.raises(MigrationError) as raised_by_version:
        schema_version(fresh_db)
    assert raised_by_version.value.exit_code == 2


def test_unreachable_database_is_exit_code_5_without_the_password(tmp_path: Path) -> None:
    with pytest.raises(MigrationError) as raised:
        apply_migrations("postgresql://postgres:s3cret-pw@127.0.0.1:1/somedb?connect_timeout=2")
    assert raised.value.exit_code == 5
    assert "127.0.0.1:1/somedb" in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)


# --- H5: failures ----------------------------------------------------------------------------------


def test_failing_file_rolls_back_only_itself_and_names_the_file(fresh_db: str, tmp_path: Path) -> None:
    directory = _write(
        tmp_path,
        {
            "0001_good.sql": "CREATE TABLE IF NOT EXISTS good (x int);\n",
            "0002_bad.sql": "CREATE TABLE IF NOT EXISTS half_done (x int);\nSELECT 1 / 0;\n",
            "0003_after.sql": "CREATE TABLE IF NOT EXISTS after_bad (x int);\n",
        },
    )

    with pytest.raises(MigrationError) as raised:
        apply_migrations(fresh_db, directory=directory)

    assert raised.value.exit_code == 1
    assert "0002_bad.sql" in str(raised.value)
    assert "division by zero" in str(raised.value)
    assert "SELECT" not in str(raised.value)
    assert [version for version, _, _ in _recorded(fresh_db)] == [1]
    assert _query(
        fresh_db, "SELECT to_regclass('good') IS NOT NULL, to_regclass('half_done'), to_regclass('after_bad')"
    ) == [(True, None, None)]
    # The lock was released: a fixed file applies on the next run.
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE IF NOT EXISTS half_done (x int);\n")
    assert [m.version for m in apply_migrations(fresh_db, directory=directory)] == [2, 3]


def test_invalid_index_left_by_a_failed_concurrent_build_is_dropped_and_rebuilt(fresh_db: str, tmp_path: Path) -> None:
    directory = _write(tmp_path, {"0001_table.sql": "CREATE TABLE IF NOT EXISTS t (x int);\n"})
    apply_migrations(fresh_db, directory=directory)
    _query(fresh_db, "INSERT INTO t VALUES (1), (1), (2)")
    (directory / "0002_unique.sql").write_text(
        "-- migrate: no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x_unique ON t (x);\n"
    )

    with pytest.raises(MigrationError, match="0002_unique.sql") as raised:
        apply_migrations(fresh_db, directory=directory)
    assert raised.value.exit_code == 1
    validity = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('t_x_unique')"
    assert _query(fresh_db, validity) == [(False,)]
    assert [version for version, _, _ in _recorded(fresh_db)] == [1]

    _query(fresh_db, "DELETE FROM t WHERE ctid <> (SELECT min(ctid) FROM t WHERE x = 1) AND x = 1")
    assert [m.version for m in apply_migrations(fresh_db, directory=directory)] == [2]
    assert _query(fresh_db, validity) == [(True,)]
    assert [version for version, _, _ in _recorded(fresh_db)] == [1, 2]


# --- schema (docs/data-model.md#table-user_goal_progress, docs/data-model.md#table-reward_grants, H6 indexes) --------------------------------------------------------------

_UGP_COLUMNS = [
    ("user_id", "character varying", 100, "NO", None),
    ("goal_id", "character varying", 100, "NO", None),
    ("challenge_id", "character varying", 100, "NO", None),
    ("namespace", "character varying", 100, "NO", None),
    ("progress", "integer", None, "NO", "0"),
    ("status", "character varying", 20, "NO", "'not_started'::character varying"),
    ("completed_at", "timestamp with time zone", None, "YES", None),
    ("claimed_at", "timestamp with time zone", None, "YES", None),
    ("created_at", "timestamp with time zone", None, "NO", "now()"),
    ("updated_at", "timestamp with time zone", None, "NO", "now()"),
    ("is_active", "boolean", None, "NO", "true"),
    ("assigned_at", "timestamp with time zone", None, "YES", None),
    ("expires_at", "timestamp with time zone", None, "YES", None),
    ("baseline_value", "integer", None, "YES", None),
    ("value_event_at", "timestamp with time zone", None, "YES", None),
]

_GRANT_COLUMNS = [
    ("namespace", "character varying", 100, "NO", None),
    ("user_id", "character varying", 100, "NO", None),
    ("goal_id", "character varying", 100, "NO", None),
    ("generation", "integer", None, "NO", None),
    ("challenge_id", "character varying", 100, "NO", None),
    ("idempotency_key", "character varying", 420, "NO", None),
    ("reward_type", "character varying", 10, "NO", None),
    ("reward_id", "character varying", 100, "NO", None),
    ("quantity", "integer", None, "NO", None),
    ("mode", "character varying", 10, "NO", None),
    ("attempts", "integer", None, "NO", "1"),
    ("granted_at", "timestamp with time zone", None, "NO", "now()"),
]


def _columns(url: str, table: str) -> list[tuple]:
    return _query(
        url,
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s"
        " ORDER BY ordinal_position",
        (table,),
    )


def _constraints(url: str, table: str) -> dict[str, str]:
    return dict(
        _query(
            url,
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = %s::regclass AND contype IN ('p', 'c')",
            (table,),
        )
    )


def _indexes(url: str, table: str) -> dict[str, str]:
    return dict(
        _query(
            url,
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s",
            (table,),
        )
    )


def test_user_goal_progress_matches_the_spec(fresh_db: str) -> None:
    apply_migrations(fresh_db)

    assert _columns(fresh_db, "user_goal_progress") == _UGP_COLUMNS
    assert _constraints(fresh_db, "user_goal_progress") == {
        "user_goal_progress_pkey": "PRIMARY KEY (user_id, goal_id)",
        "check_status": "CHECK (((status)::text = ANY ((ARRAY['not_started'::character varying, "
        "'in_progress'::character varying, 'completed'::character varying, "
        "'claimed'::character varying])::text[])))",
        "check_progress_non_negative": "CHECK ((progress >= 0))",
        "check_claimed_implies_completed": "CHECK (((claimed_at IS NULL) OR (completed_at IS NOT NULL)))",
    }
    assert _query(fresh_db, "SELECT reloptions FROM pg_class WHERE oid = 'user_goal_progress'::regclass") == [
        (["fillfactor=90"],)
    ]


def test_user_goal_progress_has_only_the_primary_key_and_the_active_partial_index(fresh_db: str) -> None:
    apply_migrations(fresh_db)

    assert _indexes(fresh_db, "user_goal_progress") == {
        "user_goal_progress_pkey": "CREATE UNIQUE INDEX user_goal_progress_pkey ON public.user_goal_progress "
        "USING btree (user_id, goal_id)",
        "idx_ugp_user_active": "CREATE INDEX idx_ugp_user_active ON public.user_goal_progress "
        "USING btree (user_id) WHERE is_active",
    }


def test_reward_grants_matches_the_spec(fresh_db: str) -> None:
    apply_migrations(fresh_db)

    assert _columns(fresh_db, "reward_grants") == _GRANT_COLUMNS
    assert sorted(_constraints(fresh_db, "reward_grants").values()) == sorted(
        [
            "PRIMARY KEY (namespace, user_id, goal_id, generation)",
            "CHECK ((generation >= 1))",
            "CHECK (((reward_type)::text = ANY ((ARRAY['ITEM'::character varying, "
            "'WALLET'::character varying])::text[])))",
            "CHECK ((quantity > 0))",
            "CHECK (((mode)::text = ANY ((ARRAY['log'::character varying, 'webhook'::character varying])::text[])))",
        ]
    )
    assert list(_indexes(fresh_db, "reward_grants")) == ["reward_grants_pkey"]


def test_every_statement_is_idempotent_when_rerun_by_hand(fresh_db: str) -> None:
    apply_migrations(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for migration in discover_migrations():
            conn.execute(migration.read_text())
    assert sorted(_indexes(fresh_db, "user_goal_progress")) == ["idx_ugp_user_active", "user_goal_progress_pkey"]

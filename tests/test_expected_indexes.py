"""The expected indexes come from the migrations, not from a second copy of their definitions."""

from __future__ import annotations

from challengectl.expected_indexes import EXPECTED_INDEXES, declared_indexes


def test_a_migration_declares_its_primary_key_and_indexes() -> None:
    migration = """
    -- a comment with CREATE INDEX IF NOT EXISTS not_this ON t (x);
    CREATE TABLE IF NOT EXISTS t (
      a INT NOT NULL,
      b INT NOT NULL,
      CONSTRAINT t_pkey PRIMARY KEY (a, b)
    );
    CREATE INDEX IF NOT EXISTS t_b_live ON t (b) WHERE live AND b > 0;
    """
    primary, index = declared_indexes(migration)
    assert (primary.index_name, primary.table_name, primary.columns, primary.primary) == (
        "t_pkey",
        "t",
        ("a", "b"),
        True,
    )
    assert primary.create_statements == (
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_pkey ON t (a, b)",
        "ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY USING INDEX t_pkey",
    )
    assert (index.index_name, index.columns, index.predicate) == ("t_b_live", ("b",), "live AND b > 0")
    assert index.create_sql == "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_b_live ON t (b) WHERE live AND b > 0"


def test_the_progress_table_expects_its_primary_key_and_the_active_rows_index() -> None:
    assert [(index.index_name, index.definition) for index in EXPECTED_INDEXES] == [
        ("user_goal_progress_pkey", "PRIMARY KEY (user_id, goal_id)"),
        ("idx_ugp_user_active", "(user_id) WHERE is_active"),
    ]
    assert all(index.used_by for index in EXPECTED_INDEXES)

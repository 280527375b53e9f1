"""The CLI's PostgreSQL data layer (docs/data-model.md#named-queries): every statement of sql/cli_queries.sql
runs on a real PostgreSQL and yields the typed record its callers read, and no CLI module holds SQL text of
its own outside the few composition points that build a statement at run time."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from challengectl import database
from challengectl import pg_diagnostics as pgd
from challengectl.bottleneck import ServiceSessions
from challengectl.checks import CatalogRows, ServerClock, StatementStatsStatus
from challengectl.cli_queries import CLI_QUERIES, cli_registry, execute, fetch_all, fetch_values
from challengectl.commands.users import RewardGrant
from challengectl.explain_runner import PlanTable, UserRow
from service.storage.migrations import apply_migrations

CLI_PACKAGE = Path(__file__).resolve().parent.parent / "challengectl"
USER = "cli-queries-user"
TABLES = list(pgd.PROJECT_TABLES)

# Each statement with parameters and the record its callers read (None: one value per row, read with
# `fetch_values`); WRITES are only executed.
WRITES = {"cli_truncate_tables"}
CASES: dict[str, tuple[dict[str, Any], type | None]] = {
    "cli_reward_grants": ({"namespace": "test", "user_id": USER}, RewardGrant),
    "cli_active_users_page": ({"after": "", "page": 10}, None),
    "cli_catalog_rows": ({"goal_ids": ["g1"], "challenge_ids": ["other"]}, CatalogRows),
    "cli_truncate_tables": ({}, None),
    "cli_server_version": ({}, None),
    "cli_ping": ({}, None),
    "cli_server_info": ({}, pgd.ServerInfo),
    "cli_connection_limits": ({}, pgd.ConnectionLimits),
    "cli_connections_by_state": (pgd.connection_groups_params(), pgd.ConnectionCount),
    "cli_service_sessions": ({}, ServiceSessions),
    "cli_sessions": ({"pid": None, "state": None, "min_duration_ms": 0}, pgd.SessionActivity),
    "cli_blocked_sessions": ({}, pgd.BlockedSession),
    "cli_blockers": ({"pids": [0]}, pgd.BlockerSession),
    # PID 0 is no backend: PostgreSQL warns and returns false, so nothing is signalled.
    "cli_cancel_backend": ({"pid": 0}, None),
    "cli_terminate_backend": ({"pid": 0}, None),
    "cli_statement_stats_extension": ({}, pgd.ExtensionVersion),
    "cli_statement_stats_columns": ({"schema": "public"}, None),
    "cli_statement_stats_status": ({}, StatementStatsStatus),
    "cli_project_indexes": ({"tables": TABLES}, pgd.IndexInfo),
    "cli_stats_age": ({}, pgd.StatsAge),
    "cli_existing_tables": ({"tables": [*TABLES, "no_such_table"]}, None),
    "cli_table_stats": ({"tables": TABLES}, pgd.TableStats),
    "cli_clock": ({}, ServerClock),
    "cli_explain_timeouts": ({"statement_timeout": "5000", "lock_timeout": "1s"}, None),
    "cli_progress_has_rows": ({}, None),
    "cli_progress_reltuples": ({}, None),
    "cli_sample_user_ids": ({"percent": 100.0, "rows": 10}, None),
    "cli_heaviest_user": ({"user_ids": [USER, "nobody"]}, None),
    "cli_user_rows": ({"user_id": USER}, UserRow),
    "cli_plan_tables": ({"schemas": ["public"], "names": ["user_goal_progress"]}, PlanTable),
}


@pytest.fixture(scope="module")
def seeded_db(pg_admin_url: str) -> Iterator[str]:
    from tests.conftest import new_database

    with new_database(pg_admin_url, "cliq") as url:
        apply_migrations(url)
        with database.connect(url) as conn:
            conn.execute(
                "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress, status)"
                " VALUES (%s, 'g1', 'c1', 'test', 3, 'in_progress'), (%s, 'g2', 'c1', 'test', 0, 'not_started')",
                [USER, USER],
            )
        yield url


def test_every_statement_has_a_case() -> None:
    assert sorted(CASES) == sorted(CLI_QUERIES) == sorted(query.name for query in cli_registry())


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_statement_runs_and_yields_its_record(seeded_db: str, name: str) -> None:
    params, record = CASES[name]
    with database.connect(seeded_db) as conn, conn.transaction(force_rollback=True):
        if name in WRITES:
            execute(conn, name, params)
        elif record is None:
            fetch_values(conn, name, params)
        else:
            fetch_all(conn, name, record, params)


def test_statements_read_what_the_database_holds(seeded_db: str) -> None:
    with database.connect(seeded_db) as conn:
        rows = fetch_all(conn, "cli_user_rows", UserRow, {"user_id": USER})
        assert [(row.goal_id, row.progress, row.is_active) for row in rows] == [("g1", 3, True), ("g2", 0, True)]
        catalog = fetch_all(conn, "cli_catalog_rows", CatalogRows, CASES["cli_catalog_rows"][0])
        assert {(row.goal_id, row.catalog_challenge_id, row.row_count) for row in catalog} == {
            ("g1", "other", 1),
            ("g2", None, 1),
        }
        assert pgd.existing_tables(conn, [*TABLES, "no_such_table"]) == TABLES
        assert fetch_values(conn, "cli_heaviest_user", CASES["cli_heaviest_user"][0]) == [USER]
        limits = pgd.connection_limits(conn)
        assert limits.usable == (
            limits.max_connections - limits.superuser_reserved_connections - limits.reserved_connections
        )
        assert limits.free == limits.usable - limits.client_sessions and limits.client_sessions >= 1
        own = pgd.find_backend(conn, conn.info.backend_pid)
        assert own is not None and own.application_name == database.APPLICATION_NAME
        assert conn.info.backend_pid not in {session.pid for session in pgd.long_running(conn, 0, "active")}
        summary = pgd.connection_summary(conn)
        own = [group for group in summary.groups if group.application_name == database.APPLICATION_NAME]
        assert own and summary.in_database >= 1
        others = fetch_all(
            conn, "cli_connections_by_state", pgd.ConnectionCount, pgd.connection_groups_params(include_self=False)
        )
        assert sum(group.connections for group in others) == summary.in_database - 1
        [table] = fetch_all(conn, "cli_plan_tables", PlanTable, CASES["cli_plan_tables"][0])
        indexes = pgd.project_indexes(conn, [table.qualified_name])
        assert {index.index_name for index in indexes} == {"user_goal_progress_pkey", "idx_ugp_user_active"}


def test_truncate_empties_the_tables(seeded_db: str) -> None:
    with database.connect(seeded_db) as conn, conn.transaction(force_rollback=True):
        execute(conn, "cli_truncate_tables")
        assert fetch_values(conn, "cli_progress_has_rows") == [False]


# --- no inline SQL --------------------------------------------------------------------------------

# A string that starts a statement, or names a catalog relation anywhere.
SQL_START = re.compile(
    r"^\s*(SELECT\s|WITH\s+\w+\s+AS\b|INSERT\s+INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|TRUNCATE\s|SHOW\s+\w+\s*$|"
    r"SET\s+\w+\s*(=|TO\s)|BEGIN\b|ROLLBACK\b|COMMIT\b|EXPLAIN\s*\($)"
)
CATALOG = re.compile(r"\bFROM\s+pg_\w+|\bpg_stat_\w+\s+\w+\s+WHERE", re.IGNORECASE)

# The composition points (docs/data-model.md#named-queries): statements built at run time because an
# identifier varies, or EXPLAIN of another statement. Each must still hold SQL.
COMPOSITION_POINTS = {
    ("pg_diagnostics.py", "_TOP_STATEMENTS"),  # pg_stat_statements' schema and version-dependent columns
    ("pg_diagnostics.py", "reset_statement_stats"),  # the extension's schema
    ("pg_diagnostics.py", "exact_count"),  # the table
    ("pg_diagnostics.py", "_HISTOGRAM"),  # the table and the optional TABLESAMPLE clause
    ("explain_runner.py", "explain_prefix"),  # EXPLAIN (options) in front of the explained statement
    # Not run: a statement the plan advice shows the operator.
    ("plans.py", "spill_findings"),
}


def sql_literals(path: Path) -> Iterator[tuple[str, str]]:
    """(enclosing definition, text) of each string literal of a module that reads as SQL; docstrings
    are prose and are skipped."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }

    def visit(node: ast.AST, owner: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            owner = node.name
        elif owner == "<module>" and isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            owner = node.targets[0].id
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if SQL_START.match(node.value) or CATALOG.search(node.value):
                yield owner, node.value
        for child in ast.iter_child_nodes(node):
            yield from visit(child, owner)

    yield from visit(tree, "<module>")


def inline_sql() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(CLI_PACKAGE.rglob("*.py")):
        for owner, text in sql_literals(path):
            found.setdefault((str(path.relative_to(CLI_PACKAGE)), owner), []).append(text.strip()[:60])
    return found


def test_no_cli_module_holds_inline_sql() -> None:
    found = inline_sql()
    assert {place: texts for place, texts in found.items() if place not in COMPOSITION_POINTS} == {}
    assert set(found) >= COMPOSITION_POINTS, "a composition point no longer composes SQL: drop it from the list"


def test_the_scan_finds_sql(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text(
        '"""SELECT in a docstring is prose."""\n'
        "def read(conn):\n"
        '    return conn.execute("SELECT count(*) FROM user_goal_progress")\n'
        "HINT = 'e.g. --sql \"SELECT 1\"'\n"
        'STATS = "select relname from pg_stat_user_tables"\n',
        encoding="utf-8",
    )
    assert [owner for owner, _ in sql_literals(module)] == ["read", "STATS"]

"""Planner statistics of the project's tables (docs/diagnostics.md#postgresql): which tables have none yet,
and ANALYZE. A fresh install's tables have no statistics until autovacuum reaches them, and plans made
without them are not meaningful, so `serve` analyzes those tables after its migrations, `users init` after
seeding players, and `challengectl db analyze` on demand."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from service.storage.store import session_options

PROJECT_TABLES = ("user_goal_progress", "reward_grants")

# pg_stats has rows for a table once ANALYZE has seen rows in it (an empty table never gets any).
_WITHOUT_STATISTICS = """
SELECT name
  FROM unnest(%s::text[]) WITH ORDINALITY AS t(name, position)
 WHERE to_regclass(name) IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM pg_stats AS s WHERE s.schemaname = current_schema() AND s.tablename = t.name)
 ORDER BY position
"""


@dataclass(frozen=True)
class Analyzed:
    table: str
    duration_ms: float


def tables_without_statistics(conn: psycopg.Connection, tables: Sequence[str] = PROJECT_TABLES) -> list[str]:
    """Those of `tables` that exist and have no planner statistics."""
    return [name for (name,) in conn.execute(_WITHOUT_STATISTICS, [list(tables)]).fetchall()]


def analyze_tables(conn: psycopg.Connection, tables: Sequence[str] = PROJECT_TABLES) -> list[Analyzed]:
    """ANALYZE each of `tables` that exists, timing each."""
    done = []
    for name in tables:
        if conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone() != (True,):
            continue
        started = time.perf_counter()
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(name)))
        done.append(Analyzed(name, round((time.perf_counter() - started) * 1000, 1)))
    return done


def analyze_database(conninfo: str, application_name: str, *, only_unanalyzed: bool = False) -> list[Analyzed]:
    """Connect and ANALYZE the project's tables (`only_unanalyzed`: those without statistics yet)."""
    with psycopg.connect(
        conninfo, autocommit=True, application_name=application_name, options=session_options(conninfo)
    ) as conn:
        return analyze_tables(conn, tables_without_statistics(conn) if only_unanalyzed else PROJECT_TABLES)

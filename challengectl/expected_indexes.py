"""The index rules of docs/data-model.md#indexes, shared by `challengectl explain`, `db indexes` and `doctor`: the
indexes the service expects (`EXPECTED_INDEXES`, read from the migrations that create them, with the
statements that re-create them concurrently) and
the test of whether one index is made redundant by another (`is_covered_by`), on which the "no index
may duplicate the primary key" rule rests.

No database access here (only the migration files are read), so `challengectl.plans` can use it
without importing a driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.config.resources import migrations_dir

PROGRESS_TABLE = "user_goal_progress"


@dataclass(frozen=True)
class ExpectedIndex:
    """An index docs/data-model.md#indexes requires, with the constant statements that (re)create it."""

    index_name: str
    table_name: str
    columns: tuple[str, ...]
    predicate: str | None
    primary: bool
    used_by: str
    create_statements: tuple[str, ...]

    @property
    def definition(self) -> str:
        where = f" WHERE {self.predicate}" if self.predicate else ""
        kind = "PRIMARY KEY " if self.primary else ""
        return f"{kind}({', '.join(self.columns)}){where}"

    @property
    def create_sql(self) -> str:
        """The one statement that creates the index from scratch, for advice: the primary key as its
        constraint, any other index by its `CREATE INDEX CONCURRENTLY IF NOT EXISTS` statement."""
        if self.primary:
            return (
                f"ALTER TABLE {self.table_name} ADD CONSTRAINT {self.index_name} "
                f"PRIMARY KEY ({', '.join(self.columns)})"
            )
        return self.create_statements[0]


# Which statements of sql/queries.sql each index serves, for reports; the definitions come from the migrations.
USED_BY = {
    "user_goal_progress_pkey": "every per-user statement, ON CONFLICT arbiter",
    "idx_ugp_user_active": "active_goals, active_view, deactivate_challenge_goals",
}

_COMMENT = re.compile(r"--[^\n]*")
_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\s*\)", re.S)
_PRIMARY_KEY = re.compile(r"CONSTRAINT (\w+) PRIMARY KEY \(([^)]*)\)")
_INDEX = re.compile(r"CREATE INDEX (?:CONCURRENTLY )?IF NOT EXISTS (\w+) ON (\w+) \(([^)]*)\)(?: WHERE ([^;]+))?;")


def _columns(text: str) -> tuple[str, ...]:
    return tuple(column.strip() for column in text.split(","))


def declared_indexes(migration_sql: str) -> list[ExpectedIndex]:
    """The primary keys and indexes a migration's SQL declares, with the statements that re-create them
    without blocking writes."""
    text = _COMMENT.sub("", migration_sql)
    found = []
    for table, body in _TABLE.findall(text):
        for name, columns in _PRIMARY_KEY.findall(body):
            keys = _columns(columns)
            found.append(
                ExpectedIndex(
                    index_name=name,
                    table_name=table,
                    columns=keys,
                    predicate=None,
                    primary=True,
                    used_by=USED_BY.get(name, ""),
                    create_statements=(
                        f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({', '.join(keys)})",
                        f"ALTER TABLE {table} ADD CONSTRAINT {name} PRIMARY KEY USING INDEX {name}",
                    ),
                )
            )
    for name, table, columns, predicate in _INDEX.findall(text):
        keys = _columns(columns)
        where = " ".join(predicate.split())
        statement = f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({', '.join(keys)})"
        found.append(
            ExpectedIndex(
                index_name=name,
                table_name=table,
                columns=keys,
                predicate=where or None,
                primary=False,
                used_by=USED_BY.get(name, ""),
                create_statements=(statement + (f" WHERE {where}" if where else ""),),
            )
        )
    return found


def expected_indexes(table: str = PROGRESS_TABLE) -> tuple[ExpectedIndex, ...]:
    """The indexes of `table` that the migrations (sql/migrations, in order) create."""
    declared = [
        index
        for path in sorted(migrations_dir().glob("*.sql"))
        for index in declared_indexes(path.read_text(encoding="utf-8"))
        if index.table_name == table
    ]
    return tuple(declared)


EXPECTED_INDEXES: tuple[ExpectedIndex, ...] = expected_indexes()


@dataclass(frozen=True)
class IndexKey:
    """What decides whether an index serves the lookups of another index of the same table. `columns`
    are the key columns as `pg_get_indexdef` prints them; `opclasses` and `collations` are the per-key
    operator class and collation oids (as text); `expressions` is the index's expression list, if any."""

    columns: tuple[str, ...]
    opclasses: tuple[str, ...]
    collations: tuple[str, ...]
    unique: bool = False
    access_method: str = "btree"
    predicate: str | None = None
    expressions: str | None = None
    include_columns: tuple[str, ...] = ()


def is_covered_by(candidate: IndexKey, other: IndexKey) -> bool:
    """Whether `other` (an index of the same table) serves every lookup `candidate` serves, making a
    non-unique `candidate` redundant: the same access method, `candidate`'s key columns a leading prefix
    of (or equal to) `other`'s with the same operator classes and collations, the same predicate and
    expressions, and `candidate`'s INCLUDE columns all among `other`'s columns (docs/data-model.md#indexes, docs/diagnostics.md#postgresql)."""
    width = len(candidate.columns)
    return (
        not candidate.unique
        and candidate.access_method == other.access_method
        and width <= len(other.columns)
        and candidate.columns == other.columns[:width]
        and candidate.opclasses == other.opclasses[:width]
        and candidate.collations == other.collations[:width]
        and candidate.predicate == other.predicate
        and candidate.expressions == other.expressions
        and set(candidate.include_columns) <= set(other.columns) | set(other.include_columns)
    )

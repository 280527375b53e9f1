"""The index rules of docs/data-model.md#indexes, shared by `challengectl explain`, `db indexes` and `doctor`: the
indexes the service expects (`EXPECTED_INDEXES`, with the constant statements that create them) and
the test of whether one index is made redundant by another (`is_covered_by`), on which the "no index
may duplicate the primary key" rule rests.

Pure: no database access here, so `challengectl.plans` can use it without importing a driver.
"""

from __future__ import annotations

from dataclasses import dataclass

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


EXPECTED_INDEXES: tuple[ExpectedIndex, ...] = (
    ExpectedIndex(
        index_name="user_goal_progress_pkey",
        table_name=PROGRESS_TABLE,
        columns=("user_id", "goal_id"),
        predicate=None,
        primary=True,
        used_by="every per-user statement, ON CONFLICT arbiter",
        create_statements=(
            (
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS user_goal_progress_pkey "
                "ON user_goal_progress (user_id, goal_id)"
            ),
            (
                "ALTER TABLE user_goal_progress ADD CONSTRAINT user_goal_progress_pkey "
                "PRIMARY KEY USING INDEX user_goal_progress_pkey"
            ),
        ),
    ),
    ExpectedIndex(
        index_name="idx_ugp_user_active",
        table_name=PROGRESS_TABLE,
        columns=("user_id",),
        predicate="is_active",
        primary=False,
        used_by="active_goals, active_view, deactivate_challenge_goals",
        create_statements=(
            (
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ugp_user_active ON user_goal_progress (user_id) "
                "WHERE is_active"
            ),
        ),
    ),
)


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

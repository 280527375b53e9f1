"""Forward-only schema migrations: discovery of `NNNN_<name>.sql` files, status, and the runner (docs/data-model.md#migrations).

The runner takes a session advisory lock so that concurrent instances migrate one at a time, records
every applied file with its SHA-256 in `schema_migrations`, and refuses to touch a database whose
bookkeeping disagrees with this build (checksum mismatch, unknown version, foreign table).
Its own statements are exempt from the named-query registry (docs/data-model.md#named-queries).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import sqlparse
from psycopg import sql

from service.config.resources import migrations_dir
from service.storage.store import describe_target, session_options, short_reason

# Any constant shared by every build works; this one is "chlgmigr" in ASCII.
MIGRATION_LOCK_KEY = 0x63686C676D696772
# Poll for the lock instead of blocking in pg_advisory_lock: a session blocked inside a statement
# holds a snapshot, and CREATE INDEX CONCURRENTLY in the lock holder would wait for it (a deadlock).
_LOCK_POLL_S = 0.05

BOOKKEEPING_TABLE = "schema_migrations"
_EXPECTED_COLUMNS = {
    "version": "integer",
    "name": "text",
    "checksum": "text",
    "applied_at": "timestamp with time zone",
}
_FILE_NAME = re.compile(r"^(?P<version>\d{4,})_(?P<name>[A-Za-z0-9_\-]+)\.sql$")
_NO_TRANSACTION_MARKER = re.compile(r"^--\s*migrate:\s*no-transaction\s*$", re.IGNORECASE)
_CONCURRENT_INDEX = re.compile(
    r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?P<name>(?:\"[^\"]+\"|[A-Za-z_][\w$]*)(?:\.(?:\"[^\"]+\"|[A-Za-z_][\w$]*))?)\s+ON\b",
    re.IGNORECASE,
)

EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_UNAVAILABLE = 5


class MigrationError(Exception):
    """A migration run that failed or was refused; `exit_code` follows docs/cli.md#exit-codes.

    1: a file failed (rolled back); 2: the database disagrees with this build (checksum mismatch,
    unknown version, foreign `schema_migrations`); 5: PostgreSQL unreachable or the lock not granted.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Migration:
    """One migration file of this build."""

    version: int
    name: str
    path: Path
    checksum: str
    no_transaction: bool

    @property
    def file_name(self) -> str:
        return self.path.name

    def read_text(self) -> str:
        return self.path.read_bytes().decode("utf-8")


@dataclass
class MigrationStatus:
    """The database's bookkeeping compared with this build's files."""

    applied: list[int]
    pending: list[Migration]
    checksum_mismatches: list[int]
    unknown_versions: list[int]
    foreign_table: bool
    foreign_columns: dict[str, str] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        """True when the runner must not apply anything (exit code 2)."""
        return bool(self.checksum_mismatches or self.unknown_versions or self.foreign_table)

    @property
    def up_to_date(self) -> bool:
        """Every migration of this build is applied and nothing disagrees (readiness, docs/data-model.md#migrations)."""
        return not self.pending and not self.refused


def discover_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files of `directory` (default: the bundled `sql/migrations`), by version."""
    folder = directory if directory is not None else migrations_dir()
    migrations: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} in {folder} is not named NNNN_<name>.sql", EXIT_FAILED)
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(
                f"migration files {migrations[version].file_name} and {path.name} share version {version}",
                EXIT_FAILED,
            )
        content = path.read_bytes()
        first_line = content.decode("utf-8").split("\n", 1)[0].strip()
        migrations[version] = Migration(
            version=version,
            name=match["name"],
            path=path,
            checksum=hashlib.sha256(content).hexdigest(),
            no_transaction=bool(_NO_TRANSACTION_MARKER.match(first_line)),
        )
    return [migrations[version] for version in sorted(migrations)]


def migration_status(conninfo: str, *, directory: Path | None = None) -> MigrationStatus:
    """Compare `schema_migrations` with the files; read-only."""
    migrations = discover_migrations(directory)
    with _connect(conninfo, "challengectl-cli") as conn:
        return _status(conn, migrations)


def schema_version(conninfo: str) -> int | None:
    """The highest applied version, or None when nothing is applied yet.

    Raises MigrationError (exit 2) for a foreign `schema_migrations` table.
    """
    with _connect(conninfo, "challengectl-cli") as conn:
        columns = _bookkeeping_columns(conn)
        if columns is None:
            return None
        if columns != _EXPECTED_COLUMNS:
            raise _foreign_table_error(conn, columns)
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return row[0] if row else None


def apply_migrations(
    conninfo: str,
    *,
    dry_run: bool = False,
    application_name: str = "challengectl-cli",
    directory: Path | None = None,
    lock_wait_s: float = 300.0,
) -> list[Migration]:
    """Apply the pending migrations in ascending order; return those applied (or, dry run, pending).

    Refuses (exit 2) before applying anything when a recorded checksum differs from its file, a
    recorded version is unknown to this build, or `schema_migrations` has a foreign shape. A failing
    file is rolled back and aborts the run (exit 1, naming the file and the database's message).
    """
    migrations = discover_migrations(directory)
    _check_single_statement_files(migrations)
    with _connect(conninfo, application_name) as conn:
        if dry_run:
            status = _status(conn, migrations)
            _raise_if_refused(conn, status)
            return status.pending
        with _migration_lock(conn, lock_wait_s):
            status = _status(conn, migrations)
            _raise_if_refused(conn, status)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL,"
                " checksum TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            for migration in status.pending:
                _apply_one(conn, migration)
            return status.pending


@contextmanager
def _connect(conninfo: str, application_name: str) -> Iterator[psycopg.Connection]:
    try:
        conn = psycopg.connect(
            conninfo,
            autocommit=True,
            application_name=application_name,
            options=session_options(conninfo),
        )
    except psycopg.OperationalError as error:
        raise MigrationError(
            f"PostgreSQL {describe_target(conninfo)} unreachable: {short_reason(error, conninfo)}",
            EXIT_UNAVAILABLE,
        ) from None
    with conn:
        try:
            yield conn
        except psycopg.OperationalError as error:
            # Connection lost or the server shutting down while reading the bookkeeping.
            raise MigrationError(
                f"PostgreSQL {describe_target(conninfo)} failed during migration: {short_reason(error, conninfo)}",
                EXIT_UNAVAILABLE,
            ) from None


@contextmanager
def _migration_lock(conn: psycopg.Connection, wait_s: float) -> Iterator[None]:
    deadline = time.monotonic() + wait_s
    while conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)).fetchone() != (True,):
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"another process ({_lock_holder(conn)}) has been applying migrations for more than "
                f"{wait_s:g} s; lock not granted",
                EXIT_UNAVAILABLE,
            )
        time.sleep(_LOCK_POLL_S)
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def _lock_holder(conn: psycopg.Connection) -> str:
    row = conn.execute(
        "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.database = ("
        "   SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
        (MIGRATION_LOCK_KEY,),
    ).fetchone()
    return f"pid {row[0]}, {row[1] or 'no application_name'}" if row else "holder unknown"


def _bookkeeping_columns(conn: psycopg.Connection) -> dict[str, str] | None:
    """Column name → type of `schema_migrations` as the search path resolves it; None if absent."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod)"
        " FROM pg_attribute a"
        " WHERE a.attrelid = to_regclass('schema_migrations') AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum"
    ).fetchall()
    return {name: type_name for name, type_name in rows} if rows else None


def _status(conn: psycopg.Connection, migrations: list[Migration]) -> MigrationStatus:
    columns = _bookkeeping_columns(conn)
    if columns is not None and columns != _EXPECTED_COLUMNS:
        return MigrationStatus([], list(migrations), [], [], foreign_table=True, foreign_columns=columns)
    recorded: dict[int, str] = {}
    if columns is not None:
        recorded = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    by_version = {migration.version: migration for migration in migrations}
    return MigrationStatus(
        applied=sorted(recorded),
        pending=[migration for migration in migrations if migration.version not in recorded],
        checksum_mismatches=sorted(
            version
            for version, checksum in recorded.items()
            if version in by_version and by_version[version].checksum != checksum
        ),
        unknown_versions=sorted(version for version in recorded if version not in by_version),
        foreign_table=False,
    )


def _raise_if_refused(conn: psycopg.Connection, status: MigrationStatus) -> None:
    if status.foreign_table:
        raise _foreign_table_error(conn, status.foreign_columns)
    problems = []
    if status.checksum_mismatches:
        listed = ", ".join(str(version) for version in status.checksum_mismatches)
        problems.append(f"applied migration(s) {listed} differ from this build's files (checksum mismatch)")
    if status.unknown_versions:
        listed = ", ".join(str(version) for version in status.unknown_versions)
        problems.append(f"applied migration(s) {listed} are unknown to this build (was a newer version deployed?)")
    if problems:
        raise MigrationError(f"database {_database_of(conn)} refused: " + "; ".join(problems), EXIT_REFUSED)


def _foreign_table_error(conn: psycopg.Connection, columns: dict[str, str]) -> MigrationError:
    schema = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass('schema_migrations')"
    ).fetchone()
    qualified = f"{schema[0]}.{BOOKKEEPING_TABLE}" if schema else BOOKKEEPING_TABLE
    shape = ", ".join(f"{name} {type_name}" for name, type_name in columns.items())
    return MigrationError(
        f"table {qualified} in database {_database_of(conn)} has a different shape ({shape}); "
        "it was not created by challengectl, and adopting another system's database is not supported",
        EXIT_REFUSED,
    )


def _database_of(conn: psycopg.Connection) -> str:
    return f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"


def _check_single_statement_files(migrations: list[Migration]) -> None:
    for migration in migrations:
        if migration.no_transaction and len(_statements(migration.read_text())) != 1:
            raise MigrationError(
                f"migration {migration.file_name} is marked no-transaction but does not hold exactly one statement",
                EXIT_FAILED,
            )


def _statements(text: str) -> list[str]:
    return [statement for statement in sqlparse.split(text) if sqlparse.format(statement, strip_comments=True).strip()]


def _apply_one(conn: psycopg.Connection, migration: Migration) -> None:
    text = migration.read_text()
    try:
        if migration.no_transaction:
            _drop_invalid_index(conn, text)
            conn.execute(text)
            _record(conn, migration)
        else:
            with conn.transaction():
                conn.execute(text)
                _record(conn, migration)
    except psycopg.Error as error:
        exit_code = EXIT_UNAVAILABLE if conn.closed or conn.broken else EXIT_FAILED
        outcome = "failed" if migration.no_transaction else "failed and was rolled back"
        raise MigrationError(f"migration {migration.file_name} {outcome}: {short_reason(error)}", exit_code) from None


def _record(conn: psycopg.Connection, migration: Migration) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
        (migration.version, migration.name, migration.checksum),
    )


def _drop_invalid_index(conn: psycopg.Connection, statement: str) -> None:
    """Drop the INVALID index a failed CREATE INDEX CONCURRENTLY left, so the retry rebuilds it.

    `IF NOT EXISTS` would otherwise skip the statement and keep the unusable index forever.
    """
    match = _CONCURRENT_INDEX.search(sqlparse.format(statement, strip_comments=True))
    if match is None:
        return
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE i.indexrelid = to_regclass(%s) AND NOT i.indisvalid",
        (match["name"],),
    ).fetchone()
    if row is not None:
        conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(sql.Identifier(row[0]), sql.Identifier(row[1]))
        )

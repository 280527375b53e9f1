"""The database side of `challengectl explain` (docs/cli.md#explain): which statement to explain, the sample
user and the parameters derived from that user's rows, and the EXPLAIN itself inside a transaction that
is always rolled back.

    with ExplainSession(url) as session:
        sample = session.sample_user("typical")
        params = derive_params(statement, sample, catalog, defaults, now)
        run = session.explain(statement, params, ExplainOptions(analyze=True))

Every statement here runs inside `BEGIN [READ ONLY]; SELECT set_config('statement_timeout', $1, true),
set_config('lock_timeout', '1s', true); ...; ROLLBACK`, with parameters bound through the protocol.
The SQL sent is a named statement of sql/queries.sql or sql/cli_queries.sql, or the EXPLAIN of one (or
of `--sql`) composed in `explain`; values are never spliced in.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import psycopg
import sqlparse
from psycopg import errors as pg_errors
from sqlparse import tokens as sql_tokens

from challengectl import database
from challengectl.cli_queries import fetch_all, fetch_values
from challengectl.errors import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)
from challengectl.pg_diagnostics import project_indexes
from challengectl.plans import TableInfo
from service.domain.buffer import SOURCE_LOGIN, Entry, stat_source
from service.domain.catalog import Catalog, Goal
from service.domain.routing import GoalRouting
from service.domain.rules import expires_at_for, next_boundary, period_start
from service.storage.default_sets import default_goal_set
from service.storage.registry import NamedQuery, Registry
from service.storage.store import describe_target

LOCK_TIMEOUT = "1s"
PROGRESS_TABLE = "user_goal_progress"
# About this many rows are drawn with TABLESAMPLE SYSTEM to pick a user; `heavy` compares this many users.
SAMPLE_ROWS = 2000
HEAVY_SAMPLE_USERS = 200
BACKDATE_SECONDS = 86_400
USERS_INIT_HINT = "challengectl users init --count 100"
SAMPLE_MODES = ("typical", "heavy")

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
# Keywords that make an ad-hoc statement write or lock rows; a READ ONLY transaction would refuse them too.
_WRITE_KEYWORDS = frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "INTO",
        "TRUNCATE",
        "COPY",
        "CREATE",
        "DROP",
        "ALTER",
        "GRANT",
        "REVOKE",
        "CALL",
        "DO",
        "VACUUM",
        "ANALYZE",
        "LOCK",
        "SHARE",
    }
)


@dataclass(frozen=True)
class Statement:
    """What `explain` runs: a registry entry, or an ad-hoc SELECT (`name` None).
    `param_types` maps each placeholder to its declared SQL type ('' when unknown)."""

    name: str | None
    kind: str
    sql: str
    param_types: dict[str, str]
    expect_index: str | None = None
    doc: str = ""

    @classmethod
    def named(cls, query: NamedQuery) -> Statement:
        return cls(
            name=query.name,
            kind=query.kind,
            sql=query.sql,
            param_types={param.name: param.type for param in query.params},
            expect_index=query.expect_index,
            doc=query.doc,
        )


def ad_hoc_statement(text: str, registry: Registry) -> Statement:
    """The `--sql` statement: exactly one read-only SELECT, else CliError exit 2.
    Placeholders take the types the registry declares for the same names."""
    pieces = [piece for piece in sqlparse.split(text) if sqlparse.format(piece, strip_comments=True).strip()]
    if not pieces:
        raise CliError("--sql is empty", 'e.g. --sql "SELECT count(*) FROM user_goal_progress"', EXIT_USAGE)
    if len(pieces) > 1:
        raise CliError(
            f"--sql holds {len(pieces)} statements; explain takes exactly one",
            "pass one statement, without a second ';'",
            EXIT_USAGE,
        )
    sql = pieces[0].strip()
    sql = sql[:-1].rstrip() if sql.endswith(";") else sql
    parsed = sqlparse.parse(sql)[0]
    keywords = {
        token.normalized.upper()
        for token in parsed.flatten()
        if token.ttype in sql_tokens.Keyword
        or token.ttype in sql_tokens.Keyword.DML
        or token.ttype in sql_tokens.Keyword.DDL
    }
    statement_type = parsed.get_type()
    if statement_type != "SELECT" or keywords & _WRITE_KEYWORDS:
        what = statement_type if statement_type not in ("SELECT", "UNKNOWN") else "statement that writes or locks rows"
        raise CliError(
            f"--sql accepts one read-only SELECT; refusing to explain a {what}",
            "explain the service's writes by name (challengectl explain --list)",
            EXIT_USAGE,
        )
    known_types = {param.name: param.type for query in registry for param in query.params}
    names = dict.fromkeys(_PLACEHOLDER.findall(sql))
    return Statement(
        name=None,
        kind="read",
        sql=sql,
        param_types={name: known_types.get(name, "") for name in names},
        doc="ad-hoc statement",
    )


# --- the sample user and derived parameters -------------------------------------------------------


@dataclass(frozen=True)
class UserRow:
    goal_id: str
    challenge_id: str
    namespace: str
    progress: int
    status: str
    is_active: bool


@dataclass(frozen=True)
class SampleUser:
    """The user whose rows the parameters come from; `chosen_by` is `given`, `typical` or `heavy`."""

    user_id: str
    chosen_by: str
    rows: tuple[UserRow, ...]

    @property
    def active_rows(self) -> tuple[UserRow, ...]:
        return tuple(row for row in self.rows if row.is_active)

    @property
    def first_active(self) -> UserRow:
        """The row claim and single-goal queries use: the first active row by goal_id (else the first row)."""
        active = self.active_rows
        return active[0] if active else self.rows[0]


@dataclass(frozen=True)
class ParamDefaults:
    """Settings the derived parameters fall back on."""

    namespace: str
    reward_mode: str


def derive_params(
    statement: Statement,
    sample: SampleUser,
    catalog: Catalog | None,
    defaults: ParamDefaults,
    now: datetime,
    generation: int | None = None,
) -> dict[str, Any]:
    """Parameter values for `statement` from the sample user's rows, as docs/cli.md#explain describes.
    Names it cannot derive are left out (the caller asks for `--param`)."""
    first = sample.first_active
    active = sample.active_rows or sample.rows
    goals = catalog.goals_by_id if catalog is not None else {}
    goal_ids = [row.goal_id for row in active]
    first_goal = goals.get(first.goal_id)
    namespace = first.namespace or defaults.namespace
    values: dict[str, Any] = {
        "user_id": sample.user_id,
        "namespace": namespace,
        "goal_id": first.goal_id,
        "challenge_id": first.challenge_id,
        "goal_ids": goal_ids,
        "challenge_ids": [row.challenge_id for row in active],
        "keep_goal_ids": goal_ids[:1],
        "now": now,
        "is_active": True,
        "prereq_goal_ids": list(catalog.prerequisite_ids) if catalog is not None else [],
        "every_row": False,
        "seconds": BACKDATE_SECONDS,
        "mode": defaults.reward_mode,
        "attempts": 1,
        "reward_type": first_goal.reward.type if first_goal is not None else "ITEM",
        "reward_id": first_goal.reward.reward_id if first_goal is not None else f"{first.goal_id}-reward",
        "quantity": first_goal.reward.quantity if first_goal is not None else 1,
    }
    values["boundaries"], values["next_boundaries"], values["reset_flags"] = _rotation_arrays(goal_ids, goals, now)
    values["schedules"] = [_schedule(goals.get(goal_id)) for goal_id in goal_ids]
    if catalog is not None:
        values["default_set_id"] = default_goal_set(catalog.default_goals).set_id
    if statement.param_types.get("expires_at", "").endswith("[]"):
        values["expires_at"] = [_expires_at(goals.get(goal_id), now) for goal_id in goal_ids]
    else:
        values["expires_at"] = _expires_at(first_goal, now)
    if generation is not None:
        values["generation"] = generation
        values["idempotency_key"] = f"{namespace}:{sample.user_id}:{first.goal_id}:{generation}"
    if "entry_user_ids" in statement.param_types:
        values.update(flush_params(sample, catalog, now))
    return {name: values[name] for name in statement.param_types if name in values}


def _schedule(goal: Goal | None) -> str | None:
    return goal.rotation.schedule if goal is not None and goal.rotation is not None else None


def _expires_at(goal: Goal | None, now: datetime) -> datetime | None:
    return expires_at_for(goal, now) if goal is not None else None


def _rotation_arrays(
    goal_ids: Sequence[str], goals: Mapping[str, Goal], now: datetime
) -> tuple[list[datetime], list[datetime | None], list[bool]]:
    """Per goal: the current period start (now for a goal that does not rotate), the next boundary and
    the reset flag, as the initialize catch-up passes them."""
    boundaries: list[datetime] = []
    next_boundaries: list[datetime | None] = []
    reset_flags: list[bool] = []
    for goal_id in goal_ids:
        rotation = goals[goal_id].rotation if goal_id in goals else None
        if rotation is None:
            boundaries.append(now)
            next_boundaries.append(None)
            reset_flags.append(False)
        else:
            boundaries.append(period_start(rotation.schedule, now))
            next_boundaries.append(next_boundary(rotation.schedule, now))
            reset_flags.append(rotation.reset_progress)
    return boundaries, next_boundaries, reset_flags


def flush_params(sample: SampleUser, catalog: Catalog | None, now: datetime) -> dict[str, Any]:
    """`apply_event_updates` arrays: one entry for the source of the user's first active row (a value one
    above that row's raw progress, increment 1; no value for a login), and the goal arrays of the user's
    active rows of that source, built by the flusher's own routing."""
    first = sample.first_active
    goal = catalog.goals_by_id.get(first.goal_id) if catalog is not None else None
    if catalog is None or goal is None:
        return _flush_params_without_catalog(sample, now)
    source = SOURCE_LOGIN if goal.event_source == "login" else stat_source(goal.requirement.stat_code)
    entry = Entry(sample.user_id, source, 0.0)
    entry.inc = 1
    entry.value = None if source == SOURCE_LOGIN else first.progress + 1
    params = GoalRouting(catalog).statement_params([entry], now)
    active_ids = {row.goal_id for row in sample.active_rows}
    keep = [index for index, goal_id in enumerate(params["goal_ids"]) if goal_id in active_ids]
    for name in (
        "goal_ids",
        "goal_sources",
        "goal_progress_modes",
        "goal_targets",
        "goal_boundaries",
        "goal_next_boundaries",
        "goal_reset_flags",
        "goal_reselect_flags",
    ):
        params[name] = [params[name][index] for index in keep]
    return params


def _flush_params_without_catalog(sample: SampleUser, now: datetime) -> dict[str, Any]:
    """Without a catalog: a login entry routed to every active row, none of which completes or rotates."""
    active = sample.active_rows or sample.rows
    return {
        "entry_user_ids": [sample.user_id],
        "entry_sources": [SOURCE_LOGIN],
        "entry_values": [None],
        "entry_incs": [1],
        "entry_event_ats": [None],
        "goal_ids": [row.goal_id for row in active],
        "goal_sources": [SOURCE_LOGIN] * len(active),
        "goal_progress_modes": ["absolute"] * len(active),
        "goal_targets": [row.progress + 10 for row in active],
        "goal_boundaries": [None] * len(active),
        "goal_next_boundaries": [None] * len(active),
        "goal_reset_flags": [False] * len(active),
        "goal_reselect_flags": [False] * len(active),
        "now": now,
    }


def parse_param_overrides(items: Sequence[str], statement: Statement, now: datetime) -> dict[str, Any]:
    """`--param name=value` values, converted by the parameter's declared type: arrays as `a,b` or a JSON
    array, `null` for NULL, `now` for the current instant. Unknown names and bad values exit 2."""
    overrides: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CliError(f"--param {item!r} is not name=value", "e.g. --param user_id=player-1", EXIT_USAGE)
        if name not in statement.param_types:
            expected = ", ".join(statement.param_types) or "none"
            raise CliError(
                f"--param {name}: the statement has no parameter {name!r} (it takes: {expected})",
                "see 'challengectl explain --list'",
                EXIT_USAGE,
            )
        sql_type = statement.param_types[name]
        try:
            overrides[name] = parse_param_value(raw, sql_type, now)
        except ValueError as exc:
            raise CliError(
                f"--param {name}: {exc}", f"give a {sql_type or 'text'} value, or null", EXIT_USAGE
            ) from None
    return overrides


def parse_param_value(raw: str, sql_type: str, now: datetime) -> Any:
    """One `--param` value as a Python value of `sql_type` (`text`, `bigint`, `timestamptz[]`, ...)."""
    if raw.strip().lower() == "null":
        return None
    if sql_type.endswith("[]"):
        base = sql_type[:-2]
        text = raw.strip()
        if text.startswith("["):
            items = json.loads(text)
            if not isinstance(items, list):
                raise ValueError(f"{raw!r} is not a JSON array")
            return [
                None
                if item is None
                else _scalar(str(item) if not isinstance(item, bool) else str(item).lower(), base, now)
                for item in items
            ]
        return [_scalar(part.strip(), base, now) for part in text.split(",")] if text else []
    return _scalar(raw, sql_type, now)


def _scalar(raw: str, sql_type: str, now: datetime) -> Any:
    base = sql_type.strip().lower()
    if base in ("integer", "int", "bigint", "smallint", "int4", "int8"):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if base in ("boolean", "bool"):
        lowered = raw.strip().lower()
        if lowered in ("true", "t", "yes", "1"):
            return True
        if lowered in ("false", "f", "no", "0"):
            return False
        raise ValueError(f"{raw!r} is not a boolean (true or false)")
    if base in ("timestamptz", "timestamp with time zone"):
        if raw.strip().lower() == "now":
            return now
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise ValueError(f"{raw!r} is not an RFC 3339 timestamp (or 'now')") from None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return raw


# --- the session ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainOptions:
    analyze: bool = True
    buffers: bool = True
    statement_timeout_ms: int = 10_000
    text_format: bool = False


@dataclass
class ExplainRun:
    """What one EXPLAIN produced: the JSON plan (or PostgreSQL's text plan), or the timeout it hit."""

    plan: Any | None = None
    text_plan: str | None = None
    timeout: str | None = None
    sql: str = ""
    tables: dict[str, TableInfo] = field(default_factory=dict)


class ExplainSession:
    """One PostgreSQL connection of the CLI (`application_name = challengectl-cli`, autocommit, so that
    every transaction is the explicit BEGIN ... ROLLBACK of this class)."""

    def __init__(self, url: str, statement_timeout_ms: int = 10_000, connect_timeout_s: float = 10.0) -> None:
        self._target = describe_target(url)
        self._timeout_ms = statement_timeout_ms
        try:
            self._conn = database.connect(url, None, connect_timeout_s)
        except psycopg.Error as exc:
            raise database.unreachable(
                url, exc, "check --database-url / DATABASE_URL, or start the service ('challengectl serve')"
            ) from None
        self.server_version = self._conn.info.server_version
        self.role = str(self._conn.info.parameter_status("session_authorization") or self._conn.info.user)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self, read_only: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """`BEGIN [READ ONLY]` with the statement and lock timeouts set locally; always rolled back."""
        self._conn.read_only = read_only
        with self._conn.transaction(force_rollback=True):
            timeouts = {"statement_timeout": str(self._timeout_ms), "lock_timeout": LOCK_TIMEOUT}
            fetch_values(self._conn, "cli_explain_timeouts", timeouts)
            yield self._conn

    # --- sampling

    def sample_user(self, mode: str) -> SampleUser:
        """A user drawn from `user_goal_progress` (`typical`: the user of a row drawn with TABLESAMPLE
        SYSTEM; `heavy`: the user with the most rows among a sample of users). Empty table → exit 3."""
        with self._guarded("sampling a user"), self.transaction() as conn:
            if not fetch_values(conn, "cli_progress_has_rows")[0]:
                raise CliError(
                    f"{PROGRESS_TABLE} is empty: there is no user to take parameters from",
                    f"create players first, e.g. {USERS_INIT_HINT}, or pass every parameter with --param",
                    EXIT_NOT_FOUND,
                )
            sampled = self._sampled_user_ids(conn)
            if mode == "heavy":
                candidates = list(dict.fromkeys(sampled))
                random.shuffle(candidates)
                params = {"user_ids": candidates[:HEAVY_SAMPLE_USERS]}
                [user_id] = fetch_values(conn, "cli_heaviest_user", params)
            else:
                user_id = random.choice(sampled)
        return self.given_user(user_id, chosen_by=mode)

    def given_user(self, user_id: str, chosen_by: str = "given") -> SampleUser:
        """The user named by `--user` with its rows; a user without rows → exit 3."""
        with self._guarded("reading the user's rows"), self.transaction() as conn:
            rows = tuple(fetch_all(conn, "cli_user_rows", UserRow, {"user_id": user_id}))
        if not rows:
            raise CliError(
                f"user {user_id!r} has no rows in {PROGRESS_TABLE}",
                f"pick a user with rows, or omit --user to sample one; to create players: {USERS_INIT_HINT}",
                EXIT_NOT_FOUND,
            )
        return SampleUser(user_id=user_id, chosen_by=chosen_by, rows=rows)

    def _sampled_user_ids(self, conn: psycopg.Connection[Any]) -> list[str]:
        [reltuples] = fetch_values(conn, "cli_progress_reltuples")
        estimated = float(reltuples or 0)
        percent = 100.0 if estimated <= SAMPLE_ROWS else max(0.01, 100.0 * SAMPLE_ROWS / estimated)
        sampled = fetch_values(conn, "cli_sample_user_ids", {"percent": percent, "rows": SAMPLE_ROWS})
        if not sampled:  # a small percentage can draw no page at all
            sampled = fetch_values(conn, "cli_sample_user_ids", {"percent": 100.0, "rows": SAMPLE_ROWS})
        return sampled

    def next_claim_generation(self, query: NamedQuery, params: Mapping[str, Any]) -> int:
        """The generation `record_claim` would record, from the registry's own statement."""
        with self._guarded("reading the next claim generation"), self.transaction() as conn:
            [(generation,)] = conn.execute(query.sql, {name: params[name] for name in query.param_names}).fetchall()
            return int(generation)

    # --- EXPLAIN

    def explain(self, statement: Statement, params: Mapping[str, Any], options: ExplainOptions) -> ExplainRun:
        """EXPLAIN the statement in a rolled-back transaction: READ ONLY for reads, ad-hoc statements and
        plain EXPLAIN; read-write when ANALYZE executes a lock or write query."""
        read_only = statement.kind == "read" or not options.analyze
        sql = explain_prefix(options, statement.kind, self.server_version) + statement.sql
        run = ExplainRun(sql=sql)
        with self._guarded("explaining the statement"), self.transaction(read_only) as conn:
            try:
                # Composed: EXPLAIN and its options in front of a registry statement or the ad-hoc --sql.
                rows = conn.execute(sql, dict(params) if statement.param_types else None).fetchall()
            except pg_errors.LockNotAvailable:
                run.timeout = "lock_timeout"
                return run
            except pg_errors.QueryCanceled:
                run.timeout = "statement_timeout"
                return run
        if options.text_format:
            run.text_plan = "\n".join(str(row[0]) for row in rows)
        else:
            run.plan = rows[0][0] if isinstance(rows[0][0], list) else json.loads(rows[0][0])
        return run

    def table_info(self, relations: Sequence[tuple[str, str]]) -> dict[str, TableInfo]:
        """Row estimates and indexes of the (schema, table) pairs a plan touches, by table name."""
        if not relations:
            return {}
        schemas = [schema for schema, _ in relations]
        names = [name for _, name in relations]
        with self._guarded("reading table statistics"), self.transaction() as conn:
            tables = fetch_all(conn, "cli_plan_tables", PlanTable, {"schemas": schemas, "names": names})
            indexes = project_indexes(conn, [table.qualified_name for table in tables])
        return {
            table.relname: TableInfo(
                name=table.relname,
                estimated_rows=table.reltuples,
                indexes=tuple(index.plan_index() for index in indexes if index.table_name == table.relname),
                has_statistics=table.has_statistics,
            )
            for table in tables
        }

    @contextmanager
    def _guarded(self, doing: str) -> Iterator[None]:
        """Driver errors as CliErrors that say what was being done, without SQL text."""
        try:
            yield
        except CliError:
            raise
        except pg_errors.UndefinedTable:
            raise CliError(
                f"{doing}: the schema is missing on {self._target}",
                "apply the migrations: challengectl db migrate",
                EXIT_FAILED,
            ) from None
        except pg_errors.ReadOnlySqlTransaction:
            raise CliError(
                f"{doing}: the statement writes or locks rows, which --sql does not allow",
                "explain the service's writes by name (challengectl explain --list)",
                EXIT_USAGE,
            ) from None
        except (
            pg_errors.SyntaxError,
            pg_errors.UndefinedColumn,
            pg_errors.UndefinedFunction,
            pg_errors.UndefinedParameter,
            pg_errors.DataError,
        ) as exc:
            raise CliError(
                f"{doing}: PostgreSQL rejected the statement: {_reason(exc)}",
                "check the statement and the --param values",
                EXIT_USAGE,
            ) from None
        except psycopg.OperationalError as exc:
            raise CliError(
                f"{doing}: PostgreSQL {self._target} unavailable: {_reason(exc)}",
                "check that PostgreSQL is running and reachable",
                EXIT_UNAVAILABLE,
            ) from None
        except psycopg.Error as exc:
            raise CliError(
                f"{doing} on {self._target} failed: {_reason(exc)}", "rerun with --debug for details", EXIT_FAILED
            ) from None


@dataclass(frozen=True)
class PlanTable:
    """A table a plan touches (`cli_plan_tables`)."""

    oid: int
    schema: str
    relname: str
    reltuples: float
    has_statistics: bool

    @property
    def qualified_name(self) -> str:
        """`"schema"."table"`, as `to_regclass` reads it."""
        return ".".join('"' + part.replace('"', '""') + '"' for part in (self.schema, self.relname))


def explain_prefix(options: ExplainOptions, kind: str, server_version: int) -> str:
    """`EXPLAIN (ANALYZE, BUFFERS, TIMING, VERBOSE, SETTINGS[, WAL], FORMAT JSON) `, limited to the options
    the server supports (SETTINGS from 12, WAL and BUFFERS without ANALYZE from 13)."""
    options_list = []
    if options.analyze:
        options_list.append("ANALYZE")
    if options.buffers and (options.analyze or server_version >= 130000):
        options_list.append("BUFFERS")
    if options.analyze:
        options_list.append("TIMING")
    options_list.append("VERBOSE")
    if server_version >= 120000:
        options_list.append("SETTINGS")
    if options.analyze and kind != "read" and server_version >= 130000:
        options_list.append("WAL")
    options_list.append("FORMAT TEXT" if options.text_format else "FORMAT JSON")
    return f"EXPLAIN ({', '.join(options_list)}) "


def relations_in_plan(plan: Any) -> list[tuple[str, str]]:
    """The (schema, table) pairs named by the plan's nodes, in order of appearance."""
    found: dict[tuple[str, str], None] = {}

    def visit(node: Mapping[str, Any]) -> None:
        if node.get("Relation Name"):
            found[(str(node.get("Schema") or "public"), str(node["Relation Name"]))] = None
        for child in node.get("Plans", []):
            visit(child)

    document = plan[0] if isinstance(plan, list) else plan
    visit(document["Plan"])
    return list(found)


def _reason(exc: BaseException) -> str:
    """PostgreSQL's primary message (never the statement), else the first line of the driver's message."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return str(primary)
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

"""The named-query registry: parses `sql/queries.sql` into named, validated statements (docs/data-model.md#named-queries).

The service and `challengectl explain` load statements only through this module, so both run
byte-identical SQL text. Loading fails with `RegistryError` on anything that would make a name
ambiguous or a statement unsafe to bind: duplicate names, unknown kinds, placeholders that differ from
the declared parameters, more than one statement under a name, or a required name that is missing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlparse

from service.config import resources

QUERY_KINDS = ("read", "write", "lock")

# The names of the docs/data-model.md#named-queries table: every one must be present for the service to start.
REQUIRED_QUERIES: tuple[str, ...] = (
    "active_goals",
    "user_goal_count",
    "user_progress",
    "challenge_progress",
    "goals_by_ids",
    "active_view",
    "player_rows",
    "register_default_goal_set",
    "initialize_view",
    "materialize_implied_goals",
    "set_goal_active",
    "batch_set_goal_active",
    "deactivate_challenge_goals",
    "rotation_catch_up",
    "progress_for_update",
    "next_claim_generation",
    "record_claim",
    "apply_event_updates",
    "delete_user_data",
    "backdate_user_goals",
)

_HEADER_KEYS = ("name", "kind", "params", "expect-index", "doc")
_HEADER_LINE = re.compile(r"^--\s*([A-Za-z][\w-]*):\s?(.*)$")
# A header field continues on comment lines indented by at least two spaces after `--`.
_CONTINUATION_LINE = re.compile(r"^-- {2,}(\S.*)$")
_PARAM_NAME = re.compile(r"^[A-Za-z_]\w*$")
# psycopg's placeholder syntax: `%%` is a literal percent, `%(name)s|b|t` a named placeholder.
_PERCENT = re.compile(r"%(?:(%)|\((\w+)\)([sbt])|(.?))", re.DOTALL)


class RegistryError(Exception):
    """The query file is malformed; the message names the file, the line and the entry."""


class UnknownQueryError(LookupError):
    """A query name that the registry does not hold, with the closest names it does hold."""

    def __init__(self, name: str, close_matches: list[str]) -> None:
        super().__init__(name, close_matches)
        self.name = name
        self.close_matches = close_matches

    def __str__(self) -> str:
        hint = f"; did you mean: {', '.join(self.close_matches)}" if self.close_matches else ""
        return f"unknown query {self.name!r}{hint}"


@dataclass(frozen=True)
class QueryParam:
    """One declared parameter: its placeholder name and its SQL type (e.g. `text[]`)."""

    name: str
    type: str


@dataclass(frozen=True)
class NamedQuery:
    """One registry entry. `sql` is the statement text as written, without its terminating `;`."""

    name: str
    kind: str
    params: tuple[QueryParam, ...]
    sql: str
    expect_index: str | None
    doc: str

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(param.name for param in self.params)

    def numbered(self) -> tuple[str, tuple[str, ...]]:
        """The statement with PostgreSQL's own placeholders: `$n` for every use of the n-th name in order of first
        use (returned with it) and `%` for `%%`, as psycopg's `%(name)s` form means it."""
        order: list[str] = []

        def placeholder(match: re.Match[str]) -> str:
            literal, name, _, _ = match.groups()
            if literal:
                return "%"
            if name not in order:
                order.append(name)
            return f"${order.index(name) + 1}"

        return _PERCENT.sub(placeholder, self.sql), tuple(order)


class Registry:
    """The loaded queries by name, in file order."""

    def __init__(self, queries: Iterable[NamedQuery]) -> None:
        self._queries: dict[str, NamedQuery] = {query.name: query for query in queries}

    def get(self, name: str) -> NamedQuery:
        """The query called exactly `name`; `UnknownQueryError` with close matches otherwise."""
        try:
            return self._queries[name]
        except KeyError:
            raise UnknownQueryError(name, self.close_matches(name)) from None

    def lookup(self, spelling: str) -> NamedQuery:
        """The query named `spelling` with `-` and `_` treated alike (`active-goals` → `active_goals`)."""
        normalised = spelling.strip().replace("-", "_")
        if normalised in self._queries:
            return self._queries[normalised]
        raise UnknownQueryError(spelling, self.close_matches(normalised))

    def close_matches(self, name: str) -> list[str]:
        return difflib.get_close_matches(name.replace("-", "_"), list(self._queries), n=3, cutoff=0.5)

    def names(self) -> list[str]:
        return list(self._queries)

    def __iter__(self) -> Iterator[NamedQuery]:
        return iter(self._queries.values())

    def __len__(self) -> int:
        return len(self._queries)

    def __contains__(self, name: object) -> bool:
        return name in self._queries


def load_registry(path: Path | None = None, required: Iterable[str] = REQUIRED_QUERIES) -> Registry:
    """Parse and validate the query file (default: the bundled `queries.sql`).

    Raises `RegistryError` when the file cannot be read, is malformed, or lacks a name in `required`.
    """
    source = path if path is not None else resources.queries_path()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"cannot read query registry {source}: {exc.strerror or exc}") from exc
    queries = parse_queries(text, origin=str(source))
    registry = Registry(queries)
    missing = [name for name in required if name not in registry]
    if missing:
        raise RegistryError(f"{source}: required queries missing: {', '.join(missing)}")
    return registry


def parse_queries(text: str, origin: str = "<queries>") -> list[NamedQuery]:
    """Parse registry text into validated entries, in file order; `origin` names the file in errors."""
    lines = text.splitlines()
    starts = [index for index, line in enumerate(lines) if _header_key(line) == "name"]
    _check_preamble(lines[: starts[0] if starts else len(lines)], origin)
    queries: list[NamedQuery] = []
    seen: dict[str, int] = {}
    for position, start in enumerate(starts):
        end = starts[position + 1] if position + 1 < len(starts) else len(lines)
        query = _parse_entry(lines[start:end], first_line=start + 1, origin=origin)
        if query.name in seen:
            raise RegistryError(
                f"{origin}:{start + 1}: duplicate query name {query.name!r} (first defined at line {seen[query.name]})"
            )
        seen[query.name] = start + 1
        queries.append(query)
    return queries


def _header_key(line: str) -> str | None:
    match = _HEADER_LINE.match(line)
    return match.group(1) if match else None


def _check_preamble(lines: list[str], origin: str) -> None:
    for number, line in enumerate(lines, start=1):
        if line.strip() and not line.lstrip().startswith("--"):
            raise RegistryError(f"{origin}:{number}: SQL text before the first '-- name:' header")


def _parse_entry(lines: list[str], first_line: int, origin: str) -> NamedQuery:
    header, body_offset = _read_header(lines, first_line, origin)
    name = header["name"]
    where = f"{origin}:{first_line}: query {name!r}"
    if not _PARAM_NAME.match(name):
        raise RegistryError(f"{where}: invalid name (letters, digits and '_' only)")
    for key in ("kind", "params", "doc"):
        if key not in header:
            raise RegistryError(f"{where}: missing '-- {key}:' header")
    kind = header["kind"]
    if kind not in QUERY_KINDS:
        raise RegistryError(f"{where}: kind {kind!r} is not one of {', '.join(QUERY_KINDS)}")
    if not header["doc"]:
        raise RegistryError(f"{where}: empty '-- doc:' header")
    params = _parse_params(header["params"], where)
    sql = _single_statement("\n".join(lines[body_offset:]), where)
    _check_placeholders(sql, params, where)
    return NamedQuery(
        name=name,
        kind=kind,
        params=params,
        sql=sql,
        expect_index=header.get("expect-index") or None,
        doc=header["doc"],
    )


def _read_header(lines: list[str], first_line: int, origin: str) -> tuple[dict[str, str], int]:
    """The header fields of one entry and the offset of the first body line."""
    header: dict[str, str] = {}
    last_key: str | None = None
    offset = 0
    for offset, line in enumerate(lines):
        if not line.startswith("--"):
            break
        where = f"{origin}:{first_line + offset}"
        continuation = _CONTINUATION_LINE.match(line)
        if continuation and last_key is not None:
            header[last_key] = f"{header[last_key]} {continuation.group(1).strip()}".strip()
            continue
        match = _HEADER_LINE.match(line)
        if match is None:
            raise RegistryError(f"{where}: header line is not '-- key: value': {line!r}")
        key, value = match.group(1), match.group(2).strip()
        if key not in _HEADER_KEYS:
            raise RegistryError(f"{where}: unknown header field {key!r} (expected one of {', '.join(_HEADER_KEYS)})")
        if key in header:
            raise RegistryError(f"{where}: header field {key!r} given twice")
        header[key] = value
        last_key = key
    else:
        offset = len(lines)
    return header, offset


def _parse_params(declaration: str, where: str) -> tuple[QueryParam, ...]:
    params: list[QueryParam] = []
    for item in filter(None, (part.strip() for part in declaration.split(","))):
        name, _, type_ = item.partition(" ")
        if not _PARAM_NAME.match(name) or not type_.strip():
            raise RegistryError(f"{where}: parameter {item!r} is not 'name type'")
        if any(param.name == name for param in params):
            raise RegistryError(f"{where}: parameter {name!r} declared twice")
        params.append(QueryParam(name=name, type=type_.strip()))
    return tuple(params)


def _single_statement(body: str, where: str) -> str:
    """The one statement of an entry body, without its `;`; trailing comment-only pieces are ignored."""
    statements = [piece for piece in sqlparse.split(body) if sqlparse.format(piece, strip_comments=True).strip()]
    if not statements:
        raise RegistryError(f"{where}: no statement")
    if len(statements) > 1:
        raise RegistryError(f"{where}: {len(statements)} statements; an entry holds exactly one")
    statement = statements[0].rstrip()
    if not statement.endswith(";"):
        raise RegistryError(f"{where}: the statement does not end with ';'")
    return statement[:-1].rstrip()


def _check_placeholders(sql: str, params: tuple[QueryParam, ...], where: str) -> None:
    used: list[str] = []
    for match in _PERCENT.finditer(sql):
        literal, name, _, other = match.groups()
        if literal:
            continue
        if name is None:
            raise RegistryError(
                f"{where}: '%{other}' is not a named placeholder; use %(name)s, or %% for a literal percent sign"
            )
        if name not in used:
            used.append(name)
    declared = {param.name for param in params}
    undeclared = [name for name in used if name not in declared]
    unused = [param.name for param in params if param.name not in used]
    problems = []
    if undeclared:
        problems.append(f"placeholders not declared in '-- params:': {', '.join(undeclared)}")
    if unused:
        problems.append(f"declared parameters not used by the statement: {', '.join(unused)}")
    if problems:
        raise RegistryError(f"{where}: " + "; ".join(problems))

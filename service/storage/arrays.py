"""Array parameters as PostgreSQL array literals (the flush's statements, docs/events.md#flush).

psycopg dumps a Python list element by element in Python: 1-3 us per element, more for a datetime, and a
flush passes thousands of elements, several arrays of them to two statements. `array_literal` builds the
text form `{...}` with a few string operations per element instead; psycopg sends a `str` as an untyped
parameter, which the statement's own cast (`::text[]`, `::bigint[]`, `::timestamptz[]`, `::boolean[]`)
parses on the server, so the statements do not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

ArrayElement = str | int | bool | datetime | None

# The element types of the arrays joined in one C call (`array_literal`).
_TEXT = {str}
_INTEGERS = {int}
_NULLABLE_INTEGERS = {int, type(None)}
_NULLABLE_MOMENTS = {datetime, type(None)}


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def array_literal(values: Iterable[ArrayElement]) -> str:
    """The PostgreSQL array literal of `values`: strings quoted and escaped, None as NULL, booleans as t/f,
    datetimes (timezone-aware) in ISO 8601. Arrays of one element type (and NULLs), what a flush sends, are
    joined without a type test per element; strings and integers in one C call."""
    items = values if isinstance(values, list) else list(values)
    if not items:
        return "{}"
    kinds = set(map(type, items))
    if kinds == _TEXT:
        texts = cast(list[str], items)
        if '"' not in (flat := "".join(texts)) and "\\" not in flat:
            return '{"' + '","'.join(texts) + '"}'
        return "{" + ",".join(map(_quoted, texts)) + "}"
    if kinds == _INTEGERS:
        return "{" + ",".join(map(str, items)) + "}"
    if kinds <= _NULLABLE_INTEGERS:
        return "{" + ",".join("NULL" if value is None else str(value) for value in items) + "}"
    if kinds <= _NULLABLE_MOMENTS:
        moments = cast(list[datetime | None], items)
        return "{" + ",".join("NULL" if value is None else _moment(value) for value in moments) + "}"
    return "{" + ",".join(map(_element, items)) + "}"


def _element(value: ArrayElement) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return _moment(value)
    raise TypeError(f"no array literal for {value!r}")


def _moment(value: datetime) -> str:
    """A timezone-aware datetime in ISO 8601, quoted (the text has nothing to escape)."""
    if value.tzinfo is None:
        raise TypeError(f"no array literal for a naive datetime {value!r}")
    return '"' + value.isoformat() + '"'


def with_array_literals(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with every list replaced by its array literal (other values unchanged)."""
    return {name: array_literal(value) if isinstance(value, list) else value for name, value in params.items()}

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
from typing import Any

ArrayElement = str | int | bool | datetime | None


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def array_literal(values: Iterable[ArrayElement]) -> str:
    """The PostgreSQL array literal of `values`: strings quoted and escaped, None as NULL, booleans as t/f,
    datetimes (timezone-aware) in ISO 8601."""
    parts: list[str] = []
    for value in values:
        if value is None:
            parts.append("NULL")
        elif isinstance(value, str):
            parts.append(_quoted(value))
        elif isinstance(value, bool):
            parts.append("t" if value else "f")
        elif isinstance(value, int):
            parts.append(str(value))
        elif isinstance(value, datetime) and value.tzinfo is not None:
            parts.append(_quoted(value.isoformat()))
        else:
            raise TypeError(f"no array literal for {value!r}")
    return "{" + ",".join(parts) + "}"


def with_array_literals(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with every list replaced by its array literal (other values unchanged)."""
    return {name: array_literal(value) if isinstance(value, list) else value for name, value in params.items()}

"""Array literals (service/storage/arrays.py) read back by PostgreSQL as the lists they encode."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest

from service.storage.arrays import array_literal, with_array_literals


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as connection:
        yield connection


def read_back(conn: psycopg.Connection, literal: str, cast: str) -> list[object]:
    row = conn.execute(f"SELECT %s::{cast}", [literal]).fetchone()
    assert row is not None
    return list(row[0])


def test_text_arrays_survive_quotes_backslashes_commas_and_null_words(conn: psycopg.Connection) -> None:
    values = ['a"b', "c\\d", "e,f", " g ", "", "NULL", None, "ünï cödé", '\\"', "{x}", "tab\there"]
    assert read_back(conn, array_literal(values), "text[]") == values


def test_numbers_booleans_and_timestamps(conn: psycopg.Connection) -> None:
    ints = [0, -1, 2_147_483_647, -(2**63), 2**63 - 1, None]
    assert read_back(conn, array_literal(ints), "bigint[]") == ints
    assert read_back(conn, array_literal([True, False, None]), "boolean[]") == [True, False, None]
    moments = [
        datetime(2026, 12, 6, 0, 20, 0, 123456, tzinfo=UTC),
        datetime(2026, 1, 1, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
        datetime.fromtimestamp(1_796_516_119.4835925, UTC),
        None,
    ]
    assert read_back(conn, array_literal(moments), "timestamptz[]") == moments
    assert read_back(conn, array_literal([]), "text[]") == []


def test_values_without_a_literal_are_refused() -> None:
    with pytest.raises(TypeError):
        array_literal([1.5])
    with pytest.raises(TypeError):
        array_literal([datetime(2026, 1, 1)])  # naive: the session's time zone would decide


def test_only_lists_are_replaced() -> None:
    now = datetime.now(UTC)
    assert with_array_literals({"ids": ["a", "b"], "now": now, "n": 3}) == {"ids": '{"a","b"}', "now": now, "n": 3}


def test_arrays_of_one_element_type(conn: psycopg.Connection) -> None:
    """Arrays of only strings, integers or timestamps (what a flush sends) take the joined paths."""
    plain = ["user-1", "stat:matches_played", "", "NULL", "ünï"]
    assert array_literal(plain) == '{"user-1","stat:matches_played","","NULL","ünï"}'
    assert read_back(conn, array_literal(plain), "text[]") == plain
    escaped = ['a"b', "c\\d", "e"]
    assert read_back(conn, array_literal(escaped), "text[]") == escaped
    assert read_back(conn, array_literal([3, -2, 0]), "bigint[]") == [3, -2, 0]
    assert read_back(conn, array_literal(iter([None, 7])), "bigint[]") == [None, 7]
    moments = [datetime(2026, 12, 6, 3, 0, tzinfo=UTC), datetime.fromtimestamp(1_796_516_119.25, UTC)]
    assert read_back(conn, array_literal(moments), "timestamptz[]") == moments
    with pytest.raises(TypeError):
        array_literal([datetime(2026, 1, 1), None])

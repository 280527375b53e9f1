"""Shared fixtures: a fresh PostgreSQL database per test run and a Redis key prefix per test run.

The servers are the ones named by DATABASE_URL / REDIS_URL (CI points them at the machine's servers).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql


def _admin_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("DATABASE_URL is not set")
    return url


def _with_dbname(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A libpq URL of an empty database created for this test run and dropped after it."""
    admin_url = _admin_url()
    dbname = f"challengectl_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        yield _with_dbname(admin_url, dbname)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        raise RuntimeError("REDIS_URL is not set")
    return url


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    """A key prefix unique to this test run (no `{` or `}`), so runs never see each other's keys."""
    return f"t{uuid.uuid4().hex[:8]}"

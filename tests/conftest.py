"""Shared fixtures: a fresh PostgreSQL database per test run and a Redis key prefix per test run.

The servers are the ones named by DATABASE_URL / REDIS_URL (CI points them at the machine's servers).
When either is unset, that server is the embedded one (docs/configuration.md#embedded-default), started for the session in a
temporary data dir and stopped when the session ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from service.runtime.embedded import EmbeddedServers
from tests.servers import PrivateRedis


@pytest.fixture(scope="session")
def _embedded_data_dir() -> Iterator[Path]:
    """The data dir shared by the session's embedded servers, removed at the end of the session.

    Not under pytest's basetemp: as root, postgres runs as another OS user that must traverse every
    parent directory, and any pytest session started meanwhile resets /tmp/pytest-of-root to 0700.
    """
    base = Path(tempfile.mkdtemp(prefix="challengectl-embedded-"))
    yield base / "data"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url(_embedded_data_dir: Path) -> Iterator[str]:
    """URL of the server's `postgres` database, for tests that create databases of their own.

    DATABASE_URL, or the URL of an embedded PostgreSQL that lives as long as the session.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with EmbeddedServers(_embedded_data_dir, postgres=True, redis=False) as servers:
        yield servers.urls.database_url


@contextmanager
def new_database(admin_url: str, prefix: str) -> Iterator[str]:
    """Create an empty database named `<prefix>_<random>`; yield its URL; drop it afterwards."""
    dbname = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        yield psycopg.conninfo.make_conninfo(admin_url, dbname=dbname)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture(scope="session")
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A libpq URL of an empty database created for this test run and dropped after it."""
    with new_database(pg_admin_url, "challengectl_test") as url:
        yield url


@pytest.fixture
def fresh_db(pg_admin_url: str) -> Iterator[str]:
    """A libpq URL of a new, empty database, dropped after the test."""
    with new_database(pg_admin_url, "challengectl_fresh") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(_embedded_data_dir: Path) -> Iterator[str]:
    """REDIS_URL, or the URL of an embedded Redis that lives as long as the session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedServers(_embedded_data_dir, postgres=False, redis=True) as servers:
        yield servers.urls.redis_url


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    """A key prefix unique to this test run (no `{` or `}`), so runs never see each other's keys."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()

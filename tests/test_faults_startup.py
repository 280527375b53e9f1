"""Startup against a PostgreSQL that refuses for good, and what the public `/readyz` body may say of a
failing dependency (issue 11; docs/cli.md#exit-codes, docs/http-api.md#health-and-readiness)."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from redis.exceptions import ConnectionError as RedisConnectionError

from service.storage.store import StoreUnavailable
from service.transport.health import Readiness, public_reason
from tests.servers import free_port
from tests.support.serve import REPO_ROOT, base_env


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (StoreUnavailable("db.internal:5432/app", "Connection refused"), "PostgreSQL unavailable: Connection refused"),
        (RedisConnectionError("Error 111 connecting to 10.1.2.3:6379. Connection refused."), "Redis unavailable: "),
        (RedisConnectionError("Error 2 connecting to /run/redis/redis.sock. No such file."), "Redis unavailable: "),
        (OSError("no node of 10.1.2.3:7000, [::1]:7001, cache-1.internal:6379 answers"), "no node of <address>"),
    ],
)
def test_public_reasons_name_no_host_port_or_path(error: BaseException, reason: str) -> None:
    text = public_reason(error)
    assert text.startswith(reason)
    for secret in ("db.internal", "10.1.2.3", "/run/redis", "::1", "cache-1"):
        assert secret not in text


async def test_readiness_logs_the_full_error_once_and_shows_the_public_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def database_down() -> float:
        raise StoreUnavailable("db.internal:5432/app", "Connection refused")

    async def version() -> int:
        return 1

    readiness = Readiness(database_down, version, 1, None)
    with caplog.at_level(logging.WARNING, logger="challengectl.health"):
        for _ in range(3):
            ready, body = await readiness.check()
    assert not ready and body["checks"]["database"]["error"] == "PostgreSQL unavailable: Connection refused"
    assert "db.internal" not in str(body)
    assert [r.getMessage() for r in caplog.records] == [
        "readiness check database failing: StoreUnavailable: PostgreSQL db.internal:5432/app unavailable: "
        "Connection refused"
    ]


@pytest.mark.integration
def test_serve_stops_at_once_when_the_database_does_not_exist(pg_url: str, redis_url: str) -> None:
    missing = f"challengectl_missing_{uuid.uuid4().hex[:8]}"
    url = make_conninfo(pg_url, dbname=missing)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (missing,)).fetchone() is None
    env = base_env(
        DATABASE_URL=url,
        REDIS_URL=redis_url,
        CHALLENGE_JWT_SECRET="x" * 32,
        CHALLENGE_STARTUP_TIMEOUT_S="300",
        PYTHONPATH=str(REPO_ROOT),
    )
    ports = [f"--{flag}={free_port()}" for flag in ("port", "grpc-port", "admin-port")]
    # A startup that retried for startup_timeout_s (300 s) would run into the subprocess timeout.
    done = subprocess.run(
        [sys.executable, "-m", "challengectl", "serve", *ports], env=env, capture_output=True, text=True, timeout=45
    )
    assert done.returncode == 2, done.stderr
    error, hint = done.stderr.splitlines()[-2:]
    assert error.startswith("Error: PostgreSQL ") and f'database "{missing}" does not exist' in error
    assert hint.startswith("Hint: create it") and "Traceback" not in done.stderr

"""`challengectl serve` end to end: embedded default, given URLs, readiness, admin, shutdown, --check,
and `db migrate` (docs/http-api.md#health-and-readiness, docs/http-api.md#admin-and-metrics, docs/configuration.md#embedded-default; H1-H3, H5, X15)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from grpc_health.v1 import health_pb2

from service.storage.migrations import discover_migrations
from service.transport.auth import mint_token
from tests.servers import PrivateRedis, free_port
from tests.support.serve import (
    REPO_ROOT,
    SHUTDOWN_LIMIT_S,
    ServeProcess,
    base_env,
    grpc_health,
    http_get,
    player_call,
    processes_using,
    publish_logins,
    welcome_progress,
)

pytestmark = pytest.mark.integration

LATEST_SCHEMA = max(m.version for m in discover_migrations())


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under tmp_path: the embedded PostgreSQL runs as another OS user that must traverse the parents.
    base = Path(tempfile.mkdtemp(prefix="challengectl-serve-"))
    yield base / "data"
    shutil.rmtree(base, ignore_errors=True)


def test_embedded_default_serves_and_stops_clean(data_dir: Path) -> None:
    serve = ServeProcess(base_env(CHALLENGE_DATA_DIR=str(data_dir))).start()
    try:
        status, body, headers = http_get(serve.api("/healthz"))
        assert (status, body) == (200, {"status": "healthy"})
        assert headers["x-catalog-fingerprint"] and headers["x-request-id"]
        ready = serve.wait_ready()
        assert ready["status"] == "ready"
        assert ready["checks"]["migrations"] == {"ok": True, "version": LATEST_SCHEMA}
        assert http_get(serve.api("/challenge/readyz"))[0] == 200
        assert http_get(serve.admin("/readyz"))[0] == 200
        config = http_get(serve.admin("/admin/config"))[1]
        assert config["embedded"]["postgres"] is True and config["embedded"]["source"] == "default"
        assert config["catalog_path"]["value"].endswith("service/examples/challenges.json")
        assert config["catalog_path"]["source"].startswith("bundled example")
        assert config["database_url"]["source"] == "default"
        assert grpc_health(serve.grpc_port) == health_pb2.HealthCheckResponse.SERVING
        assert processes_using(data_dir), "embedded servers should be running"
        assert (data_dir.stat().st_mode & 0o777) == 0o700
    finally:
        code, seconds, stderr = serve.stop(signal.SIGINT)
    assert code == 0, stderr
    assert seconds < SHUTDOWN_LIMIT_S
    assert "DATABASE_URL" in stderr and "redis-cli" in stderr and "psql" in stderr
    deadline = time.monotonic() + 5
    while processes_using(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_using(data_dir) == []


def test_embedded_data_survives_a_restart(data_dir: Path) -> None:
    first = ServeProcess(base_env(CHALLENGE_DATA_DIR=str(data_dir))).start()
    first.wait_ready()
    assert first.stop()[0] == 0
    second = ServeProcess(base_env(CHALLENGE_DATA_DIR=str(data_dir))).start()
    try:
        assert second.wait_ready()["checks"]["migrations"]["version"] == LATEST_SCHEMA
    finally:
        code, _, stderr = second.stop(signal.SIGTERM)
    assert code == 0, stderr
    assert "applied migration" not in stderr, "the schema of the first run should have survived"


def test_given_urls_serve_and_admin_token_guards_admin_routes(pg_url: str, redis_url: str) -> None:
    # Credentials as query parameters (ignored by a trust-auth server) must be masked like user:pw@.
    params = psycopg.conninfo.conninfo_to_dict(pg_url)
    query = "&".join(f"{key}={value}" for key, value in params.items() if key in ("host", "port", "user"))
    env = base_env(
        DATABASE_URL=f"postgresql:///{params['dbname']}?{query}&password=pw-s3cret",
        REDIS_URL=redis_url,
        CHALLENGE_JWT_SECRET="x" * 32,
        CHALLENGE_ADMIN_TOKEN="adm-secret",
        CHALLENGE_REWARD_WEBHOOK_URL="http://hooks.example/grant?token=hook-s3cret&tenant=t1",
    )
    serve = ServeProcess(env).start()
    try:
        serve.wait_ready()
        assert http_get(serve.admin("/admin/config"))[0] == 401
        status, body, _ = http_get(serve.admin("/admin/config"), {"Authorization": "Bearer wrong"})
        assert (status, body) == (403, {"errorCode": "FORBIDDEN", "message": "admin token rejected"})
        status, config, _ = http_get(serve.admin("/admin/config"), {"Authorization": "Bearer adm-secret"})
        assert status == 200
        assert config["embedded"]["postgres"] is False
        assert config["admin_token"] == {"value": "****", "source": "env"}
        assert config["jwt_secret"] == {"value": "****", "source": "env"}
        assert "adm-secret" not in json.dumps(config) and "s3cret" not in json.dumps(config)
        assert config["database_url"]["value"].endswith("password=****")
        assert config["reward_webhook_url"]["value"] == "http://hooks.example/grant?token=****&tenant=t1"
        assert http_get(serve.admin("/healthz"))[0] == 200  # health stays open
        status, body, _ = http_get(serve.api("/no/such/route"))
        assert status == 404 and body["errorCode"] == "ROUTE_NOT_FOUND"
    finally:
        code, seconds, stderr = serve.stop(signal.SIGTERM)
    assert code == 0, stderr
    assert seconds < SHUTDOWN_LIMIT_S


def test_readyz_names_redis_while_it_is_down_when_required(pg_url: str, private_redis: PrivateRedis) -> None:
    env = base_env(
        DATABASE_URL=pg_url,
        REDIS_URL=private_redis.url,
        CHALLENGE_JWT_SECRET="x" * 32,
        CHALLENGE_READYZ_REDIS="required",
    )
    serve = ServeProcess(env).start()
    try:
        serve.wait_ready()
        private_redis.stop()
        body = serve.wait_ready(expect=503)
        assert body["errorCode"] == "DEPENDENCY_UNAVAILABLE"
        assert body["message"] == "not ready: redis"
        assert body["status"] == "not_ready"
        assert body["checks"]["redis"]["ok"] is False and body["checks"]["database"]["ok"] is True
        deadline = time.monotonic() + 5
        while grpc_health(serve.grpc_port) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "gRPC health should follow readiness"
            time.sleep(0.2)
        private_redis.start()
        assert serve.wait_ready()["checks"]["redis"]["ok"] is True
    finally:
        assert serve.stop()[0] == 0


def test_startup_refuses_a_taken_port(pg_url: str, redis_url: str) -> None:
    env = base_env(DATABASE_URL=pg_url, REDIS_URL=redis_url, CHALLENGE_JWT_SECRET="x" * 32)
    first = ServeProcess(env).start()
    try:
        clash = subprocess.run(
            [
                sys.executable,
                "-m",
                "challengectl",
                "serve",
                "--port",
                str(first.http_port),
                "--grpc-port",
                str(free_port()),
                "--admin-port",
                str(free_port()),
            ],
            env={**env, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        first.stop()
    assert clash.returncode == 1
    assert clash.stderr.splitlines()[-2].startswith("Error: cannot listen on 127.0.0.1:")
    assert clash.stderr.splitlines()[-1].startswith("Hint: ")
    assert "Traceback" not in clash.stderr


def test_committed_events_show_in_the_next_cached_read(pg_url: str, redis_url: str, redis_prefix: str) -> None:
    secret = "e2e-secret-" + "x" * 32
    env = base_env(
        DATABASE_URL=pg_url, REDIS_URL=redis_url, CHALLENGE_JWT_SECRET=secret, CHALLENGE_REDIS_KEY_PREFIX=redis_prefix
    )
    serve = ServeProcess(env).start()
    user = f"events-{uuid.uuid4().hex[:8]}"
    token = mint_token(secret.encode(), user)
    try:
        serve.wait_ready()
        player_call(serve, token, "POST", "/v1/challenges/initialize")
        listing = player_call(serve, token, "GET", "/v1/challenges?active_only=true")  # fills the cache
        assert welcome_progress(listing["challenges"][0]["goals"]) == 0
        result = publish_logins(serve, user, 3)
        assert (result.accepted, result.committed) == (3, True)
        listing = player_call(serve, token, "GET", "/v1/challenges?active_only=true")
        assert welcome_progress(listing["challenges"][0]["goals"]) == 3
        cache = http_get(serve.admin("/admin/cache"))[1]
        assert cache["invalidations"] >= 1 and cache["hits"] >= 1
        assert http_get(serve.admin("/admin/pool"))[1]["db"]["peak_in_use"] >= 1
        reset = urllib.request.Request(serve.admin("/admin/reset-peaks"), method="POST", data=b"")
        with urllib.request.urlopen(reset, timeout=5) as response:
            assert response.status == 204
        assert http_get(serve.admin("/admin/pool"))[1]["db"]["peak_in_use"] == 0
        assert http_get(serve.admin("/admin/buffer"))[1]["peak_entries"] == 0
    finally:
        assert serve.stop()[0] == 0


def test_shutdown_flushes_buffered_events(pg_url: str, redis_url: str) -> None:
    secret = "e2e-secret-" + "x" * 32
    env = base_env(
        DATABASE_URL=pg_url,
        REDIS_URL=redis_url,
        CHALLENGE_JWT_SECRET=secret,
        CHALLENGE_ACK_MODE="buffered",
        CHALLENGE_FLUSH_INTERVAL_MS="60000",
    )
    serve = ServeProcess(env).start()
    user = f"drain-{uuid.uuid4().hex[:8]}"
    token = mint_token(secret.encode(), user)
    try:
        serve.wait_ready()
        player_call(serve, token, "POST", "/v1/challenges/initialize")
        result = publish_logins(serve, user, 4)
        assert (result.accepted, result.committed) == (4, False)
        assert http_get(serve.admin("/admin/buffer"))[1]["entries"] == 1
    finally:
        code, seconds, stderr = serve.stop(signal.SIGTERM)
    assert code == 0, stderr
    assert "shutdown: flushed 1 buffered entries, 0 left" in stderr
    with psycopg.connect(pg_url) as conn:
        progress = conn.execute(
            "SELECT progress FROM user_goal_progress WHERE user_id = %s AND goal_id = %s", (user, "s1-welcome")
        ).fetchone()
    assert progress == (4,)


def test_parallel_http_claims_succeed_exactly_once(pg_url: str, redis_url: str) -> None:
    secret = "e2e-secret-" + "x" * 32
    serve = ServeProcess(base_env(DATABASE_URL=pg_url, REDIS_URL=redis_url, CHALLENGE_JWT_SECRET=secret)).start()
    user = f"claims-{uuid.uuid4().hex[:8]}"
    token = mint_token(secret.encode(), user)

    def claim(_: int) -> int:
        try:
            player_call(serve, token, "POST", "/v1/challenges/season-1/goals/s1-welcome/claim")
            return 200
        except urllib.error.HTTPError as error:
            assert json.loads(error.read())["errorCode"] == "ALREADY_CLAIMED"
            return error.code

    try:
        serve.wait_ready()
        player_call(serve, token, "POST", "/v1/challenges/initialize")
        assert publish_logins(serve, user, 1).accepted == 1
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = sorted(pool.map(claim, range(20)))
    finally:
        assert serve.stop()[0] == 0
    assert statuses == [200] + [409] * 19
    with psycopg.connect(pg_url) as conn:
        grants = conn.execute("SELECT generation FROM reward_grants WHERE user_id = %s", (user,)).fetchall()
    assert grants == [(1,)]

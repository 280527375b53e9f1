"""`challengectl doctor` against a real `serve`, PostgreSQL and a private Redis (docs/cli.md#commands doctor table,
docs/cli.md#exit-codes): every check passes or warns acceptably when all is well, and Redis down, PostgreSQL down, a
missing or duplicate index, rows outside the catalog and a loose secret file each show up in their
row, with exit 99 (never 5) on a failure; `--skip`, `--strict` and `-o json|table`."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from challengectl.checks import CHECK_IDS
from challengectl.cli import main
from service.config.resources import example_catalog_path
from service.storage.migrations import discover_migrations
from tests.conftest import new_database
from tests.servers import PrivateRedis, free_port
from tests.support.cli import isolate_cli
from tests.support.serve import ServeProcess, base_env

pytestmark = pytest.mark.integration

SECRET = "doctor-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A Redis of this module's own, so that stopping it disturbs no other test."""
    server = PrivateRedis(tmp_path_factory.mktemp("doctor-redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def service(pg_admin_url: str, redis_server: PrivateRedis) -> Iterator[ServeProcess]:
    """A real `serve` on a fresh database (migrated at startup) and the private Redis."""
    with new_database(pg_admin_url, "doctor") as database_url:
        serve = ServeProcess(
            base_env(DATABASE_URL=database_url, REDIS_URL=redis_server.url, CHALLENGE_JWT_SECRET=SECRET)
        )
        serve.start()
        serve.wait_ready()
        serve.database_url = database_url  # type: ignore[attr-defined]
        try:
            yield serve
        finally:
            serve.stop()


@pytest.fixture(autouse=True)
def doctor_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The configuration an operator would give doctor: the service's catalog and secret, and no
    stray settings, config file or embedded data dir of this machine."""
    isolate_cli(monkeypatch, tmp_path, CHALLENGE_CATALOG_PATH=str(example_catalog_path()), CHALLENGE_JWT_SECRET=SECRET)


def service_flags(serve: ServeProcess, redis_url: str, database_url: str | None = None) -> list[str]:
    return [
        "--api-url",
        f"http://127.0.0.1:{serve.http_port}/challenge",
        "--admin-url",
        f"http://127.0.0.1:{serve.admin_port}",
        "--grpc-addr",
        f"127.0.0.1:{serve.grpc_port}",
        "--database-url",
        database_url or serve.database_url,  # type: ignore[attr-defined]
        "--redis-url",
        redis_url,
    ]


def run_doctor(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def doctor_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict], str]:
    """(exit code, the rows by check id, stderr) of `doctor -o json`."""
    code, out, err = run_doctor(["-o", "json", *args], capsys)
    body = json.loads(out)
    assert body["total"] == len(body["items"])
    return code, {row["id"]: row for row in body["items"]}, err


def database_session(serve: ServeProcess) -> psycopg.Connection:
    return psycopg.connect(serve.database_url, autocommit=True)  # type: ignore[attr-defined]


def test_everything_passes_against_a_healthy_service(service: ServeProcess, redis_server: PrivateRedis, capsys) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, rows, err = doctor_json([*service_flags(service, redis_server.url), "doctor"], capsys)
    # doctor prints its table and nothing else (a sync redis Retry given to the async client used to warn).
    assert [str(warning.message) for warning in caught if warning.category is UserWarning] == []
    assert code == 0, (rows, err)
    assert list(rows) == list(CHECK_IDS)
    for check_id in (
        "settings",
        "postgres",
        "migrations",
        "catalog-rows",
        "indexes",
        "time",
        "redis",
        "service",
        "cache-ratio",
        "buffer",
    ):
        assert rows[check_id]["status"] == "pass", rows[check_id]
    assert rows["postgres"]["observed"].startswith("PostgreSQL ")
    assert f"all {len(discover_migrations())} applied" in rows["migrations"]["observed"]
    assert "idx_ugp_user_active" in rows["indexes"]["observed"]
    assert "TimeZone UTC" in rows["time"]["observed"]
    assert rows["service"]["observed"] == "REST /readyz 200, gRPC SERVING, admin reachable"
    assert rows["cache-ratio"]["observed"] == "no traffic"
    # This machine's PostgreSQL has no pg_stat_statements preloaded, and its connections are shared
    # with other test runs; either may warn, neither may fail.
    assert rows["pg-stat-statements"]["status"] in ("pass", "warn")
    if rows["pg-stat-statements"]["status"] == "warn":
        assert "shared_preload_libraries" in rows["pg-stat-statements"]["hint"]
    assert rows["headroom"]["status"] in ("pass", "warn")
    # the default layout: the API process and the main (ingestion) process
    assert "2 process(es) × db_pool_max 20 + 4 flusher = 44" in rows["headroom"]["observed"]
    assert rows["pool"]["status"] == "pass" and "0 waiting" in rows["pool"]["observed"], rows["pool"]
    # A private redis-server starts with maxmemory-policy noeviction.
    assert rows["redis-eviction"]["status"] == "warn"
    assert "noeviction" in rows["redis-eviction"]["observed"] and "volatile-lru" in rows["redis-eviction"]["hint"]
    assert rows["jwt-secret"]["status"] == "skip"  # the secret comes from CHALLENGE_JWT_SECRET, no file
    assert "0 failed" in err


def test_table_shows_markers_observed_values_and_hints(
    service: ServeProcess, redis_server: PrivateRedis, capsys
) -> None:
    code, out, _ = run_doctor([*service_flags(service, redis_server.url), "-o", "table", "doctor"], capsys)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and line.split()[0] in CHECK_IDS}
    assert set(lines) == set(CHECK_IDS)
    assert "✓ PASS" in lines["postgres"] and "round trip" in lines["postgres"]
    assert "! WARN" in lines["redis-eviction"] and "noeviction" in lines["redis-eviction"]
    assert "- SKIP" in lines["jwt-secret"]


def test_strict_turns_a_warning_into_exit_99(service: ServeProcess, redis_server: PrivateRedis, capsys) -> None:
    code, rows, _ = doctor_json([*service_flags(service, redis_server.url), "doctor", "--strict"], capsys)
    assert not [row for row in rows.values() if row["status"] == "fail"]
    assert rows["redis-eviction"]["status"] == "warn"
    assert code == 99


def test_skip_removes_rows_and_rejects_unknown_ids(service: ServeProcess, redis_server: PrivateRedis, capsys) -> None:
    code, rows, _ = doctor_json(
        [
            *service_flags(service, redis_server.url),
            "doctor",
            "--skip",
            "redis-eviction",
            "--skip",
            "pg-stat-statements",
            "--skip",
            "headroom",
            "--strict",
        ],
        capsys,
    )
    assert set(rows) == set(CHECK_IDS) - {"redis-eviction", "pg-stat-statements", "headroom"}
    assert code == 0, rows  # the warnings are gone with their rows

    code, _, err = run_doctor(["doctor", "--skip", "no-such-check"], capsys)
    assert code == 2 and "no-such-check" in err


def test_missing_expected_index_fails(service: ServeProcess, redis_server: PrivateRedis, capsys) -> None:
    with database_session(service) as conn:
        conn.execute("DROP INDEX idx_ugp_user_active")
    try:
        code, rows, _ = doctor_json([*service_flags(service, redis_server.url), "doctor"], capsys)
    finally:
        with database_session(service) as conn:
            conn.execute("CREATE INDEX idx_ugp_user_active ON user_goal_progress (user_id) WHERE is_active")
    assert code == 99
    assert rows["indexes"]["status"] == "fail"
    assert "idx_ugp_user_active missing" in rows["indexes"]["observed"]
    assert "CREATE INDEX CONCURRENTLY idx_ugp_user_active" in rows["indexes"]["hint"]


def test_index_duplicating_the_primary_key_warns(service: ServeProcess, redis_server: PrivateRedis, capsys) -> None:
    with database_session(service) as conn:
        conn.execute("CREATE INDEX doctor_dup_user ON user_goal_progress (user_id)")
    try:
        code, rows, _ = doctor_json([*service_flags(service, redis_server.url), "doctor"], capsys)
    finally:
        with database_session(service) as conn:
            conn.execute("DROP INDEX doctor_dup_user")
    assert code == 0
    assert rows["indexes"]["status"] == "warn"
    assert "doctor_dup_user (user_id) duplicates user_goal_progress_pkey" in rows["indexes"]["observed"]


def test_rows_outside_the_catalog_warn(service: ServeProcess, redis_server: PrivateRedis, capsys) -> None:
    with database_session(service) as conn:
        conn.execute(
            "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace)"
            " VALUES ('doctor-user', 'goal-removed-from-catalog', 'some-challenge', 'accelbyte')"
        )
    try:
        code, rows, _ = doctor_json([*service_flags(service, redis_server.url), "doctor"], capsys)
    finally:
        with database_session(service) as conn:
            conn.execute("DELETE FROM user_goal_progress WHERE user_id = 'doctor-user'")
    assert code == 0
    assert rows["catalog-rows"]["status"] == "warn"
    assert "1 row(s) of goal 'goal-removed-from-catalog' (not in the catalog)" in rows["catalog-rows"]["observed"]


def test_postgres_down_fails_with_exit_99_not_5(service: ServeProcess, redis_server: PrivateRedis, capsys) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    code, rows, err = doctor_json([*service_flags(service, redis_server.url, database_url=closed), "doctor"], capsys)
    assert code == 99
    assert rows["postgres"]["status"] == "fail" and "unreachable" in rows["postgres"]["observed"]
    for check_id in ("migrations", "catalog-rows", "indexes", "pg-stat-statements", "headroom", "pool", "time"):
        assert rows[check_id]["status"] == "skip", rows[check_id]
    assert "postgres" in err


def test_no_database_and_no_running_embedded_serve_fails(capsys) -> None:
    # Closed ports, so that a service someone runs on the default ports does not answer for "no service".
    nowhere = [
        "--api-url",
        f"http://127.0.0.1:{free_port()}/challenge",
        "--admin-url",
        f"http://127.0.0.1:{free_port()}",
        "--grpc-addr",
        f"127.0.0.1:{free_port()}",
    ]
    code, rows, _ = doctor_json(
        [*nowhere, "doctor", "--skip", "service", "--skip", "redis", "--skip", "redis-eviction"], capsys
    )
    assert code == 99
    assert rows["postgres"]["status"] == "fail"
    assert "no running service database" in rows["postgres"]["observed"]
    assert rows["cache-ratio"]["status"] == "skip"  # the admin API of no service


def test_redis_down_fails_then_passes_again(
    service: ServeProcess, redis_server: PrivateRedis, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("CHALLENGE_READYZ_REDIS", "required")
    redis_server.stop()
    try:
        code, rows, _ = doctor_json([*service_flags(service, redis_server.url), "doctor"], capsys)
    finally:
        redis_server.start()
    assert code == 99
    assert rows["redis"]["status"] == "fail" and "unreachable" in rows["redis"]["observed"]
    assert rows["redis-eviction"]["status"] == "skip"
    assert rows["postgres"]["status"] == "pass"


def test_redis_down_only_warns_when_readiness_treats_it_as_optional(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("CHALLENGE_READYZ_REDIS", "optional")
    closed = f"redis://127.0.0.1:{free_port()}/0"
    code, rows, _ = doctor_json(["--redis-url", closed, "doctor", "--skip", "postgres", "--skip", "service"], capsys)
    assert rows["redis"]["status"] == "warn" and "unreachable" in rows["redis"]["observed"]
    assert code == 0, rows  # nothing else fails: the database and service checks are skipped


def test_jwt_secret_file_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    secret_file = tmp_path / "jwt.secret"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.delenv("CHALLENGE_JWT_SECRET")
    monkeypatch.setenv("CHALLENGE_JWT_SECRET_FILE", str(secret_file))
    only_jwt = [arg for check_id in CHECK_IDS if check_id != "jwt-secret" for arg in ("--skip", check_id)]

    secret_file.chmod(0o644)
    code, rows, _ = doctor_json(["doctor", *only_jwt], capsys)
    assert code == 99 and list(rows) == ["jwt-secret"]
    assert rows["jwt-secret"]["status"] == "fail" and "0644" in rows["jwt-secret"]["observed"]
    assert rows["jwt-secret"]["hint"] == f"chmod 600 {secret_file}"

    secret_file.chmod(0o600)
    code, rows, _ = doctor_json(["doctor", *only_jwt], capsys)
    assert code == 0 and rows["jwt-secret"]["status"] == "pass"


def test_unmigrated_database_fails_migrations_and_indexes(fresh_db: str, capsys) -> None:
    code, rows, _ = doctor_json(
        ["--database-url", fresh_db, "doctor", "--skip", "service", "--skip", "redis", "--skip", "redis-eviction"],
        capsys,
    )
    assert code == 99
    assert rows["postgres"]["status"] == "pass"
    assert rows["migrations"]["status"] == "fail"
    assert "pending 0001_create_user_goal_progress" in rows["migrations"]["observed"]
    assert rows["migrations"]["hint"] == "apply them with 'challengectl db migrate'"
    assert rows["indexes"]["status"] == "fail" and "does not exist" in rows["indexes"]["observed"]
    assert rows["catalog-rows"]["status"] == "skip"

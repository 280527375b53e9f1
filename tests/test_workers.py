"""`serve --workers 2` end to end against real PostgreSQL and Redis (docs/http-api.md#general-rules, docs/http-api.md#health-and-readiness, docs/http-api.md#admin-and-metrics, docs/events.md#shutdown; H7):
both HTTP workers serve the player port, the main process ingests and flushes events, the admin port's
`/metrics`, `/admin/pool`, `/admin/cache` and `POST /admin/reset-peaks` cover every process, a killed
worker is restarted (or stops the service when it crash-loops), and SIGTERM leaves no process behind."""

from __future__ import annotations

import http.client
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from service.transport.auth import mint_token
from tests.support.serve import ServeProcess, base_env, http_get, player_call, publish_logins, welcome_progress

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "workers-secret-" + "x" * 32
WORKERS = 2
# The module's service restarts a worker that lived 2 s; the crash-loop test gives its own service a long
# window, so that a slow start on a busy machine still counts as a crash loop.
CRASH_WINDOW_S = 2
LONG_CRASH_WINDOW_S = 600
POOL_MIN = 2


def worker_processes(serve: ServeProcess, timeout_s: float = 30) -> list[psutil.Process]:
    """The spawned HTTP workers of `serve`, once each listens on the player port."""
    main = psutil.Process(serve.process.pid)
    deadline = time.monotonic() + timeout_s
    while True:
        workers = [child for child in main.children() if _is_listening_worker(child, serve.http_port)]
        if len(workers) == WORKERS or time.monotonic() > deadline:
            assert len(workers) == WORKERS, f"expected {WORKERS} listening workers, found {workers}"
            return workers
        time.sleep(0.2)


def _is_listening_worker(process: psutil.Process, port: int) -> bool:
    try:
        return "spawn_main" in " ".join(process.cmdline()) and _listens_on(process, port)
    except psutil.Error:  # a killed worker is a zombie until the main process reaps it
        return False


def _listens_on(process: psutil.Process, port: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp"))


def serving_pid(serve: ServeProcess, workers: list[psutil.Process], path: str, token: str | None = None) -> int:
    """Send one request over a fresh connection; return the pid of the worker holding its server side."""
    connection = http.client.HTTPConnection("127.0.0.1", serve.http_port, timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        response.read()
        assert response.status == 200, path
        client_port = connection.sock.getsockname()[1]
        for worker in workers:
            for socket_info in worker.net_connections("tcp"):
                if socket_info.raddr and socket_info.raddr.port == client_port:
                    return worker.pid
    finally:
        connection.close()
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def counter_value(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text; 0 when it is absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in metrics_text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def metrics_text(serve: ServeProcess) -> str:
    with urllib.request.urlopen(serve.admin("/metrics"), timeout=5) as response:
        return response.read().decode()


def reset_peaks(serve: ServeProcess) -> None:
    request = urllib.request.Request(serve.admin("/admin/reset-peaks"), method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 204


def service_sessions(pg_url: str) -> int:
    database = conninfo_to_dict(pg_url)["dbname"]
    with psycopg.connect(pg_url) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'challengectl-service'",
            (database,),
        ).fetchone()[0]


def runtime_dir_of(main: psutil.Process) -> Path:
    """The run's private directory, found through the metrics files the main process keeps open."""
    for opened in main.open_files():
        if "/metrics/" in opened.path and opened.path.endswith(".db"):
            return Path(opened.path).parent.parent
    raise AssertionError("the main process holds no multiprocess metrics file")


def workers_env(pg_url: str, redis_url: str, redis_prefix: str, crash_window_s: int = CRASH_WINDOW_S) -> dict[str, str]:
    return base_env(
        CHALLENGE_WORKER_CRASH_WINDOW_S=str(crash_window_s),
        DATABASE_URL=pg_url,
        REDIS_URL=redis_url,
        CHALLENGE_JWT_SECRET=SECRET,
        CHALLENGE_REDIS_KEY_PREFIX=redis_prefix,
        CHALLENGE_WORKERS=str(WORKERS),
        CHALLENGE_DB_POOL_MIN=str(POOL_MIN),
    )


@pytest.fixture(scope="module")
def serve(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[ServeProcess]:
    instance = ServeProcess(workers_env(pg_url, redis_url, redis_prefix)).start()
    try:
        instance.wait_ready()
        yield instance
    finally:
        instance.kill()


@pytest.fixture(scope="module")
def token() -> str:
    return mint_token(SECRET.encode(), f"workers-{uuid.uuid4().hex[:8]}")


def test_both_workers_serve_the_port_and_metrics_count_every_request(serve: ServeProcess, token: str) -> None:
    workers = worker_processes(serve)
    assert not _listens_on(psutil.Process(serve.process.pid), serve.http_port), "the main process serves no HTTP"
    player_call(serve, token, "POST", "/v1/challenges/initialize")
    route = {"route": "/challenge/v1/challenges", "method": "GET", "status": "200"}
    before = counter_value(metrics_text(serve), "challenge_http_requests_total", **route)
    sent = 40
    pids = [serving_pid(serve, workers, "/challenge/v1/challenges", token) for _ in range(sent)]
    assert set(pids) == {worker.pid for worker in workers}, "SO_REUSEPORT should spread connections over both"
    after = counter_value(metrics_text(serve), "challenge_http_requests_total", **route)
    assert after - before == sent


def test_events_are_ingested_and_flushed_by_the_main_process(serve: ServeProcess) -> None:
    user = f"workers-events-{uuid.uuid4().hex[:8]}"
    user_token = mint_token(SECRET.encode(), user)
    player_call(serve, user_token, "POST", "/v1/challenges/initialize")
    listing = player_call(serve, user_token, "GET", "/v1/challenges?active_only=true")
    assert welcome_progress(listing["challenges"][0]["goals"]) == 0
    result = publish_logins(serve, user, 3)
    assert (result.accepted, result.committed) == (3, True)
    listing = player_call(serve, user_token, "GET", "/v1/challenges?active_only=true")
    assert welcome_progress(listing["challenges"][0]["goals"]) == 3
    assert http_get(serve.admin("/admin/buffer"))[1]["flushes_total"] >= 1
    assert counter_value(metrics_text(serve), "challenge_events_total", origin="publish", outcome="accepted") >= 3


def test_admin_pool_and_cache_sum_every_process(serve: ServeProcess, pg_url: str, token: str) -> None:
    config = http_get(serve.admin("/admin/config"))[1]
    processes = WORKERS + 1
    pool = http_get(serve.admin("/admin/pool"))[1]
    assert pool["db"]["max_size"] == processes * config["db_pool_max"]["value"]
    assert pool["db"]["min_size"] == processes * POOL_MIN
    assert pool["redis"]["max_connections"] == processes * config["redis_pool_max"]["value"]
    assert pool["redis"]["healthy"] is True
    deadline = time.monotonic() + 10
    while pool["db"]["size"] != service_sessions(pg_url):
        assert time.monotonic() < deadline, f"pool size {pool['db']['size']} != pg_stat_activity sessions"
        time.sleep(0.2)
        pool = http_get(serve.admin("/admin/pool"))[1]
    assert pool["db"]["size"] >= processes * POOL_MIN

    workers = worker_processes(serve)
    before = http_get(serve.admin("/admin/cache"))[1]
    reads = 30
    for _ in range(reads):
        serving_pid(serve, workers, "/challenge/v1/challenges?active_only=true", token)
    after = http_get(serve.admin("/admin/cache"))[1]
    active_lookups = sum(after["by_kind"]["active"].values()) - sum(before["by_kind"]["active"].values())
    assert active_lookups == reads, "every worker's cache lookups are counted"
    assert after["enabled"] is True and after["healthy"] is True and after["bypass"] is False


def test_reset_peaks_resets_every_process(serve: ServeProcess) -> None:
    workers = worker_processes(serve)
    served = set()
    deadline = time.monotonic() + 10
    while served != {worker.pid for worker in workers}:  # /readyz pings the database in the worker
        assert time.monotonic() < deadline
        served.add(serving_pid(serve, workers, "/readyz"))
    # The main process's readiness poller holds a connection every second; each worker used one.
    assert http_get(serve.admin("/admin/pool"))[1]["db"]["peak_in_use"] >= WORKERS + 1
    reset_peaks(serve)
    # Only the main process's poller can have taken a connection since the reset.
    assert http_get(serve.admin("/admin/pool"))[1]["db"]["peak_in_use"] <= 1


def test_a_killed_worker_is_restarted_and_sigterm_stops_every_process(serve: ServeProcess, token: str) -> None:
    main = psutil.Process(serve.process.pid)
    victim, survivor = worker_processes(serve)
    # Past the crash window, the death is an accident to recover from, not a crash loop. psutil's create_time
    # counts from the boot time in whole seconds, so it can read up to 1 s early: wait 1.5 s past the window.
    time.sleep(max(0.0, victim.create_time() + CRASH_WINDOW_S + 1.5 - time.time()))
    victim.kill()
    deadline = time.monotonic() + 30
    while True:
        workers = worker_processes(serve)
        if victim.pid not in {worker.pid for worker in workers}:
            break
        assert time.monotonic() < deadline, "the killed worker should have been replaced"
        time.sleep(0.2)
    assert survivor.pid in {worker.pid for worker in workers}
    assert serve.wait_ready()["status"] == "ready"
    player_call(serve, token, "GET", "/v1/challenges")

    everyone = [main, *main.children(recursive=True)]
    runtime_dir = runtime_dir_of(main)
    code, _, stderr = serve.stop(signal.SIGTERM)
    assert code == 0, stderr
    assert "exited unexpectedly (killed by SIGKILL)" in stderr, stderr[-3000:]
    assert "restarting HTTP worker" in stderr
    _, alive = psutil.wait_procs(everyone, timeout=5)
    assert alive == [], f"processes left behind: {alive}"
    assert not runtime_dir.exists(), "the metrics files and control sockets should be removed"


def test_a_worker_dying_right_after_start_stops_the_service(pg_url: str, redis_url: str, redis_prefix: str) -> None:
    serve = ServeProcess(workers_env(pg_url, redis_url, redis_prefix, LONG_CRASH_WINDOW_S)).start()
    try:
        main = psutil.Process(serve.process.pid)
        victim = worker_processes(serve)[0]
        everyone = [main, *main.children(recursive=True)]
        assert time.time() - victim.create_time() < LONG_CRASH_WINDOW_S
        victim.kill()
        serve.process.wait(timeout=30)
        stderr = serve.process.stderr.read()
    finally:
        serve.kill()
    assert serve.process.returncode == 1, stderr
    assert "the service stops instead of restarting it in a loop" in stderr
    assert "Traceback" not in stderr
    _, alive = psutil.wait_procs(everyone, timeout=5)
    assert alive == []


@pytest.mark.parametrize(("workers", "http_processes"), [(None, 1), ("0", 0)])
def test_the_default_layout_keeps_ingestion_apart_from_the_player_api_and_zero_workers_is_one_process(
    pg_url: str, redis_url: str, redis_prefix: str, workers: str | None, http_processes: int
) -> None:
    """Default: one player-API process beside the ingestion process (docs/http-api.md#general-rules); 0: one
    process for everything. Either way the API and ingestion work."""
    env = workers_env(pg_url, redis_url, redis_prefix)
    del env["CHALLENGE_WORKERS"]
    if workers is not None:
        env["CHALLENGE_WORKERS"] = workers
    with ServeProcess(env) as serve:
        main = psutil.Process(serve.process.pid)
        spawned = [child for child in main.children() if "spawn_main" in " ".join(child.cmdline())]
        assert len(spawned) == http_processes
        assert _listens_on(main, serve.http_port) == (http_processes == 0)
        user = f"layout-{uuid.uuid4().hex[:8]}"
        user_token = mint_token(SECRET.encode(), user)
        player_call(serve, user_token, "POST", "/v1/challenges/initialize")
        assert publish_logins(serve, user, 2).committed
        listing = player_call(serve, user_token, "GET", "/v1/challenges?active_only=true")
        assert welcome_progress(listing["challenges"][0]["goals"]) == 2

"""`challengectl top` against a real serve under HTTP load (docs/cli.md#commands): its numbers agree with
`/metrics`, `/admin/pool` and `pg_stat_activity` within one refresh, a source that is down shows in its
own panel while the others keep their numbers, and in a real terminal (tmux runs it, send-keys drives
it, capture-pane reads the screen) the keys q, p, s, r and ? do what the footer says."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from challengectl.cli import main
from challengectl.loadtest.servicemetrics import HTTP_REQUESTS, parse_samples
from tests.conftest import new_database
from tests.servers import free_port
from tests.support.load import LOAD_SECRET as SECRET
from tests.support.load import HttpLoad, wait_for_a_steady_pool_size
from tests.support.serve import REPO_ROOT, ServeProcess, base_env, http_get, service_env

pytestmark = pytest.mark.integration

ROUTE = "GET /challenge/v1/challenges"
LOAD_CONCURRENCY = 8
SCREEN_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def top_db(pg_admin_url: str) -> Iterator[str]:
    """A database of its own, so that its sessions are the service's and top's only."""
    with new_database(pg_admin_url, "challengectl_top") as url:
        yield url


@pytest.fixture(scope="module")
def serve(top_db: str, redis_url: str, redis_prefix: str) -> Iterator[ServeProcess]:
    with ServeProcess(service_env(top_db, redis_url, redis_prefix, SECRET)) as process:
        yield process


def route_total(serve: ServeProcess, route: str = ROUTE) -> int:
    """The service's own request counter of `route` on `/metrics`, all statuses."""
    with __import__("urllib.request").request.urlopen(serve.admin("/metrics"), timeout=5) as response:
        samples = parse_samples(response.read().decode())
    method, path = route.split(" ", 1)
    return int(
        sum(
            value
            for (name, labels), value in samples.items()
            if name == HTTP_REQUESTS and dict(labels).get("method") == method and dict(labels).get("route") == path
        )
    )


def sessions_in(database_url: str) -> dict[str, int]:
    """`pg_stat_activity`: client sessions of the database by application_name (this one excluded)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*)::int FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1"
        ).fetchall()
    return {name: count for name, count in rows}


def top_once(serve: ServeProcess, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """`challengectl -o json top --once` in-process against `serve`; the view."""
    with pytest.raises(SystemExit) as done:
        main(["--admin-url", serve.admin(""), "-o", "json", *args, "top", "--once"])
    out, err = capsys.readouterr()
    assert (done.value.code or 0) == 0, err
    return json.loads(out)


def test_once_agrees_with_metrics_pool_and_pg_stat_activity(
    serve: ServeProcess, top_db: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with HttpLoad(serve, LOAD_CONCURRENCY) as load:
        wait_for_a_steady_pool_size(serve)
        before = route_total(serve)
        view = top_once(serve, capsys, "--database-url", top_db, "--redis-url", redis_url)
        after = route_total(serve)
        pool = http_get(serve.admin("/admin/pool"))[1]["db"]
        sessions = sessions_in(top_db)
    assert not load.failures
    route = next(row for row in view["routes"] if row["route"] == ROUTE)
    # top read /metrics twice between the test's two reads: its counter and its window lie inside.
    assert before <= route["requests_total"] <= after, (before, route, after)
    assert 0 < route["requests"] <= after - before
    assert route["rps"] == pytest.approx(route["requests"] / view["window_s"], abs=0.01)
    assert route["p95_ms"] >= route["p50_ms"] > 0
    assert view["pool"]["size"] == pool["size"] and view["pool"]["max"] == pool["max_size"]
    assert 0 <= view["pool"]["in_use"] <= pool["max_size"]
    pg = view["postgres"]
    assert pg["error"] is None and view["redis"]["error"] is None
    assert abs(pg["by_application"].get("challengectl-service", 0) - sessions.get("challengectl-service", 0)) <= 1
    assert pg["by_application"].get("challengectl-service", 0) == pytest.approx(pool["size"], abs=1)
    assert view["pool"]["max_connections"] == pg["max_connections"] > 0
    assert view["cache"]["error"] is None and view["cache"]["ops_per_s"] is not None


def test_a_source_that_is_down_shows_in_its_panel_only(serve: ServeProcess, capsys: pytest.CaptureFixture[str]) -> None:
    closed = free_port()
    view = top_once(
        serve,
        capsys,
        "--database-url",
        f"postgresql://postgres@127.0.0.1:{closed}/postgres",
        "--redis-url",
        f"redis://127.0.0.1:{closed}/0",
    )
    assert "unreachable" in view["postgres"]["error"] and view["redis"]["error"]
    assert view["routes_error"] is None and view["pool"]["error"] is None and view["pool"]["size"] >= 1
    assert any(row["route"] == ROUTE for row in view["routes"]) or view["routes"] == []

    with pytest.raises(SystemExit) as done:
        main(["--admin-url", f"http://127.0.0.1:{closed}", "-o", "json", "top", "--once"])
    out, err = capsys.readouterr()
    assert (done.value.code or 0) == 0, err
    view = json.loads(out)
    assert "cannot connect" in view["routes_error"] and view["pool"]["error"] and view["buffer"]["error"]


# --- in a real terminal ------------------------------------------------------------------------------


class Tmux:
    """A private tmux server (its own socket) running one command in a 160x45 window; the command's
    stderr and exit status go to files (`stderr()`, `exit_status()`)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"challengectl-top-{free_port()}"
        self._files = Path(tempfile.mkdtemp(prefix="challengectl-tmux-"))
        exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
        run = f"env -u COLUMNS -u LINES {exports} {shlex.join(command)} 2>{self._files / 'stderr'}"
        script = (
            f"{run}; echo $? >{self._files / 'status.tmp'}; mv {self._files / 'status.tmp'} {self._files / 'status'}"
        )
        self._tmux(
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "45",
            f"sh -c {shlex.quote(script)}",
        )

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "top", *keys)

    def exit_status(self, timeout_s: float = 10) -> int:
        """The command's exit status, once it has ended."""
        status = self._files / "status"
        deadline = time.monotonic() + timeout_s
        while not status.exists():
            assert time.monotonic() < deadline, f"still running:\n{self.screen()}"
            time.sleep(0.2)
        return int(status.read_text())

    def stderr(self) -> str:
        path = self._files / "stderr"
        return path.read_text() if path.exists() else ""

    def wait_for(self, pattern: str, timeout_s: float = SCREEN_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            match = re.search(pattern, self.screen(), re.MULTILINE)
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on the screen:\n{self.screen()}")
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)
        shutil.rmtree(self._files, ignore_errors=True)


def _route_row(tmux: Tmux) -> tuple[float, int]:
    """(REQ/S, TOTAL) of ROUTE on the screen."""
    match = tmux.wait_for(rf"{re.escape(ROUTE)}\s+([\d,.]+)\s+\S+\s+\S+\s+\S+\s+\S+\s+([\d,]+)")
    return float(match.group(1).replace(",", "")), int(match.group(2).replace(",", ""))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_top_in_a_terminal_agrees_with_the_service_and_obeys_its_keys(
    serve: ServeProcess, top_db: str, redis_url: str
) -> None:
    env = {
        "PYTHONPATH": str(REPO_ROOT),
        "TERM": "xterm-256color",
        "CHALLENGE_ADMIN_URL": serve.admin(""),
        "DATABASE_URL": top_db,
        "REDIS_URL": redis_url,
        "XDG_CONFIG_HOME": base_env()["XDG_CONFIG_HOME"],
    }
    tmux = Tmux([sys.executable, "-m", "challengectl", "top"], env)
    try:
        with HttpLoad(serve, LOAD_CONCURRENCY) as load:
            wait_for_a_steady_pool_size(serve)
            tmux.wait_for(r"peaks: [\d.,]+ req/s")
            before = route_total(serve)
            time.sleep(1.5)  # more than one refresh: the screen now shows a reading taken after `before`
            rps, total = _route_row(tmux)
            after = route_total(serve)
            assert before <= total <= after, (before, total, after)
            assert rps > 0

            pool = http_get(serve.admin("/admin/pool"))[1]["db"]
            shown = tmux.wait_for(r"in use/size/max\s+(\d+) / (\d+) / (\d+)")
            assert int(shown.group(3)) == pool["max_size"] and abs(int(shown.group(2)) - pool["size"]) <= 1
            service_sessions = sessions_in(top_db).get("challengectl-service", 0)
            shown = tmux.wait_for(r"app challengectl-service\s+(\d+)")
            assert abs(int(shown.group(1)) - service_sessions) <= 1

            tmux.keys("s")
            tmux.wait_for(r"sorted by p95")
            tmux.keys("p")
            tmux.wait_for(r"refresh PAUSED")
            paused = tmux.screen()
            time.sleep(1.5)
            assert _route_row(tmux)[1] == int(
                re.search(rf"{re.escape(ROUTE)}.*?([\d,]+) │", paused).group(1).replace(",", "")
            )
            tmux.keys("p")
            tmux.wait_for(r"refresh every 1 s")
            tmux.keys("?")
            tmux.wait_for(r"Help \(\? to close\)")
            tmux.keys("?")
            tmux.wait_for(r"HTTP routes \(sorted by p95")
            tmux.keys("r")
            tmux.wait_for(r"^peaks reset$")
        assert not load.failures
        tmux.keys("q")
        assert tmux.exit_status() == 0, tmux.stderr()
    finally:
        tmux.close()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_in_a_terminal_a_source_that_is_down_leaves_the_others_updating(serve: ServeProcess) -> None:
    closed = free_port()
    env = {
        "PYTHONPATH": str(REPO_ROOT),
        "TERM": "xterm-256color",
        "CHALLENGE_ADMIN_URL": serve.admin(""),
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/postgres",
        "REDIS_URL": f"redis://127.0.0.1:{closed}/0",
        "XDG_CONFIG_HOME": base_env()["XDG_CONFIG_HOME"],
    }
    tmux = Tmux([sys.executable, "-m", "challengectl", "top"], env)
    try:
        with HttpLoad(serve, LOAD_CONCURRENCY):
            tmux.wait_for(r"│ unavailable: Redis at redis://127.0.0.1:\d+/0")
            # the sessions panel and the longest-query panel both say so
            assert tmux.screen().count("│ unavailable: PostgreSQL 127.0.0.1") == 2, tmux.screen()
            first = _route_row(tmux)[1]
            time.sleep(2.5)
            assert _route_row(tmux)[1] > first  # the service's panels keep updating
            tmux.wait_for(r"in use/size/max\s+\d+ / \d+ / \d+")
    finally:
        tmux.close()


def test_once_shows_a_blocking_chain_and_the_longest_query(
    serve: ServeProcess, top_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(top_db, autocommit=True) as holder, psycopg.connect(top_db, autocommit=True) as waiter:
        holder.execute("CREATE TABLE IF NOT EXISTS top_lock_probe (id int)")
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE top_lock_probe IN ACCESS EXCLUSIVE MODE")
        holder_pid, waiter_pid = holder.info.backend_pid, waiter.info.backend_pid
        blocked = threading.Thread(target=lambda: waiter.execute("SELECT count(*) FROM top_lock_probe"))
        blocked.start()
        try:
            time.sleep(0.5)
            view = top_once(serve, capsys, "--database-url", top_db)
        finally:
            holder.execute("ROLLBACK")
            blocked.join(timeout=10)
    chains = view["postgres"]["blocking"]
    assert [(chain["pid"], chain["blocked_by"]) for chain in chains] == [(waiter_pid, [holder_pid])], chains
    assert chains[0]["relation"] == "top_lock_probe" and "top_lock_probe" in chains[0]["query"]
    # the holder has been idle in its transaction the longest
    assert view["postgres"]["longest"]["pid"] == holder_pid


def test_piped_it_prints_one_ndjson_view_per_refresh_until_interrupted(serve: ServeProcess) -> None:
    env = {**base_env(), "PYTHONPATH": str(REPO_ROOT), "CHALLENGE_ADMIN_URL": serve.admin("")}
    process = subprocess.Popen(
        [sys.executable, "-m", "challengectl", "top", "--interval", "300ms"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)  # a hang fails the test instead of blocking it
    watchdog.start()
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline(), process.stdout.readline()]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        watchdog.cancel()
    assert process.returncode == 0, err
    views = [json.loads(line) for line in [*lines, *out.splitlines()] if line.strip()]
    assert len(views) >= 2, (lines, out, err)
    for view in views:
        assert view["ts"].endswith("Z") and 0.2 < view["window_s"] < 2.0
        assert view["pool"]["error"] is None and view["pool"]["max"] >= 1

"""Embedded PostgreSQL and Redis (docs/configuration.md#embedded-default, X15): start, reuse, restart, stop, discovery, crash recovery.

Every test starts its own servers in its own temporary data dir, so these tests run whether or not
DATABASE_URL / REDIS_URL are set.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from service.runtime.embedded import (
    STATE_FILE_NAME,
    EmbeddedError,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServers,
    connection_help,
    default_data_dir,
    discover,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_ended(pids: list[int], timeout_s: float = 10) -> None:
    """Until none of `pids` is a live process (gone or a zombie)."""
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"processes {pids} still running {timeout_s} s after SIGKILL"
        time.sleep(0.02)


def _processes_of(directory: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line mentions `directory` or works inside it.

    Reads /proc directly, independently of the module under test.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # exited meanwhile, or a zombie (no cwd)
            continue
        if str(directory) in cmdline or cwd == str(directory) or cwd.startswith(f"{directory}/"):
            found.append((int(entry.name), cmdline.strip()))
    return found


def _postgres_value(url: str, query: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query).fetchone()[0]


def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data dir, removed afterwards with whatever a failing test left running in it stopped.

    Not under tmp_path: as root, postgres runs as another OS user that must traverse every parent
    directory, and each pytest session started meanwhile resets /tmp/pytest-of-root to mode 0700.
    """
    base = Path(tempfile.mkdtemp(prefix="challengectl-test-")).resolve()
    path = base / "data"
    yield path
    EmbeddedPostgres(path).stop()
    EmbeddedRedis(path).stop()
    shutil.rmtree(base, ignore_errors=True)


def test_start_gives_urls_that_psycopg_and_redis_py_accept(data_dir: Path) -> None:
    with EmbeddedServers(data_dir) as servers:
        urls = servers.urls
        assert urls.database_url.startswith("postgresql://")
        assert urls.redis_url == f"unix://{data_dir}/redis/redis.sock"
        assert _postgres_value(urls.database_url, "SELECT 1") == 1
        assert _postgres_value(urls.database_url, "SHOW listen_addresses") == ""  # Unix socket only
        client = _redis_client(urls.redis_url)
        assert client.ping() is True
        assert client.config_get("port") == {"port": "0"}  # Unix socket only
        client.close()


def test_data_survives_stop_and_start(data_dir: Path) -> None:
    with EmbeddedServers(data_dir) as servers:
        with psycopg.connect(servers.urls.database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (note text)")
            conn.execute("INSERT INTO kept VALUES ('from the first run')")
        client = _redis_client(servers.urls.redis_url)
        client.set("kept", "from the first run")
        client.close()

    with EmbeddedServers(data_dir) as servers:
        assert _postgres_value(servers.urls.database_url, "SELECT note FROM kept") == "from the first run"
        client = _redis_client(servers.urls.redis_url)
        assert client.get("kept") == b"from the first run"
        client.close()
    assert (data_dir / "redis" / "redis.db").is_file()


def test_second_start_reuses_the_running_servers(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="challengectl.embedded")
    first = EmbeddedServers(data_dir)
    first_urls = first.start()
    postmaster_pid = EmbeddedPostgres(data_dir).postmaster().pid
    redis_pid = EmbeddedRedis(data_dir).server_process().pid
    try:
        second = EmbeddedServers(data_dir)
        assert second.start() == first_urls
        assert second.postgres.reused and second.redis.reused
        assert EmbeddedPostgres(data_dir).postmaster().pid == postmaster_pid
        assert EmbeddedRedis(data_dir).server_process().pid == redis_pid
        messages = [r.getMessage() for r in caplog.records if r.name == "challengectl.embedded"]
        assert any(m.startswith("reusing embedded PostgreSQL") for m in messages)
        assert any(m.startswith("reusing embedded Redis") for m in messages)

        second.stop()  # the first holder still uses the servers: they keep running
        assert _postgres_value(first_urls.database_url, "SELECT 1") == 1
        assert _redis_client(first_urls.redis_url).ping() is True
    finally:
        first.stop()
    assert _processes_of(data_dir) == []


def test_stop_leaves_no_process_of_the_data_dir(data_dir: Path) -> None:
    servers = EmbeddedServers(data_dir)
    servers.start()
    running = _processes_of(data_dir)
    assert any("postgres" in cmdline for _, cmdline in running)
    assert any("redis-server" in cmdline for _, cmdline in running)

    servers.stop()
    assert _processes_of(data_dir) == []
    assert not (data_dir / "pg" / "postmaster.pid").exists()


def test_data_dir_and_redis_dir_are_private(data_dir: Path) -> None:
    with EmbeddedServers(data_dir):
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((data_dir / "redis").stat().st_mode) == 0o700
        assert stat.S_IMODE((data_dir / STATE_FILE_NAME).stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_discover_finds_running_servers_only(data_dir: Path) -> None:
    assert discover(data_dir) is None
    servers = EmbeddedServers(data_dir)
    urls = servers.start()
    try:
        expected = {"database_url": urls.database_url, "redis_url": urls.redis_url, "pid": os.getpid()}
        assert discover(data_dir) == expected
        # embedded.json alone is not enough: the servers must answer.
        EmbeddedRedis(data_dir).stop()
        assert (data_dir / STATE_FILE_NAME).exists()
        assert discover(data_dir) is None
    finally:
        servers.stop()
    assert not (data_dir / STATE_FILE_NAME).exists()
    assert discover(data_dir) is None


def test_servers_come_back_after_their_holder_and_servers_were_killed(data_dir: Path) -> None:
    holder_script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from service.runtime.embedded import EmbeddedServers\n"
        "EmbeddedServers(Path(sys.argv[1])).start()\n"
        "print('up', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_script, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "up"
        crashed_urls = discover(data_dir)
        assert crashed_urls is not None and crashed_urls["pid"] == holder.pid
        postmaster_pid = EmbeddedPostgres(data_dir).postmaster().pid
        redis_pid = EmbeddedRedis(data_dir).server_process().pid
        for pid in (holder.pid, postmaster_pid, redis_pid):
            os.kill(pid, signal.SIGKILL)
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL is not instant under load: a postmaster still exiting would be found running and not answering.
    _wait_ended([postmaster_pid, redis_pid])
    assert (data_dir / "pg" / "postmaster.pid").exists()  # left behind by the crash

    with EmbeddedServers(data_dir) as servers:
        assert _postgres_value(servers.urls.database_url, "SELECT 1") == 1
        assert _redis_client(servers.urls.redis_url).ping() is True
        assert EmbeddedPostgres(data_dir).postmaster().pid != postmaster_pid
        # The dead holder was dropped, so this process is the only holder now.
        assert json.loads((data_dir / STATE_FILE_NAME).read_text())["pid"] == os.getpid()
    assert _processes_of(data_dir) == []


def test_stale_postmaster_pid_naming_an_unrelated_live_process_is_replaced(data_dir: Path) -> None:
    postgres = EmbeddedPostgres(data_dir)
    postgres.start()
    pid_file = data_dir / "pg" / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    postgres.stop()
    # After a reboot, the pid recorded by a crashed server often belongs to another process.
    pid_file.write_text("\n".join([str(os.getpid()), *lines[1:]]) + "\n")

    url = postgres.start()
    try:
        assert _postgres_value(url, "SELECT 1") == 1
        assert not postgres.reused
    finally:
        postgres.stop()


def test_redis_socket_moves_to_the_temp_dir_when_the_data_dir_is_too_deep(data_dir: Path) -> None:
    deep_data_dir = data_dir / ("deep" * 20)
    embedded_redis = EmbeddedRedis(deep_data_dir)
    assert len(str(deep_data_dir / "redis" / "redis.sock")) > 107  # too long for any Unix socket
    url = embedded_redis.start()
    try:
        assert url == f"unix://{embedded_redis.socket_path}"
        assert embedded_redis.socket_path.parent.parent == Path(tempfile.gettempdir())
        assert stat.S_IMODE(embedded_redis.socket_path.parent.stat().st_mode) == 0o700
        assert _redis_client(url).ping() is True
        assert EmbeddedRedis(deep_data_dir).running_url() == url  # another process finds the same socket
    finally:
        embedded_redis.stop()
    assert not embedded_redis.socket_path.exists()
    assert _processes_of(deep_data_dir) == []


def test_connection_help_commands_reach_the_servers(data_dir: Path) -> None:
    with EmbeddedServers(data_dir) as servers:
        lines = connection_help(servers.urls.database_url, servers.urls.redis_url)
        assert f"PostgreSQL: Unix socket in {data_dir}/pg" in lines
        assert f"Redis: Unix socket {data_dir}/redis/redis.sock" in lines
        psql_line = next(line for line in lines if line.strip().endswith(f'"{servers.urls.database_url}"'))
        redis_cli_line = next(line for line in lines if " -s " in line)

        psql = subprocess.run(
            [*shlex.split(psql_line), "-tAc", "SELECT 40 + 2"], capture_output=True, text=True, timeout=30
        )
        assert psql.stdout.strip() == "42", psql.stderr
        redis_cli = subprocess.run([*shlex.split(redis_cli_line), "PING"], capture_output=True, text=True, timeout=30)
        assert redis_cli.stdout.strip() == "PONG", redis_cli.stderr


def test_connection_help_covers_only_the_embedded_servers() -> None:
    assert connection_help(None, None) == []
    lines = connection_help(None, "unix:///run/x/redis.sock")
    assert lines[0] == "Redis: Unix socket /run/x/redis.sock"
    assert lines[1].endswith("-s /run/x/redis.sock")


def test_postgres_refuses_a_data_dir_with_whitespace(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedError, match="whitespace"):
        EmbeddedPostgres(tmp_path / "my data").start()


def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "challengectl"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert default_data_dir() == Path.home() / ".local" / "share" / "challengectl"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == Path.home() / ".local" / "share" / "challengectl"


def test_start_and_stop_are_logged(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="challengectl.embedded")
    with EmbeddedServers(data_dir):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "challengectl.embedded"]
    assert any(m.startswith("started embedded PostgreSQL") for m in messages)
    assert any(m.startswith("started embedded Redis") for m in messages)
    assert any(m.startswith("stopped embedded PostgreSQL") for m in messages)
    assert any(m.startswith("stopped embedded Redis") for m in messages)

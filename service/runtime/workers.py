"""HTTP worker processes of `serve --workers N` (docs/http-api.md#general-rules, docs/http-api.md#admin-and-metrics, docs/events.md#shutdown): starting them, the state they
share with the main process, the local channel the admin port uses to ask them for their numbers,
signal forwarding, and what happens when one dies.

The main process keeps gRPC ingestion, the buffer and flusher, and the admin port. Each worker is a
fresh interpreter (multiprocessing "spawn": no fork after threads and event loops) that opens its own
pools, binds its own `SO_REUSEPORT` socket on `http_port` (the kernel spreads new connections over the
workers' sockets) and serves every route of the port. Workers run in their own process group, so a
terminal's Ctrl-C reaches only the main process, which forwards each signal once.

A worker that dies unexpectedly is logged and restarted; one that dies within `crash_window_s`
(the `worker_crash_window_s` setting) of its start (a crash loop: misconfiguration, a dependency refusing it) stops the service with exit status 1
instead, after the main process has drained the buffer as on any shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.runtime import event_loop
from service.runtime.startup import StartupError
from service.telemetry import metrics
from service.telemetry.logs import configure_logging

if TYPE_CHECKING:
    from service.config.settings import Settings
    from service.transport.auth import AuthConfig

log = logging.getLogger("challengectl.workers")

STATE_PUBLISH_INTERVAL_S = 0.5
PARENT_CHECK_INTERVAL_S = 1.0
CONTROL_TIMEOUT_S = 2.0
CONTROL_LINE_LIMIT = 16 * 1024 * 1024
# A worker needs an interpreter start, imports and its pools before it reports ready.
STARTUP_GRACE_S = 30.0

_FLUSHER_FAILING_SINCE, _MAIN_SHUTTING_DOWN = 0, 1


class WorkerFailure(Exception):
    """A worker could not start, or crash-loops; `exit_code` follows docs/cli.md#exit-codes."""

    def __init__(self, message: str, exit_code: int = 1, hint: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.hint = hint


class SharedState:
    """What the workers' `/readyz` reports of the main process: since when the flusher fails
    (CLOCK_MONOTONIC is system-wide on Linux, so the value compares across processes) and whether the
    main process is shutting down. Two doubles in shared memory, written only by the main process."""

    def __init__(self, context: multiprocessing.context.SpawnContext) -> None:
        self._cells = context.RawArray("d", 2)

    def publish_flusher_failing_since(self, since: float | None) -> None:
        self._cells[_FLUSHER_FAILING_SINCE] = since or 0.0

    def set_main_shutting_down(self) -> None:
        self._cells[_MAIN_SHUTTING_DOWN] = 1.0

    def flusher_failing_since(self) -> float | None:
        return self._cells[_FLUSHER_FAILING_SINCE] or None

    def main_shutting_down(self) -> bool:
        return self._cells[_MAIN_SHUTTING_DOWN] != 0.0


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a spawned worker needs (pickled to it): settings, the resolved dependency URLs (the
    embedded servers were started by the main process) and the prepared authentication."""

    index: int
    settings: Settings
    database_url: str
    redis_url: str | None
    auth_config: AuthConfig
    control_path: Path


# What a worker runs: (spec, state, stop, report_ready). A module-level function, so that it pickles by
# name into the spawned process (service/runtime/app.py's run_http_worker).
ServeWorker = Callable[[WorkerSpec, SharedState, asyncio.Event, Callable[[], None]], Awaitable[None]]


@contextlib.contextmanager
def runtime_directory() -> Iterator[Path]:
    """A private directory (0700) for the metrics files and control sockets of one `serve` run; this
    process's metrics switch to multiprocess mode into `metrics/`. Removed when the run ends."""
    directory = Path(tempfile.mkdtemp(prefix="challengectl-serve-"))
    try:
        (directory / "metrics").mkdir()
        metrics.enable_multiprocess(directory / "metrics")
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- the local control channel --------------------------------------------------------------------


async def serve_control(path: Path, commands: Mapping[str, Callable[[], Any]]) -> asyncio.AbstractServer:
    """Answer one-line commands on a Unix socket with one JSON line `{"result": ...}`; the main process's
    admin port asks each worker for `stats` and broadcasts `reset-peaks` this way."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            name = (await reader.readline()).decode().strip()
            command = commands.get(name)
            body = {"error": f"unknown command {name!r}"} if command is None else {"result": command()}
            writer.write(json.dumps(body).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_unix_server(handle, path=str(path), limit=CONTROL_LINE_LIMIT)


async def ask(path: Path, command: str, timeout_s: float = CONTROL_TIMEOUT_S) -> Any:
    """Send `command` to the control socket at `path`; return its result."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=CONTROL_LINE_LIMIT)
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    body = json.loads(line)
    if "error" in body:
        raise RuntimeError(body["error"])
    return body["result"]


# -- the worker process ---------------------------------------------------------------------------


def worker_entry(serve_worker: ServeWorker, spec: WorkerSpec, state: SharedState, report: Connection) -> None:
    """Body of a spawned worker: `serve_worker` serves the player API until SIGINT/SIGTERM (forwarded by
    the main process) or until the main process is gone. `report` gets ("ready",) or ("failed", message,
    exit_code, hint) once."""
    os.setpgrp()  # Ctrl-C on a terminal signals the process group; the main process forwards it once
    metrics.in_worker()
    configure_logging(spec.settings.log_level, spec.settings.resolved_log_format())
    try:
        event_loop.run(_run_worker(serve_worker, spec, state, report))
    except StartupError as exc:
        report.send(("failed", str(exc), exc.exit_code, exc.hint))
        sys.exit(exc.exit_code)
    except Exception as exc:  # anything else is a bug; the main process logs the exit status too
        log.exception("HTTP worker %d failed", spec.index)
        with contextlib.suppress(OSError):
            report.send(("failed", f"HTTP worker {spec.index} failed: {exc}", 1, ""))
        sys.exit(1)
    sys.exit(0)


async def _run_worker(serve_worker: ServeWorker, spec: WorkerSpec, state: SharedState, report: Connection) -> None:
    stop = asyncio.Event()
    event_loop.stop_on_signals(stop)
    watcher = asyncio.create_task(_stop_when_orphaned(os.getppid(), stop))
    try:
        await serve_worker(spec, state, stop, lambda: report.send(("ready",)))
    finally:
        watcher.cancel()


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """A main process killed with SIGKILL cannot forward anything: leave no worker behind."""
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK_INTERVAL_S)
    log.error("the main process (pid %d) is gone; HTTP worker pid %d stops", parent, os.getpid())
    stop.set()


# -- the main process's side ----------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    control_path: Path
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class WorkerPool:
    """The HTTP worker processes of one `serve` run, seen from the main process."""

    def __init__(
        self,
        settings: Settings,
        runtime_dir: Path,
        make_spec: Callable[[int, Path], WorkerSpec],
        serve_worker: ServeWorker,
        flusher_failing_since: Callable[[], float | None],
    ) -> None:
        """`settings.workers` processes, each running `serve_worker(make_spec(index, control path), ...)`; one dying
        within `settings.worker_crash_window_s` of its start stops the service."""
        self.count = settings.workers
        self._crash_window_s = settings.worker_crash_window_s
        self.runtime_dir = runtime_dir
        self._make_spec = make_spec
        self._serve_worker = serve_worker
        self._flusher_failing_since = flusher_failing_since
        self._context = multiprocessing.get_context("spawn")
        self.state = SharedState(self._context)
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        # Resolved with a WorkerFailure when the service must stop (a crash loop, a failed restart).
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        """Start every worker and wait until each serves; raises WorkerFailure naming the first that
        could not (the others are stopped by `stop`)."""
        self._spawn_task(self._publish_state())
        await asyncio.gather(*(self._launch(index) for index in range(self.count)))

    def pids(self) -> list[int]:
        """The pids of the workers running now."""
        return [w.process.pid for w in self._workers.values() if w.process.pid and not w.exited.is_set()]

    async def gather(self, command: str) -> list[Any]:
        """`command`'s result from every ready worker; a worker that does not answer is logged and left out."""
        workers = [w for w in self._workers.values() if w.ready and not w.exited.is_set()]
        answers = await asyncio.gather(*(ask(w.control_path, command) for w in workers), return_exceptions=True)
        results = []
        for worker, answer in zip(workers, answers, strict=False):
            if isinstance(answer, BaseException):
                log.warning(
                    "HTTP worker %d (pid %s) did not answer %r: %s",
                    worker.index,
                    worker.process.pid,
                    command,
                    answer or type(answer).__name__,
                )
            else:
                results.append(answer)
        return results

    def forward(self, signum: int) -> None:
        """Send `signum` to every running worker."""
        for worker in self._workers.values():
            if worker.process.pid and not worker.exited.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)

    async def stop(self, signum: int, timeout_s: float) -> None:
        """Forward `signum` (the workers stop accepting, finish in-flight requests and exit) and wait;
        workers still running after `timeout_s` are killed."""
        self._stopping = True
        self.state.set_main_shutting_down()
        for task in self._tasks:
            task.cancel()
        self.forward(signum)
        pending = [w for w in self._workers.values() if not w.exited.is_set()]
        if not pending:
            return
        _, late = await asyncio.wait([asyncio.create_task(w.exited.wait()) for w in pending], timeout=timeout_s)
        if late:
            for worker in pending:
                if not worker.exited.is_set():
                    log.error(
                        "HTTP worker %d (pid %s) still running %.0f s after the signal; killing it",
                        worker.index,
                        worker.process.pid,
                        timeout_s,
                    )
                    worker.process.kill()
            await asyncio.wait(late, timeout=2)

    async def _launch(self, index: int) -> None:
        control_path = self.runtime_dir / f"worker-{index}.sock"
        control_path.unlink(missing_ok=True)
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_entry,
            args=(self._serve_worker, self._make_spec(index, control_path), self.state, sender),
            name=f"challengectl-http-{index}",
            daemon=True,
        )
        process.start()
        sender.close()
        worker = _Worker(index, process, control_path)
        self._workers[index] = worker
        asyncio.get_running_loop().add_reader(process.sentinel, self._on_exit, worker)
        try:
            message = await self._first_report(receiver, worker)
        finally:
            receiver.close()
        if message[0] != "ready":
            _, text, exit_code, hint = message
            raise WorkerFailure(text, exit_code, hint)
        worker.ready = True
        log.info("HTTP worker %d started (pid %d)", index, process.pid)

    async def _first_report(self, receiver: Connection, worker: _Worker) -> tuple[Any, ...]:
        arrived = await asyncio.to_thread(receiver.poll, STARTUP_GRACE_S)
        try:
            if arrived:
                return receiver.recv()
        except EOFError:  # the worker ended without a word: its own log line says why
            await worker.exited.wait()
            return (
                "failed",
                f"HTTP worker {worker.index} exited during startup ({_describe_exit(worker.process)})",
                worker.process.exitcode if (worker.process.exitcode or 0) > 0 else 1,
                "",
            )
        worker.process.kill()
        return ("failed", f"HTTP worker {worker.index} did not start within {STARTUP_GRACE_S:.0f} s", 1, "")

    def _on_exit(self, worker: _Worker) -> None:
        asyncio.get_running_loop().remove_reader(worker.process.sentinel)
        # The sentinel closes as the process exits; a blocking join only waits for the kernel to finish
        # the exit (a non-blocking one can still see it running) and reaps it.
        worker.process.join()
        worker.exited.set()
        if worker.process.pid:
            metrics.forget_process(self.runtime_dir / "metrics", worker.process.pid)
        if self._stopping or not worker.ready:
            return  # a stop we asked for, or a failed start that `_launch` reports
        lifetime = time.monotonic() - worker.started_at
        log.error(
            "HTTP worker %d (pid %d) exited unexpectedly (%s) after %.0f s",
            worker.index,
            worker.process.pid,
            _describe_exit(worker.process),
            lifetime,
        )
        if lifetime < self._crash_window_s:
            self._fail(
                WorkerFailure(
                    f"HTTP worker {worker.index} exited {lifetime:.0f} s after it started ({_describe_exit(worker.process)}); "
                    "the service stops instead of restarting it in a loop",
                    1,
                    "see the worker's log lines above",
                )
            )
            return
        log.warning("restarting HTTP worker %d", worker.index)
        self._spawn_task(self._restart(worker.index))

    async def _restart(self, index: int) -> None:
        try:
            await self._launch(index)
        except WorkerFailure as exc:
            self._fail(exc)

    def _fail(self, failure: WorkerFailure) -> None:
        if not self.failed.done():
            self.failed.set_exception(failure)

    async def _publish_state(self) -> None:
        while True:
            self.state.publish_flusher_failing_since(self._flusher_failing_since())
            await asyncio.sleep(STATE_PUBLISH_INTERVAL_S)

    def _spawn_task(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _describe_exit(process: BaseProcess) -> str:
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"

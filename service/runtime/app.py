"""Wiring and lifecycle of `challengectl serve`: embedded servers, migrations, catalog, pools, the HTTP,
admin and gRPC servers, readiness, and a graceful shutdown on SIGINT/SIGTERM (docs/http-api.md, docs/events.md#shutdown, docs/configuration.md#embedded-default).

With `workers` >= 1 the player API runs in that many HTTP worker processes (`run_http_worker`, started by
service/runtime/workers.py) and this process keeps gRPC ingestion, the flusher and the admin port, so event acks
never queue behind HTTP requests on one event loop (docs/http-api.md#general-rules); `workers` = 0 runs
everything in this process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn

from service import __version__
from service.config.resolution import catalog_path_source, validate_settings
from service.config.settings import Settings, is_loopback
from service.domain.catalog import Catalog
from service.runtime import event_loop
from service.runtime.embedded import connection_help
from service.runtime.exit_watchdog import ExitWatchdog
from service.runtime.gc_policy import freeze_startup_objects
from service.runtime.malloc_policy import limit_malloc_arenas
from service.runtime.startup import (
    Dependencies,
    StartupError,
    embedded_jwt_secret,
    load_service_catalog,
    prepare_schema,
    start_dependencies,
    wait_for_database,
)
from service.runtime.workers import SharedState, WorkerFailure, WorkerPool, WorkerSpec, runtime_directory, serve_control
from service.storage.cache import Cache, connect_redis
from service.storage.cache import ping as ping_redis
from service.storage.migrations import discover_migrations
from service.storage.registry import Registry, RegistryError, load_registry
from service.storage.store import PoolConfig, Queries, Store, StoreUnavailable, open_pool
from service.telemetry.metrics import BUILD_INFO, multiprocess_registry
from service.transport.admin import combine_cache_stats, combine_pool_stats, create_admin_app, process_stats
from service.transport.admission import Admission
from service.transport.auth import AuthConfig, Authenticator, auth_config_from_settings
from service.transport.grpc_api import create_grpc_server
from service.transport.health import Readiness
from service.transport.http_api import create_http_app, player_routes
from service.transport.http_protocol import HttpLimits, limited_protocol
from service.usecases.events import IngestConfig, Ingestor
from service.usecases.players import PLAYER_STATEMENTS, Players
from service.usecases.rewards import RewardConfig, RewardGranter

log = logging.getLogger("challengectl.serve")

READINESS_POLL_S = 1.0
SERVER_STOP_GRACE_S = 5
# After the drain every call waiting for a commit has its answer; open calls left (idle streams) get this long.
DRAINED_GRACE_S = 1.0
# A worker's exit after its server stopped: closing its pools and the interpreter's own exit.
WORKER_EXIT_GRACE_S = 5.0
# After the drain: the workers' exit, the servers' grace and the pools' close; past it the exit watchdog ends the process.
AFTER_DRAIN_LIMIT_S = SERVER_STOP_GRACE_S + WORKER_EXIT_GRACE_S + 5


def bind_socket(host: str, port: int, what: str, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """Bind before serving, so a taken port is a clear startup error instead of a log line.

    `reuse_port` sets SO_REUSEPORT: the HTTP workers each bind their own socket on the port and the
    kernel spreads new connections over them. A socket that does not `listen` only reserves the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the proto says TCP;
    # without it, Nagle + delayed ACK add ~40 ms to every response written in two parts.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port} for the {what}: {exc.strerror}",
            1,
            f"another process uses the port; pick another with --{_port_flag(what)}",
        ) from None
    if listen:
        sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _port_flag(what: str) -> str:
    return {"player API": "port", "admin API": "admin-port"}.get(what, "port")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn(app: Any, limits: HttpLimits | None = None) -> _Server:
    """A uvicorn server for `app`; with `limits` (the player API), on the limited HTTP protocol."""
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,  # nothing reads the client address: no X-Forwarded-* layer per request
        http="httptools" if limits is None else limited_protocol(limits),
        ws="none",
        timeout_keep_alive=5 if limits is None else limits.idle_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=SERVER_STOP_GRACE_S,
    )
    return _Server(config)


def http_limits(settings: Settings) -> HttpLimits:
    return HttpLimits(
        max_header_bytes=settings.http_max_header_bytes,
        max_headers=settings.http_max_headers,
        header_timeout_s=settings.http_header_timeout_ms / 1000,
        body_timeout_s=settings.http_body_timeout_ms / 1000,
        idle_timeout_s=settings.http_idle_timeout_ms / 1000,
        max_connections=settings.http_max_connections,
    )


def _player_app(settings: Settings, readiness: Readiness, catalog: Catalog, store: Store, routes: list[Any]) -> Any:
    """The player API app of this process, with admission control on its pool and requests in progress."""
    admission = Admission(
        settings.http_max_inflight,
        store.waiting_at_max_size,
        settings.db_pool_max_waiting or 2 * settings.db_pool_max,
        settings.http_shed_latency_ms / 1000 if settings.http_shed_latency_ms else None,
    )
    return create_http_app(readiness, settings.base_path, catalog.fingerprint, routes, admission)


@dataclass
class Service:
    """The running service: what `run()` starts and stops again on shutdown."""

    settings: Settings
    catalog: Catalog
    deps: Dependencies
    auth_config: AuthConfig
    started_at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    schema_version: int = 0
    unflushed: int = 0  # buffered entries left when the shutdown drain timed out (exit status 1)
    runtime_dir: Path | None = None  # with workers: their metrics files and control sockets
    workers: WorkerPool | None = None
    stop_signal: int = signal.SIGTERM  # forwarded to the workers on shutdown
    exit_watchdog: ExitWatchdog = field(default_factory=ExitWatchdog)

    def describe_config(self) -> dict[str, Any]:
        """The `/admin/config` body (docs/http-api.md#admin-and-metrics)."""
        body: dict[str, Any] = dict(self.settings.effective())
        body.update(
            service_version=__version__,
            schema_version=self.schema_version,
            # The effective path with its source, which may be the bundled-example rule rather than the setting.
            catalog_path={"value": self.catalog.path, "source": catalog_path_source(self.settings)},
            catalog_fingerprint=self.catalog.fingerprint,
            challenges=len(self.catalog.challenges),
            goals=len(self.catalog.goals_by_id),
            default_goals=len(self.catalog.default_goals),
            embedded={
                **body["embedded"],
                "postgres": self.deps.embedded_postgres,
                "redis": self.deps.embedded_redis,
            },
            started_at=self.started_at,
            pid=os.getpid(),
        )
        return body

    async def run(self, stop: asyncio.Event) -> None:
        """Open the pools and clients, start the servers, and tear everything down in reverse order."""
        async with contextlib.AsyncExitStack() as resources:
            await self._serve(stop, resources)

    async def _serve(self, stop: asyncio.Event, resources: contextlib.AsyncExitStack) -> None:
        settings, catalog = self.settings, self.catalog
        self.schema_version = max((m.version for m in discover_migrations()), default=0)
        queries = Queries(load_registry())
        serves_players = self.runtime_dir is None  # else the HTTP workers serve the player API
        store = await _open_store(
            self.deps.database_url, settings, resources, queries.registry if serves_players else None
        )
        redis, cache = await _open_cache(self.deps.redis_url, settings, catalog, resources)
        try:
            # One connection per flush partition: each partition flushes sequentially (docs/events.md#buffer-and-merge).
            flusher_config = _pool_config(settings, 1, settings.flush_workers)
            flusher_pool = await open_pool(self.deps.database_url, "flusher", flusher_config)
        except StoreUnavailable as exc:
            raise StartupError(str(exc), 5, "check DATABASE_URL") from None
        flusher_store = Store(flusher_pool, store.availability)
        resources.push_async_callback(flusher_store.close)
        ingestor = Ingestor(IngestConfig.from_settings(settings), catalog, flusher_store, queries, cache)
        await ingestor.start()

        readiness = _readiness(
            settings, store, redis, self.schema_version, flusher_failing_since=lambda: ingestor.flusher_failing_since
        )
        BUILD_INFO.labels(__version__, catalog.fingerprint, settings.ack_mode).set(1)
        servers: list[_Server] = []
        tasks: list[asyncio.Task] = []
        if self.runtime_dir is None:
            routes = await _player_routes(settings, catalog, store, cache, queries, self.auth_config, resources)
            http_socket = bind_socket(settings.http_host, settings.http_port, "player API")
            http_server = _uvicorn(_player_app(settings, readiness, catalog, store, routes), http_limits(settings))
            servers.append(http_server)
            tasks.append(asyncio.create_task(http_server.serve(sockets=[http_socket]), name="http"))
            workers = None
        else:
            # Held (bound, never listening) for the whole run: a port taken by another program is a
            # startup error here, and no other program can take it while workers restart. SO_REUSEPORT
            # would let this bind share the port with another instance's workers, so a plain bind
            # first proves nobody listens on it.
            bind_socket(settings.http_host, settings.http_port, "player API", listen=False).close()
            port_guard = bind_socket(
                settings.http_host, settings.http_port, "player API", reuse_port=True, listen=False
            )
            resources.callback(port_guard.close)
            workers = WorkerPool(
                settings, self.runtime_dir, self._worker_spec, run_http_worker, lambda: ingestor.flusher_failing_since
            )
            self.workers = workers
        admin_socket = bind_socket(settings.admin_host, settings.admin_port, "admin API")
        admin_server = _uvicorn(self._admin_app(readiness, store, cache, ingestor, workers))
        servers.append(admin_server)
        try:
            grpc_server, grpc_health = create_grpc_server(
                settings.grpc_host,
                settings.grpc_port,
                settings.grpc_max_message_bytes,
                settings.grpc_max_concurrent_rpcs,
                ingestor=ingestor,
                ingest_max_batch=settings.ingest_max_batch,
                ack_mode=settings.ack_mode,
                grpc_token=settings.grpc_token,
            )
        except OSError as exc:
            raise StartupError(str(exc), 1, "pick another port with --grpc-port") from None
        await grpc_server.start()
        tasks.append(asyncio.create_task(admin_server.serve(sockets=[admin_socket]), name="admin"))
        watchers = [asyncio.create_task(_follow_readiness(readiness, grpc_health), name="readiness")]
        try:
            if workers is not None:
                await _start_workers(workers)
                watchers.append(asyncio.create_task(_worker_failure(workers), name="HTTP workers"))
            freeze_startup_objects()
            self._announce()
            await _wait_for_stop_or_crash(stop, [*tasks, *watchers[1:]])
        finally:
            log.info("shutting down")
            readiness.shutting_down = True
            await grpc_health.set_ready(False)
            self.unflushed = await _drain_and_stop(
                grpc_server, ingestor, workers, self.stop_signal, settings, self.exit_watchdog
            )
            for server in servers:
                server.should_exit = True
            await asyncio.wait(tasks, timeout=SERVER_STOP_GRACE_S + 1)
            for watcher in watchers:
                watcher.cancel()

    def _worker_spec(self, index: int, control_path: Path) -> WorkerSpec:
        return WorkerSpec(
            index, self.settings, self.deps.database_url, self.deps.redis_url, self.auth_config, control_path
        )

    def _admin_app(
        self, readiness: Readiness, store: Store, cache: Cache, ingestor: Ingestor, workers: WorkerPool | None
    ) -> Any:
        """The admin app; with workers, pool and cache numbers and `/metrics` cover every process."""

        def reset_own_peaks() -> None:
            store.reset_peaks()
            ingestor.reset_peaks()

        views: dict[str, Any] = {"/admin/config": self.describe_config, "/admin/buffer": ingestor.buffer_stats}
        if workers is None or self.runtime_dir is None:
            views["/admin/pool"] = lambda: {"db": store.stats(), "redis": cache.redis_pool_stats()}
            views["/admin/cache"] = cache.stats
            return create_admin_app(readiness, self.settings.admin_token, views, reset_own_peaks)

        async def every_process() -> list[dict[str, Any]]:
            return [process_stats(store, cache), *await workers.gather("stats")]

        async def pool() -> dict[str, Any]:
            return combine_pool_stats(await every_process())

        async def cache_view() -> dict[str, Any]:
            return combine_cache_stats(await every_process())

        async def reset_peaks() -> None:
            reset_own_peaks()
            await workers.gather("reset-peaks")

        views.update({"/admin/pool": pool, "/admin/cache": cache_view})
        registry = multiprocess_registry(self.runtime_dir / "metrics", lambda: [os.getpid(), *workers.pids()])
        return create_admin_app(readiness, self.settings.admin_token, views, reset_peaks, registry)

    def _announce(self) -> None:
        """Tell the operator where everything listens, and how to connect to the embedded servers."""
        s = self.settings
        lines = [
            f"challengectl {__version__} serving (catalog {self.catalog.path}, fingerprint {self.catalog.fingerprint})",
            f"  player API  {s.resolved_api_url()}   (OpenAPI: {s.resolved_api_url()}/openapi.json)"
            + (f"   {s.workers} worker process{'es' if s.workers > 1 else ''}" if s.workers else ""),
            f"  gRPC        {s.grpc_host}:{s.grpc_port}",
            f"  admin       http://{s.admin_host}:{s.admin_port}",
        ]
        if self.deps.embedded_postgres or self.deps.embedded_redis:
            lines.append(f"  data dir    {s.resolved_data_dir()}")
            lines += [f"  {line}" for line in connection_help(self.deps.database_url, self.deps.redis_url)]
            lines.append(f"  export DATABASE_URL='{self.deps.database_url}'")
            if self.deps.redis_url:
                lines.append(f"  export REDIS_URL='{self.deps.redis_url}'")
            lines.append("  mint a player token: challengectl token mint --user <id>")
        print("\n".join(lines), file=sys.stderr, flush=True)


async def _drain_and_stop(
    grpc_server: Any,
    ingestor: Ingestor,
    workers: WorkerPool | None,
    stop_signal: int,
    settings: Settings,
    exit_watchdog: ExitWatchdog,
) -> int:
    """docs/events.md#shutdown: the gRPC server stops taking calls while the buffer drains at once, so a call
    waiting for its commit gets its answer from the drain (OK, or UNAVAILABLE at the deadline) instead of
    being cancelled; then the calls still open (idle streams) get DRAINED_GRACE_S. HTTP workers finish
    their requests meanwhile. The rest of the shutdown has AFTER_DRAIN_LIMIT_S from the drain's end.
    Returns the entries left unflushed."""
    draining = asyncio.create_task(ingestor.drain_and_stop(settings.shutdown_timeout_s), name="drain")
    draining.add_done_callback(
        lambda _: exit_watchdog.arm(AFTER_DRAIN_LIMIT_S, "stopping the servers and closing the pools after the drain")
    )
    grpc_stopped = asyncio.create_task(grpc_server.stop(settings.shutdown_timeout_s + SERVER_STOP_GRACE_S))
    workers_stopped = (
        workers.stop(stop_signal, SERVER_STOP_GRACE_S + WORKER_EXIT_GRACE_S) if workers is not None else None
    )
    if workers_stopped is not None:
        await workers_stopped
    unflushed = await draining
    await grpc_server.stop(DRAINED_GRACE_S)  # a smaller grace ends the first stop sooner
    await grpc_stopped
    return unflushed


def _pool_config(settings: Settings, min_size: int, max_size: int) -> PoolConfig:
    """A pool of `min_size`..`max_size` connections with the settings' timeouts and lifetimes."""
    return PoolConfig(
        min_size=min_size,
        max_size=max_size,
        timeout_ms=settings.db_pool_timeout_ms,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        max_lifetime_s=settings.db_conn_max_lifetime_s,
        max_idle_s=settings.db_conn_max_idle_s,
    )


async def _open_store(
    database_url: str, settings: Settings, resources: contextlib.AsyncExitStack, registry: Registry | None = None
) -> Store:
    """The service pool of this process (`db_pool_max` is per process). With the `registry` (the process serves
    the player API), its `db_pool_min` connections plan the player statements before their first request."""
    config = _pool_config(settings, settings.db_pool_min, settings.db_pool_max)
    if registry is not None:
        config = dataclasses.replace(config, warm_statements=tuple(registry.get(name) for name in PLAYER_STATEMENTS))
    try:
        pool = await open_pool(database_url, "service", config)
    except StoreUnavailable as exc:
        raise StartupError(str(exc), 5, "check DATABASE_URL") from None
    store = Store(pool)
    resources.push_async_callback(store.close)
    return store


async def _open_cache(
    redis_url: str | None, settings: Settings, catalog: Catalog, resources: contextlib.AsyncExitStack
) -> tuple[Any, Cache]:
    """This process's Redis client (None with the cache disabled) and the Cache on it, started."""
    redis = None
    if redis_url:
        redis = await connect_redis(redis_url, settings.redis_pool_max, settings.redis_timeout_ms, settings.redis_mode)
        resources.push_async_callback(redis.aclose)
    cache = Cache(
        redis,
        settings.redis_key_prefix,
        catalog.fingerprint,
        settings.cache_ttl_s,
        settings.synced_ttl_s,
        settings.cache_journal_max,
        settings.redis_probe_interval_ms,
    )
    cache.start()
    resources.push_async_callback(cache.stop)
    return redis, cache


async def _player_routes(
    settings: Settings,
    catalog: Catalog,
    store: Store,
    cache: Cache,
    queries: Queries,
    auth_config: AuthConfig,
    resources: contextlib.AsyncExitStack,
) -> list[Any]:
    """The player API of this process: authentication, rewards and the Players service behind the routes."""
    authenticator = Authenticator(auth_config)
    resources.push_async_callback(authenticator.close)
    await authenticator.start()
    rewards = RewardGranter(RewardConfig.from_settings(settings))
    resources.push_async_callback(rewards.close)
    players = Players(
        catalog, store, queries, cache, rewards, settings.namespace, settings.reward_mode, settings.claim_timeout_ms
    )
    return player_routes(players, authenticator, catalog, settings.base_path, settings.http_max_body_bytes)


def _readiness(
    settings: Settings,
    store: Store,
    redis: Any,
    schema_version: int,
    flusher_failing_since: Any,
    main_shutting_down: Any = lambda: False,
) -> Readiness:
    return Readiness(
        ping_database=store.ping,
        read_schema_version=store.schema_version,
        expected_schema_version=schema_version,
        ping_redis=(lambda: ping_redis(redis)) if redis is not None else None,
        redis_required=settings.readyz_redis == "required",
        flusher_failing_since=flusher_failing_since,
        main_shutting_down=main_shutting_down,
    )


async def run_http_worker(spec: WorkerSpec, state: SharedState, stop: asyncio.Event, report_ready: Any) -> None:
    """One HTTP worker process (docs/http-api.md#general-rules): its own catalog, pools and SO_REUSEPORT socket, serving every
    route of the player port until `stop`; its pool and cache numbers on the control socket for the
    admin port. `/readyz` includes the main process's flusher and shutdown state (`state`)."""
    settings = spec.settings
    catalog = load_service_catalog(settings)
    try:
        queries = Queries(load_registry())
    except RegistryError as exc:
        raise StartupError(f"named-query registry: {exc}", 2) from None
    schema_version = max((m.version for m in discover_migrations()), default=0)
    async with contextlib.AsyncExitStack() as resources:
        store = await _open_store(spec.database_url, settings, resources, queries.registry)
        redis, cache = await _open_cache(spec.redis_url, settings, catalog, resources)
        routes = await _player_routes(settings, catalog, store, cache, queries, spec.auth_config, resources)
        readiness = _readiness(
            settings, store, redis, schema_version, state.flusher_failing_since, state.main_shutting_down
        )
        BUILD_INFO.labels(__version__, catalog.fingerprint, settings.ack_mode).set(1)
        control = await serve_control(
            spec.control_path,
            {
                "stats": lambda: process_stats(store, cache),
                "reset-peaks": store.reset_peaks,
            },
        )
        resources.callback(control.close)
        http_socket = bind_socket(settings.http_host, settings.http_port, "player API", reuse_port=True)
        http_server = _uvicorn(_player_app(settings, readiness, catalog, store, routes), http_limits(settings))
        task = asyncio.create_task(http_server.serve(sockets=[http_socket]), name=f"HTTP worker {spec.index}")
        freeze_startup_objects()
        report_ready()
        try:
            await _wait_for_stop_or_crash(stop, [task])
        finally:
            readiness.shutting_down = True
            http_server.should_exit = True
            await asyncio.wait([task], timeout=SERVER_STOP_GRACE_S + 1)


async def _start_workers(workers: WorkerPool) -> None:
    try:
        await workers.start()
    except WorkerFailure as exc:
        raise StartupError(str(exc), exc.exit_code, exc.hint) from None


async def _worker_failure(workers: WorkerPool) -> None:
    """Ends (with the failure) when the workers can no longer serve; see service/runtime/workers.py."""
    try:
        await workers.failed
    except WorkerFailure as exc:
        raise StartupError(str(exc), exc.exit_code, exc.hint) from None


async def _follow_readiness(readiness: Readiness, grpc_health: Any) -> None:
    """Poll readiness so gRPC health reports the same verdict as /readyz (docs/events.md#grpc-server)."""
    while True:
        ready, _ = await readiness.check()
        await grpc_health.set_ready(ready)
        await asyncio.sleep(READINESS_POLL_S)


async def _wait_for_stop_or_crash(stop: asyncio.Event, tasks: list[asyncio.Task]) -> None:
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    for task in done:
        failure = None if task is stopper else task.exception()
        if isinstance(failure, StartupError):
            raise failure
        if failure is not None:
            raise StartupError(f"{task.get_name()} server failed: {failure}", 1)


async def _serve_until_signalled(service: Service) -> int:
    stop = asyncio.Event()

    def on_stop(signum: int) -> None:
        log.info("received %s", signal.Signals(signum).name)
        service.stop_signal = signum

    def on_second(signum: int) -> None:
        log.warning("second signal: exiting immediately")
        if service.workers is not None:
            service.workers.forward(signum)

    event_loop.stop_on_signals(stop, on_stop, on_second)
    await service.run(stop)
    if service.unflushed:
        log.error("exiting with %d buffered entries unflushed", service.unflushed)
        return 1
    return 0


def serve(settings: Settings) -> int:
    """Run the service in the foreground until SIGINT/SIGTERM; returns the process exit code."""
    validate_settings(settings)
    limit_malloc_arenas()
    catalog = load_service_catalog(settings)
    deps = start_dependencies(settings)
    try:
        wait_for_database(deps.database_url, settings.startup_timeout_s)
        prepare_schema(settings, deps.database_url)
        try:
            load_registry()
        except RegistryError as exc:
            raise StartupError(f"named-query registry: {exc}", 2) from None
        auth_config = auth_config_from_settings(settings, embedded_jwt_secret(settings, deps))
        if not settings.grpc_token and not is_loopback(settings.grpc_host):
            log.warning(
                "grpc_token is unset while gRPC listens on %s: anyone who can reach it can send events",
                settings.grpc_host,
            )
        with contextlib.ExitStack() as run:
            runtime_dir = run.enter_context(runtime_directory()) if settings.workers >= 1 else None
            service = Service(settings, catalog, deps, auth_config, runtime_dir=runtime_dir)
            try:
                exit_code = event_loop.run(_serve_until_signalled(service))
            finally:
                service.exit_watchdog.disarm()
    finally:
        deps.stop()
    log.info("stopped")
    return exit_code

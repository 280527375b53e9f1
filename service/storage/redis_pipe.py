"""The cache's per-request commands over one pipelined connection to a standalone Redis (docs/cache.md#keys).

redis-py's asyncio client spends about 70 us of CPU per command on this machine (a pool lock, a task for
the write timeout, the retry wrapper, a stream reader); here a command is one transport write and one
future. Every caller of a process shares the connection: Redis answers a connection's commands in order,
so replies are matched to callers first in, first out, and concurrent requests pipeline by themselves.

Failures are redis-py's exception classes, so callers handle them as any Redis failure: an error reply is
a `ResponseError` (`NoScriptError` for NOSCRIPT), a refused or lost connection a `ConnectionError`, and a
reply later than the timeout a `TimeoutError` that also closes the connection (what it would answer
next is unknown), failing the commands still waiting on it. The next command connects again.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int


def _packed(command: tuple[Arg, ...]) -> bytes:
    """The RESP array of a command, packed in C by hiredis (a 100-key EVALSHA: a quarter of a Python loop's CPU)."""
    return hiredis.pack_command(command)  # type: ignore[arg-type]  # the stub types a command as a 1-tuple


def _reply_error(error: hiredis.ReplyError) -> ResponseError:
    message = str(error)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Protocol(asyncio.Protocol):
    """One connection: commands written at once, each waiting on a future resolved by its reply in order."""

    def __init__(self, timeout_s: float) -> None:
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._timeout_s = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while waiting:
            reply = self._reader.gets()
            if reply is False:
                return
            future, _ = waiting.popleft()
            if future.done():  # its caller was cancelled or timed out; the reply still takes its turn
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_reply_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"Redis closed the connection: {exc or 'end of stream'}"))

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def send(self, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        return self.send_many((args,))[0]

    def send_many(self, commands: Sequence[tuple[Arg, ...]]) -> list[asyncio.Future[Any]]:
        """Write the commands in one transport write; one future per command, resolved by its reply."""
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        deadline = time.monotonic() + self._timeout_s
        self._waiting.extend((future, deadline) for future in futures)
        self._transport.write(b"".join(map(_packed, commands)))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout_s, self._check_deadline)
        return futures

    def _check_deadline(self) -> None:
        """One timer per busy stretch rather than one per command: the oldest waiting command is the first."""
        self._watchdog = None
        if not self._waiting or self.lost:
            return
        late_by = time.monotonic() - self._waiting[0][1]
        if late_by >= 0:
            self._fail(RedisTimeoutError(f"no reply from Redis within {self._timeout_s * 1000:.0f} ms"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(-late_by, self._check_deadline)

    def _fail(self, error: Exception) -> None:
        self.lost = True
        if self._transport is not None:
            self._transport.close()
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def close(self) -> None:
        self._fail(RedisConnectionError("the connection was closed"))


class CommandBatch:
    """Commands queued as on a redis-py pipeline (`evalsha`), then sent together by `PipelinedRedis.execute_many`."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: list[tuple[Arg, ...]] = []

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Arg) -> None:
        self.commands.append(("EVALSHA", sha, numkeys, *keys_and_args))


class PipelinedRedis:
    """Commands to one standalone Redis over one shared connection, opened on first use and again after a
    failure. `timeout_s` bounds the connect and each reply."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str | None,
        db: int,
        username: str | None,
        password: str | None,
        timeout_s: float,
    ) -> None:
        self._host, self._port, self._path = host, port, path
        self._setup: list[tuple[Arg, ...]] = []
        if password:
            self._setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._setup.append(("SELECT", db))
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self.connections_made = 0

    @classmethod
    def of_client(cls, client: Any) -> PipelinedRedis | None:
        """The pipelined twin of a standalone redis-py client (same server, database, credentials and timeout),
        or None for a client it cannot follow (TLS, a cluster, a custom connection class)."""
        pool = getattr(client, "connection_pool", None)
        if pool is None or pool.connection_class not in (Connection, UnixDomainSocketConnection):
            return None
        kwargs = pool.connection_kwargs
        return cls(
            kwargs.get("host") or "localhost",
            kwargs.get("port", 6379),
            kwargs.get("path") if pool.connection_class is UnixDomainSocketConnection else None,
            int(kwargs.get("db") or 0),
            kwargs.get("username"),
            kwargs.get("password"),
            kwargs.get("socket_timeout") or 5.0,
        )

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.lost

    @property
    def pending(self) -> int:
        """Commands sent and not yet answered."""
        return self._protocol.pending if self.connected and self._protocol is not None else 0

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply (bytes, int, None or a list, as redis-py without decoding)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await protocol.send(args)

    async def execute_many(self, commands: Sequence[tuple[Arg, ...]]) -> list[Any]:
        """Send the commands in one write and return their replies in order, an error reply as its
        `ResponseError` (as a redis-py pipeline with `raise_on_error=False`); a connection failure raises."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        replies = await asyncio.gather(*protocol.send_many(commands), return_exceptions=True)
        failure = next(
            (reply for reply in replies if isinstance(reply, BaseException) and not isinstance(reply, ResponseError)),
            None,
        )
        if failure is not None:
            raise failure
        return replies

    async def script(self, sha: str, source: str, keys: list[str], args: list[Arg]) -> Any:
        """EVALSHA, or EVAL (which loads the script) when the server does not know it yet."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.execute("EVAL", source, len(keys), *keys, *args)

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None

    async def _connect(self) -> _Protocol:
        """Connect (callers arriving meanwhile wait for the same attempt) and run AUTH/SELECT."""
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        connecting = self._connecting = asyncio.get_running_loop().create_future()
        try:
            protocol = await self._open()
        except BaseException as exc:
            failure = (
                exc if isinstance(exc, RedisConnectionError | RedisTimeoutError) else RedisConnectionError(str(exc))
            )
            connecting.set_exception(failure)
            connecting.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._connecting = None
        self._protocol = protocol
        connecting.set_result(protocol)
        return protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._path is not None:
                    _, protocol = await loop.create_unix_connection(lambda: _Protocol(self._timeout_s), self._path)
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self._timeout_s), self._host, self._port
                    )
                self.connections_made += 1
                try:
                    for command in self._setup:
                        await protocol.send(command)
                except BaseException:
                    protocol.close()
                    raise
        except TimeoutError:
            raise RedisTimeoutError("connecting to Redis timed out") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from None
        return protocol

"""The CLI's async clients for a running service (docs/configuration.md#cli-settings, docs/cli.md): REST (`ApiClient`), admin
(`AdminClient`) and gRPC ingestion (`IngestClient`), plus the player identity (`PlayerAuth`).

Everything opens lazily: `Clients` creates a client on first attribute access and a connection on the
first call, so a command that sends no events never dials gRPC. Every failure is raised as a
`CliError` with the exit code and hint of docs/cli.md#exit-codes, docs/cli.md#errors-and-hints; commands never inspect raw statuses
unless they ask for them (`ApiClient.send(..., accept=(404,))`).

    async def main(clients: Clients) -> None:
        body = await clients.api.get("/v1/challenges", user="alice")        # player call, JSON body
        config = await clients.admin.get("/admin/config")
        result = await clients.ingest.publish(batch)                        # EventBatch → PublishResult
    ctx.obj.run(main)       # runs it in asyncio with the clients closed afterwards
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import grpc

from challengectl.errors import (
    EXIT_AUTH,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    HINT_START_SERVICE,
    CliError,
    error_from_grpc,
    error_from_http,
    hint_for_unreachable_rest,
)
from service.config.settings import MASK, Settings, SettingsError
from service.transport.auth import SECRET_FILE_NAME, mint_token, read_secret_file

CONNECT_TIMEOUT_S = 5.0
PLAYER_TOKEN_TTL_S = 3600
USER_AGENT = "challengectl-cli"


@dataclass(frozen=True)
class ApiResponse:
    """One HTTP response: status, parsed JSON body (None when empty or not JSON), headers, duration, and
    the body as received (e.g. the Prometheus text of `/metrics`)."""

    status: int
    body: Any
    headers: Mapping[str, str]
    duration_ms: float
    raw: bytes = b""


class HttpClient:
    """Shared machinery of the REST and admin clients: one aiohttp session with a keep-alive pool,
    the timeouts of the settings, `--debug` curl lines, and error mapping."""

    service_name = "REST API"
    admin = False

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        debug_print: Any | None = None,
        headers: Mapping[str, str] | None = None,
        pool_size: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._debug_print = debug_print
        self._headers = dict(headers or {})
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s)),
                headers={"User-Agent": USER_AGENT, **self._headers},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    async def send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        accept: Sequence[int] = (),
    ) -> ApiResponse:
        """Send one request; a 2xx status, or one listed in `accept`, is returned, any other raises
        CliError (docs/cli.md#exit-codes). Connection failures and timeouts raise CliError exit 5."""
        url = self.url(path)
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        self._print_curl(method, url, query, headers or {}, json_body)
        started = time.perf_counter()
        try:
            async with self._open().request(
                method, url, params=query or None, json=json_body, headers=headers
            ) as response:
                raw = await response.read()
                status, response_headers = response.status, dict(response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise CliError(*self._failure(exc, method, path), EXIT_UNAVAILABLE) from None
        duration_ms = (time.perf_counter() - started) * 1000
        body = _parse_body(raw)
        if 200 <= status < 300 or status in accept:
            return ApiResponse(status, body, response_headers, duration_ms, raw)
        raise error_from_http(status, body, method, url, admin=self.admin)

    def _failure(self, exc: BaseException, method: str, path: str) -> tuple[str, str]:
        """The message and hint of a request that got no HTTP answer."""
        where = f"{self.service_name} at {self.base_url}"
        if isinstance(exc, TimeoutError):
            return (
                f"{where} did not answer {method} {path} within {self.timeout_s:g}s",
                "raise --timeout, or run 'challengectl doctor'",
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return f"cannot connect to the {where}: {_connect_reason(exc)}", self.unreachable_hint()
        # e.g. a gRPC (HTTP/2-only) port answering an HTTP/1.1 request, or a dropped connection
        return f"{where} broke off {method} {path}: {type(exc).__name__}", self.unreachable_hint()

    async def get(self, path: str, **kwargs: Any) -> Any:
        """GET → the parsed JSON body."""
        return (await self.send("GET", path, **kwargs)).body

    async def get_text(self, path: str, **kwargs: Any) -> str:
        """GET → the body as text."""
        return (await self.send("GET", path, **kwargs)).raw.decode("utf-8", "replace")

    async def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Any:
        """POST → the parsed JSON body."""
        return (await self.send("POST", path, json_body=json_body, **kwargs)).body

    async def put(self, path: str, json_body: Any = None, **kwargs: Any) -> Any:
        """PUT → the parsed JSON body."""
        return (await self.send("PUT", path, json_body=json_body, **kwargs)).body

    def unreachable_hint(self) -> str:
        return HINT_START_SERVICE

    def _print_curl(
        self, method: str, url: str, query: Mapping[str, str], headers: Mapping[str, str], json_body: Any
    ) -> None:
        if self._debug_print is None:
            return
        full_url = url + ("?" + urlencode(query) if query else "")
        parts = ["curl", "-sS", "-X", method, full_url]
        for name, value in {**self._headers, **headers}.items():
            parts += ["-H", f"{name}: {mask_header(name, value)}"]
        if json_body is not None:
            parts += ["-H", "Content-Type: application/json", "-d", json.dumps(json_body, separators=(",", ":"))]
        self._debug_print(" ".join(shlex.quote(part) for part in parts))


class ApiClient(HttpClient):
    """The player REST API at `api_url` (e.g. `http://127.0.0.1:8000/challenge`). Paths are relative to
    it (`/v1/challenges`). With `user=...`, the call carries that player's identity from `PlayerAuth`."""

    def __init__(self, base_url: str, *, auth: PlayerAuth, grpc_port: int, http_port: int, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self.auth = auth
        self._grpc_port = grpc_port
        self._http_port = http_port

    async def send(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> ApiResponse:
        """As `HttpClient.send`; `user` adds `Authorization: Bearer ...` or `X-Mock-User-Id`."""
        merged = dict(headers or {})
        if user is not None:
            merged.update(await self.auth.headers(user))
        return await super().send(method, path, headers=merged, **kwargs)

    def unreachable_hint(self) -> str:
        return hint_for_unreachable_rest(urlsplit(self.base_url).port, self._grpc_port, self._http_port)


class AdminClient(HttpClient):
    """The admin API at `admin_url` (`/admin/config`, `/admin/pool`, `/readyz`, ...), with
    `Authorization: Bearer <admin_token>` when the setting is given."""

    service_name = "admin API"
    admin = True

    def __init__(self, base_url: str, *, admin_token: str | None, **kwargs: Any) -> None:
        headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        super().__init__(base_url, headers=headers, pool_size=8, **kwargs)

    def unreachable_hint(self) -> str:
        return "is the service running? start it with 'challengectl serve' or set --admin-url"


class IngestClient:
    """gRPC event ingestion at `grpc_addr` (host:port). The channel is dialled on the first call; calls
    carry `authorization: Bearer <grpc_token>` when the setting is given.

    `publish(batch)` calls `challengectl.v1.EventIngest/Publish`; `ags_login(msg)` and `ags_stat(msg)`
    call the AGS OnMessage services. Messages come from `service.proto.challengectl.v1.ingest_pb2` and
    the `service.proto.accelbyte...` modules."""

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float,
        grpc_token: str | None,
        max_message_bytes: int = 4 * 1024 * 1024,
        debug_print: Any | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {grpc_token}"),) if grpc_token else ()
        self._max_message_bytes = max_message_bytes
        self._debug_print = debug_print
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The grpc.aio channel, created on first use."""
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.target,
                options=[
                    ("grpc.max_send_message_length", self._max_message_bytes),
                    ("grpc.max_receive_message_length", self._max_message_bytes),
                ],
            )
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def call(self, method: str, multi_callable: Any, request: Any) -> Any:
        """Invoke a unary stub method; `method` (e.g. `challengectl.v1.EventIngest/Publish`) names it in
        errors and in the `--debug` grpcurl line. gRPC failures raise CliError per docs/cli.md#exit-codes."""
        if self._debug_print is not None:
            from google.protobuf.json_format import MessageToJson

            header = ["-H", f"authorization: Bearer {MASK}"] if self._metadata else []
            parts = ["grpcurl", "-plaintext", *header, "-d", MessageToJson(request, indent=None), self.target, method]
            self._debug_print(" ".join(shlex.quote(part) for part in parts))
        try:
            return await multi_callable(request, metadata=self._metadata, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_grpc(exc.code(), exc.details(), method, self.target) from None

    async def publish(self, batch: Any) -> Any:
        """EventIngest/Publish: an `EventBatch` in, a `PublishResult` out."""
        from service.proto.challengectl.v1 import ingest_pb2_grpc

        stub = ingest_pb2_grpc.EventIngestStub(self.channel)
        return await self.call("challengectl.v1.EventIngest/Publish", stub.Publish, batch)

    async def ags_login(self, message: Any) -> Any:
        """The AGS UserLoggedIn OnMessage service (one login event)."""
        from service.proto.accelbyte.iam.account.v1 import account_pb2_grpc

        stub = account_pb2_grpc.UserAuthenticationUserLoggedInServiceStub(self.channel)
        return await self.call(
            "accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService/OnMessage", stub.OnMessage, message
        )

    async def ags_stat(self, message: Any) -> Any:
        """The AGS StatItemUpdated OnMessage service (one stat event)."""
        from service.proto.accelbyte.social.statistic.v1 import statistic_pb2_grpc

        stub = statistic_pb2_grpc.StatisticStatItemUpdatedServiceStub(self.channel)
        return await self.call(
            "accelbyte.social.statistic.v1.StatisticStatItemUpdatedService/OnMessage", stub.OnMessage, message
        )


def local_jwt_secret(settings: Settings) -> bytes | None:
    """The HS256 key readable here: `jwt_secret`, else `jwt_secret_file`, else the embedded
    `<data_dir>/jwt.secret` when it exists; None when there is none. A configured secret file that
    cannot be read is a configuration error (CliError exit 2)."""
    if settings.jwt_secret:
        return settings.jwt_secret.encode("utf-8")
    try:
        if settings.jwt_secret_file:
            return read_secret_file(Path(settings.jwt_secret_file).expanduser())
        embedded_secret = settings.resolved_data_dir() / SECRET_FILE_NAME
        if embedded_secret.exists():
            return read_secret_file(embedded_secret)
    except SettingsError as exc:
        raise CliError(str(exc), "check --jwt-secret-file / CHALLENGE_JWT_SECRET_FILE", EXIT_USAGE) from None
    return None


class PlayerAuth:
    """How player calls authenticate (docs/configuration.md#cli-settings, docs/cli.md#commands), decided once on the first player call:

    1. `--token` / `CHALLENGE_TOKEN`: sent as is, for every user;
    2. a local HS256 secret (`jwt_secret`, `jwt_secret_file`, or `<data_dir>/jwt.secret` of an embedded
       `serve`): a token is minted per user;
    3. the service reports `auth = none` on `/admin/config`: `X-Mock-User-Id: <user>`;
    otherwise CliError exit 4 with a hint.
    """

    def __init__(self, settings: Settings, admin: AdminClient) -> None:
        self._settings = settings
        self._admin = admin
        self._mode: str | None = None
        self._key: bytes | None = None
        self._tokens: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def mode(self) -> str:
        """`token`, `mint` or `mock`."""
        async with self._lock:
            if self._mode is None:
                self._mode = await self._decide()
            return self._mode

    async def _decide(self) -> str:
        if self._settings.token:
            return "token"
        self._key = local_jwt_secret(self._settings)
        if self._key is not None:
            return "mint"
        try:
            config = await self._admin.get("/admin/config")
        except CliError as exc:
            # Without an answer we cannot tell auth=none from a missing secret; an unreachable
            # service keeps its own exit code (5), anything else is an authentication problem.
            raise CliError(
                "no player token (no --token, no readable JWT secret) and cannot ask the service "
                f"whether it runs with auth=none: {exc.message}",
                "start the service ('challengectl serve'), pass --token, or set CHALLENGE_JWT_SECRET_FILE",
                exc.exit_code if exc.exit_code == EXIT_UNAVAILABLE else EXIT_AUTH,
            ) from None
        if _auth_mode_of(config) == "none":
            return "mock"
        raise CliError(
            "no player token: no --token and no readable JWT secret to mint one "
            f"(looked for {self._settings.resolved_data_dir() / SECRET_FILE_NAME})",
            "pass --token, set CHALLENGE_JWT_SECRET_FILE (or --data-dir of the running serve), "
            "or mint one with 'challengectl token mint --user <id>'",
            EXIT_AUTH,
        )

    async def headers(self, user: str) -> dict[str, str]:
        """The identity headers of `user`."""
        mode = await self.mode()
        if mode == "token":
            return {"Authorization": f"Bearer {self._settings.token}"}
        if mode == "mock":
            return {"X-Mock-User-Id": user}
        token = self._tokens.get(user)
        if token is None:
            assert self._key is not None
            token = self._tokens[user] = mint_token(self._key, user, PLAYER_TOKEN_TTL_S)
        return {"Authorization": f"Bearer {token}"}


class Clients:
    """The clients of one command, created lazily from the settings; close with `aclose()` (or use
    `async with`). `api`, `admin`, `ingest` are properties; `auth` is the shared PlayerAuth."""

    def __init__(self, settings: Settings, *, timeout_s: float | None = None, debug_print: Any | None = None) -> None:
        self.settings = settings
        self.timeout_s = float(timeout_s if timeout_s is not None else settings.timeout_s)
        self._debug_print = debug_print

    @cached_property
    def admin(self) -> AdminClient:
        return AdminClient(
            self.settings.admin_url,
            admin_token=self.settings.admin_token,
            timeout_s=self.timeout_s,
            debug_print=self._debug_print,
        )

    @cached_property
    def auth(self) -> PlayerAuth:
        return PlayerAuth(self.settings, self.admin)

    @cached_property
    def api(self) -> ApiClient:
        return ApiClient(
            self.settings.resolved_api_url(),
            auth=self.auth,
            grpc_port=_port_of(self.settings.grpc_addr, self.settings.grpc_port),
            http_port=self.settings.http_port,
            timeout_s=self.timeout_s,
            debug_print=self._debug_print,
        )

    @cached_property
    def ingest(self) -> IngestClient:
        return IngestClient(
            self.settings.grpc_addr,
            timeout_s=self.timeout_s,
            grpc_token=self.settings.grpc_token,
            max_message_bytes=self.settings.grpc_max_message_bytes,
            debug_print=self._debug_print,
        )

    async def aclose(self) -> None:
        """Close the clients created so far (a cached property is in `__dict__` once read)."""
        for name in ("api", "admin", "ingest"):
            client = self.__dict__.get(name)
            if client is not None:
                await client.close()

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def mask_header(name: str, value: str) -> str:
    """Header values safe to print: credentials are masked."""
    lowered = name.lower()
    if lowered == "authorization":
        scheme = value.split(" ", 1)[0] if " " in value else ""
        return f"{scheme} {MASK}".strip()
    if "token" in lowered or "secret" in lowered:
        return MASK
    return value


def _auth_mode_of(config: Any) -> str | None:
    """The `auth` value of an `/admin/config` body (settings are `{"value", "source"}` entries)."""
    entry = config.get("auth") if isinstance(config, dict) else None
    if isinstance(entry, dict):
        return entry.get("value")
    return entry if isinstance(entry, str) else None


def _port_of(addr: str, default: int) -> int:
    host_port = addr.rsplit(":", 1)
    try:
        return int(host_port[1]) if len(host_port) == 2 else default
    except ValueError:
        return default


def _connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror.lower()
    return type(os_error or exc).__name__


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

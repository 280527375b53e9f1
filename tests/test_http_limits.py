"""The player API's HTTP limits and admission control (docs/http-api.md#http-limits; issue 11 items 1 and 7,
issue 10 admission): a real uvicorn server on the limited protocol, spoken to over raw sockets, so that
partial heads, partial bodies, silent connections and parser-level garbage can be sent as an attacker
would. Admission control is also checked against a real PostgreSQL pool with one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service.config.resources import example_catalog_path
from service.domain.catalog import Catalog, load_catalog
from service.storage.store import PoolConfig, Store, open_pool
from service.transport.admission import LATENCY_MIN_INFLIGHT, Admission
from service.transport.auth import AuthConfig, Authenticator, mint_token
from service.transport.http_api import create_http_app, player_routes
from service.transport.http_protocol import HttpLimits, limited_protocol
from service.usecases.players import ListResult
from tests.support.http import BASE, SECRET, RecordingPlayers, serve, stub_readiness

LIMITS = HttpLimits(
    max_header_bytes=4096,
    max_headers=20,
    header_timeout_s=0.5,
    body_timeout_s=0.5,
    idle_timeout_s=0.5,
    max_connections=8,
)
TOKEN = mint_token(SECRET, "player-1")


class GatedPlayers(RecordingPlayers):
    """`list_challenges` waits for `gate`, so a test can hold requests in progress."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(catalog)
        self.gate = asyncio.Event()
        self.gate.set()

    async def list_challenges(self, user_id: str, active_only: bool) -> ListResult:
        await self.gate.wait()
        return await super().list_challenges(user_id, active_only)


@contextlib.asynccontextmanager
async def limited_server(app: Any, limits: HttpLimits = LIMITS) -> AsyncIterator[int]:
    """`app` on the limited protocol, as `serve` runs the player API; yields the port."""
    protocol = limited_protocol(limits)
    async with serve(app, http=protocol, ws="none", timeout_keep_alive=limits.idle_timeout_s) as url:
        yield int(url.rsplit(":", 1)[1])


def _app(players: RecordingPlayers, catalog: Catalog, admission: Admission | None = None) -> Any:
    authenticator = Authenticator(AuthConfig(mode="jwt", hs256_key=SECRET))
    routes = player_routes(players, authenticator, catalog, BASE, 65536)  # type: ignore[arg-type]
    return create_http_app(stub_readiness(), BASE, catalog.fingerprint, routes, admission)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(example_catalog_path())


@pytest.fixture(scope="module")
async def players(catalog: Catalog) -> GatedPlayers:
    return GatedPlayers(catalog)


@pytest.fixture(scope="module")
async def port(players: GatedPlayers, catalog: Catalog) -> AsyncIterator[int]:
    async with limited_server(_app(players, catalog)) as bound:
        yield bound


class Answer:
    """What came back on a raw connection: status, headers, parsed JSON body, seconds until it ended."""

    def __init__(self, raw: bytes, elapsed: float) -> None:
        self.raw, self.elapsed = raw, elapsed
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if raw else None
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.body = json.loads(body) if body else None


async def exchange(port: int, *parts: bytes, pause_s: float = 0.0, wait_s: float = 5.0) -> Answer:
    """Send `parts` (pausing between them) while reading, until the server closes or `wait_s` passes.
    Reading runs alongside the writes: a server that refuses early closes while the client still sends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def send_all() -> None:
        with contextlib.suppress(ConnectionError):
            for part in parts:
                writer.write(part)
                await writer.drain()
                if pause_s:
                    await asyncio.sleep(pause_s)

    sending = asyncio.create_task(send_all())
    received = b""
    try:
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                received += chunk
    except (ConnectionError, TimeoutError):
        pass
    finally:
        elapsed = time.monotonic() - started
        sending.cancel()
        writer.close()
    return Answer(received, elapsed)


def _get(path: str, *headers: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def _error(answer: Answer) -> tuple[int | None, str]:
    assert answer.headers["content-type"].startswith("application/json"), answer.raw[:200]
    assert set(answer.body) == {"errorCode", "message"}
    return answer.status, answer.body["errorCode"]


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("challenge_http_refused_total", {"reason": reason}) or 0.0


# --- the request head -------------------------------------------------------------------------------


async def test_oversized_header_is_431_at_once_and_healthz_stays_fast(port: int) -> None:
    """Issue 11 item 1: a 32 MiB header took 3.5 s to refuse and slowed /healthz to 2.7 s."""
    before = _refused("header_too_large")
    huge = [b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer ", *[b"x" * 65536] * 64]
    refused, healthz = await asyncio.gather(
        exchange(port, *huge),
        exchange(port, _get("/healthz", b"Connection: close")),
    )
    assert _error(refused) == (431, "HEADERS_TOO_LARGE")
    assert refused.headers["connection"] == "close"
    assert healthz.status == 200
    assert _refused("header_too_large") == before + 1
    # Just under the limit is still served.
    fits = await exchange(port, _get("/healthz", b"X-Pad: " + b"p" * 3900, b"Connection: close"))
    assert fits.status == 200


async def test_too_many_headers_is_431(port: int) -> None:
    many = [b"X-H%d: 1" % i for i in range(LIMITS.max_headers + 1)]
    assert _error(await exchange(port, _get("/healthz", *many))) == (431, "HEADERS_TOO_LARGE")
    few = [b"X-H%d: 1" % i for i in range(LIMITS.max_headers - 2)]
    assert (await exchange(port, _get("/healthz", *few, b"Connection: close"))).status == 200


async def test_overlong_url_is_414(port: int) -> None:
    answer = await exchange(port, _get("/healthz?" + "q" * 70_000))
    assert _error(answer) == (414, "URI_TOO_LONG")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /heal\x01thz HTTP/1.1\r\nHost: t\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
)
async def test_parser_errors_are_json_400(port: int, request_bytes: bytes) -> None:
    """Issue 11 item 7: the parser's own 400s were text/plain."""
    answer = await exchange(port, request_bytes)
    assert _error(answer) == (400, "INVALID_REQUEST")
    assert answer.body["message"].startswith("malformed HTTP request")


async def test_responses_keep_their_framing_through_the_protocol(port: int) -> None:
    """The protocol writes the heads the app built itself: uvicorn's default headers, one content-length,
    keep-alive and `Connection: close`, HEAD without a body, as uvicorn frames them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        first = await _keep_alive_exchange(reader, writer, _get("/healthz", b"X-Request-Id: k-1"))
        assert (first.status, first.body, first.headers["x-request-id"]) == (200, {"status": "healthy"}, "k-1")
        assert "connection" not in first.headers and first.raw.lower().count(b"content-length") == 1
        assert "date" in first.headers  # uvicorn's default headers (this test server keeps them on)
        writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.count(b"content-length") == 1
        assert b"content-length: 20\r\n" in head
        last = await _keep_alive_exchange(reader, writer, _get("/healthz", b"Connection: close"))
        assert last.status == 200 and last.headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
    finally:
        writer.close()


class _RecordingTransport:
    """A transport that records each write call (a `writelines` is one call, as uvloop makes it one send)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes) -> None:
        if data:  # an empty write sends nothing (uvloop returns at once)
            self.calls.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        self.calls.append(b"".join(parts))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_a_response_head_and_body_leave_in_one_write(players: GatedPlayers, catalog: Catalog) -> None:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    config = Config(_app(players, catalog), http=limited_protocol(LIMITS), ws="none", lifespan="off", log_config=None)
    config.load()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = _RecordingTransport()
    protocol.connection_made(transport)
    for request in (_get("/healthz"), _get(f"{BASE}/v1/challenges", f"Authorization: Bearer {TOKEN}".encode())):
        transport.calls.clear()
        protocol.data_received(request)
        for _ in range(50):
            if transport.calls:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # nothing more follows
        assert len(transport.calls) == 1
        head, _, body = transport.calls[0].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body and f"content-length: {len(body)}".encode() in head
        json.loads(body)
    protocol.connection_lost(None)


# --- deadlines ----------------------------------------------------------------------------------------


async def test_partial_head_gets_408_after_the_header_timeout(port: int) -> None:
    answer = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
    assert _error(answer) == (408, "REQUEST_TIMEOUT")
    assert LIMITS.header_timeout_s <= answer.elapsed < LIMITS.header_timeout_s + 2


async def test_a_head_trickled_slowly_still_times_out(port: int) -> None:
    """The deadline runs from the first byte: sending a byte now and then does not extend it."""
    parts = [b"GET /healthz HTTP/1.1\r\n", *[b"X-Slow: 1\r\n"] * 8]
    answer = await exchange(port, *parts, pause_s=0.1)
    assert _error(answer) == (408, "REQUEST_TIMEOUT")


async def test_silent_connection_is_closed_after_the_idle_timeout(port: int) -> None:
    answer = await exchange(port)
    assert answer.raw == b""
    assert LIMITS.idle_timeout_s <= answer.elapsed < LIMITS.idle_timeout_s + 2


async def test_kept_alive_connection_is_closed_after_the_idle_timeout(port: int) -> None:
    answer = await exchange(port, _get("/healthz"))
    assert answer.status == 200
    assert LIMITS.idle_timeout_s <= answer.elapsed < LIMITS.idle_timeout_s + 2


async def test_partial_body_gets_408_after_the_body_timeout(port: int, caplog: pytest.LogCaptureFixture) -> None:
    head = (
        f"POST {BASE}/v1/challenges/c/goals/batch-select HTTP/1.1\r\nHost: t\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.INFO):
        answer = await exchange(port, head + b'{"goal_ids": [')
    assert _error(answer) == (408, "REQUEST_TIMEOUT")
    assert LIMITS.body_timeout_s <= answer.elapsed < LIMITS.body_timeout_s + 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


# --- connections and disconnects -------------------------------------------------------------------------


async def test_connections_over_the_cap_get_503(port: int) -> None:
    before = _refused("too_many_connections")
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
    try:
        await asyncio.sleep(0.05)
        answer = await exchange(port, _get("/healthz"))
        assert _error(answer) == (503, "SERVICE_OVERLOADED")
        assert answer.headers["retry-after"] == "1"
        assert _refused("too_many_connections") == before + 1
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.05)
    assert (await exchange(port, _get("/healthz", b"Connection: close"))).status == 200


async def test_client_disconnect_is_not_an_unhandled_error(port: int, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11 item 7: a client gone mid-body was logged as "unhandled error" with a traceback."""
    labels = {"route": f"{BASE}/v1/challenges/{{challenge_id}}/goals/batch-select", "method": "POST", "status": "499"}
    before = REGISTRY.get_sample_value("challenge_http_requests_total", labels) or 0.0
    head = (
        f"POST {BASE}/v1/challenges/c/goals/batch-select HTTP/1.1\r\nHost: t\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{"
    ).encode()
    with caplog.at_level(logging.INFO):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        for _ in range(100):
            if (REGISTRY.get_sample_value("challenge_http_requests_total", labels) or 0.0) > before:
                break
            await asyncio.sleep(0.02)
    assert REGISTRY.get_sample_value("challenge_http_requests_total", labels) == before + 1
    assert "unhandled error" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


# --- admission control ------------------------------------------------------------------------------


async def _get_challenges(port: int) -> Answer:
    return await exchange(
        port, _get(f"{BASE}/v1/challenges", f"Authorization: Bearer {TOKEN}".encode(), b"Connection: close")
    )


async def test_requests_over_max_inflight_are_503_at_once(catalog: Catalog) -> None:
    players = GatedPlayers(catalog)
    admission = Admission(max_inflight=2, pool_waiting=lambda: 0, max_pool_waiting=100)
    async with limited_server(_app(players, catalog, admission)) as bound:
        players.gate.clear()
        held = [asyncio.create_task(_get_challenges(bound)) for _ in range(2)]
        while admission.inflight < 2:
            await asyncio.sleep(0.01)
        shed = await _get_challenges(bound)
        assert _error(shed) == (503, "SERVICE_OVERLOADED")
        assert shed.headers["retry-after"] == "1" and shed.elapsed < 1
        health = await exchange(bound, _get(f"{BASE}/healthz", b"Connection: close"))
        assert health.status == 200  # health routes are never shed
        players.gate.set()
        assert [answer.status for answer in await asyncio.gather(*held)] == [200, 200]
        assert admission.inflight == 0
        assert (await _get_challenges(bound)).status == 200


class CountingApp:
    """The player app, counting the requests that reach it; it keeps the app's `early_answer`, which the
    protocol asks first."""

    def __init__(self, app: Any) -> None:
        self.app, self.early_answer, self.calls = app, app.early_answer, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


async def _keep_alive_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> Answer:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return Answer(head + await reader.readexactly(length), 0.0)


async def test_refusals_come_from_the_protocol_without_running_the_app(catalog: Catalog) -> None:
    """Issue 10 overload: a refused request is answered by the HTTP protocol as soon as its head is parsed,
    without an ASGI task (the app never sees it), and its connection stays open for the next request."""
    players = GatedPlayers(catalog)
    admission = Admission(max_inflight=1, pool_waiting=lambda: 0, max_pool_waiting=100)
    app = CountingApp(_app(players, catalog, admission))
    before = _refused("overloaded")
    async with limited_server(app) as bound:
        players.gate.clear()
        held = asyncio.create_task(_get_challenges(bound))
        reader, writer = await asyncio.open_connection("127.0.0.1", bound)
        try:
            while admission.inflight < 1:
                await asyncio.sleep(0.01)
            request = _get(f"{BASE}/v1/challenges", f"Authorization: Bearer {TOKEN}".encode(), b"X-Request-Id: r-1")
            shed = await _keep_alive_exchange(reader, writer, request)
            assert _error(shed) == (503, "SERVICE_OVERLOADED")
            assert shed.headers["retry-after"] == "1" and shed.headers["x-request-id"] == "r-1"
            assert shed.headers["x-catalog-fingerprint"] == catalog.fingerprint
            assert app.calls == 1 and _refused("overloaded") == before + 1
            players.gate.set()
            assert (await held).status == 200
            assert admission.inflight == 0
            assert (await _keep_alive_exchange(reader, writer, request)).status == 200  # same connection
            assert app.calls == 2 and admission.inflight == 0
            # A connection left idle after a refusal is closed after the idle timeout, as after any answer.
            players.gate.clear()
            held = asyncio.create_task(_get_challenges(bound))
            while admission.inflight < 1:
                await asyncio.sleep(0.01)
            idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", bound)
            assert (await _keep_alive_exchange(idle_reader, idle_writer, request)).status == 503
            assert await asyncio.wait_for(idle_reader.read(), LIMITS.idle_timeout_s + 2) == b""
            idle_writer.close()
            players.gate.set()
            assert (await held).status == 200
        finally:
            players.gate.set()  # a failed check must not leave the server waiting on the held request
            writer.close()


async def test_a_saturated_database_pool_sheds_instead_of_waiting(pg_url: str, catalog: Catalog) -> None:
    """Issue 10 admission: with every connection of a real pool taken and one request already queued,
    the next request is refused at once instead of waiting out the pool timeout (here 5 s)."""
    pool = await open_pool(pg_url, "service", PoolConfig(min_size=1, max_size=1, timeout_ms=5000))
    store = Store(pool)
    try:
        admission = Admission(max_inflight=100, pool_waiting=store.waiting_at_max_size, max_pool_waiting=1)
        players = GatedPlayers(catalog)
        async with limited_server(_app(players, catalog, admission)) as bound, store.connection():
            queued = asyncio.create_task(store.connection().__aenter__())
            while store.waiting_at_max_size() < 1:
                await asyncio.sleep(0.01)
            admission.inflight += 1  # the queued acquire stands for a request in progress
            shed = await _get_challenges(bound)
            admission.inflight -= 1
            assert _error(shed) == (503, "SERVICE_OVERLOADED")
            assert "database" in shed.body["message"] and shed.elapsed < 1
            queued.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await queued
        assert store.waiting_at_max_size() == 0
    finally:
        await store.close()


def test_slow_recent_requests_shed_only_with_enough_in_progress() -> None:
    """The latency rule: requests that took seconds on average refuse new ones while at least
    LATENCY_MIN_INFLIGHT are in progress; fast completions bring the average back and end it."""
    admission = Admission(max_inflight=100, pool_waiting=lambda: 0, max_pool_waiting=100, shed_latency_s=1.0)
    for _ in range(LATENCY_MIN_INFLIGHT):
        admission.started()
    assert admission.refusal() is None
    for _ in range(30):
        admission.started()
        admission.finished(3.0)
    refusal = admission.refusal()
    assert refusal is not None and (refusal.status, refusal.error_code) == (503, "SERVICE_OVERLOADED")
    admission.finished(3.0)  # one fewer in progress than the rule needs
    assert admission.refusal() is None
    admission.started()
    for _ in range(40):
        admission.started()
        admission.finished(0.01)
    assert admission.refusal() is None
    assert Admission(100, lambda: 0, 100, shed_latency_s=None).refusal() is None

"""The player API's HTTP/1.1 connection limits (docs/http-api.md#http-limits): uvicorn's httptools protocol
plus a cap on the request head (431/414), header and body read deadlines (408), an idle deadline, a
cap on open connections (503), and every refusal the parser makes as `{"errorCode","message"}`.

uvicorn's own protocol has none of these: it buffers a header of any size, waits forever for a head or
body that never completes, keeps a connection that never sends a byte, and answers a malformed request
in plain text. The limits act before the ASGI app runs, so a refused request costs no task.

An app with an `early_answer(scope)` method (`PlayerApi`: admission control) is asked once a request's head
is parsed; a response it returns is written at once, without an ASGI task, and the connection stays open.
"""

from __future__ import annotations

import asyncio
import functools
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httptools
import msgspec
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

HTTP_REFUSED = Counter(
    "challenge_http_refused_total",
    "Player API connections or requests refused by the HTTP limits, by reason",
    ["reason"],
)


@dataclass(frozen=True)
class HttpLimits:
    """The limits of one HTTP server (settings `http_max_header_bytes` ... `http_max_connections`)."""

    max_header_bytes: int = 16384  # request line and headers together
    max_headers: int = 100
    header_timeout_s: float = 10.0  # first byte of a request to the end of its headers
    body_timeout_s: float = 10.0  # end of the headers to the end of the body
    idle_timeout_s: float = 5.0  # an open connection with no request in progress
    max_connections: int = 1024


Headers = Sequence[tuple[bytes, bytes]]


class EarlyAnswer(Protocol):
    """`(status, headers, body)` to send instead of running the app for a request, or None to run it."""

    def __call__(self, scope: Any) -> tuple[int, Headers, bytes] | None: ...


class _Refusal(Exception):
    """Raised inside a parser callback to stop the parser and answer with this error."""

    def __init__(self, status: int, error_code: str, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message, self.reason = status, error_code, message, reason


# How often the deadlines of a server's connections are checked: a deadline acts at most this late.
DEADLINE_TICK_S = 0.1


class _Deadlines:
    """One timer for all connections of a server: every `DEADLINE_TICK_S` it expires the connections whose
    deadline has passed. A request moves its connection's deadline by storing a number, instead of
    creating and cancelling a timer handle three or four times per request. Runs while connections exist."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        self._loop = loop
        self._connections = connections
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(DEADLINE_TICK_S, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self._loop.time()
        for protocol in tuple(self._connections):
            if protocol.deadline_at <= now:
                protocol.deadline_at = math.inf
                protocol.expire()
        if self._connections:
            self.start()


_DEADLINES: weakref.WeakKeyDictionary[ServerState, _Deadlines] = weakref.WeakKeyDictionary()


def _headers_too_large(limits: HttpLimits) -> _Refusal:
    return _Refusal(
        431, "HEADERS_TOO_LARGE", f"request headers exceed {limits.max_header_bytes} bytes", "header_too_large"
    )


class _TrustedHeadersCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, writing the head of a response whose headers the service built
    (lower-case names, a `content-length`, no `connection` or `transfer-encoding`) without uvicorn's
    regular-expression check of every header, and together with the first body message: uvloop sends
    each `write` at once, so head and body written apart cost two send calls (and two segments) per
    response. Any other response start, and the rest of the body, is uvicorn's."""

    _head: bytes | None = None  # the head not written yet (the class is swapped onto uvicorn's cycles)

    async def send(self, message: Any) -> None:
        head = self._head
        if head is not None and message["type"] == "http.response.body":
            self._head = None
            body = message.get("body", b"")
            if self.disconnected:
                pass
            elif self.scope["method"] == "HEAD" or len(body) > self.expected_content_length:
                self.transport.write(head)  # the body (and its errors) as uvicorn handles them
            else:
                self.transport.writelines((head, body))  # one send call
                self.expected_content_length -= len(body)
                message = {**message, "body": b""}
            await super().send(message)
            return
        if message["type"] != "http.response.start" or self.response_started or self.disconnected:
            await super().send(message)
            return
        parts = [STATUS_LINE[message["status"]]]
        length = None
        for name, value in (*self.default_headers, *message.get("headers", ())):
            if name == b"content-length":
                length = int(value)
                continue  # written last, once
            if name in _HEADERS_FOR_UVICORN:
                length = None
                break
            parts += (name, b": ", value, b"\r\n")
        if length is None or self.flow.write_paused:
            await super().send(message)
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        self.expected_content_length, self.chunked_encoding = length, False
        parts.append(b"content-length: %d\r\n" % length)
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self._head = b"".join(parts)


# Response headers whose handling (keep-alive, chunking) is left to uvicorn.
_HEADERS_FOR_UVICORN = frozenset((b"connection", b"transfer-encoding"))


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """One client connection. Between requests the connection is idle (`idle_timeout_s`); from the first
    byte of a request its head must arrive within `header_timeout_s` and `max_header_bytes`, then its
    body within `body_timeout_s`. A refusal writes the error, closes the connection and counts
    `challenge_http_refused_total{reason}`."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        # The connection's one deadline (loop time) and what happens when it passes, checked by `_Deadlines`.
        self.deadline_at = math.inf
        self.expire: Callable[[], None] = self._idle_expired
        deadlines = _DEADLINES.get(self.server_state)
        if deadlines is None:
            deadlines = _DEADLINES[self.server_state] = _Deadlines(self.loop, self.connections)
        self._deadlines = deadlines
        self._reading_head = True
        self._head_bytes = 0  # raw bytes received while reading a head: stops a huge header early
        self._url_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        self._refused = False
        self._early_answer: EarlyAnswer | None = getattr(self.config.app, "early_answer", None)

    # --- connection ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                _Refusal(503, "SERVICE_OVERLOADED", "too many open connections", "too_many_connections"),
                retry_after=True,
            )
            return
        self._deadlines.start()
        self._arm(self.limits.idle_timeout_s, self._idle_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as error:
            cause = error.__context__
            if isinstance(cause, _Refusal):
                self._refuse(cause)
            else:
                self._refuse(_Refusal(400, "INVALID_REQUEST", f"malformed HTTP request: {error}", "malformed"))
            return
        if self._reading_head and self._head_bytes > self.limits.max_header_bytes:
            # The head is still incomplete after more than the limit arrived: refuse now instead of
            # letting the parser buffer an arbitrarily long header.
            self._refuse(_headers_too_large(self.limits))

    # --- parser callbacks ---

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._url_bytes = self._header_bytes = self._header_count = 0
        self._arm(self.limits.header_timeout_s, self._head_expired)

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_header_bytes:
            raise _Refusal(
                414, "URI_TOO_LONG", f"request URL exceeds {self.limits.max_header_bytes} bytes", "url_too_long"
            )
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_count > self.limits.max_headers:
            raise _Refusal(
                431, "HEADERS_TOO_LARGE", f"more than {self.limits.max_headers} request headers", "too_many_headers"
            )
        if self._url_bytes + self._header_bytes > self.limits.max_header_bytes:
            raise _headers_too_large(self.limits)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._arm(self.limits.body_timeout_s, self._body_expired)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_head = True
        if self.cycle.response_complete:  # answered before its body ended (or from the protocol)
            self._arm(self.limits.idle_timeout_s, self._idle_expired)
        else:
            self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, with the idle deadline in place of its keep-alive timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.deadline_at == math.inf:  # else the body deadline of an unread body still runs
            self._arm(self.limits.idle_timeout_s, self._idle_expired)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        answer = self._early_answer(cycle.scope) if self._early_answer is not None else None
        if answer is None:
            # The player port's app builds every response header itself (docs/http-api.md#general-rules).
            cycle.__class__ = _TrustedHeadersCycle
            super()._start_asgi_task(cycle, app)
            return
        # Answered here: no task and no app. The parser skips the rest of the body (the cycle is complete);
        # the connection stays open for the next request, as after any response.
        status, headers, body = answer
        cycle.response_started = cycle.response_complete = True
        head_only = cycle.scope["method"] == "HEAD"
        self.transport.write(
            _response_bytes(status, headers, b"" if head_only else body, len(body), not cycle.keep_alive)
        )
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    # --- deadlines ---

    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        self.deadline_at = self.loop.time() + delay_s
        self.expire = callback

    def _disarm(self) -> None:
        self.deadline_at = math.inf

    def _idle_expired(self) -> None:
        HTTP_REFUSED.labels("idle_timeout").inc()
        self.transport.close()

    def _head_expired(self) -> None:
        self._refuse(_Refusal(408, "REQUEST_TIMEOUT", "request headers not received in time", "header_timeout"))

    def _body_expired(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            # The app answered without reading the whole body; only the connection is left to close.
            HTTP_REFUSED.labels("body_timeout").inc()
            self.transport.close()
            return
        if cycle is not None:
            # The app waits for the body: it now sees a disconnect, and writes nothing after our 408.
            cycle.disconnected = True
            cycle.message_event.set()
        self._refuse(_Refusal(408, "REQUEST_TIMEOUT", "request body not received in time", "body_timeout"))

    # --- refusing ---

    def _refuse(self, refusal: _Refusal, retry_after: bool = False) -> None:
        self._refused = True
        self._disarm()
        HTTP_REFUSED.labels(refusal.reason).inc()
        if not self.transport.is_closing():
            self.transport.write(_error_bytes(refusal, retry_after))
            self.transport.close()


_JSON_TYPE = (b"content-type", b"application/json; charset=utf-8")
_RETRY_AFTER = (b"retry-after", b"1")


def _response_bytes(status: int, headers: Headers, body: bytes, content_length: int, close: bool) -> bytes:
    """A whole HTTP/1.1 response with trusted headers (no validation), in one piece for one write."""
    parts = [STATUS_LINE[status]]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"content-length: %d\r\n" % content_length)
    if close:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)


def _error_bytes(refusal: _Refusal, retry_after: bool) -> bytes:
    body = msgspec.json.encode({"errorCode": refusal.error_code, "message": refusal.message})
    headers = (_JSON_TYPE, _RETRY_AFTER) if retry_after else (_JSON_TYPE,)
    return _response_bytes(refusal.status, headers, body, len(body), close=True)


def limited_protocol(limits: HttpLimits) -> Any:
    """The protocol factory to pass as uvicorn's `http` setting."""
    return functools.partial(LimitedHttpToolsProtocol, limits=limits)

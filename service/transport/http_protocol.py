"""The player API's HTTP/1.1 connection limits (docs/http-api.md#http-limits): uvicorn's httptools protocol
plus a cap on the request head (431/414), header and body read deadlines (408), an idle deadline, a
cap on open connections (503), and every refusal the parser makes as `{"errorCode","message"}`.

uvicorn's own protocol has none of these: it buffers a header of any size, waits forever for a head or
body that never completes, keeps a connection that never sends a byte, and answers a malformed request
in plain text. The limits act before the ASGI app runs, so a refused request costs no task.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

import httptools
import msgspec
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

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


class _Refusal(Exception):
    """Raised inside a parser callback to stop the parser and answer with this error."""

    def __init__(self, status: int, error_code: str, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message, self.reason = status, error_code, message, reason


def _headers_too_large(limits: HttpLimits) -> _Refusal:
    return _Refusal(
        431, "HEADERS_TOO_LARGE", f"request headers exceed {limits.max_header_bytes} bytes", "header_too_large"
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """One client connection. Between requests the connection is idle (`idle_timeout_s`); from the first
    byte of a request its head must arrive within `header_timeout_s` and `max_header_bytes`, then its
    body within `body_timeout_s`. A refusal writes the error, closes the connection and counts
    `challenge_http_refused_total{reason}`."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_head = True
        self._head_bytes = 0  # raw bytes received while reading a head: stops a huge header early
        self._url_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        self._refused = False

    # --- connection ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                _Refusal(503, "SERVICE_OVERLOADED", "too many open connections", "too_many_connections"),
                retry_after=True,
            )
            return
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
        self._disarm()
        self._reading_head = True
        super().on_message_complete()

    # --- deadlines ---

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

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


def _error_bytes(refusal: _Refusal, retry_after: bool) -> bytes:
    body = msgspec.json.encode({"errorCode": refusal.error_code, "message": refusal.message})
    head = [
        STATUS_LINE[refusal.status],
        b"content-type: application/json; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    if retry_after:
        head.append(b"retry-after: 1\r\n")
    return b"".join([*head, b"\r\n", body])


def limited_protocol(limits: HttpLimits) -> Any:
    """The protocol factory to pass as uvicorn's `http` setting."""
    return functools.partial(LimitedHttpToolsProtocol, limits=limits)

"""The gRPC server: event ingestion services, grpc.health.v1 and server reflection (docs/events.md#grpc-server).

The servicers only translate: protobuf messages become `service.usecases.events.IncomingEvent`s (a Publish
batch's events their plain `EventFields` tuples), the ingestion core (`submit`) decides, and its verdict
becomes a response or a gRPC status. The ingest token and the request metrics live in one server interceptor
that wraps the ingest methods only, so health and reflection stay open.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from service.domain.errors import (
    Conflict,
    DomainError,
    Exhausted,
    InternalFailure,
    InvalidRequest,
    NotFound,
    Unavailable,
    UpstreamFailed,
)
from service.proto.accelbyte.iam.account.v1 import account_pb2, account_pb2_grpc
from service.proto.accelbyte.social.statistic.v1 import statistic_pb2, statistic_pb2_grpc
from service.proto.challengectl.v1 import ingest_pb2, ingest_pb2_grpc
from service.telemetry.metrics import LATENCY_BUCKETS
from service.usecases.events import EventFields, IncomingEvent, SubmitResult

log = logging.getLogger("challengectl.grpc")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

LOGIN_SERVICE_NAME = account_pb2.DESCRIPTOR.services_by_name["UserAuthenticationUserLoggedInService"].full_name
STAT_SERVICE_NAME = statistic_pb2.DESCRIPTOR.services_by_name["StatisticStatItemUpdatedService"].full_name
EVENT_INGEST_SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["EventIngest"].full_name
INGEST_SERVICE_NAMES = (LOGIN_SERVICE_NAME, STAT_SERVICE_NAME, EVENT_INGEST_SERVICE_NAME)

# Calls the gRPC core holds before the server's loop takes them. Its default (1000, hard limit 3000) cancels
# a burst's excess with CANCELLED, which senders read as "retry at once"; with a backlog far above
# grpc_max_concurrent_rpcs the excess reaches the server's concurrency limit and gets RESOURCE_EXHAUSTED
# ("back off") instead (docs/events.md#backpressure).
PENDING_CALL_BACKLOG = 65536

# docs/events.md#ingest-service: in commit mode a stream may have this many batches admitted while earlier ones wait.
STREAM_PIPELINE_DEPTH = 8

GRPC_REQUESTS = Counter(
    "challenge_grpc_requests", "gRPC ingest calls by method and final status code", ["method", "code"]
)
GRPC_REQUEST_DURATION = Histogram(
    "challenge_grpc_request_duration_seconds",
    "gRPC ingest call duration (a whole stream for PublishStream)",
    ["method"],
    buckets=LATENCY_BUCKETS,
)

_KIND_NAMES = {ingest_pb2.EVENT_KIND_LOGIN: "login", ingest_pb2.EVENT_KIND_STAT: "stat"}


class EventSubmitter(Protocol):
    """What the servicers need from the ingestion core (`service.usecases.events.Ingestor`)."""

    async def submit(
        self, events: Sequence[EventFields], origin: str, deadline: float | None = None
    ) -> SubmitResult: ...


class GrpcHealth:
    """Reports SERVING for "" and every ingest service while the service is ready, NOT_SERVING otherwise."""

    def __init__(self, service_names: Sequence[str]) -> None:
        self.servicer = HealthServicer()
        self.service_names = ("", *service_names)

    async def set_ready(self, ready: bool) -> None:
        for name in self.service_names:
            await self.servicer.set(name, SERVING if ready else NOT_SERVING)


GRPC_STATUS: dict[type[DomainError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.ALREADY_EXISTS,
    Exhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InternalFailure: grpc.StatusCode.INTERNAL,
    UpstreamFailed: grpc.StatusCode.UNAVAILABLE,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status(error: DomainError) -> grpc.StatusCode:
    """The gRPC status of a use case's failure: the one of its kind, INTERNAL for an unknown kind."""
    return next((GRPC_STATUS[kind] for kind in type(error).__mro__ if kind in GRPC_STATUS), grpc.StatusCode.INTERNAL)


class BatchFailed(Exception):
    """A call or a stream batch that fails as a whole, with the gRPC status to end it with."""

    def __init__(self, status: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @classmethod
    def from_domain_error(cls, error: DomainError) -> BatchFailed:
        return cls(grpc_status(error), error.message)


def parse_rfc3339(text: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp; None when empty or unparsable (it is informational).

    A timestamp without an offset is taken as UTC.
    """
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().upper())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def login_event(message: account_pb2.UserLoggedIn) -> IncomingEvent:
    """The IncomingEvent of an AGS UserLoggedIn message."""
    return IncomingEvent(
        message.id, message.user_id, message.namespace, "login", "", 0.0, 0.0, True, parse_rfc3339(message.timestamp)
    )


def stat_event(message: statistic_pb2.StatItemUpdated) -> IncomingEvent:
    """The IncomingEvent of an AGS StatItemUpdated message (stat fields from its payload, when present)."""
    payload = message.payload
    return IncomingEvent(
        message.id,
        message.user_id,
        message.namespace,
        "stat",
        payload.stat_code,
        payload.latest_value,
        payload.inc,
        message.HasField("payload"),
        parse_rfc3339(message.timestamp),
    )


def published_events(events: Iterable[ingest_pb2.Event]) -> list[EventFields]:
    """The fields of a batch's challengectl.v1.Events, in one pass: plain tuples in IncomingEvent order (this
    runs for every published event; a named tuple costs ~1 us more each); an unspecified or unknown kind
    becomes ""."""
    kinds = _KIND_NAMES
    return [
        (
            event.id,
            event.user_id,
            event.namespace,
            kinds.get(event.kind, ""),
            event.stat_code,
            event.latest_value,
            event.inc,
            True,
            (event.timestamp.seconds + event.timestamp.nanos / 1e9) if event.HasField("timestamp") else None,
        )
        for event in events
    ]


def publish_result(batch_id: str, result: SubmitResult) -> ingest_pb2.PublishResult:
    """The PublishResult of a submitted batch."""
    return ingest_pb2.PublishResult(
        batch_id=batch_id,
        accepted=result.accepted,
        duplicates=result.duplicates,
        skipped=result.skipped,
        rejected=[
            ingest_pb2.EventRejection(index=index, event_id=event_id, reason=reason)
            for index, event_id, reason in result.rejected
        ],
        committed=result.committed,
    )


def client_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline as a time.monotonic() instant, or None when the client set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def submit_single(
    ingestor: EventSubmitter, event: IncomingEvent, origin: str, context: grpc.aio.ServicerContext
) -> empty_pb2.Empty:
    """Submit one OnMessage event; a rejected event or a failed submission aborts the call."""
    try:
        result = await ingestor.submit([event], origin, client_deadline(context))
    except DomainError as error:
        failure = BatchFailed.from_domain_error(error)
        await context.abort(failure.status, failure.message)
    if result.rejected:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, result.rejected[0][2])
    return empty_pb2.Empty()


class UserLoggedInServicer(account_pb2_grpc.UserAuthenticationUserLoggedInServiceServicer):
    """accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService: one login event per call."""

    def __init__(self, ingestor: EventSubmitter) -> None:
        self.ingestor = ingestor

    async def OnMessage(self, request: account_pb2.UserLoggedIn, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        return await submit_single(self.ingestor, login_event(request), "ags_login", context)


class StatItemUpdatedServicer(statistic_pb2_grpc.StatisticStatItemUpdatedServiceServicer):
    """accelbyte.social.statistic.v1.StatisticStatItemUpdatedService: one stat event per call."""

    def __init__(self, ingestor: EventSubmitter) -> None:
        self.ingestor = ingestor

    async def OnMessage(
        self, request: statistic_pb2.StatItemUpdated, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        return await submit_single(self.ingestor, stat_event(request), "ags_stat", context)


# Stream batches still running after their stream ended (they stay admitted and are committed, docs/events.md#ingest-service);
# referenced here so they are not garbage-collected mid-flight.
_detached_batches: set[asyncio.Task[Any]] = set()


def _keep_until_done(task: asyncio.Task[Any]) -> None:
    _detached_batches.add(task)
    task.add_done_callback(_forget_batch)


def _forget_batch(task: asyncio.Task[Any]) -> None:
    _detached_batches.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a batch nobody awaits any more must not log "never retrieved"


# What PublishStream's reader hands over, in request order: a batch's submission, the error that broke
# the request stream, or None at the end of the stream.
_StreamItem = asyncio.Task[ingest_pb2.PublishResult] | Exception | None


class EventIngestServicer(ingest_pb2_grpc.EventIngestServicer):
    """challengectl.v1.EventIngest: batches of events, one call each or many on a stream."""

    def __init__(self, ingestor: EventSubmitter, max_batch: int, ack_mode: str) -> None:
        self.ingestor = ingestor
        self.max_batch = max_batch
        self.commit_mode = ack_mode == "commit"
        # Pipelining only pays while earlier batches wait for their commit; in buffered mode a
        # batch returns once buffered, so batches are simply taken one at a time.
        self.stream_depth = STREAM_PIPELINE_DEPTH if self.commit_mode else 1

    async def publish(self, batch: ingest_pb2.EventBatch, deadline: float | None) -> ingest_pb2.PublishResult:
        """Submit one batch and describe the outcome; raises BatchFailed when the batch fails as a whole."""
        size = len(batch.events)
        if size > self.max_batch:
            raise BatchFailed(grpc.StatusCode.INVALID_ARGUMENT, f"batch too large ({size} > {self.max_batch})")
        if size == 0:
            return ingest_pb2.PublishResult(batch_id=batch.batch_id, committed=self.commit_mode)
        try:
            result = await self.ingestor.submit(published_events(batch.events), "publish", deadline)
        except DomainError as error:
            raise BatchFailed.from_domain_error(error) from None
        return publish_result(batch.batch_id, result)

    async def Publish(
        self, request: ingest_pb2.EventBatch, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.PublishResult:
        try:
            return await self.publish(request, client_deadline(context))
        except BatchFailed as failure:
            await context.abort(failure.status, failure.message)
            raise AssertionError("unreachable: abort raises") from None

    async def PublishStream(
        self, request_iterator: AsyncIterator[ingest_pb2.EventBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.PublishResult]:
        """Batches are submitted in request order, up to `stream_depth` at a time; results are sent in
        request order as soon as each is known. The first batch that fails ends the stream with its
        status; batches after it are not read."""
        deadline = client_deadline(context)
        slots = asyncio.Semaphore(self.stream_depth)
        in_order: asyncio.Queue[_StreamItem] = asyncio.Queue()
        reader = asyncio.create_task(self._admit_stream(request_iterator, deadline, slots, in_order))
        try:
            while (outcome := await in_order.get()) is not None:
                if isinstance(outcome, BatchFailed):
                    await context.abort(outcome.status, outcome.message)
                if isinstance(outcome, Exception):
                    raise outcome
                try:
                    # shielded: a cancelled stream must not cancel a batch that may already be admitted
                    result = await asyncio.shield(outcome)
                except BatchFailed as failure:
                    await context.abort(failure.status, failure.message)
                slots.release()
                yield result
        finally:
            reader.cancel()

    async def _admit_stream(
        self,
        requests: AsyncIterator[ingest_pb2.EventBatch],
        deadline: float | None,
        slots: asyncio.Semaphore,
        in_order: asyncio.Queue[_StreamItem],
    ) -> None:
        """Read the stream's batches and start their submissions in order; the queue ends with None,
        after the error that broke the request stream, if any."""
        try:
            async for batch in requests:
                await slots.acquire()
                task = asyncio.create_task(self.publish(batch, deadline))
                _keep_until_done(task)
                in_order.put_nowait(task)
                if len(batch.events) > self.max_batch:
                    break  # that batch ends the stream: later batches are not processed
        except Exception as error:  # a broken request stream ends the call with that error, in order
            in_order.put_nowait(error)
        in_order.put_nowait(None)


class Undecodable:
    """What the ingest methods receive instead of a request whose bytes are not a valid message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns `Undecodable` instead of raising: a DecodeError raised inside gRPC
    would end the call with UNKNOWN and an error log, while garbage from a client is INVALID_ARGUMENT."""
    if deserialize is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as error:
            return Undecodable(f"request is not a valid message: {error}")

    return decode


async def _decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A stream's requests; an undecodable one fails its batch (and so the stream) with INVALID_ARGUMENT."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise BatchFailed(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        yield request


class IngestInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the ingest methods: enforces the optional ingest token and records the request metrics."""

    def __init__(self, token: str | None, service_names: Sequence[str] = INGEST_SERVICE_NAMES) -> None:
        self.token = token or None
        self.service_names = frozenset(service_names)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method.lstrip("/")
        if handler is None or method.partition("/")[0] not in self.service_names:
            return handler
        refusal = self.authentication_failure(handler_call_details.invocation_metadata)
        deserializer = _tolerant(handler.request_deserializer)
        if handler.request_streaming and handler.response_streaming:
            return handler._replace(
                stream_stream=_observed_stream(method, refusal, handler.stream_stream),
                request_deserializer=deserializer,
            )
        if not handler.request_streaming and not handler.response_streaming:
            return handler._replace(
                unary_unary=_observed_unary(method, refusal, handler.unary_unary), request_deserializer=deserializer
            )
        return handler

    def authentication_failure(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        """Why the call's metadata does not authenticate it (docs/events.md#grpc-server), or None when it does."""
        if self.token is None:
            return None
        presented = next((value for key, value in metadata or () if key == "authorization"), None)
        if not isinstance(presented, str):
            return "ingest token required: send metadata 'authorization: Bearer <grpc_token>'"
        scheme, _, token = presented.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            return "ingest token rejected"
        return None


# What a client sees when the servicer fails unexpectedly; the details go to the service log only.
INTERNAL_ERROR_MESSAGE = "internal error while ingesting events; see the service log"


class _CallObserver:
    """Times one ingest call, turns unexpected errors into INTERNAL, and records the final code: an async
    context manager around the call's behaviour."""

    __slots__ = ("code", "context", "method", "started")

    def __init__(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.method = method
        self.context = context
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        try:
            if error is not None:
                await self.failed(error)
        finally:
            _record(self.method, self.code, time.perf_counter() - self.started)

    async def failed(self, error: BaseException) -> None:
        """Note how the call ended; an error that is not a gRPC status becomes INTERNAL (abort raises),
        any other goes on unchanged."""
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            self.code = grpc.StatusCode.CANCELLED
            return
        if isinstance(error, grpc.aio.AbortError):
            code = self.context.code()
            self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            return
        log.error("gRPC call %s failed", self.method, exc_info=error, extra={"grpc_method": self.method})
        self.code = grpc.StatusCode.INTERNAL
        await self.context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_MESSAGE)


# The metric children of each (method, code) and method: `labels()` costs a lock and a lookup per call.
_REQUEST_COUNTERS: dict[tuple[str, grpc.StatusCode], Any] = {}
_REQUEST_DURATIONS: dict[str, Any] = {}


def _record(method: str, code: grpc.StatusCode, duration_s: float) -> None:
    counter = _REQUEST_COUNTERS.get((method, code))
    if counter is None:
        counter = _REQUEST_COUNTERS[(method, code)] = GRPC_REQUESTS.labels(method, code.name)
    duration = _REQUEST_DURATIONS.get(method)
    if duration is None:
        duration = _REQUEST_DURATIONS[method] = GRPC_REQUEST_DURATION.labels(method)
    counter.inc()
    duration.observe(duration_s)


async def _refuse(context: grpc.aio.ServicerContext, refusal: str | None) -> None:
    """End the call UNAUTHENTICATED when its metadata did not authenticate it."""
    if refusal is not None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)


def _observed_unary(
    method: str, refusal: str | None, behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _CallObserver(method, context):
            await _refuse(context, refusal)
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            return await behaviour(request, context)

    return observed


def _observed_stream(
    method: str, refusal: str | None, behaviour: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    async def observed(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _CallObserver(method, context):
            await _refuse(context, refusal)
            async for response in behaviour(_decoded(requests), context):
                yield response

    return observed


def create_grpc_server(
    host: str,
    port: int,
    max_message_bytes: int,
    max_concurrent_rpcs: int,
    ingest_service_names: Sequence[str] = (),
    *,
    ingestor: EventSubmitter | None = None,
    ingest_max_batch: int = 1000,
    ack_mode: str = "commit",
    grpc_token: str | None = None,
) -> tuple[grpc.aio.Server, GrpcHealth]:
    """A plaintext grpc.aio server bound to host:port with health and reflection registered.

    With an ingestor, the two AGS OnMessage services and challengectl.v1.EventIngest are registered
    too, and their names join ingest_service_names in health and reflection. With grpc_token, every
    ingest call must carry `authorization: Bearer <grpc_token>`.
    """
    server = grpc.aio.server(
        interceptors=[IngestInterceptor(grpc_token)],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.server.max_pending_requests", PENDING_CALL_BACKLOG),
            ("grpc.server.max_pending_requests_hard_limit", PENDING_CALL_BACKLOG),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    service_names = list(ingest_service_names)
    if ingestor is not None:
        account_pb2_grpc.add_UserAuthenticationUserLoggedInServiceServicer_to_server(
            UserLoggedInServicer(ingestor), server
        )
        statistic_pb2_grpc.add_StatisticStatItemUpdatedServiceServicer_to_server(
            StatItemUpdatedServicer(ingestor), server
        )
        ingest_pb2_grpc.add_EventIngestServicer_to_server(
            EventIngestServicer(ingestor, ingest_max_batch, ack_mode), server
        )
        service_names = list(dict.fromkeys([*INGEST_SERVICE_NAMES, *service_names]))
    health = GrpcHealth(service_names)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflected = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(reflected, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {address}: is another process listening on it?")
    return server, health

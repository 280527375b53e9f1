"""The gRPC transport of event ingestion (docs/events.md#grpc-server, docs/events.md#validation, E4, E19) on a real grpc.aio server.

The servicers are wired to `ScriptedIngestor`, a stand-in for `service.usecases.events.Ingestor` defined
here: it records what the transport submits and answers with scripted results or domain errors.
The ingestion core itself (PostgreSQL, Redis) is tested in its own module.
"""

from __future__ import annotations

import asyncio
import filecmp
import math
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from service.domain.errors import DomainError, Exhausted, InvalidRequest, Unavailable
from service.proto import generate
from service.proto.accelbyte.iam.account.v1 import account_pb2
from service.proto.accelbyte.social.statistic.v1 import statistic_pb2
from service.proto.challengectl.v1 import ingest_pb2
from service.transport.grpc_api import (
    EVENT_INGEST_SERVICE_NAME,
    INGEST_SERVICE_NAMES,
    LOGIN_SERVICE_NAME,
    STAT_SERVICE_NAME,
)
from service.usecases.events import EventFields, IncomingEvent, SubmitResult
from tests.support.grpc_server import INGEST_UNARY_METHODS, serving

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-ingest-token"

Respond = Callable[[Sequence[IncomingEvent], str], Awaitable[SubmitResult]]


async def accept_all(events: Sequence[IncomingEvent], origin: str) -> SubmitResult:
    return SubmitResult(accepted=len(events), duplicates=0, skipped=0, rejected=[], committed=True)


GRPC_DEADLINE_SLACK_S = 1.0


@dataclass
class ScriptedIngestor:
    """Same `submit` signature as service.usecases.events.Ingestor; records calls and answers via `respond`."""

    respond: Respond = accept_all
    calls: list[tuple[list[IncomingEvent], str, float | None]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # first event id of each call, in completion order
    running: int = 0
    max_running: int = 0

    async def submit(self, fields: Sequence[EventFields], origin: str, deadline: float | None = None) -> SubmitResult:
        events = [IncomingEvent(*event) for event in fields]  # Publish hands plain tuples: named here
        self.calls.append((events, origin, deadline))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            return await self.respond(events, origin)
        finally:
            self.running -= 1
            self.finished.append(events[0].id if events else "")


async def status_of(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


def login_event(event_id: str, user_id: str = "u1") -> ingest_pb2.Event:
    return ingest_pb2.Event(id=event_id, user_id=user_id, kind=ingest_pb2.EVENT_KIND_LOGIN)


# --- wire encoding, to build AGS-shaped messages with fields our protos do not declare -------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: bytes | str | float) -> bytes:
    if isinstance(value, float):
        return _varint(number << 3 | 1) + struct.pack("<d", value)
    if isinstance(value, int):
        return _varint(number << 3 | 0) + _varint(value)
    raw = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


# --- AGS OnMessage --------------------------------------------------------------------------------


async def test_login_message_becomes_one_login_event() -> None:
    ingestor = ScriptedIngestor()
    async with serving(ingestor) as running:
        before = time.monotonic()
        reply = await running.login.OnMessage(
            account_pb2.UserLoggedIn(
                id="evt-1", user_id="player-1", namespace="game", timestamp="2024-05-01T12:00:00.5Z"
            ),
            timeout=30,
        )
    assert reply == empty_pb2.Empty()
    [(events, origin, deadline)] = ingestor.calls
    assert origin == "ags_login"
    assert events == [
        IncomingEvent(
            id="evt-1",
            user_id="player-1",
            namespace="game",
            kind="login",
            stat_code="",
            latest_value=0.0,
            inc=0.0,
            has_payload=True,
            timestamp=1714564800.5,
        )
    ]
    # The server rebuilds the deadline from gRPC's own clock and the encoded timeout, which can land a
    # little after the client's 30 s on a loaded machine (seen: 0.1 s); a second of slack keeps the check
    # that the client's deadline, not none or a default, reached the ingestor.
    assert deadline is not None and before < deadline <= time.monotonic() + 30 + GRPC_DEADLINE_SLACK_S


async def test_stat_message_takes_its_values_from_the_payload() -> None:
    ingestor = ScriptedIngestor()
    async with serving(ingestor) as running:
        await running.stat.OnMessage(
            statistic_pb2.StatItemUpdated(
                id="evt-2",
                user_id="player-2",
                namespace="game",
                timestamp="2024-05-01T14:00:00+02:00",
                payload=statistic_pb2.StatItem(stat_code="kills", latest_value=12.75, inc=3.0),
            )
        )
        await running.stat.OnMessage(
            statistic_pb2.StatItemUpdated(id="evt-3", user_id="player-2", namespace="game", timestamp="yesterday")
        )
    (with_payload, origin, deadline), (without_payload, _, _) = ingestor.calls
    assert origin == "ags_stat" and deadline is None  # the client set no deadline
    assert with_payload == [
        IncomingEvent(
            id="evt-2",
            user_id="player-2",
            namespace="game",
            kind="stat",
            stat_code="kills",
            latest_value=12.75,
            inc=3.0,
            has_payload=True,
            timestamp=1714564800.0,
        )
    ]
    assert without_payload == [
        IncomingEvent(
            id="evt-3",
            user_id="player-2",
            namespace="game",
            kind="stat",
            stat_code="",
            latest_value=0.0,
            inc=0.0,
            has_payload=False,
            timestamp=None,
        )
    ]


async def test_ags_messages_with_undeclared_fields_parse() -> None:
    """Real AGS senders fill fields the vendored protos leave out; protobuf must skip them."""
    ags_login = (
        _field(1, _field(1, "player-9") + _field(2, "Steam") + _field(7, 1))  # payload message
        + _field(2, "evt-9")
        + _field(3, "IAM")
        + _field(4, "userLoggedIn")
        + _field(5, "game")
        + _field(6, "parent")
        + _field(7, "2024-05-01T12:00:00Z")
        + _field(8, "client")
        + _field(9, "player-9")
        + _field(10, "trace-1")
        + _field(11, 42)
        + _field(15, "future field")
    )
    ags_stat = (
        _field(
            1,
            _field(1, "game")
            + _field(2, "wins")
            + _field(3, "player-9")
            + _field(4, 7.0)
            + _field(5, 1.0)
            + _field(6, "extra")
            + _field(9, 99.5),
        )
        + _field(2, "evt-10")
        + _field(3, 17)
        + _field(4, "statItemUpdated")
        + _field(5, "game")
        + _field(6, "parent")
        + _field(7, "2024-05-01T12:00:00Z")
        + _field(8, "client")
        + _field(9, "player-9")
        + _field(10, "session")
        + _field(12, "future field")
    )
    ingestor = ScriptedIngestor()
    async with serving(ingestor) as running:
        for service, payload in ((LOGIN_SERVICE_NAME, ags_login), (STAT_SERVICE_NAME, ags_stat)):
            send_raw = running.channel.unary_unary(f"/{service}/OnMessage")  # bytes in, bytes out
            assert await send_raw(payload) == b""
    [login], [stat] = (events for events, _, _ in ingestor.calls)
    assert (login.id, login.user_id, login.namespace, login.kind, login.timestamp) == (
        "evt-9",
        "player-9",
        "game",
        "login",
        1714564800.0,
    )
    assert (stat.id, stat.user_id, stat.stat_code, stat.latest_value, stat.inc, stat.has_payload) == (
        "evt-10",
        "player-9",
        "wins",
        7.0,
        1.0,
        True,
    )


async def test_rejected_message_fails_with_invalid_argument_and_the_reason() -> None:
    async def reject(events: Sequence[IncomingEvent], origin: str) -> SubmitResult:
        return SubmitResult(
            accepted=0, duplicates=0, skipped=0, rejected=[(0, events[0].id, "user_id is required")], committed=True
        )

    async with serving(ScriptedIngestor(respond=reject)) as running:
        login_error = await status_of(running.login.OnMessage(account_pb2.UserLoggedIn(id="e1")))
        stat_error = await status_of(running.stat.OnMessage(statistic_pb2.StatItemUpdated(id="e2")))
    for error in (login_error, stat_error):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "user_id is required"


async def test_skipped_and_duplicate_messages_are_acknowledged() -> None:
    async def skip(events: Sequence[IncomingEvent], origin: str) -> SubmitResult:
        return SubmitResult(accepted=0, duplicates=0, skipped=1, rejected=[], committed=True)

    async with serving(ScriptedIngestor(respond=skip)) as running:
        assert await running.login.OnMessage(account_pb2.UserLoggedIn(id="e1", user_id="u")) == empty_pb2.Empty()


@pytest.mark.parametrize(
    ("kind", "code"),
    [(InvalidRequest, "INVALID_ARGUMENT"), (Exhausted, "RESOURCE_EXHAUSTED"), (Unavailable, "UNAVAILABLE")],
)
async def test_ingest_errors_become_their_grpc_status(kind: type[DomainError], code: str) -> None:
    message = f"{code.lower()} for the test"

    async def fail(events: Sequence[IncomingEvent], origin: str) -> SubmitResult:
        raise kind("TEST_FAILURE", message)

    async with serving(ScriptedIngestor(respond=fail)) as running:
        errors = [
            await status_of(running.login.OnMessage(account_pb2.UserLoggedIn(id="e1", user_id="u"))),
            await status_of(running.stat.OnMessage(statistic_pb2.StatItemUpdated(id="e2", user_id="u"))),
            await status_of(running.ingest.Publish(ingest_pb2.EventBatch(events=[login_event("e3")]))),
        ]
    assert [(error.code(), error.details()) for error in errors] == [(grpc.StatusCode[code], message)] * 3


async def test_unexpected_failures_are_internal_without_their_details(caplog: pytest.LogCaptureFixture) -> None:
    async def crash(events: Sequence[IncomingEvent], origin: str) -> SubmitResult:
        raise RuntimeError("UPDATE user_goal_progress failed: password=hunter2")

    async with serving(ScriptedIngestor(respond=crash)) as running:
        errors = [
            await status_of(running.login.OnMessage(account_pb2.UserLoggedIn(id="e1", user_id="u"))),
            await status_of(running.ingest.Publish(ingest_pb2.EventBatch(events=[login_event("e2")]))),
            await status_of(_drain(running.ingest.PublishStream(iter(numbered_batches(1))))),
        ]
    assert {(error.code(), error.details()) for error in errors} == {
        (grpc.StatusCode.INTERNAL, "internal error while ingesting events; see the service log")
    }
    assert "hunter2" in caplog.text  # the operator still gets the cause


# --- EventIngest.Publish --------------------------------------------------------------------------


async def test_publish_converts_events_and_echoes_counts_and_rejections() -> None:
    async def scripted(events: Sequence[IncomingEvent], origin: str) -> SubmitResult:
        return SubmitResult(
            accepted=2,
            duplicates=1,
            skipped=1,
            rejected=[(3, "e4", "kind is required"), (4, "", "stat_code is required")],
            committed=True,
        )

    ingestor = ScriptedIngestor(respond=scripted)
    batch = ingest_pb2.EventBatch(
        batch_id="batch-7",
        events=[
            login_event("e1", "player-1"),
            ingest_pb2.Event(
                id="e2",
                user_id="player-2",
                namespace="other",
                kind=ingest_pb2.EVENT_KIND_STAT,
                stat_code="kills",
                latest_value=5.5,
                inc=-2.0,
                timestamp=timestamp_pb2.Timestamp(seconds=1714564800, nanos=250_000_000),
            ),
            login_event("e1", "player-1"),
            ingest_pb2.Event(id="e4", user_id="player-3"),
            ingest_pb2.Event(user_id="player-4", kind=ingest_pb2.EVENT_KIND_STAT),
        ],
    )
    async with serving(ingestor, ack_mode="commit") as running:
        result = await running.ingest.Publish(batch)

    assert result == ingest_pb2.PublishResult(
        batch_id="batch-7",
        accepted=2,
        duplicates=1,
        skipped=1,
        committed=True,
        rejected=[
            ingest_pb2.EventRejection(index=3, event_id="e4", reason="kind is required"),
            ingest_pb2.EventRejection(index=4, event_id="", reason="stat_code is required"),
        ],
    )
    [(events, origin, _)] = ingestor.calls
    assert origin == "publish"
    assert events[1] == IncomingEvent(
        id="e2",
        user_id="player-2",
        namespace="other",
        kind="stat",
        stat_code="kills",
        latest_value=5.5,
        inc=-2.0,
        has_payload=True,
        timestamp=1714564800.25,
    )
    assert [(e.id, e.kind, e.namespace, e.timestamp) for e in events] == [
        ("e1", "login", "", None),
        ("e2", "stat", "other", 1714564800.25),
        ("e1", "login", "", None),
        ("e4", "", "", None),
        ("", "stat", "", None),
    ]


async def test_publish_refuses_a_batch_over_the_limit_without_submitting_it() -> None:
    ingestor = ScriptedIngestor()
    async with serving(ingestor, ingest_max_batch=2) as running:
        at_limit = await running.ingest.Publish(ingest_pb2.EventBatch(events=[login_event("a"), login_event("b")]))
        error = await status_of(
            running.ingest.Publish(ingest_pb2.EventBatch(events=[login_event(str(n)) for n in range(3)]))
        )
    assert at_limit.accepted == 2
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "batch too large (3 > 2)"
    assert len(ingestor.calls) == 1


@pytest.mark.parametrize("ack_mode", ["commit", "buffered"])
async def test_empty_batch_succeeds_with_zero_counts(ack_mode: str) -> None:
    ingestor = ScriptedIngestor()
    async with serving(ingestor, ack_mode=ack_mode) as running:
        result = await running.ingest.Publish(ingest_pb2.EventBatch(batch_id="empty"))
    assert result == ingest_pb2.PublishResult(batch_id="empty", committed=ack_mode == "commit")
    assert ingestor.calls == []


# --- EventIngest.PublishStream --------------------------------------------------------------------


def slower_first(delays: dict[str, float]) -> Respond:
    """Answers each batch (named by its first event id) after its delay, echoing its size as accepted."""

    async def respond(events: Sequence[IncomingEvent], origin: str) -> SubmitResult:
        await asyncio.sleep(delays.get(events[0].id, 0.0))
        return SubmitResult(accepted=len(events), duplicates=0, skipped=0, rejected=[], committed=True)

    return respond


def numbered_batches(count: int) -> list[ingest_pb2.EventBatch]:
    return [ingest_pb2.EventBatch(batch_id=f"b{n}", events=[login_event(f"b{n}")] * (n + 1)) for n in range(count)]


async def test_stream_pipelines_in_commit_mode_and_answers_in_request_order() -> None:
    delays = {"b0": 0.4, "b1": 0.3, "b2": 0.2, "b3": 0.1}
    ingestor = ScriptedIngestor(respond=slower_first(delays))
    async with serving(ingestor, ack_mode="commit") as running:
        results = [result async for result in running.ingest.PublishStream(iter(numbered_batches(6)))]
    assert [(r.batch_id, r.accepted) for r in results] == [(f"b{n}", n + 1) for n in range(6)]
    assert [events[0].id for events, _, _ in ingestor.calls] == [f"b{n}" for n in range(6)]  # submitted in order
    assert ingestor.max_running > 1  # later batches were admitted while earlier ones waited
    assert ingestor.finished[-1] == "b0"  # ...and finished first, yet were answered after b0


async def test_stream_pipeline_is_bounded_to_eight_batches() -> None:
    ingestor = ScriptedIngestor(respond=slower_first({"b0": 0.3}))
    async with serving(ingestor, ack_mode="commit") as running:
        results = [result async for result in running.ingest.PublishStream(iter(numbered_batches(12)))]
    assert [r.batch_id for r in results] == [f"b{n}" for n in range(12)]
    # While b0 waited, exactly the next seven batches were admitted; b8 had to wait for b0's answer.
    assert ingestor.finished[:8] == [*(f"b{n}" for n in range(1, 8)), "b0"]


async def test_stream_in_buffered_mode_takes_one_batch_at_a_time() -> None:
    ingestor = ScriptedIngestor(respond=slower_first({"b0": 0.2, "b1": 0.1}))
    async with serving(ingestor, ack_mode="buffered") as running:
        results = [result async for result in running.ingest.PublishStream(iter(numbered_batches(3)))]
    assert [r.batch_id for r in results] == ["b0", "b1", "b2"]
    assert ingestor.max_running == 1


async def test_stream_answers_each_batch_before_the_client_sends_the_next() -> None:
    """A client that waits for each result before sending the next batch must not deadlock."""
    ingestor = ScriptedIngestor()
    async with serving(ingestor) as running:
        call = running.ingest.PublishStream()
        for batch in numbered_batches(3):
            await call.write(batch)
            assert (await call.read()).batch_id == batch.batch_id
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_failing_batch_ends_the_stream_after_the_earlier_results() -> None:
    async def third_fails(events: Sequence[IncomingEvent], origin: str) -> SubmitResult:
        if events[0].id == "b2":
            raise Exhausted("BUFFER_FULL", "event buffer full (10/10); retry with backoff")
        await asyncio.sleep(0.05 if events[0].id == "b0" else 0.0)
        return SubmitResult(accepted=len(events), duplicates=0, skipped=0, rejected=[], committed=False)

    ingestor = ScriptedIngestor(respond=third_fails)
    async with serving(ingestor, ack_mode="buffered") as running:
        call = running.ingest.PublishStream(iter(numbered_batches(5)))
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for result in call:
                received.append(result.batch_id)
    assert received == ["b0", "b1"]
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details() == "event buffer full (10/10); retry with backoff"
    assert [events[0].id for events, _, _ in ingestor.calls] == ["b0", "b1", "b2"]  # later batches not processed


async def test_oversized_batch_ends_the_stream_and_stops_reading() -> None:
    ingestor = ScriptedIngestor(respond=slower_first({"b0": 0.1}))
    batches = numbered_batches(5)  # b1 holds 2 events, over the limit of 1
    async with serving(ingestor, ack_mode="commit", ingest_max_batch=1) as running:
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for result in running.ingest.PublishStream(iter(batches)):
                received.append(result.batch_id)
    assert received == ["b0"]
    assert (raised.value.code(), raised.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch too large (2 > 1)",
    )
    assert [events[0].id for events, _, _ in ingestor.calls] == ["b0"]


# --- ingest token --------------------------------------------------------------------------------


async def test_ingest_token_is_required_when_configured() -> None:
    ingestor = ScriptedIngestor()
    good = (("authorization", f"Bearer {TOKEN}"),)
    async with serving(ingestor, grpc_token=TOKEN) as running:
        missing = [
            await status_of(running.login.OnMessage(account_pb2.UserLoggedIn(id="e1", user_id="u"))),
            await status_of(running.stat.OnMessage(statistic_pb2.StatItemUpdated(id="e2", user_id="u"))),
            await status_of(running.ingest.Publish(ingest_pb2.EventBatch(events=[login_event("e3")]))),
        ]
        wrong = [
            await status_of(
                running.ingest.Publish(ingest_pb2.EventBatch(), metadata=(("authorization", "Bearer nope"),))
            ),
            await status_of(
                running.ingest.Publish(ingest_pb2.EventBatch(), metadata=(("authorization", TOKEN),))
            ),  # no scheme
        ]
        stream_error = await status_of(
            _drain(running.ingest.PublishStream(iter(numbered_batches(1)), metadata=(("authorization", "x"),)))
        )
        assert ingestor.calls == []

        await running.login.OnMessage(account_pb2.UserLoggedIn(id="e1", user_id="u"), metadata=good)
        await running.stat.OnMessage(statistic_pb2.StatItemUpdated(id="e2", user_id="u"), metadata=good)
        published = await running.ingest.Publish(ingest_pb2.EventBatch(events=[login_event("e3")]), metadata=good)
        streamed = [r async for r in running.ingest.PublishStream(iter(numbered_batches(2)), metadata=good)]
        await running.health.set_ready(True)
        health = await health_pb2_grpc.HealthStub(running.channel).Check(health_pb2.HealthCheckRequest())

    for error in [*missing, *wrong, stream_error]:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in missing[0].details()
    assert wrong[0].details() == "ingest token rejected"
    assert TOKEN not in "".join(error.details() for error in [*missing, *wrong])
    assert published.accepted == 1 and len(streamed) == 2 and len(ingestor.calls) == 5
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # health needs no token


async def _drain(call: grpc.aio.StreamStreamCall) -> list[ingest_pb2.PublishResult]:
    return [result async for result in call]


# --- health, reflection, metrics -----------------------------------------------------------------


async def test_health_reports_every_ingest_service() -> None:
    async with serving(ScriptedIngestor()) as running:
        health = health_pb2_grpc.HealthStub(running.channel)
        assert set(running.health.service_names) == {"", *INGEST_SERVICE_NAMES}
        await running.health.set_ready(True)
        serving_now = [
            (await health.Check(health_pb2.HealthCheckRequest(service=name))).status
            for name in ("", *INGEST_SERVICE_NAMES)
        ]
        await running.health.set_ready(False)
        not_serving = [
            (await health.Check(health_pb2.HealthCheckRequest(service=name))).status
            for name in ("", *INGEST_SERVICE_NAMES)
        ]
    assert serving_now == [health_pb2.HealthCheckResponse.SERVING] * 4
    assert not_serving == [health_pb2.HealthCheckResponse.NOT_SERVING] * 4


async def _reflect(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [response] = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    return response


async def test_reflection_lists_and_describes_the_ingest_services() -> None:
    async with serving(ScriptedIngestor(), grpc_token=TOKEN) as running:  # reflection stays open
        listed = await _reflect(running.channel, reflection_pb2.ServerReflectionRequest(list_services=""))
        described = await _reflect(
            running.channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=EVENT_INGEST_SERVICE_NAME)
        )
    names = {service.name for service in listed.list_services_response.service}
    assert set(INGEST_SERVICE_NAMES) <= names
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # senders can build requests from it


async def test_server_without_an_ingestor_keeps_health_and_reflection_only() -> None:
    async with serving(None) as running:
        listed = await _reflect(running.channel, reflection_pb2.ServerReflectionRequest(list_services=""))
        error = await status_of(running.ingest.Publish(ingest_pb2.EventBatch()))
    assert not set(INGEST_SERVICE_NAMES) & {service.name for service in listed.list_services_response.service}
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def _requests(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("challenge_grpc_requests_total", {"method": method, "code": code}) or 0.0


def _observations(method: str) -> float:
    return REGISTRY.get_sample_value("challenge_grpc_request_duration_seconds_count", {"method": method}) or 0.0


async def test_metrics_count_calls_by_method_and_final_code() -> None:
    publish = f"{EVENT_INGEST_SERVICE_NAME}/Publish"
    stream = f"{EVENT_INGEST_SERVICE_NAME}/PublishStream"
    before = {
        key: _requests(*key)
        for key in [(publish, "OK"), (publish, "UNAUTHENTICATED"), (publish, "INVALID_ARGUMENT"), (stream, "OK")]
    }
    observed_before = _observations(publish)
    async with serving(ScriptedIngestor(), grpc_token=TOKEN, ingest_max_batch=1) as running:
        good = (("authorization", f"Bearer {TOKEN}"),)
        await running.ingest.Publish(ingest_pb2.EventBatch(events=[login_event("a")]), metadata=good)
        await status_of(running.ingest.Publish(ingest_pb2.EventBatch()))
        await status_of(
            running.ingest.Publish(ingest_pb2.EventBatch(events=[login_event("a"), login_event("b")]), metadata=good)
        )
        await _drain(running.ingest.PublishStream(iter(numbered_batches(1)), metadata=good))
    assert {key: _requests(*key) - count for key, count in before.items()} == {
        (publish, "OK"): 1,
        (publish, "UNAUTHENTICATED"): 1,
        (publish, "INVALID_ARGUMENT"): 1,
        (stream, "OK"): 1,
    }
    assert _observations(publish) - observed_before == 3
    assert math.isclose(_requests("grpc.health.v1.Health/Check", "OK"), 0.0)  # health is not an ingest method


# --- generated modules ---------------------------------------------------------------------------


def test_generate_script_reproduces_the_checked_in_modules(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "service/proto/generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    expected = generate.generated_files()
    assert {path.name for path in expected} == {
        "account_pb2.py",
        "account_pb2.pyi",
        "account_pb2_grpc.py",
        "statistic_pb2.py",
        "statistic_pb2.pyi",
        "statistic_pb2_grpc.py",
        "ingest_pb2.py",
        "ingest_pb2.pyi",
        "ingest_pb2_grpc.py",
    }
    checked_in = {
        path.relative_to(generate.PROTO_ROOT)
        for suffix in generate.GENERATED_SUFFIXES
        for path in generate.PROTO_ROOT.rglob(f"*{suffix}")
    }
    assert checked_in == set(expected)
    for relative in expected:
        assert filecmp.cmp(tmp_path / relative, generate.PROTO_ROOT / relative, shallow=False), relative


# --- hostile input (issue: garbage and overload must get statuses a sender can act on) --------------

GARBAGE = [
    b"\xff\xff\xff",  # a field header whose varint never ends
    _field(1, "x")[:-1] + b"",  # a string field cut short
    _varint(2 << 3 | 2) + _varint(1 << 20) + b"abc",  # a length far beyond the message
    b"\x0f",  # wire type 7 does not exist
]


async def test_undecodable_requests_are_invalid_argument_without_an_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingestor = ScriptedIngestor()
    caplog.set_level("DEBUG")
    async with serving(ingestor) as running:
        unary = [
            await status_of(running.channel.unary_unary(method)(raw))
            for method in INGEST_UNARY_METHODS
            for raw in GARBAGE
        ]
        stream = running.channel.stream_stream(f"/{EVENT_INGEST_SERVICE_NAME}/PublishStream")
        good = ingest_pb2.EventBatch(batch_id="b0", events=[login_event("e0")]).SerializeToString()
        results: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for result in stream(iter([good, GARBAGE[0], good])):
                results.append(result)
    assert {error.code() for error in unary} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all(error.details().startswith("request is not a valid message") for error in unary)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [ingest_pb2.PublishResult.FromString(raw).batch_id for raw in results] == ["b0"]
    assert len(ingestor.calls) == 1  # only the stream's first batch reached the ingestor
    assert [record for record in caplog.records if record.levelno >= 40] == []


async def test_a_burst_beyond_the_concurrency_limit_is_resource_exhausted_not_cancelled() -> None:
    """More calls at once than gRPC's default pending backlog (1000): the excess must be told to back off."""

    async def slow(events: Sequence[IncomingEvent], origin: str) -> SubmitResult:
        await asyncio.sleep(1.0)
        return await accept_all(events, origin)

    async with serving(ScriptedIngestor(respond=slow)) as running:

        async def one(index: int) -> grpc.StatusCode:
            try:
                await running.login.OnMessage(account_pb2.UserLoggedIn(id=str(index), user_id="u"), timeout=30)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*(one(index) for index in range(3000)))
    counts = {code: codes.count(code) for code in set(codes)}
    assert set(counts) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, counts
    assert counts[grpc.StatusCode.OK] >= 64  # the server's limit (64 in `serving`) was used

"""The event load engine (challengectl/eventload.py; docs/loadtest.md#measurement-model) against the real gRPC
servicers with a scripted ingestion core: the open-model schedule keeps sending while the service
stalls and counts the stall as latency, the in-flight cap waits or drops, RESOURCE_EXHAUSTED is backed
off and resent with the same ids, failed calls are resent with the same ids, and the tally counts
acks, rejections and failures by gRPC status."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from challengectl.eventload import (
    RPC_AGS,
    RPC_PUBLISH,
    Backoff,
    EventSender,
    OpenModel,
    Outcome,
    Tally,
    paced,
)
from service.domain.errors import Exhausted, Unavailable
from service.proto.challengectl.v1 import ingest_pb2
from service.usecases.events import EventFields, IncomingEvent, SubmitResult
from tests.support.grpc_server import serving

Respond = Callable[[Sequence[IncomingEvent]], Awaitable[SubmitResult]]


async def accept(events: Sequence[IncomingEvent]) -> SubmitResult:
    return SubmitResult(accepted=len(events), duplicates=0, skipped=0, rejected=[], committed=True)


@dataclass
class Core:
    """The ingestion core's `submit`, answering through `respond`; remembers every event id it saw."""

    respond: Respond = accept
    seen: Counter[str] = field(default_factory=Counter)

    async def submit(self, fields: Sequence[EventFields], origin: str, deadline: float | None = None) -> SubmitResult:
        events = [IncomingEvent(*event) for event in fields]  # Publish hands plain tuples: named here
        self.seen.update(event.id for event in events)
        return await self.respond(events)


def login(n: int) -> ingest_pb2.Event:
    return ingest_pb2.Event(id=f"e{n}", user_id=f"u{n}", namespace="ns", kind=ingest_pb2.EVENT_KIND_LOGIN)


def stat(n: int) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        id=f"s{n}", user_id=f"u{n}", namespace="ns", kind=ingest_pb2.EVENT_KIND_STAT, stat_code="kills", latest_value=n
    )


def test_paced_calls_are_due_when_the_events_before_them_are() -> None:
    calls = [[login(0), login(1)], [login(2)], [login(3), login(4), login(5)]]
    assert [due for due, _ in paced(calls, 10.0, 100.0)] == [100.0, 100.2, 100.3]
    assert [key for _, key in paced(calls, 10.0, 0.0)] == list(enumerate(calls))
    assert [due for due, _ in paced(calls, None, 0.0)] == [None, None, None]


async def test_a_stall_is_latency_and_the_schedule_keeps_sending() -> None:
    release = asyncio.Event()

    async def stall_first(events: Sequence[IncomingEvent]) -> SubmitResult:
        if events[0].id == "e0":
            await release.wait()
        return await accept(events)

    core = Core(stall_first)
    async with serving(core) as running:
        sender = EventSender(running.channel, RPC_AGS, deadline_s=10)
        tally = Tally()
        schedule: OpenModel[int] = OpenModel()

        async def one(n: int, due: float) -> None:
            tally.record(await sender.send(sender.prepare(n, [login(n)]), due))

        start = time.perf_counter()
        driving = asyncio.create_task(schedule.drive(((start + n * 0.01, n) for n in range(20)), one))

        async def others_answered() -> None:  # the server saw all 20 and the client has the 19 answers
            while len(core.seen) < 20 or tally.calls < 19:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(others_answered(), 10)  # every call was sent while the first one hung
        assert tally.calls == 19 and schedule.inflight == 1
        release.set()
        await driving
        await schedule.drain()
    assert (tally.calls, tally.acked, tally.failed_calls) == (20, 20, 0)
    # The stalled call's latency runs from its scheduled start, so the maximum is the stall.
    assert tally.latency_us.get_max_value() / 1e6 >= time.perf_counter() - start - 1.0
    assert tally.accepted == 0  # OnMessage answers Empty: no counts


async def test_the_inflight_cap_waits_or_drops() -> None:
    release = asyncio.Event()

    async def hold(events: Sequence[IncomingEvent]) -> SubmitResult:
        await release.wait()
        return await accept(events)

    async with serving(Core(hold)) as running:
        sender = EventSender(running.channel, RPC_PUBLISH, deadline_s=10)
        outcomes: list[Outcome] = []
        dropped: list[int] = []
        capped: OpenModel[int] = OpenModel(2, drop_when_full=True)

        async def one(n: int, due: float) -> None:
            outcomes.append(await sender.send(sender.prepare(n, [login(n)]), due))

        now = time.perf_counter()
        await capped.drive(((now, n) for n in range(5)), one, lambda n, due: dropped.append(n))
        assert dropped == [2, 3, 4] and capped.inflight == 2
        waiting: OpenModel[int] = OpenModel(2)
        driving = asyncio.create_task(waiting.drive(((now, n) for n in range(10, 13)), one))
        while waiting.inflight < 2:
            await asyncio.sleep(0.01)
        assert not driving.done()  # the third waits for a slot
        release.set()
        await driving
        await capped.drain()
        await waiting.drain()
    assert sorted(o.call.index for o in outcomes) == [0, 1, 10, 11, 12]


async def test_resource_exhausted_is_backed_off_and_resent_with_the_same_ids() -> None:
    refusals = Counter[str]()

    async def full_twice(events: Sequence[IncomingEvent]) -> SubmitResult:
        if refusals[events[0].id] < 2:
            refusals[events[0].id] += 1
            raise Exhausted("BUFFER_FULL", "the event buffer is full")
        return await accept(events)

    core = Core(full_twice)
    async with serving(core) as running:
        patient = EventSender(running.channel, RPC_PUBLISH, backoff=Backoff(attempts=3, first_s=0.01))
        outcome = await patient.send(patient.prepare(0, [login(0), stat(0)], "b0"))
        impatient = EventSender(running.channel, RPC_PUBLISH)
        refused = await impatient.send(impatient.prepare(1, [login(1)], "b1"))
    assert (outcome.failure, outcome.attempts, outcome.acked, outcome.answer.accepted) == (None, 3, 2, 2)
    assert core.seen == Counter({"e0": 3, "s0": 3, "e1": 1})
    assert (refused.failure, refused.attempts, refused.acked) == ("RESOURCE_EXHAUSTED", 1, 0)
    assert refused.detail == "the event buffer is full"


async def test_failed_calls_are_resent_with_the_same_ids_and_counted_by_status() -> None:
    failing = {"e1", "e2"}

    async def outage(events: Sequence[IncomingEvent]) -> SubmitResult:
        if events[0].id in failing:
            raise Unavailable("DATABASE_UNAVAILABLE", "PostgreSQL is unavailable")
        return await accept(events)

    core = Core(outage)
    async with serving(core) as running:
        sender = EventSender(running.channel, RPC_AGS)
        tally = Tally()
        for n in range(4):
            tally.record(await sender.send(sender.prepare(n, [login(n)])))
        assert (tally.calls, tally.acked, tally.failed_calls, tally.failed_events) == (4, 2, 2, 2)
        assert tally.errors == Counter({"UNAVAILABLE": 2})
        assert tally.details["UNAVAILABLE"] == "PostgreSQL is unavailable"
        failing.discard("e1")
        still = await sender.resend(tally.failed, rounds=2)
    assert [outcome.call.events[0].id for outcome in still] == ["e2"]
    assert core.seen == Counter({"e0": 1, "e1": 2, "e2": 3, "e3": 1})


async def test_rejections_are_counted_for_both_rpcs() -> None:
    async def reject_stats(events: Sequence[IncomingEvent]) -> SubmitResult:
        rejected = [(i, e.id, "stat_code is required") for i, e in enumerate(events) if e.kind == "stat"]
        return SubmitResult(
            accepted=len(events) - len(rejected), duplicates=0, skipped=0, rejected=rejected, committed=True
        )

    async with serving(Core(reject_stats)) as running:
        tally = Tally()
        publish = EventSender(running.channel, RPC_PUBLISH)
        tally.record(await publish.send(publish.prepare(0, [login(0), stat(1), login(2)], "b")))
        ags = EventSender(running.channel, RPC_AGS)
        tally.record(await ags.send(ags.prepare(1, [stat(3)])))
        tally.record(await ags.send(ags.prepare(2, [login(4)])))
    assert (tally.calls, tally.sent, tally.acked, tally.rejected, tally.failed_calls) == (3, 5, 3, 2, 0)
    assert (tally.accepted, tally.committed_calls) == (2, 1)
    assert tally.first_rejection is not None
    assert (tally.first_rejection.index, tally.first_rejection.event_id) == (1, "s1")

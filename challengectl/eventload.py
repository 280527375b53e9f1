"""The one event load engine of `events send`, the load generator and bench/events.py
(docs/loadtest.md#measurement-model): an open-model schedule, calls of login and stat events over
EventIngest.Publish (a batch per call) or the AGS OnMessage services (one event per call), and the count
of what the service answered.

- `OpenModel` starts each operation at its due time whatever earlier ones do; latency runs from that
  time, so a slow service shows as latency, not as a lower rate. Beyond `max_inflight` operations in
  flight a new one waits for a slot (the wait is latency) or, with `drop_when_full`, is dropped.
- `EventSender` sends a call with a per-call deadline and returns its `Outcome` (a failure is a gRPC
  status name, never an exception); it can back off and resend a RESOURCE_EXHAUSTED call, and `resend`
  retries failed calls with the same event ids, as a real sender does (de-duplication makes it safe).
- `Tally` counts calls, acks, rejections, errors by status and the latency histogram.

grpc and hdrh are imported when a sender or tally is made, so importing this module stays cheap
(`challengectl events send --help`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from challengectl.errors import CliError
from service.domain.backoff import doubling_backoff
from service.proto.challengectl.v1 import ingest_pb2

if TYPE_CHECKING:
    import grpc

    from service.proto.accelbyte.iam.account.v1 import account_pb2
    from service.proto.accelbyte.social.statistic.v1 import statistic_pb2

RPC_AGS = "ags"
RPC_PUBLISH = "publish"
PUBLISH_METHOD = "challengectl.v1.EventIngest/Publish"
LOGIN_METHOD = "accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService/OnMessage"
STAT_METHOD = "accelbyte.social.statistic.v1.StatisticStatItemUpdatedService/OnMessage"
EXHAUSTED = "RESOURCE_EXHAUSTED"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
MAX_SLEEP_S = 0.25  # a schedule waiting for its next due time still notices `stop` this often
CATCH_UP_YIELD_EVERY = 64  # behind schedule, let the calls in flight progress every this many launches

K = TypeVar("K")
E = TypeVar("E")
# (method name, stub method, request) → the answer; raises grpc.aio.AioRpcError or CliError.
Invoke = Callable[[str, Any, Any], Awaitable[Any]]


# --- schedule --------------------------------------------------------------------------------------


def paced(
    calls: Iterable[Sequence[E]], rate: float | None, start: float
) -> Iterator[tuple[float | None, tuple[int, Sequence[E]]]]:
    """(due time, (index, events)) of each of `calls` at `rate` events per second from `start`: a call is
    due when the events before it are, start + events before / rate. Without a rate every call is due
    when a slot frees (one after another with `max_inflight=1`)."""
    before = 0
    for index, events in enumerate(calls):
        yield (None if rate is None else start + before / rate), (index, events)
        before += len(events)


class OpenModel(Generic[K]):
    """Starts operations at their due times (`time.perf_counter()` seconds) without waiting for earlier
    ones; several `drive`s may share one instance and its in-flight cap."""

    def __init__(
        self, max_inflight: int | None = None, *, drop_when_full: bool = False, stop: Callable[[], bool] = lambda: False
    ) -> None:
        self.max_inflight = max_inflight
        self.drop_when_full = drop_when_full
        self.stop = stop
        self.inflight = 0
        self.max_lag_s = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Event()

    async def drive(
        self,
        schedule: Iterable[tuple[float | None, K]],
        launch: Callable[[K, float], Coroutine[Any, Any, None]],
        dropped: Callable[[K, float], None] | None = None,
    ) -> None:
        """Launch `launch(key, due)` for each (due, key) of `schedule`; a due of None is now. At the cap
        the operation waits for a slot, or is handed to `dropped(key, due)` with `drop_when_full`."""
        behind = 0
        for due, key in schedule:
            if due is not None and not await self._until(due):
                return
            behind += 1
            if behind % CATCH_UP_YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if self.max_inflight is not None and self.inflight >= self.max_inflight:
                if self.drop_when_full and dropped is not None and due is not None:
                    dropped(key, due)
                    continue
                while self.inflight >= self.max_inflight:
                    self._freed.clear()
                    await self._freed.wait()
            if self.stop():
                return
            if due is None:
                due = time.perf_counter()
            else:
                self.max_lag_s = max(self.max_lag_s, time.perf_counter() - due)
            self._start(launch(key, due))

    async def _until(self, due: float) -> bool:
        """Sleep until `due`; False when `stop` became true meanwhile."""
        delay = due - time.perf_counter()
        while delay > 0:
            if self.stop():
                return False
            await asyncio.sleep(min(delay, MAX_SLEEP_S))
            delay = due - time.perf_counter()
        return not self.stop()

    def _start(self, operation: Coroutine[Any, Any, None]) -> None:
        self.inflight += 1
        task = asyncio.get_running_loop().create_task(operation)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.inflight -= 1
        self._freed.set()

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait for the operations in flight, cancelling those still running after `timeout_s`.
        An operation's exception is raised here."""
        if not self._tasks:
            return
        tasks = set(self._tasks)
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in tasks - pending:
            task.result()

    def cancel(self) -> None:
        """Cancel every operation in flight (the caller gave up)."""
        for task in self._tasks:
            task.cancel()


# --- messages --------------------------------------------------------------------------------------


def ags_message(event: ingest_pb2.Event) -> account_pb2.UserLoggedIn | statistic_pb2.StatItemUpdated:
    """The AGS OnMessage message carrying `event` (docs/events.md#onmessage-services)."""
    from service.proto.accelbyte.iam.account.v1 import account_pb2
    from service.proto.accelbyte.social.statistic.v1 import statistic_pb2

    timestamp = event.timestamp.ToJsonString() if event.HasField("timestamp") else ""
    if event.kind == ingest_pb2.EVENT_KIND_LOGIN:
        return account_pb2.UserLoggedIn(
            id=event.id, user_id=event.user_id, namespace=event.namespace, timestamp=timestamp
        )
    payload = statistic_pb2.StatItem(
        namespace=event.namespace,
        stat_code=event.stat_code,
        user_id=event.user_id,
        latest_value=event.latest_value,
        inc=event.inc,
    )
    return statistic_pb2.StatItemUpdated(
        payload=payload, id=event.id, user_id=event.user_id, namespace=event.namespace, timestamp=timestamp
    )


# --- calls and outcomes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """An event the service refused (docs/events.md#validation)."""

    index: int
    event_id: str
    reason: str


@dataclass
class Call:
    """One gRPC call: its events and the request carrying them (resent as is, with the same ids)."""

    index: int
    events: Sequence[ingest_pb2.Event]
    method: str
    request: Any


@dataclass
class Outcome:
    """What one call got: `answer` is Publish's PublishResult (None for OnMessage, which answers Empty);
    `failure` the gRPC status name of a failed call, with `detail` and the raised `error`. Times are
    `time.perf_counter()` seconds: `due` scheduled, `sent` the first attempt, `done` the last answer."""

    call: Call
    due: float
    sent: float
    done: float
    answer: Any = None
    rejections: list[Rejection] = field(default_factory=list)
    failure: str | None = None
    detail: str = ""
    error: Exception | None = None
    attempts: int = 1

    @property
    def latency_s(self) -> float:
        return self.done - self.due

    @property
    def duration_s(self) -> float:
        return self.done - self.sent

    @property
    def acked(self) -> int:
        """Events acknowledged (not rejected) by a call that succeeded."""
        return 0 if self.failure is not None else len(self.call.events) - len(self.rejections)


@dataclass(frozen=True)
class Backoff:
    """Resend a call that failed with one of `codes` up to `attempts` times in all, waiting the
    doubling backoff (service/domain/backoff.py) of `first_s` … `cap_s` before each resend."""

    attempts: int = 4
    first_s: float = 0.05
    cap_s: float = 1.0
    codes: frozenset[str] = frozenset({EXHAUSTED})


def failure_of(error: Exception) -> tuple[str, str]:
    """(gRPC status name, details) of a failed call: a grpc.aio.AioRpcError, or the CliError the CLI's
    ingest client raised for one (docs/cli.md#exit-codes)."""
    if isinstance(error, CliError):
        code = error.code or "UNKNOWN"
        return code, error.message.partition(f"{code}: ")[2] or error.message
    return error.code().name, error.details() or ""  # type: ignore[attr-defined]


class EventSender:
    """Sends calls of events on `channel` over Publish (`rpc` publish) or OnMessage (`ags`), each with a
    deadline of `deadline_s` (and `metadata`), unless `invoke` sends them (the CLI's ingest client)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        rpc: str,
        *,
        deadline_s: float = 30.0,
        metadata: Sequence[tuple[str, str]] | None = None,
        invoke: Invoke | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        import grpc

        from service.proto.accelbyte.iam.account.v1 import account_pb2_grpc
        from service.proto.accelbyte.social.statistic.v1 import statistic_pb2_grpc
        from service.proto.challengectl.v1 import ingest_pb2_grpc

        self.rpc = rpc
        self.backoff = backoff
        self._failures: tuple[type[Exception], ...] = (grpc.aio.AioRpcError, CliError)
        self._stubs = {
            PUBLISH_METHOD: ingest_pb2_grpc.EventIngestStub(channel).Publish,
            LOGIN_METHOD: account_pb2_grpc.UserAuthenticationUserLoggedInServiceStub(channel).OnMessage,
            STAT_METHOD: statistic_pb2_grpc.StatisticStatItemUpdatedServiceStub(channel).OnMessage,
        }
        metadata = tuple(metadata or ())

        async def direct(method: str, stub: Any, request: Any) -> Any:
            return await stub(request, timeout=deadline_s, metadata=metadata)

        self._invoke = invoke or direct

    @property
    def events_per_call(self) -> int | None:
        """1 for OnMessage; None (any) for Publish."""
        return 1 if self.rpc == RPC_AGS else None

    def prepare(self, index: int, events: Sequence[ingest_pb2.Event], batch_id: str = "") -> Call:
        """The call carrying `events` (exactly one for OnMessage)."""
        if self.rpc == RPC_PUBLISH:
            request = ingest_pb2.EventBatch(batch_id=batch_id, events=events)
            return Call(index, events, PUBLISH_METHOD, request)
        (event,) = events
        method = LOGIN_METHOD if event.kind == ingest_pb2.EVENT_KIND_LOGIN else STAT_METHOD
        return Call(index, events, method, ags_message(event))

    async def send(self, call: Call, due: float | None = None) -> Outcome:
        """Send `call` (scheduled at `due`, default now) and describe the answer. With `backoff`, a
        call failing with one of its codes is resent after a pause; latency still runs from `due`.
        For OnMessage an INVALID_ARGUMENT status is the event's rejection."""
        sent = time.perf_counter()
        outcome = Outcome(call, sent if due is None else due, sent, sent)
        while True:
            await self._attempt(outcome)
            backoff = self.backoff
            if backoff is None or outcome.failure not in backoff.codes or outcome.attempts >= backoff.attempts:
                return outcome
            await asyncio.sleep(doubling_backoff(backoff.first_s, backoff.cap_s, outcome.attempts))
            outcome.attempts += 1

    async def _attempt(self, outcome: Outcome) -> None:
        call = outcome.call
        outcome.failure, outcome.detail, outcome.error, outcome.rejections = None, "", None, []
        try:
            answer = await self._invoke(call.method, self._stubs[call.method], call.request)
        except self._failures as error:
            code, detail = failure_of(error)
            if code == INVALID_ARGUMENT and call.method != PUBLISH_METHOD:
                outcome.rejections = [Rejection(0, call.events[0].id, detail)]
            else:
                outcome.failure, outcome.detail, outcome.error = code, detail, error
        else:
            if call.method == PUBLISH_METHOD:
                outcome.answer = answer
                outcome.rejections = [Rejection(r.index, r.event_id, r.reason) for r in answer.rejected]
        outcome.done = time.perf_counter()

    async def resend(self, failed: Sequence[Outcome], *, rounds: int = 5, concurrency: int = 32) -> list[Outcome]:
        """Resend the calls of `failed` with the same event ids, `concurrency` at a time, for up to
        `rounds` rounds with a doubling pause before each; the outcomes of the calls still failing."""
        pending = list(failed)
        slots = asyncio.Semaphore(concurrency)

        async def again(previous: Outcome) -> Outcome:
            async with slots:
                return await self.send(previous.call)

        for round_number in range(1, rounds + 1):
            if not pending:
                break
            await asyncio.sleep(doubling_backoff(0.2, 2.0, round_number))
            outcomes = await asyncio.gather(*(again(outcome) for outcome in pending))
            pending = [outcome for outcome in outcomes if outcome.failure is not None]
        return pending


# --- counting --------------------------------------------------------------------------------------


class Tally:
    """Running totals of sent calls: events sent, acknowledged, rejected and failed, Publish's counts,
    failed calls by gRPC status (with the first detail of each), and an HDR histogram of the latency of
    the calls that succeeded (1 µs … `max_latency_s`, 3 significant digits)."""

    def __init__(self, max_latency_s: float = 60.0) -> None:
        from hdrh.histogram import HdrHistogram

        self.calls = self.sent = self.acked = self.rejected = 0
        self.accepted = self.duplicates = self.skipped = 0
        self.failed_calls = self.failed_events = self.committed_calls = 0
        self.errors: Counter[str] = Counter()
        self.details: dict[str, str] = {}
        self.failed: list[Outcome] = []
        self.first_rejection: Rejection | None = None
        self._max_latency_us = round(max_latency_s * 1_000_000)
        self.latency_us = HdrHistogram(1, self._max_latency_us, 3)
        self.last_done = 0.0

    def record(self, outcome: Outcome) -> None:
        events = len(outcome.call.events)
        self.calls += 1
        self.sent += events
        self.rejected += len(outcome.rejections)
        if self.first_rejection is None and outcome.rejections:
            self.first_rejection = outcome.rejections[0]
        if outcome.failure is not None:
            self.failed_calls += 1
            self.failed_events += events
            self.errors[outcome.failure] += 1
            self.details.setdefault(outcome.failure, outcome.detail)
            self.failed.append(outcome)
            return
        self.acked += outcome.acked
        answer = outcome.answer
        if answer is not None:
            self.accepted += answer.accepted
            self.duplicates += answer.duplicates
            self.skipped += answer.skipped
            self.committed_calls += bool(answer.committed)
        self.latency_us.record_value(min(self._max_latency_us, max(1, round(outcome.latency_s * 1_000_000))))
        self.last_done = max(self.last_done, outcome.done)

    def percentile_ms(self, percentile: float) -> float | None:
        """The latency percentile in ms, None before any call succeeded."""
        if self.latency_us.get_total_count() == 0:
            return None
        return self.latency_us.get_value_at_percentile(percentile) / 1000

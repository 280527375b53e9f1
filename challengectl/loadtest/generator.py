"""The load generator (docs/loadtest.md#measurement-model): open-model drivers per phase and stream, an in-flight cap that
drops (and counts) operations instead of delaying them, latency from the scheduled time, generator
lag and CPU, and `--procs` worker processes whose encoded histograms are merged at the end.

Worker `w` of `n` owns operations `w, w + n, w + 2n, …` of every stream, so together the workers send
exactly the schedule of one generator.
"""

from __future__ import annotations

import asyncio
import bisect
import multiprocessing
import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import psutil
from hdrh.histogram import HdrHistogram

from challengectl.eventload import RPC_PUBLISH, EventSender, OpenModel
from challengectl.loadtest.operations import GeneratorOptions, Operations, event_label
from challengectl.loadtest.profiles import (
    GAMEPLAY_API_MIX,
    LOGIN_EVENT_SHARE,
    STAT_CODES,
    all_goal_paths,
    user_id_of,
)
from challengectl.loadtest.schedule import PhasePlan, Ramp
from challengectl.loadtest.stats import EndpointStats, decode, encode, new_histogram, record_seconds
from service.proto.challengectl.v1 import ingest_pb2

PROGRESS_INTERVAL_S = 1.0
STOP_POLL_S = 0.1
INTERRUPT_GRACE_S = 1.0
WORKER_READY_TIMEOUT_S = 60.0
START_MARGIN_S = 0.3

Launch = tuple[tuple[str, ...], Coroutine[Any, Any, None]]  # (labels it would record, operation)


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig(GeneratorOptions):
    """Everything a generator process needs (picklable for `--procs` > 1)."""

    phases: tuple[PhasePlan, ...]
    run_id: str = "run"
    http_connections: int = 256

    @property
    def total_duration_s(self) -> float:
        return max(p.offset_s + p.duration_s for p in self.phases)


@dataclass
class WorkerRecorder:
    """Records outcomes by (phase, label); the phase is the one the operation was scheduled in."""

    phases: tuple[PhasePlan, ...]
    t0: float = 0.0
    stats: dict[tuple[str, str], EndpointStats] = field(default_factory=dict)
    lag: HdrHistogram = field(default_factory=new_histogram)
    timeline: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    interval: dict[str, list[Any]] = field(default_factory=dict)
    interval_lag_max_s: float = 0.0
    dropped: int = 0
    seconds: dict[tuple[int, str], list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._offsets = [p.offset_s for p in self.phases]

    def phase_at(self, at: float) -> PhasePlan:
        index = bisect.bisect_right(self._offsets, at - self.t0) - 1
        return self.phases[max(0, index)]

    def record(self, label: str, at: float, sent: float, done: float, failure: str | None) -> None:
        phase = self.phase_at(at)
        stats = self.stats.get((phase.name, label))
        if stats is None:
            stats = self.stats[(phase.name, label)] = EndpointStats()
        stats.record(done - at, done - sent, failure)
        second = self._second(label, at)
        second[0 if failure is None else 1] += 1
        second[3].append(int((done - at) * 1_000_000))
        lag = sent - at
        record_seconds(self.lag, max(lag, 0.0))
        if lag > self.interval_lag_max_s:
            self.interval_lag_max_s = lag
        self._count(phase, label, at, failure is not None, done - at)

    def record_dropped(self, label: str, at: float) -> None:
        phase = self.phase_at(at)
        stats = self.stats.get((phase.name, label))
        if stats is None:
            stats = self.stats[(phase.name, label)] = EndpointStats()
        stats.record_dropped()
        self._second(label, at)[2] += 1
        self.dropped += 1
        self._count(phase, label, at, True, None)

    def _second(self, label: str, at: float) -> list[Any]:
        """[ok, errors, dropped, latencies in µs] of `label` in the second of the run `at` falls in."""
        key = (int(max(0.0, at - self.t0)), label)
        entry = self.seconds.get(key)
        if entry is None:
            entry = self.seconds[key] = [0, 0, 0, []]
        return entry

    def _count(self, phase: PhasePlan, label: str, at: float, failed: bool, latency_s: float | None) -> None:
        minute = int(max(0.0, at - self.t0 - phase.offset_s) // 60)
        bucket = self.timeline.get((phase.name, minute))
        if bucket is None:
            bucket = self.timeline[(phase.name, minute)] = [0, 0]
        bucket[1] += 1
        entry = self.interval.get(label)
        if entry is None:
            entry = self.interval[label] = [0, 0, new_histogram()]
        entry[0] += 1
        if failed:
            bucket[0] += 1
            entry[1] += 1
        if latency_s is not None:
            record_seconds(entry[2], latency_s)

    def take_interval(self) -> dict[str, Any]:
        """Counts, errors and latency histograms since the previous call (for the live view)."""
        labels = {label: {"count": c, "errors": e, "hdr": encode(h)} for label, (c, e, h) in self.interval.items()}
        lag_max = self.interval_lag_max_s
        self.interval, self.interval_lag_max_s = {}, 0.0
        return {"labels": labels, "lag_max_ms": round(lag_max * 1000, 3)}


class Worker:
    """One generator process's share of the schedule."""

    def __init__(self, config: GeneratorConfig, index: int = 0, count: int = 1) -> None:
        self.config = config
        self.index = index
        self.count = count
        self.cap = max(1, config.max_inflight // count + (1 if index < config.max_inflight % count else 0))
        self.recorder = WorkerRecorder(config.phases)
        self.stopping = False
        # One schedule, one in-flight cap for every stream of every phase (challengectl/eventload.py).
        self.schedule: OpenModel[int] = OpenModel(self.cap, drop_when_full=True, stop=lambda: self.stopping)
        self.cpu_pct_max = 0.0
        self.started_unix = 0.0
        self._goal_paths = all_goal_paths()
        token_ttl = int(config.total_duration_s + config.timeout_s) + 3600
        self.ops = Operations(
            config,
            token_ttl_s=token_ttl,
            http_connections=max(8, config.http_connections // count),
            recorder=self.recorder,
        )

    async def prepare(self) -> None:
        """Open the connection pools and mint every user's token before the clock starts."""
        with_events = any(p.kind == "gameplay" and p.event_rate > 0 for p in self.config.phases)
        await self.ops.start(with_grpc=with_events)
        self.ops.warm_credentials(self.config.users)

    async def run(
        self,
        t0: float,
        should_stop: Callable[[], bool] = lambda: False,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Send this worker's share of every phase, starting at `t0` (perf_counter seconds); return the
        wire form of the results. `should_stop` ends the run early (interruption)."""
        self.recorder.t0 = t0
        self.started_unix = time.time() - (time.perf_counter() - t0)
        process = psutil.Process()
        process.cpu_percent(None)
        monitor = asyncio.create_task(self._monitor(t0, should_stop, on_progress, process))
        drivers = [
            asyncio.create_task(self._drive(t0 + phase.offset_s, ramp, launch))
            for phase in self.config.phases
            for ramp, launch in self._streams(phase)
        ]
        try:
            await asyncio.gather(*drivers)
            await self._drain()
        finally:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
            await self.ops.close()
        if on_progress is not None:
            on_progress(self._progress(t0))
        return self.result()

    def _streams(self, phase: PhasePlan) -> list[tuple[Ramp, Callable[[int, float], Launch]]]:
        rng_base = f"{self.config.seed}/{self.count}/{self.index}/{phase.name}"
        if phase.kind == "init":
            return [(phase.api, self._init_launcher(phase))]
        streams: list[tuple[Ramp, Callable[[int, float], Launch]]] = [
            (phase.api, self._api_launcher(random.Random(rng_base + "/api")))
        ]
        if phase.event_rate > 0:
            rng = random.Random(rng_base + "/events")
            if self.config.event_rpc == RPC_PUBLISH:
                batch = self.config.event_batch
                ramp = Ramp(phase.duration_s, phase.events.start_rate / batch, phase.events.end_rate / batch)
                streams.append((ramp, self._publish_launcher(phase, rng)))
            else:
                streams.append((phase.events, self._event_launcher(phase, rng)))
        return streams

    def _init_launcher(self, phase: PhasePlan) -> Callable[[int, float], Launch]:
        users = self.config.users

        def launch(i: int, at: float) -> Launch:
            k = phase.init_index_base + i
            expect_new = k < users
            return (
                ("initialize_new",) if expect_new else ("initialize_returning",),
                self.ops.initialize(at, k % users + 1, expect_new),
            )

        return launch

    def _api_launcher(self, rng: random.Random) -> Callable[[int, float], Launch]:
        users, paths, ops = self.config.users, self._goal_paths, self.ops

        def launch(i: int, at: float) -> Launch:
            draw = rng.random()
            user = rng.randint(1, users)
            operation = next(name for name, bound in GAMEPLAY_API_MIX if draw < bound)
            if operation == "initialize":
                return ("initialize_returning",), ops.initialize(at, user, False)
            if operation == "set_active":
                challenge_id, goal_id = paths[rng.randrange(len(paths))]
                return ("set_active",), ops.set_active(at, user, challenge_id, goal_id, rng.random() < 0.5)
            if operation == "claim":
                return ("claim_lookup",), ops.claim(at, user)
            return (operation,), ops.challenges(at, user, operation == "challenges_active")

        return launch

    def _random_event(self, rng: random.Random, event_id: str) -> ingest_pb2.Event:
        user_id = user_id_of(rng.randint(1, self.config.users))
        namespace = self.config.namespace
        if rng.random() < LOGIN_EVENT_SHARE:
            event = ingest_pb2.Event(
                id=event_id, user_id=user_id, namespace=namespace, kind=ingest_pb2.EVENT_KIND_LOGIN
            )
        else:
            event = ingest_pb2.Event(
                id=event_id,
                user_id=user_id,
                namespace=namespace,
                kind=ingest_pb2.EVENT_KIND_STAT,
                stat_code=STAT_CODES[rng.randrange(len(STAT_CODES))],
                latest_value=float(rng.randint(0, 999)),
                inc=1.0,
            )
        event.timestamp.GetCurrentTime()
        return event

    def _event_launcher(self, phase: PhasePlan, rng: random.Random) -> Callable[[int, float], Launch]:
        prefix = f"{self.config.run_id}-{phase.name}-"

        def launch(i: int, at: float) -> Launch:
            event = self._random_event(rng, f"{prefix}{i}")
            return (event_label(event),), self.ops.send_events(at, self._sender.prepare(i, [event]))

        return launch

    def _publish_launcher(self, phase: PhasePlan, rng: random.Random) -> Callable[[int, float], Launch]:
        prefix = f"{self.config.run_id}-{phase.name}-b"
        size = self.config.event_batch

        def launch(j: int, at: float) -> Launch:
            events = [self._random_event(rng, f"{prefix}{j}-{n}") for n in range(size)]
            call = self._sender.prepare(j, events, f"{prefix}{j}")
            return tuple(event_label(event) for event in events), self.ops.send_events(at, call)

        return launch

    @property
    def _sender(self) -> EventSender:
        assert self.ops.sender is not None
        return self.ops.sender

    async def _drive(self, base: float, ramp: Ramp, launch: Callable[[int, float], Launch]) -> None:
        """Fire operations `index, index + count, …` of `ramp` at their due times, never waiting for
        earlier ones; when the in-flight cap is reached the operation is dropped and counted."""

        def start(i: int, at: float) -> Coroutine[Any, Any, None]:
            return launch(i, at)[1]

        def dropped(i: int, at: float) -> None:
            labels, operation = launch(i, at)
            operation.close()
            for label in labels:
                self.recorder.record_dropped(label, at)

        due_times = ((base + ramp.offset_of(i), i) for i in range(self.index, ramp.count, self.count))
        await self.schedule.drive(due_times, start, dropped)

    async def _drain(self) -> None:
        """Wait for in-flight operations: up to the request timeout, or a short grace when stopping."""
        await self.schedule.drain(INTERRUPT_GRACE_S if self.stopping else self.config.timeout_s + 2.0)

    async def _monitor(
        self,
        t0: float,
        should_stop: Callable[[], bool],
        on_progress: Callable[[dict[str, Any]], None] | None,
        process: psutil.Process,
    ) -> None:
        next_progress = time.perf_counter() + PROGRESS_INTERVAL_S
        while True:
            await asyncio.sleep(STOP_POLL_S)
            if should_stop():
                self.stopping = True
            if time.perf_counter() >= next_progress:
                next_progress += PROGRESS_INTERVAL_S
                self.cpu_pct_max = max(self.cpu_pct_max, process.cpu_percent(None))
                if on_progress is not None:
                    on_progress(self._progress(t0))

    def _progress(self, t0: float) -> dict[str, Any]:
        snapshot = self.recorder.take_interval()
        snapshot.update(
            {
                "elapsed_s": round(time.perf_counter() - t0, 3),
                "inflight": self.schedule.inflight,
                "dropped": self.recorder.dropped,
                "worker": self.index,
            }
        )
        return snapshot

    def result(self) -> dict[str, Any]:
        """The wire form: encoded histograms and counters, merged by `merge_results`."""
        return {
            "stats": [
                {"phase": phase, "label": label, **stats.to_wire()}
                for (phase, label), stats in self.recorder.stats.items()
            ],
            "lag_hdr": encode(self.recorder.lag),
            "dropped": self.recorder.dropped,
            "claim_skipped": self.ops.claim_skipped,
            "timeline": [
                [phase, minute, failed, total] for (phase, minute), (failed, total) in self.recorder.timeline.items()
            ],
            "seconds": [[second, label, *counts] for (second, label), counts in self.recorder.seconds.items()],
            "started_unix": self.started_unix,
            "cpu_pct_max": self.cpu_pct_max,
            "interrupted": self.stopping,
        }


@dataclass
class GeneratorResult:
    """The merged results of every generator process."""

    stats: dict[tuple[str, str], EndpointStats]
    lag: HdrHistogram
    dropped: int
    claim_skipped: int
    timeline: dict[tuple[str, int], list[int]]
    cpu_pct_max: float
    interrupted: bool
    procs: int
    seconds: dict[tuple[int, str], list[Any]] = field(default_factory=dict)
    started_unix: float = 0.0


def merge_results(results: list[dict[str, Any]]) -> GeneratorResult:
    stats: dict[tuple[str, str], EndpointStats] = {}
    lag = new_histogram()
    timeline: dict[tuple[str, int], list[int]] = {}
    seconds: dict[tuple[int, str], list[Any]] = {}
    for result in results:
        for second, label, ok, errors, dropped, latencies in result["seconds"]:
            entry = seconds.setdefault((second, label), [0, 0, 0, []])
            entry[0] += ok
            entry[1] += errors
            entry[2] += dropped
            entry[3].extend(latencies)
        for item in result["stats"]:
            key = (item["phase"], item["label"])
            stats.setdefault(key, EndpointStats()).merge(EndpointStats.from_wire(item))
        lag.add(decode(result["lag_hdr"]))
        for phase, minute, failed, total in result["timeline"]:
            bucket = timeline.setdefault((phase, minute), [0, 0])
            bucket[0] += failed
            bucket[1] += total
    return GeneratorResult(
        stats=stats,
        lag=lag,
        dropped=sum(r["dropped"] for r in results),
        claim_skipped=sum(r["claim_skipped"] for r in results),
        timeline=timeline,
        cpu_pct_max=max((r["cpu_pct_max"] for r in results), default=0.0),
        interrupted=any(r["interrupted"] for r in results),
        procs=len(results),
        seconds=seconds,
        started_unix=min(r["started_unix"] for r in results),
    )


class GeneratorFailed(RuntimeError):
    """A generator process could not start or crashed; the message says which and why."""


async def run_generator(
    config: GeneratorConfig,
    procs: int = 1,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> GeneratorResult:
    """Run the whole schedule with `procs` generator processes (1 = inside this event loop)."""
    if procs <= 1:
        worker = Worker(config)
        await worker.prepare()
        return merge_results([await worker.run(time.perf_counter() + START_MARGIN_S, should_stop, on_progress)])
    return await _run_processes(config, procs, should_stop, on_progress)


async def _run_processes(
    config: GeneratorConfig,
    procs: int,
    should_stop: Callable[[], bool],
    on_progress: Callable[[dict[str, Any]], None] | None,
) -> GeneratorResult:
    context = multiprocessing.get_context("spawn")
    messages: multiprocessing.Queue[tuple[str, int, Any]] = context.Queue()
    start, stop = context.Event(), context.Event()
    start_at = context.Value("d", 0.0)
    processes = [
        context.Process(
            target=_process_main,
            name=f"loadtest-worker-{index}",
            daemon=True,
            args=(config, index, procs, messages, start, start_at, stop),
        )
        for index in range(procs)
    ]
    for process in processes:
        process.start()
    inbox: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    reading = threading.Event()
    reading.set()

    def pump() -> None:
        while reading.is_set():
            try:
                message = messages.get(timeout=0.2)
            except queue.Empty:
                continue
            loop.call_soon_threadsafe(inbox.put_nowait, message)

    reader = threading.Thread(target=pump, name="loadtest-results", daemon=True)
    reader.start()
    try:
        ready: set[int] = set()
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while len(ready) < procs:
            kind, index, payload = await _next_message(inbox, processes, deadline)
            if kind == "ready":
                ready.add(index)
            elif kind == "error":
                raise GeneratorFailed(f"generator process {index} failed to start: {payload}")
        start_at.value = time.time() + START_MARGIN_S
        start.set()
        results: dict[int, dict[str, Any]] = {}
        while len(results) < procs:
            if should_stop():
                stop.set()
            try:
                kind, index, payload = await asyncio.wait_for(inbox.get(), STOP_POLL_S * 2)
            except TimeoutError:
                dead = [p for i, p in enumerate(processes) if not p.is_alive() and i not in results]
                if dead and inbox.empty():
                    await asyncio.sleep(0.5)
                    if inbox.empty():
                        raise GeneratorFailed(
                            f"generator process {dead[0].name} exited with {dead[0].exitcode}"
                        ) from None
                continue
            if kind == "progress" and on_progress is not None:
                on_progress(payload)
            elif kind == "result":
                results[index] = payload
            elif kind == "error":
                raise GeneratorFailed(f"generator process {index} failed: {payload}")
        return merge_results([results[i] for i in range(procs)])
    finally:
        stop.set()
        reading.clear()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        reader.join(timeout=1)


async def _next_message(
    inbox: asyncio.Queue[tuple[str, int, Any]], processes: list[Any], deadline: float
) -> tuple[str, int, Any]:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GeneratorFailed(f"generator processes not ready after {WORKER_READY_TIMEOUT_S:.0f} s")
        try:
            return await asyncio.wait_for(inbox.get(), min(remaining, 0.5))
        except TimeoutError:
            for process in processes:
                if not process.is_alive() and process.exitcode not in (None, 0):
                    raise GeneratorFailed(f"{process.name} exited with {process.exitcode} before starting") from None


def _process_main(
    config: GeneratorConfig, index: int, count: int, messages: Any, start: Any, start_at: Any, stop: Any
) -> None:
    """Entry point of a generator process: Ctrl-C is handled by the parent, which sets `stop`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(_process_async(config, index, count, messages, start, start_at, stop))
    except Exception as error:  # reported to the parent, which turns it into an error message
        messages.put(("error", index, f"{type(error).__name__}: {error}"))


async def _process_async(
    config: GeneratorConfig, index: int, count: int, messages: Any, start: Any, start_at: Any, stop: Any
) -> None:
    worker = Worker(config, index, count)
    await worker.prepare()
    messages.put(("ready", index, os.getpid()))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, start.wait)
    t0 = time.perf_counter() + (start_at.value - time.time())
    result = await worker.run(t0, stop.is_set, lambda snapshot: messages.put(("progress", index, snapshot)))
    messages.put(("result", index, result))

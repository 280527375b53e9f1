"""The load generator against a tiny fake player API (docs/loadtest.md#measurement-model; P1): latency counts from the scheduled
time, so a 2-second stall of the service shows up as latency, not as fewer requests; the in-flight cap
drops and counts operations; several generator processes together send exactly one schedule.

The fake service tests the generator, not the challenge service: it runs on its own event loop in a
thread, and a stall blocks that loop like a frozen server would."""

from __future__ import annotations

from collections import Counter

import pytest

from challengectl.loadtest.generator import GeneratorConfig, run_generator
from challengectl.loadtest.report import generator_section, verdict_of
from challengectl.loadtest.schedule import PhasePlan
from challengectl.loadtest.stats import latency_summary_ms
from tests.support.fake_player_api import STALL_S, FakePlayerApi


@pytest.fixture
def fake_api() -> FakePlayerApi:
    api = FakePlayerApi(stall_after_s=1.5).start()
    yield api
    api.stop()


def init_only(duration_s: float, rate: float) -> tuple[PhasePlan, ...]:
    return (PhasePlan("init", "init", duration_s, rate, 0.0),)


@pytest.mark.slow
async def test_a_stall_shows_up_as_latency_not_as_lower_throughput(fake_api: FakePlayerApi) -> None:
    rate, duration = 100.0, 5.0
    config = GeneratorConfig(
        api_url=fake_api.api_url, grpc_addr="127.0.0.1:1", phases=init_only(duration, rate), users=1000, auth="none"
    )
    result = await run_generator(config, procs=1)
    stats = result.stats[("init", "initialize_new")]
    assert stats.count == stats.ok == fake_api.initialize_calls == int(rate * duration)
    assert result.dropped == 0
    latency = latency_summary_ms(stats.latency)
    assert latency["max"] >= STALL_S * 1000
    # Every operation due during the stall waited until its end: those due in its first half waited ≥ 1 s.
    # A closed-model generator would have sent ~1 request during the stall instead of rate × 2 s.
    slow = sum(count for value, count in _values(stats.latency) if value >= 1_000_000)
    assert slow >= rate * (STALL_S / 2) * 0.8
    assert latency["p90"] >= 1000
    assert fake_api.stalled_at is not None


@pytest.mark.slow
async def test_the_inflight_cap_drops_and_counts_operations(fake_api: FakePlayerApi) -> None:
    config = GeneratorConfig(
        api_url=fake_api.api_url,
        grpc_addr="127.0.0.1:1",
        phases=init_only(4.0, 100.0),
        users=1000,
        auth="none",
        max_inflight=5,
    )
    result = await run_generator(config, procs=1)
    stats = result.stats[("init", "initialize_new")]
    assert stats.count == 400
    dropped = stats.failures["dropped"]
    assert dropped == result.dropped > 100  # ~2 s of a 100/s schedule had no free slot
    assert stats.ok == fake_api.initialize_calls == 400 - dropped
    assert stats.latency.get_total_count() == stats.ok  # dropped operations have no latency
    timeline_failed = sum(failed for (phase, _), (failed, _) in result.timeline.items() if phase == "init")
    assert timeline_failed == dropped
    # A run that dropped operations cannot pass: the generator, not the service, limited it.
    health = generator_section(result)
    # (a loaded machine may also add a send-lag reason; the dropped one must be among them)
    assert health["generator_limited"] is True
    assert any(f"{dropped} operations dropped" in reason for reason in health["limited_reasons"])
    assert verdict_of([{"pass": True}], health) == "invalid"
    assert verdict_of([{"pass": False}], health) == "fail"


@pytest.mark.slow
async def test_two_generator_processes_send_exactly_one_schedule() -> None:
    api = FakePlayerApi().start()
    try:
        plans = (PhasePlan("init", "init", 2.0, 60.0, 0.0), PhasePlan("again", "init", 1.0, 60.0, 0.0, 2.0, 1.0, 120))
        config = GeneratorConfig(api_url=api.api_url, grpc_addr="127.0.0.1:1", phases=plans, users=100, auth="none")
        result = await run_generator(config, procs=2)
    finally:
        api.stop()
    assert result.procs == 2
    # The fake always reports newAssignments > 0: the label comes from the response, not from the index.
    assert result.stats[("init", "initialize_new")].count == 120
    assert result.stats[("again", "initialize_new")].count == 60
    assert api.initialize_calls == 180
    # Request k (0-based, counted across init-kind phases) is user (k mod 100) + 1, whichever process sent it.
    expected = Counter(f"user-{k % 100 + 1:06d}" for k in range(180))
    assert api.users_seen == expected


def _values(histogram) -> list[tuple[int, int]]:
    return [(item.value_iterated_to, item.count_added_in_this_iter_step) for item in histogram.get_recorded_iterator()]

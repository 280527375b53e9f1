"""The one exponential backoff rule, and the three loops that use it."""

from __future__ import annotations

import pytest

from challengectl.ticker import backoff_delay as polling_delay
from service.domain.backoff import doubling_backoff
from service.usecases.rewards import backoff_delay as grant_delay


def test_doubles_from_the_first_delay_up_to_the_cap() -> None:
    assert [doubling_backoff(0.05, 2.0, n) for n in range(1, 9)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


def test_a_long_outage_stays_at_the_cap_without_overflowing() -> None:
    assert doubling_backoff(0.05, 2.0, 100_000) == 2.0


def test_reward_grants_wait_half_a_second_doubling_to_two_seconds_times_jitter() -> None:
    assert [grant_delay(retry, 1.0) for retry in range(4)] == [0.5, 1.0, 2.0, 2.0]
    assert grant_delay(0, 1.2) == pytest.approx(0.6)


def test_polling_waits_twice_the_interval_per_failure_up_to_30_s_or_the_interval() -> None:
    assert [polling_delay(2.0, n) for n in range(1, 6)] == [4.0, 8.0, 16.0, 30.0, 30.0]
    assert polling_delay(60.0, 3) == 60.0
    assert polling_delay(2.0, 5000) == 30.0

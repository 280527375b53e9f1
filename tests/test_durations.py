"""One set of duration rules for every CLI option and the load-test schedules."""

from __future__ import annotations

import pytest

from challengectl.context import parse_duration
from challengectl.durations import duration_seconds
from challengectl.errors import CliError
from challengectl.loadtest.schedule import ScheduleError
from challengectl.loadtest.schedule import parse_duration as parse_schedule_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("2.5", 2.5),
        ("250ms", 0.25),
        ("10s", 10),
        ("2m", 120),
        ("1m30s", 90),
        ("1h", 3600),
        ("2d", 172_800),
        ("1d12h", 129_600),
        (" 5S ", 5),
    ],
)
def test_every_parser_accepts_the_same_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds
    assert parse_duration(text, "--interval") == seconds
    assert parse_schedule_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "m", "1m30", "-5s", "1.s"])
def test_every_parser_refuses_the_same_texts(text: str) -> None:
    with pytest.raises(ValueError):
        duration_seconds(text)
    with pytest.raises(CliError, match="invalid --interval") as refused:
        parse_duration(text, "--interval")
    assert refused.value.exit_code == 2
    with pytest.raises(ScheduleError):
        parse_schedule_duration(text)

"""Load-test profiles and schedules (docs/loadtest.md#profiles, docs/loadtest.md#loadtest-run; P2): the seed-m3 and all-active-500 catalogs
match their definitions, written catalogs load with the same fingerprint, and open-model schedules
(constant, ramp, overrides, scale, warm-up) produce the planned operation counts and due times."""

from __future__ import annotations

from pathlib import Path

import pytest

from challengectl.loadtest.profiles import (
    GAMEPLAY_API_MIX,
    PROFILES,
    TARGET_P95_MS,
    get_profile,
    write_catalog,
)
from challengectl.loadtest.schedule import (
    Ramp,
    ScheduleError,
    build_phases,
    parse_duration,
    parse_phase_override,
)
from service.domain.catalog import load_catalog

CYCLE = [
    ("login_count", "login", 1),
    ("enemy_kills", "statistic", 10),
    ("games_played", "statistic", 2),
    ("headshots", "statistic", 5),
    ("wins", "statistic", 1),
]


@pytest.mark.parametrize("name", ["seed-m3", "all-active-500"])
def test_catalog_matches_the_profile_definition(name: str, tmp_path: Path) -> None:
    profile = get_profile(name)
    path = tmp_path / f"{name}.json"
    fingerprint = write_catalog(profile, path)
    catalog = load_catalog(path)
    assert catalog.fingerprint == fingerprint == profile.catalog().fingerprint
    assert [c.challenge_id for c in catalog.challenges] == [f"challenge-{i:03d}" for i in range(1, 11)]
    assert len(catalog.goals) == 500
    for i, challenge in enumerate(catalog.challenges, start=1):
        stat_code, source, multiplier = CYCLE[(i - 1) % 5]
        assert [g.goal_id for g in challenge.goals] == [f"challenge-{i:03d}-goal-{g:02d}" for g in range(1, 51)]
        for g, goal in enumerate(challenge.goals, start=1):
            assert (goal.event_source, goal.requirement.stat_code) == (source, stat_code)
            assert goal.requirement.target_value == g * multiplier
            assert goal.requirement.progress_mode == "absolute"
            assert (goal.reward.type, goal.reward.reward_id, goal.reward.quantity) == ("WALLET", "GEMS", 10 * g)
            assert goal.prerequisites == () and not (goal.rotation and goal.rotation.enabled)
    defaults = {g.goal_id for g in catalog.default_goals}
    if name == "seed-m3":
        assert defaults == {f"challenge-{i:03d}-goal-01" for i in range(1, 11)}
    else:
        assert len(defaults) == 500


def test_profiles_phases_targets_and_mix() -> None:
    seed = PROFILES["seed-m3"]
    assert [(p.name, p.duration_s, p.rate, p.event_rate) for p in seed.phases] == [
        ("init", 60.0, 600.0, 0.0),
        ("gameplay", 1800.0, 300.0, 500.0),
    ]
    assert [(p.name, p.duration_s, p.rate) for p in PROFILES["all-active-500"].phases][0] == ("init", 600.0, 300.0)
    assert TARGET_P95_MS["initialize_new"] == 50 and TARGET_P95_MS["initialize_returning"] == 10
    assert TARGET_P95_MS["challenges"] == 200 and TARGET_P95_MS["set_active"] == 100
    assert TARGET_P95_MS["claim"] == 200 and TARGET_P95_MS["event"] == 500
    bounds = [bound for _, bound in GAMEPLAY_API_MIX]
    shares = [round(b - a, 2) for a, b in zip([0.0] + bounds, bounds, strict=False)]
    assert dict(zip([name for name, _ in GAMEPLAY_API_MIX], shares, strict=False)) == {
        "initialize": 0.10,
        "set_active": 0.15,
        "claim": 0.05,
        "challenges": 0.35,
        "challenges_active": 0.35,
    }
    with pytest.raises(KeyError, match="unknown profile"):
        get_profile("nope")


def test_durations_and_phase_overrides() -> None:
    assert parse_duration("90") == 90 and parse_duration("1m30s") == 90 and parse_duration("250ms") == 0.25
    assert parse_duration("2h") == 7200
    with pytest.raises(ScheduleError):
        parse_duration("soon")
    override = parse_phase_override("gameplay=40s@150/250")
    assert (override.name, override.duration_s, override.rate, override.event_rate) == ("gameplay", 40, 150, 250)
    assert parse_phase_override("init=20s").rate is None
    with pytest.raises(ScheduleError, match="NAME=DURATION"):
        parse_phase_override("init:20s")


def test_build_phases_scale_overrides_and_warmup() -> None:
    profile = get_profile("seed-m3")
    plans = build_phases(
        profile, duration_s=40, overrides=[parse_phase_override("init=20s@200")], scale=0.5, warmup_s=10
    )
    assert [(p.name, p.kind, p.offset_s, p.duration_s, p.rate, p.event_rate) for p in plans] == [
        ("warmup", "init", 0.0, 10, 100.0, 0.0),
        ("init", "init", 10.0, 20.0, 100.0, 0.0),
        ("gameplay", "gameplay", 30.0, 40, 150.0, 250.0),
    ]
    warmup = plans[0]
    # Linear ramp 10 → 100 RPS over 10 s: (10 + 100) / 2 × 10 = 550 operations.
    assert warmup.api.count == 550 and plans[1].init_index_base == 550
    assert plans[1].api.count == 2000 and plans[2].events.count == 10_000
    # An API-only override keeps gameplay's event/API ratio (500/300).
    gameplay = build_phases(profile, overrides=[parse_phase_override("gameplay=10s@30")])[1]
    assert gameplay.event_rate == pytest.approx(50.0)
    assert [p.name for p in build_phases(profile, duration_s=0)] == ["init"]
    with pytest.raises(ScheduleError, match="unknown phase"):
        build_phases(profile, overrides=[parse_phase_override("cooldown=10s")])
    with pytest.raises(ScheduleError, match="scale"):
        build_phases(profile, scale=0)


def test_ramp_due_times_follow_the_arrival_rate() -> None:
    constant = Ramp(10, 50, 50)
    assert constant.count == 500
    assert [constant.offset_of(i) for i in (0, 1, 499)] == [0.0, 0.02, 9.98]
    ramp = Ramp(10, 10, 100)
    due = [ramp.offset_of(i) for i in range(ramp.count)]
    assert due == sorted(due) and due[-1] < 10
    # Operations due in the first half: ∫0..5 (10 + 9t) dt = 162.5 → 163 operations.
    assert sum(1 for t in due if t < 5) == 163

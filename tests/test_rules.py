"""Unit tests of service.domain.rules: periods (T1, L11, L12), the view (L6), locked (L7), eligibility (R4),
catch-up target selection and timestamp formatting. Pure functions: no database, no Redis."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import rules
from service.domain.catalog import Challenge, Goal, Requirement, Reward, Rotation
from service.domain.rules import GoalView, ProgressRow
from service.transport.timestamps import expiry_fields, format_timestamp

T = datetime(2030, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)  # a Friday
TODAY = datetime(2030, 5, 17, tzinfo=UTC)
YESTERDAY_NOON = datetime(2030, 5, 16, 12, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make_goal(
    goal_id: str,
    *,
    challenge_id: str = "c1",
    mode: str = "relative",
    schedule: str | None = None,
    reset_progress: bool = True,
    allow_reselection: bool = False,
    prerequisites: tuple[str, ...] = (),
    position: int = 0,
) -> Goal:
    rotation = (
        Rotation(
            type="global",
            schedule=schedule,
            reset_progress=reset_progress,
            allow_reselection=allow_reselection,
        )
        if schedule is not None
        else None
    )
    return Goal(
        goal_id=goal_id,
        challenge_id=challenge_id,
        name=goal_id,
        description="",
        event_source="statistic",
        default_assigned=False,
        requirement=Requirement(stat_code="kills", operator=">=", target_value=10, progress_mode=mode),
        reward=Reward(type="ITEM", reward_id="sword", quantity=1),
        prerequisites=prerequisites,
        rotation=rotation,
        position=position,
    )


def make_row(goal: Goal, **overrides: object) -> ProgressRow:
    values: dict[str, object] = dict(
        user_id="u1",
        goal_id=goal.goal_id,
        challenge_id=goal.challenge_id,
        namespace="ns",
        progress=7,
        status=rules.STATUS_IN_PROGRESS,
        completed_at=None,
        claimed_at=None,
        created_at=utc(2030, 1, 1),
        updated_at=T - timedelta(minutes=5),
        is_active=True,
        assigned_at=utc(2030, 1, 1),
        expires_at=None,
        baseline_value=2,
    )
    values.update(overrides)
    return ProgressRow(**values)  # type: ignore[arg-type]


# --- T1: boundaries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "t", "start", "end"),
    [
        ("daily", T, utc(2030, 5, 17), utc(2030, 5, 18)),
        ("daily", utc(2030, 5, 17), utc(2030, 5, 17), utc(2030, 5, 18)),  # exact boundary: new period
        ("daily", utc(2030, 5, 16, 23, 59, 59, 999999), utc(2030, 5, 16), utc(2030, 5, 17)),
        ("daily", utc(2030, 12, 31, 8), utc(2030, 12, 31), utc(2031, 1, 1)),
        ("daily", utc(2032, 2, 28, 8), utc(2032, 2, 28), utc(2032, 2, 29)),  # leap year
        ("weekly", T, utc(2030, 5, 13), utc(2030, 5, 20)),  # 2030-05-13 is a Monday
        ("weekly", utc(2030, 5, 13), utc(2030, 5, 13), utc(2030, 5, 20)),  # exact Monday midnight
        ("weekly", utc(2030, 5, 12, 23, 59, 59), utc(2030, 5, 6), utc(2030, 5, 13)),  # Sunday night
        ("weekly", utc(2030, 5, 19, 18), utc(2030, 5, 13), utc(2030, 5, 20)),  # Sunday
        ("weekly", utc(2031, 1, 1, 10), utc(2030, 12, 30), utc(2031, 1, 6)),  # week across year end
        ("monthly", T, utc(2030, 5, 1), utc(2030, 6, 1)),
        ("monthly", utc(2030, 5, 1), utc(2030, 5, 1), utc(2030, 6, 1)),  # exact boundary
        ("monthly", utc(2030, 4, 30, 23, 59, 59), utc(2030, 4, 1), utc(2030, 5, 1)),  # 30-day month
        ("monthly", utc(2030, 1, 31, 12), utc(2030, 1, 1), utc(2030, 2, 1)),  # 31-day month
        ("monthly", utc(2030, 2, 28, 12), utc(2030, 2, 1), utc(2030, 3, 1)),  # February
        ("monthly", utc(2032, 2, 29, 12), utc(2032, 2, 1), utc(2032, 3, 1)),  # leap February
        ("monthly", utc(2030, 12, 31, 23, 59, 59), utc(2030, 12, 1), utc(2031, 1, 1)),  # year end
        ("monthly", utc(2031, 1, 1), utc(2031, 1, 1), utc(2031, 2, 1)),
    ],
)
def test_period_start_and_next_boundary(schedule: str, t: datetime, start: datetime, end: datetime) -> None:
    assert rules.period_start(schedule, t) == start
    assert rules.next_boundary(schedule, t) == end


def test_weekly_boundary_is_always_a_monday_midnight() -> None:
    for day in range(14):
        t = utc(2030, 5, 10, 15) + timedelta(days=day)
        start = rules.period_start("weekly", t)
        assert start.weekday() == 0
        assert (start.hour, start.minute, start.second, start.microsecond) == (0, 0, 0, 0)
        assert start <= t < start + timedelta(days=7)


def test_boundaries_of_a_non_utc_instant_are_computed_in_utc() -> None:
    # 01:00 on the 18th at UTC+02:00 is 23:00 on the 17th in UTC: still the 17th's period.
    t = datetime(2030, 5, 18, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert rules.period_start("daily", t) == utc(2030, 5, 17)
    assert rules.next_boundary("daily", t) == utc(2030, 5, 18)


def test_naive_datetime_and_unknown_schedule_are_rejected() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        rules.period_start("daily", datetime(2030, 5, 17))
    with pytest.raises(ValueError, match="unknown rotation schedule 'hourly'"):
        rules.next_boundary("hourly", T)


@pytest.mark.parametrize(
    ("schedule", "t", "n", "n_after"),
    [
        ("daily", T, utc(2030, 5, 18), utc(2030, 5, 19)),
        ("weekly", T, utc(2030, 5, 20), utc(2030, 5, 27)),
        ("monthly", T, utc(2030, 6, 1), utc(2030, 7, 1)),
        ("monthly", utc(2030, 11, 15), utc(2030, 12, 1), utc(2031, 1, 1)),
        ("monthly", utc(2030, 12, 1), utc(2031, 1, 1), utc(2031, 2, 1)),  # exact boundary
    ],
)
def test_period_after(schedule: str, t: datetime, n: datetime, n_after: datetime) -> None:
    assert rules.period_after(schedule, t) == (n, n_after)


# --- expiry: L11, L12 ----------------------------------------------------------------------------


def test_expires_in_seconds_floors_and_never_goes_negative() -> None:
    n = utc(2030, 5, 18)
    assert rules.expires_in_seconds(n, utc(2030, 5, 17, 23, 59, 58, 999999)) == 1
    assert rules.expires_in_seconds(n, utc(2030, 5, 17, 23, 59, 59)) == 1
    assert rules.expires_in_seconds(n, utc(2030, 5, 17, 23, 59, 59, 1)) == 0
    assert rules.expires_in_seconds(n, utc(2030, 5, 17)) == 86_400
    assert rules.expires_in_seconds(n, n) == 0
    assert rules.expires_in_seconds(n, n + timedelta(seconds=30)) == 0


def test_expiry_fields_for_rotating_and_plain_goals() -> None:
    daily = make_goal("d", schedule="daily")
    plain = make_goal("p")
    assert rules.expires_at_for(daily, T) == utc(2030, 5, 18)
    assert expiry_fields(daily, T) == ("2030-05-18T00:00:00Z", 11 * 3600 + 29 * 60 + 14)
    assert rules.expires_at_for(plain, T) is None
    assert expiry_fields(plain, T) == ("", 0)


def test_two_users_see_the_same_expiry() -> None:
    # Expiry depends only on the catalog and the instant, never on a user's row: two users' requests
    # at different moments of the same week get the same N.
    goal = make_goal("w", schedule="weekly")
    alice_request, bob_request = utc(2030, 5, 13, 0, 0, 1), T
    alice_at, alice_in = expiry_fields(goal, alice_request)
    bob_at, bob_in = expiry_fields(goal, bob_request)
    assert alice_at == bob_at == "2030-05-20T00:00:00Z"
    assert bob_in == 2 * 86_400 + 41_354
    assert alice_in == 7 * 86_400 - 1


instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC))


@given(instants)
def test_expiry_bounds_hold_at_every_instant(t: datetime) -> None:
    bounds = {"daily": 86_400, "weekly": 7 * 86_400, "monthly": 31 * 86_400}
    seconds = {}
    for schedule, bound in bounds.items():
        start, end = rules.period_start(schedule, t), rules.next_boundary(schedule, t)
        assert start <= t < end
        assert rules.period_start(schedule, start) == start
        seconds[schedule] = rules.expires_in_seconds(end, t)
        assert 0 <= seconds[schedule] <= bound
    assert seconds["weekly"] >= seconds["daily"]
    assert seconds["monthly"] >= seconds["daily"]


# --- displayed progress and the view (L6) --------------------------------------------------------


def test_displayed_progress_absolute_is_raw() -> None:
    goal = make_goal("a", mode="absolute")
    assert rules.displayed_progress(goal, make_row(goal, progress=7, baseline_value=None)) == 7
    assert rules.displayed_progress(goal, make_row(goal, progress=7, baseline_value=5)) == 7


def test_displayed_progress_relative_subtracts_the_baseline() -> None:
    goal = make_goal("r", mode="relative")
    assert rules.displayed_progress(goal, make_row(goal, progress=7, baseline_value=2)) == 5
    assert rules.displayed_progress(goal, make_row(goal, progress=7, baseline_value=None)) == 0
    # A stat value that dropped below the baseline shows 0, never a negative number.
    assert rules.displayed_progress(goal, make_row(goal, progress=3, baseline_value=9)) == 0


def test_view_without_a_row() -> None:
    goal = make_goal("g", schedule="daily")
    assert rules.view(goal, None, T) == GoalView(0, rules.STATUS_NOT_STARTED, None, None)


def test_fresh_row_keeps_its_values() -> None:
    goal = make_goal("g", schedule="daily")
    done = utc(2030, 5, 17, 9)
    row = make_row(
        goal, status=rules.STATUS_COMPLETED, progress=15, baseline_value=3, completed_at=done, updated_at=done
    )
    assert not rules.is_stale(goal, row, T)
    assert rules.view(goal, row, T) == GoalView(12, rules.STATUS_COMPLETED, done, None)


def test_row_written_exactly_at_the_boundary_is_fresh() -> None:
    goal = make_goal("g", schedule="daily")
    assert not rules.is_stale(goal, make_row(goal, updated_at=TODAY), T)
    assert rules.is_stale(goal, make_row(goal, updated_at=TODAY - timedelta(microseconds=1)), T)


def test_stale_resetting_row_shows_not_started() -> None:
    goal = make_goal("g", schedule="daily", reset_progress=True)
    done = utc(2030, 5, 16, 10)
    for status in (rules.STATUS_IN_PROGRESS, rules.STATUS_COMPLETED):
        row = make_row(goal, status=status, progress=15, completed_at=done, updated_at=YESTERDAY_NOON)
        assert rules.is_stale(goal, row, T)
        assert rules.would_reset(goal, row, T)
        assert rules.view(goal, row, T) == GoalView(0, rules.STATUS_NOT_STARTED, None, None)


def test_stale_carry_over_row_keeps_its_values() -> None:
    goal = make_goal("g", schedule="daily", reset_progress=False)
    done = utc(2030, 5, 16, 10)
    row = make_row(
        goal, status=rules.STATUS_COMPLETED, progress=15, baseline_value=3, completed_at=done, updated_at=YESTERDAY_NOON
    )
    assert rules.is_stale(goal, row, T)
    assert not rules.would_reset(goal, row, T)
    assert rules.view(goal, row, T) == GoalView(12, rules.STATUS_COMPLETED, done, None)


@pytest.mark.parametrize("reset_progress", [True, False])
def test_claimed_without_reselection_stays_claimed(reset_progress: bool) -> None:
    goal = make_goal("g", schedule="weekly", reset_progress=reset_progress, allow_reselection=False)
    done, claimed = utc(2030, 1, 2), utc(2030, 1, 3)
    row = make_row(
        goal,
        status=rules.STATUS_CLAIMED,
        progress=20,
        baseline_value=5,
        completed_at=done,
        claimed_at=claimed,
        updated_at=claimed,
    )
    assert rules.is_stale(goal, row, T)
    assert not rules.would_reset(goal, row, T)
    assert not rules.claim_guard_rotated(goal, row, T)
    assert rules.view(goal, row, T) == GoalView(15, rules.STATUS_CLAIMED, done, claimed)


@pytest.mark.parametrize("reset_progress", [True, False])
def test_claimed_with_reselection_shows_reopened(reset_progress: bool) -> None:
    goal = make_goal("g", schedule="monthly", reset_progress=reset_progress, allow_reselection=True)
    claimed = utc(2030, 4, 30, 23)
    row = make_row(
        goal, status=rules.STATUS_CLAIMED, progress=20, completed_at=claimed, claimed_at=claimed, updated_at=claimed
    )
    assert rules.would_reset(goal, row, T)
    assert rules.claim_guard_rotated(goal, row, T)
    assert rules.view(goal, row, T) == GoalView(0, rules.STATUS_NOT_STARTED, None, None)
    # Claimed in the current period: nothing pending.
    fresh = replace(row, updated_at=utc(2030, 5, 1))
    assert not rules.would_reset(goal, fresh, T)
    assert rules.view(goal, fresh, T).status == rules.STATUS_CLAIMED


def test_goal_without_rotation_is_never_stale() -> None:
    goal = make_goal("g", mode="absolute")
    long_ago = utc(2001, 1, 1)
    row = make_row(goal, status=rules.STATUS_COMPLETED, updated_at=long_ago, completed_at=long_ago)
    assert not rules.is_stale(goal, row, T)
    assert not rules.would_reset(goal, row, T)
    assert rules.view(goal, row, T).status == rules.STATUS_COMPLETED


def test_claim_guard_lets_a_carried_over_completed_goal_be_claimed() -> None:
    goal = make_goal("g", schedule="daily", reset_progress=False)
    row = make_row(goal, status=rules.STATUS_COMPLETED, completed_at=YESTERDAY_NOON, updated_at=YESTERDAY_NOON)
    assert not rules.claim_guard_rotated(goal, row, T)
    resetting = make_goal("g", schedule="daily", reset_progress=True)
    assert rules.claim_guard_rotated(resetting, row, T)


# --- locked (L7) ---------------------------------------------------------------------------------


def _locked_fixture() -> tuple[Goal, Goal, Goal, dict[str, Goal]]:
    pre_a = make_goal("pre_a", challenge_id="c1", position=0)
    pre_b = make_goal("pre_b", challenge_id="c2", position=1)  # another challenge
    target = make_goal("target", challenge_id="c1", prerequisites=("pre_a", "pre_b"), position=2)
    return pre_a, pre_b, target, {g.goal_id: g for g in (pre_a, pre_b, target)}


def test_goal_without_prerequisites_is_not_locked() -> None:
    goal = make_goal("free")
    assert not rules.is_locked(goal, {}, {"free": goal}, T)


def test_locked_when_a_prerequisite_has_no_row() -> None:
    pre_a, _, target, goals = _locked_fixture()
    rows = {"pre_a": make_row(pre_a, status=rules.STATUS_COMPLETED, completed_at=TODAY)}
    assert rules.is_locked(target, rows, goals, T)


@pytest.mark.parametrize(
    ("status_b", "locked"),
    [
        (rules.STATUS_NOT_STARTED, True),
        (rules.STATUS_IN_PROGRESS, True),
        (rules.STATUS_COMPLETED, False),
        (rules.STATUS_CLAIMED, False),
    ],
)
def test_locked_follows_the_prerequisite_status_in_another_challenge(status_b: str, locked: bool) -> None:
    pre_a, pre_b, target, goals = _locked_fixture()
    rows = {
        "pre_a": make_row(pre_a, status=rules.STATUS_CLAIMED, completed_at=TODAY, claimed_at=TODAY),
        "pre_b": make_row(pre_b, challenge_id="c2", status=status_b, completed_at=TODAY, is_active=False),
    }
    assert rules.is_locked(target, rows, goals, T) is locked


def test_prerequisite_that_would_reset_locks_the_goal() -> None:
    pre = make_goal("pre", schedule="daily", reset_progress=True)
    target = make_goal("target", prerequisites=("pre",))
    goals = {"pre": pre, "target": target}
    stale = make_row(pre, status=rules.STATUS_COMPLETED, completed_at=YESTERDAY_NOON, updated_at=YESTERDAY_NOON)
    assert rules.is_locked(target, {"pre": stale}, goals, T)
    fresh = replace(stale, updated_at=TODAY)
    assert not rules.is_locked(target, {"pre": fresh}, goals, T)


def test_prerequisite_missing_from_the_goal_index_is_reported() -> None:
    pre = make_goal("pre")
    target = make_goal("target", prerequisites=("pre",))
    rows = {"pre": make_row(pre, status=rules.STATUS_COMPLETED, completed_at=TODAY)}
    with pytest.raises(KeyError, match="prerequisite 'pre' of goal 'target'"):
        rules.is_locked(target, rows, {"target": target}, T)


# --- random-select eligibility (R4) --------------------------------------------------------------


def _eligibility_fixture() -> tuple[Challenge, dict[str, Goal], dict[str, ProgressRow]]:
    outside_pre = make_goal("outside_pre", challenge_id="c2", position=0)
    goals = [
        make_goal("no_row", position=1),
        make_goal("in_progress_active", position=2),
        make_goal("in_progress_inactive", position=3),
        make_goal("completed", position=4),
        make_goal("claimed", position=5),
        make_goal("locked", prerequisites=("outside_pre",), position=6),
        make_goal("reset_completed", schedule="daily", reset_progress=True, position=7),
        make_goal("carried_completed", schedule="daily", reset_progress=False, position=8),
        make_goal("unlocked", prerequisites=("completed",), position=9),
    ]
    challenge = Challenge(challenge_id="c1", name="c1", description="", goals=tuple(goals), position=0)
    by_id = {g.goal_id: g for g in [*goals, outside_pre]}
    rows = {
        "outside_pre": make_row(outside_pre, challenge_id="c2"),
        "in_progress_active": make_row(by_id["in_progress_active"]),
        "in_progress_inactive": make_row(by_id["in_progress_inactive"], is_active=False),
        "completed": make_row(by_id["completed"], status=rules.STATUS_COMPLETED, completed_at=TODAY),
        "claimed": make_row(by_id["claimed"], status=rules.STATUS_CLAIMED, completed_at=TODAY, claimed_at=TODAY),
        "reset_completed": make_row(
            by_id["reset_completed"],
            status=rules.STATUS_COMPLETED,
            completed_at=YESTERDAY_NOON,
            updated_at=YESTERDAY_NOON,
        ),
        "carried_completed": make_row(
            by_id["carried_completed"],
            status=rules.STATUS_COMPLETED,
            completed_at=YESTERDAY_NOON,
            updated_at=YESTERDAY_NOON,
        ),
    }
    return challenge, by_id, rows


def test_eligibility_excludes_completed_claimed_and_locked_goals() -> None:
    challenge, goals, rows = _eligibility_fixture()
    eligible = rules.random_select_eligible(challenge, rows, goals, T, exclude_active=False)
    assert [g.goal_id for g in eligible] == [
        "no_row",
        "in_progress_active",
        "in_progress_inactive",
        "reset_completed",  # completed last period, shown not_started by the view
        "unlocked",
    ]


def test_eligibility_excludes_active_goals_only_with_the_flag() -> None:
    challenge, goals, rows = _eligibility_fixture()
    eligible = rules.random_select_eligible(challenge, rows, goals, T, exclude_active=True)
    assert [g.goal_id for g in eligible] == ["no_row", "in_progress_inactive", "unlocked"]


# --- catch-up targets ----------------------------------------------------------------------------


def test_catch_up_targets_selects_active_unclaimed_stale_rotating_rows() -> None:
    goals = {
        g.goal_id: g
        for g in [
            make_goal("z_weekly_carry", schedule="weekly", reset_progress=False),
            make_goal("m_monthly_reset", schedule="monthly", reset_progress=True),
            make_goal("a_daily_reset", schedule="daily", reset_progress=True),
            make_goal("fresh_daily", schedule="daily"),
            make_goal("claimed_daily", schedule="daily", allow_reselection=True),
            make_goal("inactive_daily", schedule="daily"),
            make_goal("plain", mode="absolute"),
        ]
    }
    long_ago = utc(2030, 3, 1)
    rows = [
        make_row(goals["z_weekly_carry"], updated_at=long_ago),
        make_row(goals["m_monthly_reset"], status=rules.STATUS_COMPLETED, completed_at=long_ago, updated_at=long_ago),
        make_row(goals["a_daily_reset"], updated_at=YESTERDAY_NOON),
        make_row(goals["fresh_daily"], updated_at=TODAY),
        make_row(
            goals["claimed_daily"],
            status=rules.STATUS_CLAIMED,
            completed_at=long_ago,
            claimed_at=long_ago,
            updated_at=long_ago,
        ),
        make_row(goals["inactive_daily"], is_active=False, updated_at=long_ago),
        make_row(goals["plain"], updated_at=long_ago),
        make_row(make_goal("removed_from_catalog", schedule="daily"), updated_at=long_ago),
    ]
    plan = rules.catch_up_targets(goals, rows, T)
    assert not plan.is_empty
    assert plan.goal_ids == ("a_daily_reset", "m_monthly_reset", "z_weekly_carry")
    assert [r.goal_id for r in plan.rows] == list(plan.goal_ids)
    assert plan.boundaries == (utc(2030, 5, 17), utc(2030, 5, 1), utc(2030, 5, 13))
    assert plan.next_boundaries == (utc(2030, 5, 18), utc(2030, 6, 1), utc(2030, 5, 20))
    assert plan.reset_flags == (True, True, False)
    assert plan.now == T


def test_catch_up_with_nothing_stale_is_empty() -> None:
    goal = make_goal("g", schedule="daily")
    plan = rules.catch_up_targets({"g": goal}, [make_row(goal, updated_at=TODAY)], T)
    assert plan.is_empty
    assert plan.rows == () and plan.goal_ids == ()


# --- rows and timestamps -------------------------------------------------------------------------


def test_progress_row_from_mapping_ignores_extra_keys_and_names_missing_ones() -> None:
    goal = make_goal("g")
    row = make_row(goal)
    mapping = {name: getattr(row, name) for name in rules.PROGRESS_ROW_COLUMNS}
    assert ProgressRow.from_mapping({**mapping, "extra": 1}) == row
    del mapping["baseline_value"]
    with pytest.raises(KeyError, match="user 'u1', goal 'g' lacks column 'baseline_value'"):
        ProgressRow.from_mapping(mapping)


def test_format_timestamp() -> None:
    assert format_timestamp(None) == ""
    assert format_timestamp(T) == "2030-05-17T12:30:45Z"  # fraction truncated
    assert format_timestamp(utc(2030, 5, 17)) == "2030-05-17T00:00:00Z"
    plus_two = datetime(2030, 1, 1, 1, 0, 59, 999999, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(plus_two) == "2029-12-31T23:00:59Z"
    assert format_timestamp(utc(999, 1, 2, 3, 4, 5)) == "0999-01-02T03:04:05Z"
    with pytest.raises(ValueError, match="naive datetime"):
        format_timestamp(datetime(2030, 1, 1))

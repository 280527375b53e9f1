"""Catalog loading and validation (docs/catalog.md, behaviour catalogue C1–C6). Pure unit tests: no database."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from service.config.resources import example_catalog_path
from service.domain.catalog import (
    Catalog,
    CatalogError,
    first_lines,
    grouped_warnings,
    load_catalog,
    parse_catalog,
)

DROP = object()  # marks a key to remove from a fixture object


def _apply(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if value is DROP:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def requirement(**overrides: Any) -> dict[str, Any]:
    base = {"statCode": "matches_played", "operator": ">=", "targetValue": 5}
    return _apply(base, overrides)


def reward(**overrides: Any) -> dict[str, Any]:
    return _apply({"type": "ITEM", "rewardId": "sword", "quantity": 1}, overrides)


def rotation(**overrides: Any) -> dict[str, Any]:
    base = {
        "enabled": True,
        "type": "global",
        "schedule": "daily",
        "onExpiry": {"resetProgress": True, "allowReselection": True},
    }
    return _apply(base, overrides)


def goal(goal_id: Any = "g1", **overrides: Any) -> dict[str, Any]:
    base = {
        "goalId": goal_id,
        "name": f"Goal {goal_id}",
        "eventSource": "statistic",
        "requirement": requirement(),
        "reward": reward(),
    }
    return _apply(base, overrides)


def challenge(challenge_id: Any = "c1", goals: list[Any] | None = None, **overrides: Any) -> dict[str, Any]:
    base = {"challengeId": challenge_id, "name": f"Challenge {challenge_id}", "goals": [goal()]}
    if goals is not None:
        overrides["goals"] = goals
    return _apply(base, overrides)


def catalog(*challenges: dict[str, Any]) -> dict[str, Any]:
    return {"challenges": list(challenges or [challenge()])}


def load(document: Any) -> Catalog:
    return parse_catalog(json.dumps(document).encode(), "test-catalog.json")


def errors_of(document: Any) -> list[str]:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(CatalogError) as caught:
        parse_catalog(raw, "test-catalog.json")
    return caught.value.errors


def one_goal(**overrides: Any) -> dict[str, Any]:
    """A catalog of one challenge `c1` holding one goal `g1` with the given overrides."""
    return catalog(challenge(goals=[goal(**overrides)]))


G = "invalid goal 'g1' in challenge 'c1': "
C = "invalid challenge 'c1': "


# --- C1 -------------------------------------------------------------------------------------------


def test_valid_catalog_applies_defaults_and_copies_challenge_id() -> None:
    loaded = load(catalog(challenge("c1", goals=[goal("g1")])))
    only_challenge = loaded.challenges[0]
    assert only_challenge.description == ""
    only_goal = only_challenge.goals[0]
    assert only_goal.challenge_id == "c1"
    assert only_goal.description == ""
    assert only_goal.default_assigned is False
    assert only_goal.prerequisites == ()
    assert only_goal.rotation is None
    assert only_goal.requirement.progress_mode == "absolute"
    assert loaded.warnings == ()


def test_indexes_follow_catalog_order() -> None:
    document = catalog(
        challenge(
            "c1",
            goals=[
                goal("login-1", eventSource="login", defaultAssigned=True, requirement=requirement(statCode="matches")),
                goal("stat-1", requirement=requirement(statCode="matches"), prerequisites=["login-1"]),
            ],
        ),
        challenge(
            "c2",
            goals=[
                goal("stat-2", defaultAssigned=True, requirement=requirement(statCode="kills")),
                goal("stat-3", requirement=requirement(statCode="matches"), prerequisites=["stat-2", "login-1"]),
                goal("login-2", eventSource="login", prerequisites=["login-1"]),
            ],
        ),
    )
    loaded = load(document)
    assert [c.challenge_id for c in loaded.challenges] == ["c1", "c2"]
    assert [c.position for c in loaded.challenges] == [0, 1]
    assert [g.goal_id for g in loaded.goals] == ["login-1", "stat-1", "stat-2", "stat-3", "login-2"]
    assert [g.position for g in loaded.goals] == [0, 1, 2, 3, 4]
    assert [g.challenge_id for g in loaded.goals] == ["c1", "c1", "c2", "c2", "c2"]
    assert loaded.challenges_by_id["c2"] is loaded.challenges[1]
    assert loaded.goals_by_id["stat-3"] is loaded.goals[3]
    # Login goals are never routed by stat code, even when they share one with a statistic goal.
    assert {code: [g.goal_id for g in goals] for code, goals in loaded.goals_by_stat_code.items()} == {
        "matches": ["stat-1", "stat-3"],
        "kills": ["stat-2"],
    }
    assert [g.goal_id for g in loaded.login_goals] == ["login-1", "login-2"]
    assert [g.goal_id for g in loaded.default_goals] == ["login-1", "stat-2"]
    assert loaded.prerequisite_ids == ("login-1", "stat-2")
    assert loaded.path == "test-catalog.json"


def test_explicit_values_are_kept() -> None:
    document = one_goal(
        description="Play a lot",
        defaultAssigned=True,
        requirement=requirement(progressMode="relative", targetValue=2147483647),
        reward=reward(type="WALLET", rewardId="GEMS", quantity=30),
        rotation=rotation(schedule="monthly", onExpiry={"resetProgress": True, "allowReselection": False}),
    )
    loaded_goal = load(document).goals[0]
    assert loaded_goal.description == "Play a lot"
    assert loaded_goal.default_assigned is True
    assert loaded_goal.requirement.progress_mode == "relative"
    assert loaded_goal.requirement.target_value == 2147483647
    assert loaded_goal.reward.type == "WALLET"
    assert (loaded_goal.reward.reward_id, loaded_goal.reward.quantity) == ("GEMS", 30)
    assert loaded_goal.rotation is not None
    assert loaded_goal.rotation.schedule == "monthly"
    assert loaded_goal.rotation.reset_progress is True
    assert loaded_goal.rotation.allow_reselection is False
    assert hash(loaded_goal) == hash(copy.deepcopy(loaded_goal))


def test_null_values_count_as_absent() -> None:
    loaded_goal = load(one_goal(description=None, prerequisites=None, rotation=None)).goals[0]
    assert (loaded_goal.description, loaded_goal.prerequisites, loaded_goal.rotation) == ("", (), None)


def test_bundled_example_loads_cleanly() -> None:
    loaded = load_catalog(example_catalog_path())
    assert loaded.warnings == ()
    assert 3 <= len(loaded.challenges) <= 4
    assert {"s1-welcome", "s1-veteran", "weekly-captures"} <= set(loaded.goals_by_id)
    schedules = {g.rotation.schedule for g in loaded.goals if g.rotation}
    assert schedules == {"daily", "weekly", "monthly"}
    assert loaded.login_goals and loaded.goals_by_stat_code
    assert {g.requirement.progress_mode for g in loaded.goals} == {"absolute", "relative"}
    assert any(not g.default_assigned for g in loaded.goals)
    assert {(g.rotation.allow_reselection) for g in loaded.goals if g.rotation} == {True, False}
    cross_challenge = [
        g for g in loaded.goals if any(loaded.goals_by_id[p].challenge_id != g.challenge_id for p in g.prerequisites)
    ]
    assert cross_challenge


def test_goal_and_challenge_fragments_are_json_of_the_catalog_values() -> None:
    document = catalog(
        challenge(
            "c1",
            description='Ünïcode "quoted"',
            goals=[
                goal("g0"),
                goal("g1", description="Line\nbreak", requirement=requirement(progressMode=""), prerequisites=["g0"]),
            ],
        )
    )
    loaded = load(document)
    fragments = {key: json.loads(value) for key, value in loaded.goal_fragments["g1"].items()}
    assert fragments == {
        "goalId": "g1",
        "name": "Goal g1",
        "description": "Line\nbreak",
        "challengeId": "c1",
        "requirement": {"statCode": "matches_played", "operator": ">=", "targetValue": 5, "progressMode": "absolute"},
        "reward": {"type": "ITEM", "rewardId": "sword", "quantity": 1},
        "prerequisites": ["g0"],
        "target": 5,
    }
    assert list(json.loads(loaded.goal_fragments["g1"]["requirement"])) == [
        "statCode",
        "operator",
        "targetValue",
        "progressMode",
    ]
    challenge_fragments = {key: json.loads(value) for key, value in loaded.challenge_fragments["c1"].items()}
    assert challenge_fragments == {"challengeId": "c1", "name": "Challenge c1", "description": 'Ünïcode "quoted"'}


# --- C2: one rule at a time -------------------------------------------------------------------------


def test_v1_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "challenges.json"
    with pytest.raises(CatalogError) as caught:
        load_catalog(missing)
    assert caught.value.errors == [f"catalog file not found: {missing}"]


def test_v2_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "challenges.json"
    path.write_bytes(b'{"challenges": [\n  {"challengeId": "c1",}\n]}')
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert caught.value.errors == [
        "invalid JSON in catalog: Expecting property name enclosed in double quotes (line 2, column 24)"
    ]


def test_v2_invalid_utf8_gives_line_and_column() -> None:
    assert errors_of(b'{"challenges": [\n  {"challengeId": "c\xff1"}]}') == [
        "invalid JSON in catalog: invalid UTF-8 byte 0xff (line 2, column 21)"
    ]


V3_CASES = [
    ({"challenges": {}}, "invalid type for 'challenges': expected array"),
    ([], "invalid type for 'catalog': expected object"),
    ({"challenges": ["c1"]}, "invalid type for 'challenges[0]': expected object"),
    (catalog(challenge(name=7)), C + "invalid type for 'name': expected string"),
    (catalog(challenge(description=["x"])), C + "invalid type for 'description': expected string"),
    (catalog(challenge(goals={"g1": {}})), C + "invalid type for 'goals': expected array"),
    (catalog(challenge(goals=["g1"])), C + "invalid type for 'goals[0]': expected object"),
    (catalog(challenge(7)), "invalid challenge '': invalid type for 'challengeId': expected string"),
    (one_goal(goal_id=False), "invalid goal '' in challenge 'c1': invalid type for 'goalId': expected string"),
    (one_goal(defaultAssigned="yes"), G + "invalid type for 'defaultAssigned': expected boolean"),
    (one_goal(defaultAssigned=1), G + "invalid type for 'defaultAssigned': expected boolean"),
    (one_goal(eventSource=1), G + "invalid type for 'eventSource': expected string"),
    (one_goal(requirement=[]), G + "invalid type for 'requirement': expected object"),
    (one_goal(requirement=requirement(targetValue="5")), G + "invalid type for 'targetValue': expected integer"),
    (one_goal(requirement=requirement(targetValue=True)), G + "invalid type for 'targetValue': expected integer"),
    (one_goal(requirement=requirement(targetValue=2147483648)), G + "invalid type for 'targetValue': expected integer"),
    (one_goal(requirement=requirement(progressMode=1)), G + "invalid type for 'progressMode': expected string"),
    (one_goal(reward="sword"), G + "invalid type for 'reward': expected object"),
    (one_goal(reward=reward(quantity=1.5)), G + "invalid type for 'quantity': expected integer"),
    (one_goal(prerequisites="g0"), G + "invalid type for 'prerequisites': expected array"),
    (one_goal(prerequisites=[3]), G + "invalid type for 'prerequisites[0]': expected string"),
    (one_goal(rotation=True), G + "invalid type for 'rotation': expected object"),
    (one_goal(rotation=rotation(enabled="true")), G + "invalid type for 'enabled': expected boolean"),
    (
        one_goal(requirement=requirement(progressMode="relative"), rotation=rotation(onExpiry=[])),
        G + "invalid type for 'onExpiry': expected object",
    ),
    (
        one_goal(
            requirement=requirement(progressMode="relative"),
            rotation=rotation(onExpiry={"resetProgress": "yes", "allowReselection": False}),
        ),
        G + "invalid type for 'onExpiry.resetProgress': expected boolean",
    ),
]


@pytest.mark.parametrize(("document", "message"), V3_CASES)
def test_v3_wrong_json_type(document: Any, message: str) -> None:
    assert errors_of(document) == [message]


@pytest.mark.parametrize("literal", ["5.0", "5e0", "5E+0", "0.5e1", "true", '"5"', "NaN", "1" * 40])
def test_v3_target_value_must_be_a_plain_integer_literal(literal: str) -> None:
    text = json.dumps(one_goal(requirement=requirement(targetValue=999_000))).replace("999000", literal)
    assert errors_of(text.encode()) == [G + "invalid type for 'targetValue': expected integer"]


@pytest.mark.parametrize("literal", ["1.0", "1e2"])
def test_v3_quantity_must_be_a_plain_integer_literal(literal: str) -> None:
    text = json.dumps(one_goal(reward=reward(quantity=999_000))).replace("999000", literal)
    assert errors_of(text.encode()) == [G + "invalid type for 'quantity': expected integer"]


RULE_CASES = {
    "V4 empty list": ({"challenges": []}, "config must have at least one challenge"),
    "V4 missing key": ({}, "config must have at least one challenge"),
    "V5 empty": (catalog(challenge("")), "invalid challenge '': challenge ID cannot be empty"),
    "V5 missing": (catalog(challenge(challengeId=DROP)), "invalid challenge '': challenge ID cannot be empty"),
    "V6": (catalog(challenge(name="")), C + "challenge name cannot be empty"),
    "V6 missing": (catalog(challenge(name=DROP)), C + "challenge name cannot be empty"),
    "V7": (catalog(challenge(goals=[])), C + "challenge must have at least one goal"),
    "V7 missing": (catalog(challenge(goals=DROP)), C + "challenge must have at least one goal"),
    "V8": (
        catalog(challenge("c1", goals=[goal("g1")]), challenge("c1", goals=[goal("g2")])),
        C + "duplicate challenge ID: c1",
    ),
    "V9 challenge slash": (
        catalog(challenge("a/b")),
        "invalid challenge 'a/b': challenge ID 'a/b' is invalid: contains '/', whitespace or a control character",
    ),
    "V9 challenge space": (
        catalog(challenge("a b")),
        "invalid challenge 'a b': challenge ID 'a b' is invalid: contains '/', whitespace or a control character",
    ),
    "V9 challenge control": (
        catalog(challenge("a\u0007b")),
        "invalid challenge 'a\u0007b': challenge ID 'a\u0007b' is invalid: "
        "contains '/', whitespace or a control character",
    ),
    "V9 challenge length": (
        catalog(challenge("c" * 101)),
        f"invalid challenge '{'c' * 101}': challenge ID '{'c' * 101}' is invalid: longer than 100 characters",
    ),
    "V9 challenge reserved": (
        catalog(challenge("initialize")),
        "invalid challenge 'initialize': challenge ID 'initialize' is invalid: 'initialize' is reserved",
    ),
    "V9 goal slash": (
        one_goal(goal_id="g/1"),
        "invalid goal 'g/1' in challenge 'c1': goal ID 'g/1' is invalid: "
        "contains '/', whitespace or a control character",
    ),
    "V9 goal tab": (
        one_goal(goal_id="g\t1"),
        "invalid goal 'g\t1' in challenge 'c1': goal ID 'g\t1' is invalid: "
        "contains '/', whitespace or a control character",
    ),
    "V9 goal length": (
        one_goal(goal_id="g" * 101),
        f"invalid goal '{'g' * 101}' in challenge 'c1': goal ID '{'g' * 101}' is invalid: longer than 100 characters",
    ),
    "V10": (one_goal(goal_id=""), "invalid goal '' in challenge 'c1': goal ID cannot be empty"),
    "V10 missing": (one_goal(goalId=DROP), "invalid goal '' in challenge 'c1': goal ID cannot be empty"),
    "V11": (one_goal(name=""), G + "goal name cannot be empty"),
    "V12": (one_goal(eventSource=""), G + "event_source cannot be empty"),
    "V12 missing": (one_goal(eventSource=DROP), G + "event_source cannot be empty"),
    "V13": (one_goal(eventSource="Login"), G + "invalid event_source 'Login' (must be 'login' or 'statistic')"),
    "V14": (one_goal(requirement=requirement(statCode="")), G + "stat_code cannot be empty"),
    "V15": (one_goal(requirement=requirement(operator=">")), G + "unsupported operator '>' (only '>=' supported)"),
    "V15 missing": (
        one_goal(requirement=requirement(operator=DROP)),
        G + "unsupported operator '' (only '>=' supported)",
    ),
    "V16 zero": (one_goal(requirement=requirement(targetValue=0)), G + "target_value must be positive"),
    "V16 negative": (one_goal(requirement=requirement(targetValue=-3)), G + "target_value must be positive"),
    "V16 missing": (one_goal(requirement=requirement(targetValue=DROP)), G + "target_value must be positive"),
    "V17": (one_goal(requirement=requirement(progressMode="delta")), G + "invalid progressMode 'delta'"),
    "V18": (
        one_goal(reward=reward(type="item")),
        G + "unsupported reward type 'item' (only 'ITEM' or 'WALLET' allowed)",
    ),
    "V18 missing": (
        one_goal(reward=reward(type=DROP)),
        G + "unsupported reward type '' (only 'ITEM' or 'WALLET' allowed)",
    ),
    "V19": (one_goal(reward=reward(rewardId="")), G + "reward_id cannot be empty"),
    "V20": (one_goal(reward=reward(quantity=0)), G + "reward quantity must be positive"),
    "V20 missing": (one_goal(reward=reward(quantity=DROP)), G + "reward quantity must be positive"),
    "V21": (
        catalog(challenge("c1", goals=[goal("g1")]), challenge("c2", goals=[goal("g1")])),
        "invalid goal 'g1' in challenge 'c2': duplicate goal ID: g1",
    ),
    "V22": (
        one_goal(requirement=requirement(progressMode="relative"), rotation=rotation(schedule="hourly")),
        G + "invalid rotation schedule 'hourly'",
    ),
    "V22 missing": (
        one_goal(requirement=requirement(progressMode="relative"), rotation=rotation(schedule=DROP)),
        G + "invalid rotation schedule ''",
    ),
    "V23": (
        one_goal(requirement=requirement(progressMode="relative"), rotation=rotation(type="per-user")),
        G + "invalid rotation type 'per-user'",
    ),
    "V24 explicit": (
        one_goal(requirement=requirement(progressMode="absolute"), rotation=rotation()),
        G + "rotation requires progressMode 'relative', got 'absolute'",
    ),
    "V24 default": (one_goal(rotation=rotation()), G + "rotation requires progressMode 'relative', got 'absolute'"),
    "V25": (one_goal(prerequisites=["ghost"]), G + "goal 'g1' has invalid prerequisite: 'ghost' does not exist"),
    "V26 self": (one_goal(prerequisites=["g1"]), G + "prerequisite cycle detected: g1 -> g1"),
}


@pytest.mark.parametrize(("document", "message"), RULE_CASES.values(), ids=RULE_CASES.keys())
def test_rule_rejects_with_exact_message(document: Any, message: str) -> None:
    assert errors_of(document) == [message]


def test_v9_reserved_word_applies_to_challenge_ids_only() -> None:
    assert load(one_goal(goal_id="initialize")).goals[0].goal_id == "initialize"


def test_v9_id_of_exactly_100_characters_is_valid() -> None:
    loaded = load(catalog(challenge("c" * 100, goals=[goal("g" * 100)])))
    assert loaded.goals[0].goal_id == "g" * 100


def test_v26_longer_cycle_is_reported_once_on_its_first_member() -> None:
    document = catalog(
        challenge("c1", goals=[goal("a", prerequisites=["b"]), goal("b", prerequisites=["c"])]),
        challenge("c2", goals=[goal("c", prerequisites=["a"])]),
    )
    assert errors_of(document) == ["invalid goal 'a' in challenge 'c1': prerequisite cycle detected: a -> b -> c -> a"]


def test_v26_path_follows_the_first_prerequisite_that_stays_on_the_cycle() -> None:
    # From b, 'c' comes first but only leads back to b; 'ok' is not on any cycle; 'd' closes the cycle.
    document = catalog(
        challenge(
            "c1",
            goals=[
                goal("ok"),
                goal("a", prerequisites=["ok", "b"]),
                goal("b", prerequisites=["c", "ok", "d"]),
                goal("c", prerequisites=["b"]),
                goal("d", prerequisites=["a"]),
            ],
        )
    )
    assert errors_of(document) == ["invalid goal 'a' in challenge 'c1': prerequisite cycle detected: a -> b -> d -> a"]


def test_v26_prefers_the_first_listed_prerequisite_even_over_closing_the_cycle() -> None:
    document = catalog(challenge("c1", goals=[goal("a", prerequisites=["b", "a"]), goal("b", prerequisites=["a"])]))
    assert errors_of(document) == ["invalid goal 'a' in challenge 'c1': prerequisite cycle detected: a -> b -> a"]


def test_v26_separate_cycles_are_each_reported_in_file_order() -> None:
    document = catalog(
        challenge(
            "c1",
            goals=[
                goal("x", prerequisites=["y"]),
                goal("p", prerequisites=["p"]),
                goal("y", prerequisites=["x"]),
            ],
        )
    )
    assert errors_of(document) == [
        "invalid goal 'x' in challenge 'c1': prerequisite cycle detected: x -> y -> x",
        "invalid goal 'p' in challenge 'c1': prerequisite cycle detected: p -> p",
    ]


def test_v26_a_long_acyclic_chain_is_accepted() -> None:
    goals = [goal("n0")] + [goal(f"n{i}", prerequisites=[f"n{i - 1}"]) for i in range(1, 3000)]
    assert len(load(catalog(challenge(goals=goals))).goals) == 3000


# --- C3 -------------------------------------------------------------------------------------------


def test_all_errors_are_reported_in_file_order() -> None:
    document = catalog(
        challenge(
            "c1",
            name="",
            goals=[
                goal("g1", name="", requirement=requirement(targetValue=0), prerequisites=["ghost"]),
                goal("g2", eventSource="kill", reward=reward(type="GOLD", quantity=-1)),
            ],
        ),
        challenge("c1", goals=[goal("g2", requirement=requirement(operator="=="), prerequisites=["g2"])]),
        challenge("initialize", goals=[goal("g3", rotation=rotation(schedule="yearly"))]),
    )
    errors = errors_of(document)
    assert errors == [
        "invalid challenge 'c1': challenge name cannot be empty",
        "invalid goal 'g1' in challenge 'c1': goal name cannot be empty",
        "invalid goal 'g1' in challenge 'c1': target_value must be positive",
        "invalid goal 'g2' in challenge 'c1': invalid event_source 'kill' (must be 'login' or 'statistic')",
        "invalid goal 'g2' in challenge 'c1': unsupported reward type 'GOLD' (only 'ITEM' or 'WALLET' allowed)",
        "invalid goal 'g2' in challenge 'c1': reward quantity must be positive",
        "invalid challenge 'c1': duplicate challenge ID: c1",
        "invalid goal 'g2' in challenge 'c1': unsupported operator '==' (only '>=' supported)",
        "invalid goal 'g2' in challenge 'c1': duplicate goal ID: g2",
        "invalid challenge 'initialize': challenge ID 'initialize' is invalid: 'initialize' is reserved",
        "invalid goal 'g3' in challenge 'initialize': invalid rotation schedule 'yearly'",
        "invalid goal 'g3' in challenge 'initialize': rotation requires progressMode 'relative', got 'absolute'",
        "invalid goal 'g1' in challenge 'c1': goal 'g1' has invalid prerequisite: 'ghost' does not exist",
    ]


def test_catalog_error_text_is_one_error_per_line() -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(json.dumps(one_goal(name="", reward=reward(rewardId=""))).encode(), "x.json")
    assert str(caught.value) == f"{G}goal name cannot be empty\n{G}reward_id cannot be empty"


def test_missing_requirement_and_reward_report_each_field() -> None:
    assert errors_of(one_goal(requirement=DROP, reward=DROP)) == [
        G + "stat_code cannot be empty",
        G + "unsupported operator '' (only '>=' supported)",
        G + "target_value must be positive",
        G + "unsupported reward type '' (only 'ITEM' or 'WALLET' allowed)",
        G + "reward_id cannot be empty",
        G + "reward quantity must be positive",
    ]


# --- C4 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "disabled",
    [
        {"enabled": False, "type": "nonsense", "schedule": "hourly", "onExpiry": "x", "extra": 1},
        {"type": 5, "schedule": None},
        {},
    ],
)
def test_disabled_rotation_is_not_validated(disabled: dict[str, Any]) -> None:
    loaded = load(one_goal(rotation=disabled))
    assert loaded.goals[0].rotation is None
    assert loaded.warnings == ()


def test_absent_rotation_allows_an_absolute_goal() -> None:
    assert load(one_goal(requirement=requirement(progressMode="absolute"))).goals[0].rotation is None


@pytest.mark.parametrize("mode", ["Absolute", "RELATIVE", "delta", " absolute"])
def test_progress_mode_is_case_sensitive(mode: str) -> None:
    assert errors_of(one_goal(requirement=requirement(progressMode=mode))) == [G + f"invalid progressMode '{mode}'"]


def test_invalid_progress_mode_does_not_also_report_v24() -> None:
    document = one_goal(requirement=requirement(progressMode="Relative"), rotation=rotation())
    assert errors_of(document) == [G + "invalid progressMode 'Relative'"]


@pytest.mark.parametrize(
    ("given", "normalised"), [("", "absolute"), ("absolute", "absolute"), ("relative", "relative")]
)
def test_progress_mode_accepted_values(given: str, normalised: str) -> None:
    assert load(one_goal(requirement=requirement(progressMode=given))).goals[0].requirement.progress_mode == normalised


# --- C5 -------------------------------------------------------------------------------------------


def test_unknown_and_legacy_keys_are_ignored_and_reported_as_warnings() -> None:
    document = {
        "version": 2,
        "challenges": [
            challenge(
                "c1",
                owner="ops",
                goals=[
                    goal(
                        "g1",
                        type="STATISTIC",
                        daily=True,
                        goalID="shadow",
                        requirement=requirement(progressMode="relative", unit="matches"),
                        reward=reward(note="x"),
                        rotation=rotation(
                            timezone="UTC", onExpiry={"resetProgress": True, "allowReselection": True, "grace": 1}
                        ),
                    )
                ],
            )
        ],
    }
    loaded = load(document)
    assert loaded.goals[0].goal_id == "g1"
    assert loaded.warnings == (
        "catalog: unknown key 'version' is ignored",
        "challenge 'c1': unknown key 'owner' is ignored",
        "goal 'g1' in challenge 'c1': unknown key 'requirement.unit' is ignored",
        "goal 'g1' in challenge 'c1': unknown key 'reward.note' is ignored",
        "goal 'g1' in challenge 'c1': unknown key 'rotation.timezone' is ignored",
        "goal 'g1' in challenge 'c1': unknown key 'rotation.onExpiry.grace' is ignored",
        "goal 'g1' in challenge 'c1': legacy key 'type' is ignored",
        "goal 'g1' in challenge 'c1': legacy key 'daily' is ignored",
        "goal 'g1' in challenge 'c1': unknown key 'goalID' is ignored "
        "(keys are case-sensitive: did you mean 'goalId'?)",
    )


def test_keys_are_matched_case_sensitively() -> None:
    document = catalog(challenge(goals=[goal("g1", Name="Wrong case", name=DROP)]))
    with pytest.raises(CatalogError) as caught:
        parse_catalog(json.dumps(document).encode(), "x.json")
    assert caught.value.errors == [G + "goal name cannot be empty"]
    assert caught.value.warnings == [
        "goal 'g1' in challenge 'c1': unknown key 'Name' is ignored (keys are case-sensitive: did you mean 'name'?)"
    ]


def test_semantic_warnings() -> None:
    relative = requirement(progressMode="relative")
    document = catalog(
        challenge(
            "c1",
            goals=[
                goal("g0"),
                goal("g1", requirement=relative, rotation=rotation(schedule="daily")),
                goal(
                    "g2",
                    requirement=relative,
                    rotation=rotation(schedule="weekly", onExpiry={"allowReselection": True}),
                ),
                goal("g3", defaultAssigned=True, prerequisites=["g0"]),
            ],
        )
    )
    assert load(document).warnings == (
        "goal 'g2' in challenge 'c1': rotation is enabled without onExpiry.resetProgress, "
        "so progress carries over between periods",
        "goal 'g3' in challenge 'c1': default-assigned goal has prerequisites; "
        "every player gets it at initialize, locked until the prerequisites are met",
        "challenge 'c1': rotating goals use different schedules (daily, weekly); "
        "the rotation status endpoint reports the first one, 'daily' of goal 'g1'",
    )


# --- C6 -------------------------------------------------------------------------------------------


def _reference_document() -> dict[str, Any]:
    return catalog(
        challenge(
            "c1",
            description="First",
            goals=[
                goal("g0", eventSource="login", defaultAssigned=True),
                goal("g1", requirement=requirement(progressMode="relative"), rotation=rotation(), prerequisites=["g0"]),
            ],
        ),
        challenge("c2", goals=[goal("g2", reward=reward(type="WALLET", rewardId="GEMS", quantity=3))]),
    )


def _reorder_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reorder_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reorder_keys(item) for item in value]
    return value


def test_fingerprint_matches_the_glossary_definition() -> None:
    document = catalog(challenge("c1", goals=[goal("g1", requirement=requirement(progressMode=""))]))
    model = {
        "challenges": [
            {
                "challengeId": "c1",
                "name": "Challenge c1",
                "description": "",
                "goals": [
                    {
                        "goalId": "g1",
                        "name": "Goal g1",
                        "description": "",
                        "eventSource": "statistic",
                        "defaultAssigned": False,
                        "requirement": {
                            "statCode": "matches_played",
                            "operator": ">=",
                            "targetValue": 5,
                            "progressMode": "absolute",
                        },
                        "reward": {"type": "ITEM", "rewardId": "sword", "quantity": 1},
                        "prerequisites": [],
                        "rotation": {"enabled": False},
                    }
                ],
            }
        ]
    }
    canonical = json.dumps(model, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    fingerprint = load(document).fingerprint
    assert fingerprint == hashlib.sha256(canonical).hexdigest()[:16]
    assert len(fingerprint) == 16


def test_fingerprint_ignores_formatting_key_order_and_unknown_keys() -> None:
    document = _reference_document()
    baseline = load(document).fingerprint
    pretty = json.dumps(_reorder_keys(document), indent=4).encode()
    assert parse_catalog(pretty, "other-path.json").fingerprint == baseline
    with_noise = copy.deepcopy(document)
    with_noise["comment"] = "ignored"
    with_noise["challenges"][0]["goals"][0]["type"] = "LOGIN"
    with_noise["challenges"][0]["goals"][0]["requirement"]["unit"] = "x"
    assert load(with_noise).fingerprint == baseline


def test_fingerprint_treats_defaults_as_their_explicit_values() -> None:
    explicit = one_goal(
        description="",
        defaultAssigned=False,
        prerequisites=[],
        requirement=requirement(progressMode="absolute"),
        rotation={"enabled": False, "schedule": "daily"},
    )
    implicit = one_goal(requirement=requirement(progressMode=""))
    assert load(explicit).fingerprint == load(implicit).fingerprint == load(one_goal()).fingerprint


def _mutations() -> dict[str, Any]:
    def edit(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
        document = _reference_document()
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return document

    first_goals = ("challenges", 0, "goals")
    swapped = _reference_document()
    swapped["challenges"].reverse()
    return {
        "target": edit((*first_goals, 0, "requirement", "targetValue"), 6),
        "goal name": edit((*first_goals, 0, "name"), "Renamed"),
        "challenge description": edit(("challenges", 0, "description"), "Changed"),
        "defaultAssigned": edit((*first_goals, 0, "defaultAssigned"), False),
        "allowReselection": edit((*first_goals, 1, "rotation", "onExpiry", "allowReselection"), False),
        "schedule": edit((*first_goals, 1, "rotation", "schedule"), "weekly"),
        "progress mode": edit((*first_goals, 0, "requirement", "progressMode"), "relative"),
        "reward quantity": edit(("challenges", 1, "goals", 0, "reward", "quantity"), 4),
        "prerequisites": edit((*first_goals, 1, "prerequisites"), []),
        "event source": edit((*first_goals, 0, "eventSource"), "statistic"),
        "challenge order": swapped,
    }


@pytest.mark.parametrize("mutated", _mutations().values(), ids=_mutations().keys())
def test_fingerprint_changes_on_any_semantic_change(mutated: dict[str, Any]) -> None:
    assert load(mutated).fingerprint != load(_reference_document()).fingerprint


def test_a_whole_file_in_another_shape_is_one_error_with_the_fix() -> None:
    """The reference load test's catalog shape (snake_case keys, `id`) gives one line, not one per field."""
    exported = {
        "challenges": [
            {
                "id": f"c{index}",
                "name": "C",
                "goals": [
                    {"id": f"g{index}-{n}", "name": "G", "event_source": "statistic", "default_assigned": True}
                    for n in range(10)
                ],
            }
            for index in range(50)
        ]
    }
    errors = errors_of(exported)
    assert len(errors) == 1
    assert "not in the challenges.json shape" in errors[0]
    assert "'id' → 'challengeId'" in errors[0] and "'event_source' → 'eventSource'" in errors[0]
    assert "rename the keys" in errors[0]


def test_one_stray_snake_case_key_is_not_a_shape_mismatch() -> None:
    warnings = load({"challenges": [challenge("c1", goals=[goal("g1"), goal("g2", event_kind="x")])]}).warnings
    assert warnings == ("goal 'g2' in challenge 'c1': unknown key 'event_kind' is ignored",)


def test_identical_warnings_are_grouped_with_a_count() -> None:
    goals = [goal(f"g{n}", type="STATISTIC") for n in range(500)]
    loaded = load({"challenges": [challenge("c1", goals=goals)], "version": 2})
    assert len(loaded.warnings) == 501
    assert grouped_warnings(loaded.warnings) == [
        "catalog: unknown key 'version' is ignored",
        "legacy key 'type' is ignored (500×: goal 'g0' in challenge 'c1', goal 'g1' in challenge 'c1', "
        "goal 'g2' in challenge 'c1', ...)",
    ]


def test_first_lines_lists_twenty_then_the_rest_as_a_count() -> None:
    lines = [f"error {n}" for n in range(2510)]
    shown = first_lines(lines)
    assert shown[:20] == lines[:20] and shown[20:] == ["... and 2490 more"]
    assert first_lines(lines[:20]) == lines[:20]

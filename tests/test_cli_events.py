"""`challengectl events send|replay` and the `trigger-event` alias against a real `serve` (docs/cli.md#commands,
docs/events.md#onmessage-services, docs/events.md#de-duplication; X1, X12): both RPCs, `--wait`, rejected events, an unreachable service, the open-model
summary, files with generated ids, and a replay that counts nothing twice."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from challengectl.cli import main
from challengectl.commands.events import load_event_file
from challengectl.uuid7 import uuid7_time
from service.config.resources import example_catalog_path
from service.domain.catalog import load_catalog
from service.transport.auth import mint_token
from tests.servers import free_port
from tests.support.cli import isolate_cli
from tests.support.serve import ServeProcess, service_env

pytestmark = pytest.mark.integration

SECRET = "cli-events-secret-0123456789abcdef"
CATALOG = load_catalog(example_catalog_path())


@pytest.fixture(scope="module")
def service(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[ServeProcess]:
    with ServeProcess(service_env(pg_url, redis_url, f"{redis_prefix}ev", SECRET)) as serve:
        serve.redis_prefix = f"{redis_prefix}ev"  # type: ignore[attr-defined]
        yield serve


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path, CHALLENGE_JWT_SECRET=SECRET)


def cli(service: ServeProcess, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `challengectl <service flags> <args>` in-process (stdout piped: JSON/NDJSON)."""
    flags = [
        "--api-url",
        f"http://127.0.0.1:{service.http_port}/challenge",
        "--admin-url",
        f"http://127.0.0.1:{service.admin_port}",
        "--grpc-addr",
        f"127.0.0.1:{service.grpc_port}",
    ]
    with pytest.raises(SystemExit) as done:
        main([*flags, *args])
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def ndjson(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def new_player(service: ServeProcess, user: str | None = None) -> str:
    """A fresh player with their default goals (POST /v1/challenges/initialize)."""
    user = user or f"ev-{uuid.uuid4().hex[:10]}"
    request = urllib.request.Request(
        service.api("/challenge/v1/challenges/initialize"),
        method="POST",
        data=b"",
        headers={"Authorization": f"Bearer {mint_token(SECRET.encode(), user)}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    return user


def progress(service: ServeProcess, user: str) -> dict[str, int]:
    """goal id → progress, as the player API shows it."""
    request = urllib.request.Request(
        service.api("/challenge/v1/challenges"),
        headers={"Authorization": f"Bearer {mint_token(SECRET.encode(), user)}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.loads(response.read())
    return {goal["goalId"]: goal["progress"] for challenge in body["challenges"] for goal in challenge["goals"]}


def routed_default_goals(event_source: str, stat_code: str | None = None) -> set[str]:
    """The default goals an event feeds (docs/events.md#routing), from the catalog the service runs."""
    return {
        goal.goal_id
        for goal in CATALOG.default_goals
        if goal.event_source == event_source and (stat_code is None or goal.requirement.stat_code == stat_code)
    }


LOGIN_GOAL = "s1-regular"  # default, login, absolute, target 7
STAT_CODE, STAT_GOAL = "matches_won", "weekly-wins"  # default, statistic, relative


@pytest.mark.parametrize("rpc", ["ags", "publish"])
def test_send_login_counts_one_login(service: ServeProcess, capsys, rpc: str) -> None:
    user = new_player(service)
    code, out, err = cli(service, ["events", "send", "login", "--user", user, "--event-rpc", rpc], capsys)
    assert code == 0, err
    (call,) = ndjson(out)
    assert call["rpc"] == rpc and call["rejected"] == 0 and call["duration_ms"] > 0
    (event_id,) = call["event_ids"]
    assert uuid.UUID(event_id).version == 7 and uuid7_time(event_id).year >= 2024
    if rpc == "publish":
        assert (call["accepted"], call["duplicates"], call["skipped"], call["committed"]) == (1, 0, 0, True)
    else:  # the AGS services answer Empty: no counts to report
        assert call["accepted"] is None and call["committed"] is None
    assert progress(service, user)[LOGIN_GOAL] == 1


@pytest.mark.parametrize("rpc", ["ags", "publish"])
def test_send_stat_sets_progress(service: ServeProcess, capsys, rpc: str) -> None:
    user = new_player(service)
    code, out, err = cli(
        service,
        [
            "events",
            "send",
            "stat",
            "--user",
            user,
            "--stat-code",
            STAT_CODE,
            "--value",
            "2",
            "--inc",
            "2",
            "--event-rpc",
            rpc,
        ],
        capsys,
    )
    assert code == 0, err
    (call,) = ndjson(out)
    assert call["rejected"] == 0
    if rpc == "publish":
        assert (call["accepted"], call["committed"]) == (1, True)
    assert progress(service, user)[STAT_GOAL] == 2


def test_wait_reports_the_routed_goals_that_changed(service: ServeProcess, capsys) -> None:
    user = new_player(service)
    code, out, err = cli(service, ["events", "send", "login", "--user", user, "--wait"], capsys)
    assert code == 0, err
    wait = ndjson(out)[-1]["wait"]
    assert wait["changed"] is True and wait["timed_out"] is False
    assert set(wait["goals"]) == routed_default_goals("login")
    assert {change["goal_id"] for change in wait["changes"]} == routed_default_goals("login")
    assert all(change["new_progress"] == change["old_progress"] + 1 for change in wait["changes"])
    assert "changed after" in err

    code, out, err = cli(
        service,
        [
            "events",
            "send",
            "stat",
            "--user",
            user,
            "--stat-code",
            "matches_played",
            "--value",
            "4",
            "--event-rpc",
            "publish",
            "--wait",
        ],
        capsys,
    )
    assert code == 0, err
    wait = ndjson(out)[-1]["wait"]
    assert {change["goal_id"] for change in wait["changes"]} == routed_default_goals("statistic", "matches_played")


def test_wait_timeout_is_reported_and_not_an_error(service: ServeProcess, capsys) -> None:
    user = new_player(service)
    args = ["events", "send", "stat", "--user", user, "--stat-code", "objectives_captured", "--value", "1"]
    assert cli(service, [*args, "--inc", "1"], capsys)[0] == 0
    # Same value, no increment: the relative goal's progress and status stay as they are.
    code, out, err = cli(service, [*args, "--inc", "0", "--wait", "--wait-timeout", "600ms"], capsys)
    assert code == 0, err
    wait = ndjson(out)[-1]["wait"]
    assert wait["timed_out"] is True and wait["changed"] is False and wait["changes"] == []
    assert "Warning: wait: no change" in err and "within 0.6s" in err

    # A stat that feeds none of the player's active goals: nothing to wait for.
    code, out, err = cli(
        service,
        ["events", "send", "stat", "--user", user, "--stat-code", "headshots", "--value", "5", "--wait"],
        capsys,
    )
    assert code == 0, err
    assert ndjson(out)[-1]["wait"]["goals"] == [] and "nothing to wait for" in err


def test_rejected_events_exit_1_with_error_and_hint(service: ServeProcess, capsys) -> None:
    user = new_player(service)
    code, out, err = cli(
        service, ["events", "send", "stat", "--user", user, "--stat-code", STAT_CODE, "--value", "nan"], capsys
    )
    assert code == 1
    assert ndjson(out)[0]["rejections"][0]["reason"] == "latest_value must be a finite number"
    lines = err.splitlines()
    assert lines[0].startswith("Error: 1 of 1 event(s) rejected") and lines[1].startswith("Hint: ")

    code, out, err = cli(
        service,
        [
            "events",
            "send",
            "stat",
            "--user",
            user,
            "--stat-code",
            STAT_CODE,
            "--value",
            "3e10",
            "--event-rpc",
            "publish",
        ],
        capsys,
    )
    assert code == 1
    call = ndjson(out)[0]
    assert call["accepted"] == 0 and call["rejected"] == 1 and "int32" in call["rejections"][0]["reason"]
    assert "Error: " in err and "Hint: " in err and "Traceback" not in err
    assert progress(service, user)[STAT_GOAL] == 0


def test_unreachable_service_exits_5(service: ServeProcess, capsys) -> None:
    code, _, err = cli(
        service,
        [
            "--grpc-addr",
            f"127.0.0.1:{free_port()}",
            "events",
            "send",
            "login",
            "--user",
            "nobody",
            "--event-rpc",
            "publish",
        ],
        capsys,
    )
    assert code == 5
    error, hint = err.splitlines()[:2]
    assert error.startswith("Error: gRPC challengectl.v1.EventIngest/Publish") and "UNAVAILABLE" in error
    assert hint.startswith("Hint: is the service running?")


def test_open_model_count_and_rate_report_a_summary(service: ServeProcess, capsys) -> None:
    user = new_player(service)
    code, out, err = cli(
        service, ["events", "send", "login", "--user", user, "--count", "200", "--rate", "100", "--verbose"], capsys
    )
    assert code == 0, err
    records = ndjson(out)
    calls, summary = records[:-1], records[-1]["summary"]
    assert sorted(call["call"] for call in calls) == list(range(200))
    assert len({call["event_ids"][0] for call in calls}) == 200
    assert (summary["sent"], summary["acked"], summary["rejected"], summary["failed"]) == (200, 200, 0, 0)
    latency = summary["ack_latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert progress(service, user)[LOGIN_GOAL] == 200


def test_stat_events_go_in_batches_and_print_one_summary_when_piped(service: ServeProcess, capsys) -> None:
    user = new_player(service)
    args = ["events", "send", "stat", "--user", user, "--stat-code", STAT_CODE, "--value", "1", "--count", "250"]
    code, out, err = cli(service, args, capsys)
    assert code == 0, err
    (record,) = ndjson(out)  # no per-call lines without --verbose
    summary = record["summary"]
    assert (summary["calls"], summary["sent"], summary["acked"]) == (3, 250, 250)
    code, out, err = cli(service, [*args, "--batch", "50", "--verbose"], capsys)
    assert code == 0, err
    records = ndjson(out)
    assert [len(call["event_ids"]) for call in records[:-1]] == [50] * 5 and records[-1]["summary"]["calls"] == 5
    code, out, err = cli(service, ["-o", "yaml", *args], capsys)
    assert code == 0, err
    assert out.startswith("summary:") and "calls: 3" in out


def test_synthetic_players_share_the_events_round_robin(service: ServeProcess, capsys) -> None:
    prefix = f"evp-{uuid.uuid4().hex[:6]}-"
    players = [new_player(service, f"{prefix}{n}") for n in range(1, 4)]  # the ids of `users init --count 3`
    code, out, err = cli(
        service,
        [
            "events",
            "send",
            "login",
            "--users-prefix",
            prefix,
            "--users",
            "3",
            "--count",
            "6",
            "--event-rpc",
            "publish",
            "--batch",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    summary = ndjson(out)[-1]["summary"]
    assert (summary["calls"], summary["accepted"]) == (3, 6)
    assert [progress(service, player)[LOGIN_GOAL] for player in players] == [2, 2, 2]


def test_one_id_sent_three_times_counts_once(service: ServeProcess, capsys) -> None:
    user = new_player(service)
    code, out, err = cli(
        service,
        ["events", "send", "login", "--user", user, "--id", f"once-{user}", "--count", "3", "--event-rpc", "publish"],
        capsys,
    )
    assert code == 0, err
    summary = ndjson(out)[-1]["summary"]
    assert (summary["accepted"], summary["duplicates"]) == (1, 2)
    assert progress(service, user)[LOGIN_GOAL] == 1


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_send_file_generates_missing_ids(service: ServeProcess, capsys, tmp_path: Path, redis_url: str) -> None:
    user = new_player(service)
    given_id = f"given-{uuid.uuid4().hex[:8]}"
    events_file = write_lines(
        tmp_path / "events.jsonl",
        [
            {"user_id": user, "kind": "login"},
            {"id": given_id, "user_id": user, "kind": "stat", "stat_code": STAT_CODE, "latest_value": 3, "inc": 3},
            {"user_id": user, "kind": "login", "timestamp": "2024-05-01T12:00:00Z"},
        ],
    )
    code, out, err = cli(service, ["events", "send", "--file", str(events_file), "--batch", "2"], capsys)
    assert code == 0, err
    totals = json.loads(out)
    assert (totals["sent"], totals["calls"], totals["accepted"], totals["rejected"]) == (3, 2, 3, 0)
    progress_lines = [json.loads(line)["progress"] for line in err.splitlines() if line.startswith("{")]
    assert [line["sent"] for line in progress_lines] == [2, 3]
    assert progress(service, user)[LOGIN_GOAL] == 2 and progress(service, user)[STAT_GOAL] == 3
    # The service marked every id as done: the given one and two generated UUIDv7s.
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [key.decode() for key in client.scan_iter(match=f"{service.redis_prefix}:{{{user}}}:evt:*")]
    finally:
        client.close()
    ids = {key.rsplit(":", 1)[1] for key in keys}
    assert len(ids) == 3 and given_id in ids
    assert all(uuid.UUID(event_id).version == 7 for event_id in ids - {given_id})


def test_event_file_parsing(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "e.jsonl",
        [
            {"user_id": "u", "kind": "stat", "stat_code": "s", "latest_value": 1.5, "inc": 1},
            {"id": "x", "user_id": "u", "kind": "login"},
        ],
    )
    first, second = load_event_file(str(path), generate_ids=True)
    assert uuid.UUID(first.id).version == 7 and second.id == "x"
    assert (first.stat_code, first.latest_value, first.inc) == ("s", 1.5, 1.0)


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "not JSON"),
        ('{"user_id": "u", "kind": "logout"}', "kind must be 'login' or 'stat'"),
        ('{"user_id": "u", "kind": "login", "colour": 1}', "unknown field(s) colour"),
        ('{"user_id": "u", "kind": "stat", "latest_value": "3"}', "latest_value must be a number"),
    ],
)
def test_bad_event_file_lines_are_usage_errors(
    service: ServeProcess, capsys, tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"user_id": "u", "kind": "login"}\n' + line + "\n")
    code, out, err = cli(service, ["events", "send", "--file", str(path)], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"Error: {path}:2: {message}") and "\nHint: " in err


def test_replay_reports_duplicates_and_counts_nothing_twice(service: ServeProcess, capsys, tmp_path: Path) -> None:
    user = new_player(service)
    events_file = write_lines(
        tmp_path / "replay.jsonl",
        [
            {"id": f"{user}-login-1", "user_id": user, "kind": "login"},
            {"id": f"{user}-login-2", "user_id": user, "kind": "login"},
            {
                "id": f"{user}-stat-1",
                "user_id": user,
                "kind": "stat",
                "stat_code": "objectives_captured",
                "latest_value": 4,
                "inc": 4,
            },
        ],
    )
    code, out, err = cli(service, ["events", "send", "--file", str(events_file)], capsys)
    assert code == 0, err
    assert json.loads(out)["accepted"] == 3
    before = progress(service, user)

    code, out, err = cli(service, ["events", "replay", str(events_file)], capsys)
    assert code == 0, err
    totals = json.loads(out)
    assert (totals["sent"], totals["accepted"], totals["duplicates"], totals["expected_duplicates"]) == (3, 0, 3, 3)
    code, out, err = cli(
        service,
        ["events", "replay", str(events_file), "--loop", "--count", "7", "--batch", "2", "--rate", "200"],
        capsys,
    )
    assert code == 0, err
    totals = json.loads(out)
    assert (totals["sent"], totals["calls"], totals["duplicates"], totals["accepted"]) == (7, 4, 7, 0)
    assert progress(service, user) == before


def test_replay_needs_the_original_ids(service: ServeProcess, capsys, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "noid.jsonl", [{"user_id": "u", "kind": "login"}])
    code, _, err = cli(service, ["events", "replay", str(path)], capsys)
    assert code == 2 and "no id; a replay resends the original ids" in err


def test_trigger_event_alias(service: ServeProcess, capsys) -> None:
    user = new_player(service)
    assert cli(service, ["trigger-event", "login", "--user", user], capsys)[0] == 0
    code, _, err = cli(
        service, ["trigger-event", "stat-update", "--user", user, "--stat-code", STAT_CODE, "--value", "1"], capsys
    )
    assert code == 0, err
    assert (progress(service, user)[LOGIN_GOAL], progress(service, user)[STAT_GOAL]) == (1, 1)


def test_events_send_without_a_kind_or_file_is_a_usage_error(service: ServeProcess, capsys) -> None:
    code, _, err = cli(service, ["events", "send", "--batch", "5"], capsys)
    assert code == 2 and "needs 'login', 'stat' or --file" in err
    code, _, err = cli(service, ["events", "send", "login", "--user", "u", "--batch", "5"], capsys)
    assert code == 2 and "one event per call" in err


@pytest.mark.parametrize(
    "command",
    [
        ["events", "send"],
        ["events", "send", "login"],
        ["events", "send", "stat"],
        ["events", "replay"],
        ["trigger-event", "login"],
        ["watch"],
    ],
)
def test_help_has_examples_with_jq_and_the_alias_stays_hidden(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code in (0, None)
    examples = out.split("Examples:", 1)[1]
    assert examples.count("challengectl ") >= 2 and "jq" in examples
    assert "[bold" not in out and "[/" not in out
    with pytest.raises(SystemExit):
        main(["--help"])
    root_help = capsys.readouterr().out
    assert "events" in root_help and "trigger-event" not in root_help

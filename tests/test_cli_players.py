"""The player-driving commands against a real `serve` (docs/cli.md#command-tree, docs/cli.md#commands, docs/cli.md#exit-codes, docs/cli.md#destructive-actions, docs/cache.md#read-your-writes; X1, X2,
X5, X13): `users init|show|delete|backdate`, `challenges list|get|rotation`,
`goals activate|deactivate|select|random|claim`, and the reference CLI's hidden aliases."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import redis

from challengectl.cli import main
from service.config.resources import example_catalog_path
from service.domain.catalog import load_catalog
from service.proto.challengectl.v1 import ingest_pb2, ingest_pb2_grpc
from service.storage.cache import synced_key, token_key
from tests.servers import free_port
from tests.support.cli import isolate_cli, run_cli
from tests.support.serve import REPO_ROOT, ServeProcess, base_env, metric_total, service_env

pytestmark = pytest.mark.integration

SECRET = "cli-players-secret-0123456789abcdef"
CATALOG = load_catalog(example_catalog_path())
DEFAULT_GOALS = sorted(goal.goal_id for goal in CATALOG.default_goals)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(scope="module")
def service(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[ServeProcess]:
    """One real `serve` for the module: the session database, the session Redis prefix, an HS256 secret."""
    with ServeProcess(service_env(pg_url, redis_url, redis_prefix, SECRET)) as serve:
        yield serve


@pytest.fixture(autouse=True)
def cli_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """The CLI sees the same database, Redis, key prefix, catalog and secret as the service."""
    isolate_cli(
        monkeypatch,
        tmp_path,
        DATABASE_URL=pg_url,
        REDIS_URL=redis_url,
        CHALLENGE_REDIS_KEY_PREFIX=redis_prefix,
        CHALLENGE_CATALOG_PATH=str(example_catalog_path()),
    )
    monkeypatch.setenv("CHALLENGE_JWT_SECRET", SECRET)


def service_flags(serve: ServeProcess) -> list[str]:
    return [
        "--api-url",
        f"http://127.0.0.1:{serve.http_port}/challenge",
        "--admin-url",
        f"http://127.0.0.1:{serve.admin_port}",
        "--grpc-addr",
        f"127.0.0.1:{serve.grpc_port}",
    ]


@pytest.fixture
def run(service: ServeProcess, capsys: pytest.CaptureFixture[str]):
    """`run(*args, user=None)`: one in-process CLI invocation against the service → Run."""

    def invoke(*args: str, user: str | None = None) -> Run:
        argv = service_flags(service) + (["--user", user] if user else []) + list(args)
        with pytest.raises(SystemExit) as done:
            main(argv)
        out, err = capsys.readouterr()
        return Run(int(done.value.code or 0), out, err)

    return invoke


def new_user(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def publish_login(serve: ServeProcess, user: str) -> None:
    """One login event through the real gRPC ingest; returns once it is committed."""
    event = ingest_pb2.Event(id=str(uuid.uuid4()), user_id=user, kind=ingest_pb2.EVENT_KIND_LOGIN)
    with grpc.insecure_channel(f"127.0.0.1:{serve.grpc_port}") as channel:
        result = ingest_pb2_grpc.EventIngestStub(channel).Publish(ingest_pb2.EventBatch(events=[event]), timeout=10)
    assert result.accepted == 1 and result.committed, result


def row_count(pg_url: str, user: str) -> int:
    with psycopg.connect(pg_url) as connection:
        return connection.execute("SELECT count(*) FROM goal_progress WHERE user_id = %s", (user,)).fetchone()[0]


def goals_of(challenge: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {goal["goalId"]: goal for goal in challenge["goals"]}


# --- users init ----------------------------------------------------------------------------------


def test_users_init_count_reports_new_then_returning(run) -> None:
    prefix = new_user("p") + "-"
    first = run("users", "init", "--count", "20", "--prefix", prefix, "--concurrency", "8", "-o", "json")
    assert first.code == 0, first.err
    report = first.json
    assert (report["total"], report["new_users"], report["returning_users"], report["failed_users"]) == (20, 20, 0, 0)
    assert [item["user_id"] for item in report["items"]] == [f"{prefix}{i}" for i in range(1, 21)]
    for item in report["items"]:
        assert item["new"] is True and item["error"] is None
        assert item["new_assignments"] == item["total_active"] == len(DEFAULT_GOALS)
        assert item["duration_ms"] > 0
    second = run("users", "init", "--count", "20", "--prefix", prefix, "-o", "json")
    assert second.code == 0, second.err
    assert (second.json["new_users"], second.json["returning_users"]) == (0, 20)
    assert {item["new_assignments"] for item in second.json["items"]} == {0}
    assert {item["total_active"] for item in second.json["items"]} == {len(DEFAULT_GOALS)}


def test_users_init_retries_players_the_service_sheds(
    pg_url: str, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A serve admitting one player request at a time refuses most of 8 concurrent initializes with 503
    SERVICE_OVERLOADED; `users init` waits them out. With no wait allowed, the first refusal stops the run."""
    from challengectl.commands import users

    with ServeProcess(service_env(pg_url, redis_url, redis_prefix, SECRET, CHALLENGE_HTTP_MAX_INFLIGHT="1")) as serve:

        def init(prefix: str) -> tuple[int, str, str]:
            flags = ["--count", "12", "--prefix", prefix, "--concurrency", "8", "-o", "json"]
            return run_cli([*service_flags(serve), "users", "init", *flags], capsys)

        code, out, err = init(new_user("shed") + "-")
        assert code == 0, err
        report = json.loads(out)
        assert (report["total"], report["new_users"], report["failed_users"]) == (12, 12, 0)
        refused = metric_total(serve, "challenge_http_refused_total", reason="overloaded")
        assert refused > 0

        monkeypatch.setattr(users, "OVERLOAD_WAIT_TOTAL_S", 0.0)
        code, out, err = init(new_user("shed") + "-")
        assert code == 5, err
        assert "SERVICE_OVERLOADED" in err
        assert metric_total(serve, "challenge_http_refused_total", reason="overloaded") > refused


def test_users_init_arguments_file_and_alias_as_table_and_csv(run, tmp_path: Path) -> None:
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    listing = tmp_path / "players.txt"
    listing.write_text(f"# players\n{bob}\n\n{alice}\n")
    table = run("users", "init", alice, "--from-file", str(listing), "-o", "table")
    assert table.code == 0, table.err
    assert "2 players: 2 new, 0 returning" in table.out  # alice once: duplicates are dropped
    assert alice in table.out and bob in table.out
    alias = run("initialize-player", carol, bob, "-o", "csv")
    assert alias.code == 0, alias.err
    lines = alias.out.strip().splitlines()
    assert lines[0].startswith("user_id,new,new_assignments,total_active,duration_ms")
    assert lines[1].startswith(f"{carol},true,{len(DEFAULT_GOALS)},") and lines[2].startswith(f"{bob},false,0,")
    as_user = run("users", "init", "-o", "json", user=new_user("dave"))
    assert as_user.code == 0 and as_user.json["new_users"] == 1


def test_users_init_progress_bar_goes_to_a_tty_stderr_only(
    service: ServeProcess, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    controller, terminal = pty.openpty()
    prefix = new_user("tty") + "-"
    env = {
        **base_env(DATABASE_URL=pg_url, REDIS_URL=redis_url, CHALLENGE_JWT_SECRET=SECRET),
        "PYTHONPATH": str(REPO_ROOT),
        "TERM": "xterm-256color",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "challengectl",
            *service_flags(service),
            "users",
            "init",
            "--count",
            "10",
            "--prefix",
            prefix,
            "--concurrency",
            "2",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        cwd=REPO_ROOT,
    )
    os.close(terminal)
    screen = b""
    while select.select([controller], [], [], 30)[0]:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    stdout = process.communicate(timeout=30)[0]
    assert process.returncode == 0, screen
    assert "initializing players" in screen.decode("utf-8", "replace")
    report = json.loads(stdout)  # stdout is a pipe: JSON, no progress bar
    assert report["new_users"] == 10


def test_users_init_usage_errors(run, tmp_path: Path) -> None:
    assert run("users", "init", "bad{id}").code == 2
    assert run("users", "init", "--count", "0").code == 2
    missing = run("users", "init", "--from-file", str(tmp_path / "absent.txt"))
    assert missing.code == 2 and "Error: cannot read --from-file" in missing.err
    no_user = run("users", "init")
    assert no_user.code == 2 and "--user" in no_user.err


# --- challenges ----------------------------------------------------------------------------------


def test_challenges_list_get_rotation_and_aliases(run) -> None:
    user = new_user("lister")
    assert run("users", "init", user).code == 0
    listed = run("challenges", "list", "-o", "json", user=user)
    assert listed.code == 0, listed.err
    assert [c["challengeId"] for c in listed.json["challenges"]] == [c.challenge_id for c in CATALOG.challenges]
    csv_lines = run("challenges", "list", "-o", "csv", user=user).out.strip().splitlines()
    assert csv_lines[0] == "challenge,name,completed,active"
    assert csv_lines[1] == "season-1,Season One,0/4,2"
    active = run("challenges", "list", "--active-only", "-o", "json", user=user).json
    active_goals = sorted(g["goalId"] for c in active["challenges"] for g in c["goals"])
    assert active_goals == DEFAULT_GOALS

    got = run("challenges", "get", "daily-grind", "-o", "json", user=user)
    assert got.code == 0, got.err
    assert got.json["challengeId"] == "daily-grind" and "daily-takedowns" in goals_of(got.json)
    table = run("challenges", "get", "daily-grind", "-o", "table", user=user).out
    assert "EXPIRES IN" in table and "daily-login" in table and "0/1" in table and "20 COINS (wallet)" in table
    only_active = run("get-challenge", "daily-grind", "--active-only", "-o", "json", user=user).json
    assert sorted(goals_of(only_active)) == ["daily-login", "daily-matches"]

    rotation = run("challenges", "rotation", "weekly-ops", "-o", "json", user=user)
    assert rotation.code == 0, rotation.err
    assert rotation.json["rotation"]["enabled"] is True and rotation.json["rotation"]["schedule"] == "weekly"
    assert rotation.json["rotation"]["currentPeriod"]["expiresInSeconds"] > 0
    alias_rotation = run("get-rotation-status", "season-1", "-o", "json", user=user).json
    assert alias_rotation["rotation"]["enabled"] is False and "currentPeriod" not in alias_rotation["rotation"]
    rotation_table = run("challenges", "rotation", "daily-grind", "-o", "table", user=user).out
    assert "schedule" in rotation_table and "daily" in rotation_table and "current_period" in rotation_table
    alias_list = run("list-challenges", "-o", "json", user=user).json
    assert [c["challengeId"] for c in alias_list["challenges"]] == [c.challenge_id for c in CATALOG.challenges]


def test_a_token_alone_names_the_player(run, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.transport.auth import mint_token

    user = new_user("tokened")
    assert run("users", "init", user).code == 0
    monkeypatch.setenv("CHALLENGE_TOKEN", mint_token(SECRET.encode(), user))
    listed = run("challenges", "list", "-o", "json")  # no --user: the token's subject is the player
    assert listed.code == 0, listed.err
    assert [c["challengeId"] for c in listed.json["challenges"]] == [c.challenge_id for c in CATALOG.challenges]
    monkeypatch.setenv("CHALLENGE_TOKEN", "not-a-jwt")
    refused = run("challenges", "list")
    assert refused.code == 2 and "needs --user (or --token)" in refused.err


def test_error_classes_map_to_exit_codes(run, service: ServeProcess, capsys) -> None:
    user = new_user("errors")
    unknown = run("challenges", "get", "no-such-challenge", user=user)
    assert unknown.code == 3 and "Error: CHALLENGE_NOT_FOUND: challenge 'no-such-challenge' not found" in unknown.err
    as_json = run("challenges", "get", "no-such-challenge", "-o", "json", user=user)
    assert as_json.json["error"]["code"] == "CHALLENGE_NOT_FOUND" and as_json.json["error"]["exit_code"] == 3
    unknown_goal = run("goals", "activate", "season-1", "no-such-goal", user=user)
    assert unknown_goal.code == 3 and "GOAL_NOT_FOUND" in unknown_goal.err

    bad_token = run("--token", "not-a-jwt", "challenges", "list", user=user)
    assert bad_token.code == 4 and "Hint: pass --token, or mint one" in bad_token.err
    assert "not-a-jwt" not in bad_token.err

    assert run("challenges", "list", "--bogus", user=user).code == 2
    assert run("goals", "random", "season-1", "--count", "0", user=user).code == 2
    assert run("goals", "select", "season-1", "--goal-ids", " , ", user=user).code == 2
    assert run("challenges", "list").code == 2  # no --user

    closed = free_port()
    with pytest.raises(SystemExit) as down:
        main(["--api-url", f"http://127.0.0.1:{closed}/challenge", "--user", user, "challenges", "list"])
    err = capsys.readouterr().err
    assert (
        down.value.code == 5
        and "Error: cannot connect to the REST API" in err
        and "Hint: is the service running" in err
    )
    with pytest.raises(SystemExit) as init_down:
        main(["--api-url", f"http://127.0.0.1:{closed}/challenge", "users", "init", "--count", "3", "--prefix", user])
    assert init_down.value.code == 5 and "Error: cannot connect" in capsys.readouterr().err


# --- goals ---------------------------------------------------------------------------------------


def test_goals_activate_deactivate_select_random_and_aliases(run) -> None:
    user = new_user("selector")
    assert run("users", "init", user).code == 0
    activated = run("goals", "activate", "season-1", "s1-veteran", "-o", "json", user=user)
    assert activated.code == 0, activated.err
    assert activated.json["isActive"] is True and activated.json["message"] == "Goal activated successfully"
    deactivated = run("set-goal-active", "season-1", "s1-veteran", "--active=false", "-o", "json", user=user)
    assert deactivated.json["isActive"] is False and deactivated.json["message"] == "Goal deactivated successfully"
    assert run("goals", "deactivate", "season-1", "s1-veteran", "-o", "json", user=user).json["isActive"] is False
    assert run("set-goal-active", "season-1", "s1-veteran", "--active=maybe", user=user).code == 2

    selected = run("goals", "select", "season-1", "--goal-ids", "s1-veteran,s1-sharpshooter", "-o", "json", user=user)
    assert selected.code == 0, selected.err
    assert [g["goalId"] for g in selected.json["selectedGoals"]] == ["s1-veteran", "s1-sharpshooter"]
    assert selected.json["replacedGoals"] == [] and selected.json["totalActiveGoals"] == 4
    replaced = run(
        "batch-select", "season-1", "--goal-ids", "s1-veteran", "--replace-existing", "-o", "table", user=user
    )
    assert replaced.code == 0, replaced.err
    assert "replaced: s1-welcome, s1-regular, s1-sharpshooter" in replaced.out
    assert "active goals in season-1: 1" in replaced.out

    # weekly-veteran-marathon is locked (s1-veteran not completed) and the defaults are active.
    nothing = run("goals", "random", "weekly-ops", "--count", "1", "--exclude-active", user=user)
    assert nothing.code == 1 and "Error: INSUFFICIENT_GOALS" in nothing.err
    # Fewer eligible goals than asked: daily-takedowns is locked behind daily-login, so two are picked.
    partial = run("random-select", "daily-grind", "--count", "5", "-o", "json", user=user)
    assert partial.code == 0, partial.err
    assert [g["goalId"] for g in partial.json["selectedGoals"]] == ["daily-login", "daily-matches"]


def test_claim_then_backdate_makes_a_rotating_goal_reset(
    run, service: ServeProcess, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    user = new_user("rotator")
    assert run("users", "init", user).code == 0
    publish_login(service, user)

    claimed = run("goals", "claim", "season-1", "s1-welcome", "-o", "json", user=user)
    assert claimed.code == 0, claimed.err
    assert claimed.json["status"] == "claimed" and claimed.json["reward"]["rewardId"] == "COINS"
    again = run("claim-reward", "season-1", "s1-welcome", user=user)
    assert again.code == 1 and "Error: ALREADY_CLAIMED" in again.err
    not_done = run("goals", "claim", "season-1", "s1-regular", user=user)
    assert not_done.code == 1 and "GOAL_NOT_COMPLETED" in not_done.err

    before = goals_of(run("challenges", "get", "daily-grind", "--active-only", "-o", "json", user=user).json)
    assert (before["daily-login"]["status"], before["daily-login"]["progress"]) == ("completed", 1)
    shown = run("users", "show", user, "-o", "json")
    assert shown.code == 0, shown.err
    rows = {row["goal_id"]: row for row in shown.json["rows"]}
    assert sorted(rows) == DEFAULT_GOALS
    assert rows["daily-login"]["stale"] is False and rows["daily-login"]["would_reset"] is False
    assert rows["s1-welcome"]["status"] == "claimed" and rows["s1-welcome"]["view"]["status"] == "claimed"
    assert [(g["goal_id"], g["generation"]) for g in shown.json["reward_grants"]] == [("s1-welcome", 1)]
    cache = shown.json["cache"]
    assert cache["entry_valid"] is True and cache["matches_database"] is True and cache["synced_marker"] is True

    refused = run("users", "backdate", user, "--by", "2d", "--goal", "daily-login")
    assert refused.code == 2 and "Hint: add --yes" in refused.err
    backdated = run("users", "backdate", user, "--by", "2d", "--goal", "daily-login", "--yes", "-o", "json")
    assert backdated.code == 0, backdated.err
    assert backdated.json["rows_changed"] == 1 and backdated.json["goals"][0]["goal_id"] == "daily-login"

    after = run("users", "show", user, "--goal", "daily-login", "-o", "json").json
    (row,) = after["rows"]
    assert row["status"] == "completed" and row["progress"] == 1  # raw row untouched
    assert row["stale"] is True and row["would_reset"] is True
    assert row["view"] == {"progress": 0, "status": "not_started", "completed_at": None, "claimed_at": None}
    assert after["cache"]["entry_present"] is False and after["reward_grants"] == []
    listed = goals_of(run("challenges", "get", "daily-grind", "--active-only", "-o", "json", user=user).json)
    assert (listed["daily-login"]["status"], listed["daily-login"]["progress"]) == ("not_started", 0)
    rotated = run("goals", "claim", "daily-grind", "daily-login", user=user)
    assert rotated.code == 1 and "GOAL_ROTATED" in rotated.err
    # The next initialize catches the row up: the reset is written, so the row is no longer stale.
    returning = run("users", "init", user, "-o", "json").json
    assert (returning["new_users"], returning["returning_users"]) == (0, 1)
    (caught_up,) = run("users", "show", user, "--goal", "daily-login", "-o", "json").json["rows"]
    assert (caught_up["status"], caught_up["baseline_value"], caught_up["completed_at"]) == ("not_started", None, None)
    assert caught_up["view"]["progress"] == 0  # relative goal without a baseline (docs/rules.md#staleness-and-the-view)
    assert caught_up["stale"] is False and caught_up["would_reset"] is False
    table = run("users", "show", user, "-o", "table").out
    assert "WOULD RESET" in table and "reward grants" in table and "entry_valid" in table


def test_claim_with_a_failing_reward_webhook_exits_5(
    pg_url: str, redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 502 REWARD_GRANT_FAILED from the service is exit 5 (docs/cli.md#exit-codes), and the goal stays claimable."""
    webhook = ServeProcess(
        service_env(
            pg_url,
            redis_url,
            redis_prefix,
            SECRET,
            CHALLENGE_REWARD_MODE="webhook",
            CHALLENGE_REWARD_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/grant",
            CHALLENGE_REWARD_WEBHOOK_RETRIES="0",
        )
    ).start()
    try:
        webhook.wait_ready()
        user = new_user("webhook")
        flags = [*service_flags(webhook), "--user", user]
        with pytest.raises(SystemExit) as initialized:
            main([*flags, "users", "init"])
        assert initialized.value.code == 0
        publish_login(webhook, user)
        capsys.readouterr()
        with pytest.raises(SystemExit) as failed:
            main([*flags, "goals", "claim", "season-1", "s1-welcome"])
        err = capsys.readouterr().err
        assert failed.value.code == 5 and "Error: REWARD_GRANT_FAILED" in err and "Hint:" in err
        with pytest.raises(SystemExit) as shown:
            main([*flags, "users", "show", user, "--goal", "s1-welcome", "-o", "json"])
        assert shown.value.code == 0
        assert json.loads(capsys.readouterr().out)["rows"][0]["status"] == "completed"
    finally:
        webhook.stop()


def test_users_show_and_backdate_without_rows_exit_3(run) -> None:
    ghost = new_user("ghost")
    missing = run("users", "show", ghost)
    assert missing.code == 3 and f"Error: user '{ghost}' has no progress rows" in missing.err
    assert run("users", "backdate", ghost, "--by", "1d", "--yes").code == 3
    user = new_user("shown")
    assert run("users", "init", user).code == 0
    assert run("users", "show", user, "--goal", "no-such-goal").code == 3
    assert run("users", "backdate", user, "--by", "soon", "--yes").code == 2


# --- users delete --------------------------------------------------------------------------------


def test_users_delete_refuses_off_a_tty_dry_run_changes_nothing_then_deletes(
    run, service: ServeProcess, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    user = new_user("doomed")
    assert run("users", "init", user).code == 0
    rows_before = row_count(pg_url, user)
    assert rows_before == len(DEFAULT_GOALS)
    keys = redis.Redis.from_url(redis_url)
    marker = synced_key(redis_prefix, user, CATALOG.fingerprint)
    assert keys.exists(marker)
    token_before = keys.get(token_key(redis_prefix, user))

    env = {
        **base_env(DATABASE_URL=pg_url, REDIS_URL=redis_url, CHALLENGE_REDIS_KEY_PREFIX=redis_prefix),
        "PYTHONPATH": str(REPO_ROOT),
    }
    refused = subprocess.run(
        [sys.executable, "-m", "challengectl", "users", "delete", user],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "Error: refusing to delete" in refused.stderr and "Hint: add --yes" in refused.stderr
    assert refused.stdout == ""

    dry = run("users", "delete", user, "--dry-run", "-o", "json")
    assert dry.code == 0, dry.err
    assert dry.json["dry_run"] is True and dry.json["rows_deleted"] == rows_before
    assert sorted(dry.json["goal_ids"]) == DEFAULT_GOALS and dry.json["synced_markers_deleted"] == 1
    assert "dry run: would delete" in dry.err
    assert row_count(pg_url, user) == rows_before and keys.exists(marker)
    assert keys.get(token_key(redis_prefix, user)) == token_before

    deleted = run("users", "delete", user, "--yes", "-o", "json")
    assert deleted.code == 0, deleted.err
    assert deleted.json["rows_deleted"] == rows_before and deleted.json["synced_markers_deleted"] == 1
    assert row_count(pg_url, user) == 0 and not keys.exists(marker)
    assert keys.get(token_key(redis_prefix, user)) not in (None, token_before)
    assert run("users", "show", user).code == 3
    # Without the synced marker the next initialize takes the slow path and re-creates the player.
    again = run("users", "init", user, "-o", "json")
    assert again.json["new_users"] == 1 and again.json["items"][0]["new_assignments"] == len(DEFAULT_GOALS)
    keys.close()


def test_help_has_examples_and_aliases_stay_hidden(run) -> None:
    for command in (
        ["users", "init"],
        ["users", "show"],
        ["users", "delete"],
        ["users", "backdate"],
        ["challenges", "list"],
        ["challenges", "get"],
        ["goals", "select"],
        ["goals", "claim"],
    ):
        shown = run(*command, "--help")
        assert shown.code == 0 and "Examples:" in shown.out and "jq" in shown.out, command
    root = run("--help").out
    assert "users" in root and "challenges" in root and "goals" in root
    for alias in (
        "list-challenges",
        "get-challenge",
        "initialize-player",
        "set-goal-active",
        "batch-select",
        "random-select",
        "claim-reward",
        "get-rotation-status",
    ):
        assert alias not in root
        assert run(alias, "--help").code == 0, alias

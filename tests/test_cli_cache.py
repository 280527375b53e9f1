"""`challengectl cache warm|flush|stats|keys` against a real serve, PostgreSQL and Redis (docs/cache.md, docs/cli.md#commands,
docs/cli.md#destructive-actions, docs/diagnostics.md#redis; X5, X10): warmed views are the ones the service serves as cache hits, a flush removes only
the chosen user's keys (token rotated, de-dup markers kept), dry runs and refusals change nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from challengectl.cli import main
from service.config.resources import example_catalog_path
from service.domain.catalog import load_catalog
from service.storage.cache import active_key, decode_entry, escape_glob, scan_pattern_for_user, synced_key, token_key
from service.transport.auth import mint_token
from tests.support.serve import ServeProcess, http_get, player_call, publish_logins, service_env

pytestmark = pytest.mark.integration

SECRET = "cli-cache-secret-0123456789abcdef0123"
FINGERPRINT = load_catalog(example_catalog_path()).fingerprint


@pytest.fixture(scope="module")
def redis_prefix() -> str:
    """This module's own key prefix: its key inventories must not see (expiring) keys of other modules."""
    return f"tc{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def serve(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[ServeProcess]:
    with ServeProcess(service_env(pg_url, redis_url, redis_prefix, SECRET)) as process:
        yield process


@pytest.fixture(scope="module")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def cli(
    serve: ServeProcess,
    pg_url: str,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Any:
    """Run `challengectl -o json ... cache <args>` in-process; returns (exit code, parsed stdout, stderr)."""
    monkeypatch.setenv("CHALLENGE_REDIS_KEY_PREFIX", redis_prefix)
    monkeypatch.setenv("CHALLENGE_CATALOG_PATH", str(example_catalog_path()))
    base = [
        "--api-url",
        serve.api("/challenge"),
        "--admin-url",
        serve.admin(""),
        "--database-url",
        pg_url,
        "--redis-url",
        redis_url,
        "-o",
        "json",
        "cache",
    ]

    def run(*args: str) -> tuple[int, Any, str]:
        with pytest.raises(SystemExit) as done:
            main([*base, *args])
        out, err = capsys.readouterr()
        # With -o json an error also writes {"error": ...} after the data; the data comes first.
        data = json.JSONDecoder().raw_decode(out)[0] if out.strip() else None
        return int(done.value.code or 0), data, err

    return run


def player(serve: ServeProcess, user: str, method: str, path: str) -> dict[str, Any]:
    return player_call(serve, mint_token(SECRET.encode(), user), method, path)


def active_listing(serve: ServeProcess, user: str) -> dict[str, Any]:
    """`GET ?active_only=true` without `expiresInSeconds`, which moves with the clock."""
    return without_countdowns(player(serve, user, "GET", "/v1/challenges?active_only=true"))


def without_countdowns(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_countdowns(item) for key, item in value.items() if key != "expiresInSeconds"}
    if isinstance(value, list):
        return [without_countdowns(item) for item in value]
    return value


def active_counts(serve: ServeProcess) -> tuple[int, int]:
    by_kind = http_get(serve.admin("/admin/cache"))[1]["by_kind"]["active"]
    return by_kind["hits"], by_kind["misses"]


def new_player(serve: ServeProcess, name: str) -> str:
    user = f"{name}-{uuid.uuid4().hex[:8]}"
    player(serve, user, "POST", "/v1/challenges/initialize")
    return user


def user_keys(client: redis.Redis, prefix: str, user: str) -> dict[bytes, bytes | None]:
    """Every key of the user with its value (SCAN, as the CLI does)."""
    keys = list(client.scan_iter(match=scan_pattern_for_user(prefix, user), count=1000))
    return dict(zip(keys, client.mget(keys), strict=True)) if keys else {}


def prefix_keys(client: redis.Redis, prefix: str) -> dict[bytes, bytes | None]:
    keys = list(client.scan_iter(match=f"{escape_glob(prefix)}:*", count=1000))
    return dict(zip(keys, client.mget(keys), strict=True)) if keys else {}


def active_goal_ids(pg_url: str, user: str, relation: str = "goal_progress") -> list[str]:
    """The player's active goals, real or implied (`relation="user_goal_progress"`: real ones only)."""
    query = sql.SQL("SELECT goal_id FROM {} WHERE user_id = %s AND is_active ORDER BY goal_id")
    with psycopg.connect(pg_url) as conn:
        return [row[0] for row in conn.execute(query.format(sql.Identifier(relation)), (user,))]


def test_warm_fills_the_views_the_service_then_serves_as_hits(
    serve: ServeProcess, cli: Any, pg_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    complete, partial = new_player(serve, "warm"), new_player(serve, "warm-partial")
    before = active_listing(serve, complete)
    with psycopg.connect(pg_url) as conn:  # one default goal missing: no synced marker for this one
        # Its implied defaults (docs/data-model.md#implied-default-goals) but one become real rows, its record goes.
        conn.execute(
            "INSERT INTO user_goal_progress SELECT * FROM implied_goal_progress"
            " WHERE user_id = %s AND goal_id <> 's1-regular'",
            (partial,),
        )
        conn.execute("DELETE FROM user_initializations WHERE user_id = %s", (partial,))
    for user in (complete, partial):
        redis_client.unlink(active_key(redis_prefix, user), synced_key(redis_prefix, user, FINGERPRINT))

    code, summary, err = cli("warm", "--user", complete, "--user", partial)

    assert code == 0, err
    assert (summary["users"], summary["entries_written"], summary["markers_set"]) == (2, 2, 1)
    assert summary["keys_written"] == 3 and summary["already_valid"] == 0
    entry = decode_entry(redis_client.get(active_key(redis_prefix, complete)))
    assert entry is not None and entry.fingerprint == FINGERPRINT
    assert entry.token == redis_client.get(token_key(redis_prefix, complete)).decode()
    assert [row.goal_id for row in entry.rows] == active_goal_ids(pg_url, complete)
    assert redis_client.exists(synced_key(redis_prefix, complete, FINGERPRINT)) == 1
    assert redis_client.exists(synced_key(redis_prefix, partial, FINGERPRINT)) == 0
    assert redis_client.exists(active_key(redis_prefix, partial)) == 1

    code, stats, err = cli("stats")
    assert code == 0, err
    assert stats["keys"]["by_kind"]["active"] >= 2 and stats["keys"]["by_kind"]["synced"] >= 1
    assert stats["keys"]["pattern"] == f"{redis_prefix}:*"
    assert stats["redis"]["redis_version"] and stats["service"]["enabled"] is True

    hits, misses = active_counts(serve)
    assert active_listing(serve, complete) == before
    assert active_counts(serve) == (hits + 1, misses)

    code, again, _ = cli("warm", "--user", complete)
    assert code == 0 and (again["already_valid"], again["entries_written"]) == (1, 0)


def test_warm_reads_a_users_file_and_refuses_another_catalog(
    serve: ServeProcess,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    user = new_player(serve, "from-file")
    redis_client.unlink(active_key(redis_prefix, user))
    users_file = tmp_path / "users.txt"
    users_file.write_text(f"# players to warm\n\n{user}\n{user}\n")
    code, summary, err = cli("warm", "--users-file", str(users_file))
    assert code == 0, err
    assert (summary["users"], summary["entries_written"]) == (1, 1)

    users_file.write_text("good\nbad{id}\n")
    code, _, err = cli("warm", "--users-file", str(users_file))
    assert code == 2 and "line 2" in err

    document = json.loads(example_catalog_path().read_text())
    document["challenges"][0]["name"] = "Renamed"
    other_catalog = tmp_path / "challenges.json"
    other_catalog.write_text(json.dumps(document))
    monkeypatch.setenv("CHALLENGE_CATALOG_PATH", str(other_catalog))
    code, _, err = cli("warm", "--user", user)
    assert code == 2 and "not the running service's" in err


def test_warm_without_users_is_a_usage_error(cli: Any) -> None:
    code, _, err = cli("warm")
    assert code == 2 and "--all-active" in err


def test_flush_user_rotates_the_token_and_leaves_others_and_dedup_markers(
    serve: ServeProcess, cli: Any, redis_client: redis.Redis, redis_prefix: str
) -> None:
    flushed, bystander = new_player(serve, "flush"), new_player(serve, "bystander")
    assert publish_logins(serve, flushed, 1).committed
    body = active_listing(serve, flushed)  # refills the view the event invalidated
    active_listing(serve, bystander)
    bystander_keys = user_keys(redis_client, redis_prefix, bystander)
    old_token = redis_client.get(token_key(redis_prefix, flushed))
    event_keys = [key for key in user_keys(redis_client, redis_prefix, flushed) if b":evt:" in key]
    assert len(event_keys) == 1 and old_token is not None

    code, summary, err = cli("flush", "--user", flushed, "--yes")

    assert code == 0, err
    assert summary["dry_run"] is False and summary["tokens_rotated"] == 1 and summary["dedup_kept"] == 1
    left = user_keys(redis_client, redis_prefix, flushed)
    assert sorted(left) == sorted([token_key(redis_prefix, flushed).encode(), *event_keys])
    assert left[token_key(redis_prefix, flushed).encode()] != old_token
    assert redis_client.pttl(token_key(redis_prefix, flushed)) > 0
    assert user_keys(redis_client, redis_prefix, bystander) == bystander_keys

    hits, misses = active_counts(serve)
    assert active_listing(serve, flushed) == body
    assert active_counts(serve) == (hits, misses + 1)
    assert player(serve, flushed, "POST", "/v1/challenges/initialize")["newAssignments"] == 0

    code, summary, err = cli("flush", "--user", flushed, "--include-dedup", "--yes")
    assert code == 0, err
    assert summary["dedup_kept"] == 0
    assert not [key for key in user_keys(redis_client, redis_prefix, flushed) if b":evt:" in key]


def test_dry_run_and_refusal_change_nothing(
    serve: ServeProcess, cli: Any, redis_client: redis.Redis, redis_prefix: str
) -> None:
    user = new_player(serve, "dry")
    active_listing(serve, user)
    snapshot = prefix_keys(redis_client, redis_prefix)

    code, summary, err = cli("flush", "--all", "--dry-run")
    assert code == 0, err
    assert summary["dry_run"] is True and summary["matched"] >= 3 and summary["removed"] >= 2
    assert "dry run: would flush" in err

    code, _, err = cli("flush", "--user", user)
    assert code == 2 and "Hint: add --yes" in err

    assert prefix_keys(redis_client, redis_prefix) == snapshot


def test_flush_takes_exactly_one_selector(cli: Any) -> None:
    code, _, err = cli("flush", "--user", "someone", "--all", "--yes")
    assert code == 2 and "exactly one of --user, --pattern or --all" in err


def test_must_match_exits_3_when_nothing_matched(cli: Any, redis_prefix: str) -> None:
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    assert cli("flush", "--user", nobody, "--yes")[0] == 0
    code, summary, err = cli("flush", "--user", nobody, "--must-match", "--yes")
    assert (code, summary["matched"]) == (3, 0) and "no key matched" in err
    assert cli("keys", "--user", nobody, "--must-match")[0] == 3
    assert cli("keys", "--pattern", f"{redis_prefix}:nothing-*", "--must-match")[0] == 3
    assert cli("keys", "--pattern", f"{redis_prefix}:nothing-*")[0] == 0


def test_keys_counts_by_kind_and_decodes_one_user(
    serve: ServeProcess, cli: Any, pg_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    user = new_player(serve, "keys")
    active_listing(serve, user)

    code, inventory, err = cli("keys", "--top", "3", "--sample", "100000", "--sleep", "0")
    assert code == 0, err
    names = prefix_keys(redis_client, redis_prefix)
    expected = {kind: sum(1 for name in names if name.endswith(f":{kind}".encode())) for kind in ("active", "tok")}
    expected["synced"] = sum(1 for name in names if b":synced:" in name)
    assert {kind: inventory["by_kind"][kind] for kind in expected} == expected
    assert inventory["complete"] is True and sum(inventory["ttl_distribution"].values()) == inventory["sampled"]
    assert len(inventory["largest"]) == 3
    assert inventory["largest"][0]["bytes"] >= inventory["largest"][-1]["bytes"]

    code, state, err = cli("keys", "--user", user)
    assert code == 0, err
    entry = state["entry"]
    assert entry["valid"] and entry["token_matches"] and entry["fingerprint_matches"]
    # The entry holds the real rows; the untouched defaults are implied by the initialization it records.
    assert [row["goal_id"] for row in entry["rows"]] == active_goal_ids(pg_url, user, "user_goal_progress")
    assert entry["implied"] is not None and entry["implied"]["hidden"] == []
    assert active_goal_ids(pg_url, user) != active_goal_ids(pg_url, user, "user_goal_progress")
    assert state["synced"] == [{"fingerprint": FINGERPRINT, "current": True}]

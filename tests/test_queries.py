"""The named queries against real PostgreSQL: every statement runs, and each write follows its documented rule.

docs/data-model.md#named-queries (registry), docs/events.md#flush (the flush's per-row rule and lock isolation), docs/rules.md#staleness-and-the-view (catch-up), docs/rules.md#initialize
(initialize insert), docs/rules.md#set-active, docs/rules.md#batch-select (set active, batch select), docs/rules.md#claim (claim). The schema is created by the
bundled migrations in a PostgreSQL schema private to this module, inside the run's test database.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from service.config.resources import migrations_dir
from service.storage.registry import Registry, load_registry

UTC = UTC
# A Wednesday noon; the daily period is [B, N).
T = datetime(2024, 1, 10, 12, 0, tzinfo=UTC)
B = datetime(2024, 1, 10, tzinfo=UTC)
N = datetime(2024, 1, 11, tzinfo=UTC)
YESTERDAY = T - timedelta(days=1)
INT_MAX = 2_147_483_647
INT_MIN = -2_147_483_648
NS = "test-ns"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


@pytest.fixture(scope="module")
def db_url(pg_url: str) -> Iterator[str]:
    """A URL whose sessions use a fresh PostgreSQL schema holding the migrated tables, in UTC."""
    schema = f"queries_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = psycopg.conninfo.make_conninfo(pg_url, options=f"-c search_path={schema} -c TimeZone=UTC")
    with psycopg.connect(url, autocommit=True) as conn:
        for migration in sorted(migrations_dir().glob("[0-9][0-9][0-9][0-9]_*.sql")):
            conn.execute(migration.read_text(encoding="utf-8"))
    yield url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture
def user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


class Runner:
    """Runs registry statements by name on one connection, binding exactly the declared parameters."""

    def __init__(self, registry: Registry, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self.registry = registry
        self.conn = conn

    def __call__(self, name: str, **params: Any) -> list[dict[str, Any]]:
        query = self.registry.get(name)
        assert set(params) == set(query.param_names), name
        cursor = self.conn.execute(query.sql, params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def run(registry: Registry, conn: psycopg.Connection[dict[str, Any]]) -> Runner:
    return Runner(registry, conn)


def insert_row(conn: psycopg.Connection[Any], user_id: str, goal_id: str, **columns: Any) -> None:
    """Set up a row in an arbitrary state (defaults: active, not_started, written at T)."""
    values: dict[str, Any] = {
        "user_id": user_id,
        "goal_id": goal_id,
        "challenge_id": "c1",
        "namespace": NS,
        "progress": 0,
        "status": "not_started",
        "created_at": T,
        "updated_at": T,
        "is_active": True,
        "assigned_at": T,
    }
    values.update(columns)
    statement = sql.SQL("INSERT INTO user_goal_progress ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, values)), sql.SQL(", ").join(map(sql.Placeholder, values))
    )
    conn.execute(statement, values)


def row(conn: psycopg.Connection[Any], user_id: str, goal_id: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT * FROM user_goal_progress WHERE user_id = %s AND goal_id = %s", (user_id, goal_id)
    ).fetchone()


def as_read(stored: dict[str, Any] | None) -> dict[str, Any]:
    """A stored row as the read statements return it: every column but the flush's own bookkeeping."""
    assert stored is not None
    return {name: value for name, value in stored.items() if name != "value_event_at"}


# --- every statement executes ---------------------------------------------------------------------

SAMPLE_BY_TYPE: dict[str, Any] = {
    "text": "g1",
    "text[]": ["g1"],
    "timestamptz": T,
    "timestamptz[]": [N],
    "boolean": True,
    "boolean[]": [True],
    "bigint": 60,
    "bigint[]": [5],
    "integer": 1,
}
SAMPLE_OVERRIDES: dict[str, Any] = {
    "reward_type": "ITEM",
    "mode": "log",
    "entry_sources": ["login"],
    "goal_sources": ["login"],
    "goal_progress_modes": ["absolute"],
    "entry_values": [None],
    "schedules": ["daily"],
}


def test_every_statement_executes_on_the_migrated_schema(
    registry: Registry, conn: psycopg.Connection[Any], user: str
) -> None:
    insert_row(conn, user, "g1")
    for query in registry:
        params = {p.name: SAMPLE_OVERRIDES.get(p.name, SAMPLE_BY_TYPE[p.type]) for p in query.params}
        params.update({"user_id": user, "namespace": NS})
        with conn.transaction(force_rollback=True):
            conn.execute(query.sql, params)


# --- initialize -------------------------------------------------------------------------------------


def register_set(run: Runner, *members: tuple[str, str, str | None]) -> str:
    """A new default goal set of (goal_id, challenge_id, schedule) members; returns its id."""
    set_id = uuid.uuid4().hex
    run(
        "register_default_goal_set",
        default_set_id=set_id,
        goal_ids=[m[0] for m in members],
        challenge_ids=[m[1] for m in members],
        schedules=[m[2] for m in members],
    )
    return set_id


def initialize(run: Runner, user: str, set_id: str, now: datetime) -> list[dict[str, Any]]:
    return run("initialize_view", user_id=user, namespace=NS, default_set_id=set_id, now=now, prereq_goal_ids=["p1"])


def real_goal_ids(conn: psycopg.Connection[Any], user: str) -> list[str]:
    rows = conn.execute("SELECT goal_id FROM user_goal_progress WHERE user_id = %s ORDER BY goal_id", (user,))
    return [r["goal_id"] for r in rows.fetchall()]


def test_initialize_view_records_the_player_once_and_returns_its_real_rows_and_initialization(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    set_id = register_set(run, ("g2", "c2", "daily"), ("g1", "c1", None))
    insert_row(conn, user, "g1", is_active=False)  # a deactivated default: out of view, returned so it is not implied
    insert_row(conn, user, "p1", is_active=False)  # an inactive prerequisite
    insert_row(conn, user, "x1", is_active=False)  # neither: not returned
    insert_row(conn, user, "a1")  # active, not a default
    first = initialize(run, user, set_id, T)
    assert [(r["goal_id"], r["in_view"], r["is_active"]) for r in first] == [
        ("a1", True, True),
        ("g1", False, False),
        ("p1", True, False),
    ]
    assert {(r["initialized_at"], r["initialized_namespace"], r["inserted"]) for r in first} == {(T, NS, True)}
    # One record, no progress row: g2 is implied, as the old insert would have written it.
    assert real_goal_ids(conn, user) == ["a1", "g1", "p1", "x1"]
    assert run("goals_by_ids", user_id=user, goal_ids=["g2"]) == [
        {
            **as_read(row(conn, user, "a1")),
            "goal_id": "g2",
            "challenge_id": "c2",
            "created_at": T,
            "updated_at": T,
            "assigned_at": T,
            "expires_at": N,
        }
    ]
    again = initialize(run, user, set_id, T + timedelta(hours=1))
    assert [r["goal_id"] for r in again] == ["a1", "g1", "p1"]
    assert {(r["initialized_at"], r["inserted"]) for r in again} == {(T, False)}


def test_initialize_view_returns_one_row_without_real_rows(run: Runner, user: str) -> None:
    set_id = register_set(run, ("g1", "c1", None))
    first = initialize(run, user, set_id, T)
    assert [(r["initialized_at"], r["inserted"], r["in_view"], r["goal_id"]) for r in first] == [(T, True, None, None)]


def test_player_rows_returns_the_initialization_and_the_real_rows_only(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    def player_rows(every_row: bool) -> list[dict[str, Any]]:
        return run("player_rows", user_id=user, prereq_goal_ids=["p1"], every_row=every_row)

    set_id = register_set(run, ("g1", "c1", None), ("g2", "c1", None))
    assert [(r["default_set_id"], r["initialized_at"], r["goal_id"]) for r in player_rows(False)] == [
        (None, None, None)
    ]
    insert_row(conn, user, "g1", is_active=False)
    insert_row(conn, user, "p1", is_active=False)
    insert_row(conn, user, "x1", is_active=False)
    insert_row(conn, user, "a1")
    initialize(run, user, set_id, T)
    view = player_rows(False)
    assert [(r["goal_id"], r["in_view"]) for r in view] == [("a1", True), ("g1", False), ("p1", True)]
    assert {(r["default_set_id"], r["initialized_at"], r["initialized_namespace"]) for r in view} == {(set_id, T, NS)}
    assert view[0] == {
        "default_set_id": set_id,
        "initialized_at": T,
        "initialized_namespace": NS,
        "in_view": True,
        **as_read(row(conn, user, "a1")),
    }
    assert [r["goal_id"] for r in player_rows(True)] == ["a1", "g1", "p1", "x1"]


def test_initialize_view_with_a_new_default_set_keeps_the_old_implied_rows_and_assigns_new_defaults_now(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    old = register_set(run, ("g1", "c1", None), ("g2", "c1", "weekly"))
    new = register_set(run, ("g1", "c1", None), ("g3", "c2", "monthly"))
    initialize(run, user, old, T)
    later = T + timedelta(days=3)
    changed = initialize(run, user, new, later)
    # g2 left the defaults and g1 stayed: both keep the row the first initialize implied; g3 is new, at `later`.
    assert [(r["goal_id"], r["in_view"], r["assigned_at"], r["expires_at"]) for r in changed] == [
        ("g1", True, T, None),
        ("g2", True, T, datetime(2024, 1, 15, tzinfo=UTC)),
    ]
    assert {(r["initialized_at"], r["inserted"]) for r in changed} == {(later, True)}
    assert real_goal_ids(conn, user) == ["g1", "g2"]
    assert [(r["goal_id"], r["assigned_at"]) for r in run("user_progress", user_id=user)] == [
        ("g1", T),
        ("g2", T),
        ("g3", later),
    ]
    again = initialize(run, user, new, later)
    assert [r["goal_id"] for r in again] == ["g1", "g2"]
    assert {(r["initialized_at"], r["inserted"]) for r in again} == {(later, False)}


def test_materializing_makes_implied_rows_real_with_the_same_values(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    set_id = register_set(run, ("g1", "c1", "daily"), ("g2", "c1", None), ("g3", "c1", None))
    initialize(run, user, set_id, T)
    implied = run("user_progress", user_id=user)
    assert run("materialize_implied_goals", user_id=user, goal_ids=["g2", "nope"]) == [{"goal_id": "g2"}]
    assert run("materialize_implied_goals", user_id=user, goal_ids=["g2"]) == []
    assert real_goal_ids(conn, user) == ["g2"]
    assert run("user_progress", user_id=user) == implied


def test_set_goal_active_on_an_implied_row_writes_it_as_the_existing_active_row(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    set_id = register_set(run, ("g1", "c1", "daily"), ("g2", "c1", None))
    initialize(run, user, set_id, T)
    later = T + timedelta(hours=2)
    off = set_active(run, user, "g1", False, None, later)
    assert (off["is_active"], off["assigned_at"], off["expires_at"], off["created_at"], off["updated_at"]) == (
        False,
        T,
        N,
        T,
        T,
    )
    on = set_active(run, user, "g2", True, None, later)
    assert (on["is_active"], on["assigned_at"], on["created_at"]) == (True, T, T)
    assert real_goal_ids(conn, user) == ["g1", "g2"]


def test_read_delete_and_backdate_statements_see_implied_rows(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    set_id = register_set(run, ("g1", "c1", None), ("g2", "c2", None))
    insert_row(conn, user, "a1", challenge_id="c2")
    initialize(run, user, set_id, T)
    assert [r["goal_id"] for r in run("active_goals", user_id=user)] == ["a1", "g1", "g2"]
    assert [r["goal_id"] for r in run("challenge_progress", user_id=user, challenge_id="c2")] == ["a1", "g2"]
    assert [r["goal_id"] for r in run("active_view", user_id=user, prereq_goal_ids=[])] == ["a1", "g1", "g2"]
    assert run("user_goal_count", user_id=user) == [{"goal_count": 3}]
    moved = run("backdate_user_goals", user_id=user, goal_ids=["g2"], seconds=3600)
    assert moved == [{"goal_id": "g2", "updated_at": T - timedelta(hours=1)}]
    assert real_goal_ids(conn, user) == ["a1", "g2"]
    assert sorted(r["goal_id"] for r in run("delete_user_data", namespace=NS, user_id=user)) == ["a1", "g1", "g2"]
    assert run("user_goal_count", user_id=user) == [{"goal_count": 0}]
    assert conn.execute("SELECT count(*) AS n FROM user_initializations WHERE user_id = %s", (user,)).fetchone() == {
        "n": 0
    }


# --- set active, batch select, deactivate ------------------------------------------------------------


def set_active(
    run: Runner, user: str, goal_id: str, active: bool, expires_at: datetime | None, now: datetime
) -> dict[str, Any]:
    (result,) = run(
        "set_goal_active",
        user_id=user,
        goal_id=goal_id,
        challenge_id="c1",
        namespace=NS,
        is_active=active,
        expires_at=expires_at,
        now=now,
    )
    return result


def test_set_goal_active_inserts_activates_and_deactivates_by_the_spec(run: Runner, user: str) -> None:
    created = set_active(run, user, "g1", True, N, T)
    assert (created["is_active"], created["assigned_at"], created["expires_at"]) == (True, T, N)
    assert (created["created_at"], created["updated_at"], created["progress"], created["status"]) == (
        T,
        T,
        0,
        "not_started",
    )

    t2, n2 = T + timedelta(days=1), N + timedelta(days=1)
    again = set_active(run, user, "g1", True, n2, t2)
    assert (again["assigned_at"], again["expires_at"], again["updated_at"]) == (T, n2, T)
    assert set_active(run, user, "g1", True, n2, t2) == again  # a repeated call returns the same row

    t3 = t2 + timedelta(hours=1)
    off = set_active(run, user, "g1", False, None, t3)
    assert (off["is_active"], off["assigned_at"], off["expires_at"], off["updated_at"]) == (False, T, n2, T)

    t4 = t3 + timedelta(hours=1)
    on = set_active(run, user, "g1", True, n2, t4)
    assert (on["is_active"], on["assigned_at"], on["updated_at"], on["created_at"]) == (True, t4, T, T)

    # A goal that no longer rotates gets no expiry on activation.
    assert set_active(run, user, "g1", True, None, t4)["expires_at"] is None


def test_set_goal_active_creates_an_inactive_row_without_assignment(run: Runner, user: str) -> None:
    created = set_active(run, user, "g1", False, N, T)
    assert (created["is_active"], created["assigned_at"], created["expires_at"], created["updated_at"]) == (
        False,
        None,
        None,
        T,
    )


def test_set_goal_active_keeps_a_claimed_goal_claimed(run: Runner, conn: psycopg.Connection[Any], user: str) -> None:
    insert_row(conn, user, "g1", status="claimed", completed_at=T, claimed_at=T, is_active=False, progress=9)
    on = set_active(run, user, "g1", True, None, T + timedelta(hours=1))
    assert (on["status"], on["progress"], on["claimed_at"], on["is_active"]) == ("claimed", 9, T, True)


def test_batch_set_goal_active_upserts_in_goal_order_by_the_set_active_rules(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    insert_row(conn, user, "g1", is_active=True, assigned_at=T, updated_at=T)
    insert_row(conn, user, "g2", is_active=False, assigned_at=T, updated_at=T)
    t2 = T + timedelta(hours=2)
    rows = run(
        "batch_set_goal_active",
        user_id=user,
        namespace=NS,
        goal_ids=["g3", "g1", "g2", "g1"],
        challenge_ids=["c1", "c1", "c1", "c1"],
        expires_at=[N, N, N, N],
        now=t2,
    )
    by_goal = {r["goal_id"]: r for r in rows}
    assert [r["goal_id"] for r in rows] == ["g1", "g2", "g3"]
    assert all(r["is_active"] and r["expires_at"] == N for r in rows)
    assert (by_goal["g1"]["assigned_at"], by_goal["g1"]["updated_at"]) == (T, T)
    assert (by_goal["g2"]["assigned_at"], by_goal["g2"]["updated_at"]) == (t2, T)
    assert (by_goal["g3"]["assigned_at"], by_goal["g3"]["created_at"], by_goal["g3"]["updated_at"]) == (t2, t2, t2)


def test_deactivate_challenge_goals_keeps_listed_goals_and_other_challenges(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    for goal_id in ("g1", "g2", "g3"):
        insert_row(conn, user, goal_id)
    insert_row(conn, user, "g4", challenge_id="c2")
    insert_row(conn, user, "g5", is_active=False)
    replaced = run("deactivate_challenge_goals", user_id=user, challenge_id="c1", keep_goal_ids=["g2"])
    assert [r["goal_id"] for r in replaced] == ["g1", "g3"]
    assert [row(conn, user, g)["is_active"] for g in ("g1", "g2", "g3", "g4")] == [False, True, False, True]
    g1 = row(conn, user, "g1")
    assert (g1["assigned_at"], g1["updated_at"]) == (T, T)
    replaced = run("deactivate_challenge_goals", user_id=user, challenge_id="c1", keep_goal_ids=[])
    assert [r["goal_id"] for r in replaced] == ["g2"]


# --- rotation catch-up ---------------------------------------------------------------------------------


def catch_up(run: Runner, user: str, goals: dict[str, bool], now: datetime = T) -> list[dict[str, Any]]:
    return run(
        "rotation_catch_up",
        user_id=user,
        goal_ids=list(goals),
        boundaries=[B] * len(goals),
        next_boundaries=[N] * len(goals),
        reset_flags=list(goals.values()),
        now=now,
    )


def test_rotation_catch_up_resets_or_carries_over_only_stale_active_unclaimed_rows(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    stale = {"updated_at": YESTERDAY, "expires_at": B}
    insert_row(conn, user, "reset", status="completed", progress=50, baseline_value=40, completed_at=YESTERDAY, **stale)
    insert_row(conn, user, "carry", status="in_progress", progress=50, baseline_value=45, **stale)
    insert_row(
        conn, user, "claimed", status="claimed", progress=50, completed_at=YESTERDAY, claimed_at=YESTERDAY, **stale
    )
    insert_row(conn, user, "inactive", status="in_progress", progress=5, is_active=False, **stale)
    insert_row(conn, user, "fresh", status="in_progress", progress=5, updated_at=B, expires_at=N)
    before = {g: row(conn, user, g) for g in ("claimed", "inactive", "fresh")}

    changed = catch_up(run, user, {"carry": False, "claimed": True, "fresh": True, "inactive": True, "reset": True})

    assert [r["goal_id"] for r in changed] == ["carry", "reset"]
    reset = row(conn, user, "reset")
    assert (reset["status"], reset["baseline_value"], reset["completed_at"], reset["progress"]) == (
        "not_started",
        None,
        None,
        50,
    )
    assert (reset["expires_at"], reset["updated_at"]) == (N, T)
    carry = row(conn, user, "carry")
    assert (carry["status"], carry["baseline_value"], carry["progress"], carry["expires_at"], carry["updated_at"]) == (
        "in_progress",
        45,
        50,
        N,
        T,
    )
    assert {g: row(conn, user, g) for g in before} == before
    assert {r["goal_id"]: r for r in changed}["reset"] == as_read(reset)


def test_rotation_catch_up_rechecks_a_row_that_a_concurrent_write_moved_into_the_new_period(
    registry: Registry, db_url: str, conn: psycopg.Connection[Any], user: str
) -> None:
    insert_row(
        conn,
        user,
        "g1",
        status="completed",
        progress=50,
        baseline_value=40,
        completed_at=YESTERDAY,
        updated_at=YESTERDAY,
    )
    flush_time = T - timedelta(minutes=1)
    result: list[Any] = []
    with psycopg.connect(db_url, row_factory=dict_row) as flusher:
        # The "flush" holds the row lock and has already written the row in the new period.
        flusher.execute(
            "UPDATE user_goal_progress SET updated_at = %s, progress = 60 WHERE user_id = %s", (flush_time, user)
        )

        def initialize() -> None:
            with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as other:
                result.append(
                    Runner(registry, other)(
                        "rotation_catch_up",
                        user_id=user,
                        goal_ids=["g1"],
                        boundaries=[B],
                        next_boundaries=[N],
                        reset_flags=[True],
                        now=T,
                    )
                )

        thread = threading.Thread(target=initialize)
        thread.start()
        wait_until_a_session_waits_on_a_lock(conn, user)
        flusher.commit()
        thread.join(timeout=10)
    assert result == [[]]
    g1 = row(conn, user, "g1")
    assert (g1["status"], g1["progress"], g1["updated_at"], g1["completed_at"]) == (
        "completed",
        60,
        flush_time,
        YESTERDAY,
    )


def wait_until_a_session_waits_on_a_lock(conn: psycopg.Connection[Any], user: str) -> None:
    """Wait until a session of this test database is blocked on a lock (the catch-up of `user`)."""
    for _ in range(200):
        waiting = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
        if waiting["n"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"the catch-up of {user} never waited for the row lock")


# --- claim -----------------------------------------------------------------------------------------------


def claim(run: Runner, user: str, generation: int, now: datetime = T, goal_id: str = "g1") -> list[dict[str, Any]]:
    """`record_claim` of one goal with a log-mode grant of `generation`."""
    return run(
        "record_claim",
        user_id=user,
        goal_id=goal_id,
        now=now,
        namespace=NS,
        generation=generation,
        challenge_id="c1",
        idempotency_key=f"{NS}:{user}:{goal_id}:{generation}",
        reward_type="ITEM",
        reward_id="sword",
        quantity=1,
        mode="log",
        attempts=1,
    )


def test_claim_statements_lock_generation_and_guarded_claim_with_its_grant(
    run: Runner, conn: psycopg.Connection[Any], db_url: str, user: str
) -> None:
    insert_row(conn, user, "g1", status="completed", progress=10, completed_at=YESTERDAY)
    insert_row(conn, user, "g2", status="in_progress", progress=3)

    def generation() -> int:
        return run("next_claim_generation", namespace=NS, user_id=user, goal_id="g1")[0]["generation"]

    def grants() -> list[tuple[str, int, str, datetime, str]]:
        found = conn.execute(
            "SELECT goal_id, generation, idempotency_key, granted_at, mode FROM reward_grants"
            " WHERE user_id = %s ORDER BY goal_id, generation",
            (user,),
        ).fetchall()
        return [tuple(r.values()) for r in found]

    assert generation() == 1
    with conn.transaction():
        (locked,) = run("progress_for_update", user_id=user, goal_id="g1")
        assert locked == as_read(row(conn, user, "g1"))
        with psycopg.connect(db_url) as other, pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute(
                "SELECT 1 FROM user_goal_progress WHERE user_id = %s AND goal_id = 'g1' FOR UPDATE NOWAIT", (user,)
            )
        assert claim(run, user, 1) == [{"claimed_at": T}]
    g1 = row(conn, user, "g1")
    assert (g1["status"], g1["claimed_at"], g1["updated_at"], g1["completed_at"]) == ("claimed", T, T, YESTERDAY)
    assert grants() == [("g1", 1, f"{NS}:{user}:g1:1", T, "log")]
    assert generation() == 2

    # The guard fails (already claimed, or not completed): no row changes and no grant is recorded.
    assert claim(run, user, 2, T + timedelta(seconds=1)) == []
    assert claim(run, user, 1, goal_id="g2") == []
    assert row(conn, user, "g2")["status"] == "in_progress"
    assert grants() == [("g1", 1, f"{NS}:{user}:g1:1", T, "log")]

    # Completed again (a reselection cycle): the next claim records the next generation.
    conn.execute(
        "UPDATE user_goal_progress SET status = 'completed', claimed_at = NULL WHERE user_id = %s AND goal_id = 'g1'",
        (user,),
    )
    later = T + timedelta(days=1)
    assert claim(run, user, generation(), later) == [{"claimed_at": later}]
    assert grants()[-1] == ("g1", 2, f"{NS}:{user}:g1:2", later, "log")
    assert generation() == 3


# --- reads, delete, backdate ------------------------------------------------------------------------------


def test_read_statements_select_the_right_rows(run: Runner, conn: psycopg.Connection[Any], user: str) -> None:
    insert_row(conn, user, "a1")
    insert_row(conn, user, "a2", challenge_id="c2")
    insert_row(conn, user, "p1", is_active=False, status="completed", completed_at=T)
    insert_row(conn, user, "x1", is_active=False)
    insert_row(conn, f"{user}-other", "a1")

    def goal_ids(name: str, **params: Any) -> list[str]:
        return [r["goal_id"] for r in run(name, user_id=user, **params)]

    assert goal_ids("active_goals") == ["a1", "a2"]
    assert run("user_goal_count", user_id=user) == [{"goal_count": 4}]
    assert goal_ids("user_progress") == ["a1", "a2", "p1", "x1"]
    assert goal_ids("challenge_progress", challenge_id="c2") == ["a2"]
    assert goal_ids("goals_by_ids", goal_ids=["p1", "a2", "nope"]) == ["a2", "p1"]
    assert goal_ids("goals_by_ids", goal_ids=[]) == []
    assert goal_ids("active_view", prereq_goal_ids=["p1", "a1"]) == ["a1", "a2", "p1"]
    assert goal_ids("active_view", prereq_goal_ids=[]) == ["a1", "a2"]
    assert run("active_goals", user_id=user)[0] == as_read(row(conn, user, "a1"))


def test_delete_user_data_removes_only_that_users_rows_and_keeps_grants(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    insert_row(conn, user, "g1", status="completed", completed_at=T)
    insert_row(conn, user, "g2")
    insert_row(conn, f"{user}-other", "g1")
    assert claim(run, user, 1) == [{"claimed_at": T}]
    assert sorted(r["goal_id"] for r in run("delete_user_data", namespace=NS, user_id=user)) == ["g1", "g2"]
    assert run("user_goal_count", user_id=user) == [{"goal_count": 0}]
    assert row(conn, f"{user}-other", "g1") is not None
    assert run("next_claim_generation", namespace=NS, user_id=user, goal_id="g1") == [{"generation": 2}]


def test_backdate_user_goals_moves_updated_at_back(run: Runner, conn: psycopg.Connection[Any], user: str) -> None:
    insert_row(conn, user, "g1")
    insert_row(conn, user, "g2")
    moved = run("backdate_user_goals", user_id=user, goal_ids=["g2"], seconds=3600)
    assert moved == [{"goal_id": "g2", "updated_at": T - timedelta(hours=1)}]
    assert row(conn, user, "g1")["updated_at"] == T
    run("backdate_user_goals", user_id=user, goal_ids=None, seconds=86400)
    assert [row(conn, user, g)["updated_at"] for g in ("g1", "g2")] == [YESTERDAY, YESTERDAY - timedelta(hours=1)]


# --- the flush: apply_event_updates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    goal_id: str
    source: str
    mode: str = "absolute"
    target: int = 10
    rotating: bool = False
    reset: bool = False
    reselect: bool = False


def flush(run: Runner, entries: list[tuple[Any, ...]], goals: list[Goal], now: datetime = T) -> list[dict[str, Any]]:
    """Run the flush statement for (user_id, source, value, inc[, event time]) entries; rotating goals use the
    daily B and N."""
    return run(
        "apply_event_updates",
        entry_user_ids=[e[0] for e in entries],
        entry_sources=[e[1] for e in entries],
        entry_values=[e[2] for e in entries],
        entry_incs=[e[3] for e in entries],
        entry_event_ats=[e[4] if len(e) > 4 else None for e in entries],
        goal_ids=[g.goal_id for g in goals],
        goal_sources=[g.source for g in goals],
        goal_progress_modes=[g.mode for g in goals],
        goal_targets=[g.target for g in goals],
        goal_boundaries=[B if g.rotating else None for g in goals],
        goal_next_boundaries=[N if g.rotating else None for g in goals],
        goal_reset_flags=[g.reset for g in goals],
        goal_reselect_flags=[g.reselect for g in goals],
        now=now,
    )


KILLS = "stat:kills"


def test_flush_returns_one_row_per_entry_and_routes_by_source(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [Goal("kills", KILLS), Goal("logins", "login"), Goal("kills2", KILLS, target=1000)]
    insert_row(conn, user, "kills")
    insert_row(conn, user, "kills2")
    insert_row(conn, user, "logins")
    result = flush(
        run,
        [
            (user, KILLS, 7, 7),
            (user, "login", None, 1),
            (f"{user}-none", "login", None, 1),
            (user, "stat:unrouted", 3, 3),
        ],
        goals,
    )
    assert result == [
        {"entry_index": 1, "user_id": user, "source": KILLS, "outcome": "applied", "goal_ids": ["kills", "kills2"]},
        {"entry_index": 2, "user_id": user, "source": "login", "outcome": "applied", "goal_ids": ["logins"]},
        {"entry_index": 3, "user_id": f"{user}-none", "source": "login", "outcome": "no_row", "goal_ids": []},
        {"entry_index": 4, "user_id": user, "source": "stat:unrouted", "outcome": "no_row", "goal_ids": []},
    ]
    assert [row(conn, user, g)["progress"] for g in ("kills", "kills2", "logins")] == [7, 7, 1]
    assert (
        conn.execute("SELECT count(*) AS n FROM user_goal_progress WHERE user_id = %s", (f"{user}-none",)).fetchone()[
            "n"
        ]
        == 0
    )


def test_flush_absolute_stat_takes_the_latest_value_and_completed_never_goes_back(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [Goal("g", KILLS, target=100)]
    insert_row(conn, user, "g")
    t = [T + timedelta(minutes=i) for i in range(4)]
    flush(run, [(user, KILLS, 50, 50)], goals, t[0])
    assert (row(conn, user, "g")["progress"], row(conn, user, "g")["status"]) == (50, "in_progress")
    flush(run, [(user, KILLS, 20, 1)], goals, t[1])
    g = row(conn, user, "g")
    assert (g["progress"], g["status"], g["updated_at"], g["baseline_value"]) == (20, "in_progress", t[1], None)
    flush(run, [(user, KILLS, 100, 80)], goals, t[2])
    g = row(conn, user, "g")
    assert (g["progress"], g["status"], g["completed_at"]) == (100, "completed", t[2])
    flush(run, [(user, KILLS, 10, 1)], goals, t[3])
    g = row(conn, user, "g")
    assert (g["progress"], g["status"], g["completed_at"], g["updated_at"]) == (10, "completed", t[2], t[3])


def test_flush_a_late_stat_value_keeps_the_newer_one_by_event_time(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [Goal("abs", KILLS, target=100), Goal("rel", KILLS, mode="relative", target=100)]
    insert_row(conn, user, "abs")
    insert_row(conn, user, "rel")
    e = [T - timedelta(seconds=30 - i) for i in range(3)]
    flush(run, [(user, KILLS, 12, 2, e[2])], goals)
    flush(run, [(user, KILLS, 10, 2, e[1])], goals)  # a retry of an earlier event, arriving late
    late = [row(conn, user, g) for g in ("abs", "rel")]
    assert [(r["progress"], r["value_event_at"]) for r in late] == [(12, e[2]), (12, e[2])]
    assert late[1]["baseline_value"] == 10
    flush(run, [(user, KILLS, 9, 1)], goals)  # no event time: arrival order, as before
    untimed = row(conn, user, "abs")
    assert (untimed["progress"], untimed["value_event_at"]) == (9, e[2])
    flush(run, [(user, KILLS, 15, 3, e[2] + timedelta(seconds=1))], goals)
    assert row(conn, user, "abs")["progress"] == 15


def test_flush_absolute_login_counts_logins(run: Runner, conn: psycopg.Connection[Any], user: str) -> None:
    goals = [Goal("g", "login", target=3)]
    insert_row(conn, user, "g")
    flush(run, [(user, "login", None, 2)], goals)
    assert (row(conn, user, "g")["progress"], row(conn, user, "g")["status"]) == (2, "in_progress")
    flush(run, [(user, "login", None, 1)], goals)
    assert (row(conn, user, "g")["progress"], row(conn, user, "g")["status"]) == (3, "completed")


def test_flush_relative_first_event_sets_baseline_and_completes_exactly_when_inc_reaches_target(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [Goal("g", KILLS, mode="relative", target=5)]
    other = f"{user}-b"
    insert_row(conn, user, "g")
    insert_row(conn, other, "g")
    flush(run, [(user, KILLS, 100, 4), (other, KILLS, 100, 5)], goals)
    mine, theirs = row(conn, user, "g"), row(conn, other, "g")
    assert (mine["progress"], mine["baseline_value"], mine["status"], mine["completed_at"]) == (
        100,
        96,
        "in_progress",
        None,
    )
    assert (theirs["progress"], theirs["baseline_value"], theirs["status"], theirs["completed_at"]) == (
        100,
        95,
        "completed",
        T,
    )
    flush(run, [(user, KILLS, 101, 1)], goals)
    mine = row(conn, user, "g")
    assert (mine["baseline_value"], mine["status"]) == (96, "completed")


def test_flush_merged_stat_entry_gives_the_same_baseline_as_single_events(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [Goal("g", KILLS, mode="relative", target=50)]
    merged = f"{user}-merged"
    insert_row(conn, user, "g")
    insert_row(conn, merged, "g")
    flush(run, [(user, KILLS, 105, 5)], goals)
    flush(run, [(user, KILLS, 110, 5)], goals)
    flush(run, [(merged, KILLS, 110, 10)], goals)
    one_by_one, at_once = row(conn, user, "g"), row(conn, merged, "g")
    assert (one_by_one["progress"], one_by_one["baseline_value"], one_by_one["status"]) == (110, 100, "in_progress")
    assert (at_once["progress"], at_once["baseline_value"], at_once["status"]) == (110, 100, "in_progress")


def test_flush_relative_login_with_target_one_completes_on_a_single_login(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    insert_row(conn, user, "g", progress=7)
    flush(run, [(user, "login", None, 1)], [Goal("g", "login", mode="relative", target=1)])
    g = row(conn, user, "g")
    assert (g["progress"], g["baseline_value"], g["status"]) == (8, 7, "completed")


def test_flush_never_writes_inactive_or_frozen_claimed_rows(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [
        Goal("inactive", "login"),
        Goal("claimed", "login"),
        Goal("claimed_fresh", "login", rotating=True, reselect=True),
    ]
    insert_row(conn, user, "inactive", is_active=False, progress=2, updated_at=YESTERDAY)
    insert_row(
        conn,
        user,
        "claimed",
        status="claimed",
        progress=10,
        completed_at=YESTERDAY,
        claimed_at=YESTERDAY,
        updated_at=YESTERDAY,
    )
    # Claimed in this period: reselection waits for the next boundary.
    insert_row(conn, user, "claimed_fresh", status="claimed", progress=10, completed_at=B, claimed_at=B, updated_at=B)
    before = {g.goal_id: row(conn, user, g.goal_id) for g in goals}
    assert flush(run, [(user, "login", None, 1)], goals)[0]["outcome"] == "no_row"
    assert {g.goal_id: row(conn, user, g.goal_id) for g in goals} == before


def test_flush_claimed_goal_without_reselection_stays_frozen_after_a_boundary(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [Goal("g", "login", rotating=True, reset=True, reselect=False)]
    insert_row(
        conn,
        user,
        "g",
        status="claimed",
        progress=10,
        completed_at=YESTERDAY,
        claimed_at=YESTERDAY,
        updated_at=YESTERDAY,
        expires_at=B,
    )
    before = row(conn, user, "g")
    assert flush(run, [(user, "login", None, 1)], goals)[0]["outcome"] == "no_row"
    assert row(conn, user, "g") == before


def test_flush_reopens_a_stale_claimed_goal_with_reselection(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [Goal("g", KILLS, mode="relative", target=5, rotating=True, reselect=True)]
    finisher = f"{user}-b"
    for user_id in (user, finisher):
        insert_row(
            conn,
            user_id,
            "g",
            status="claimed",
            progress=90,
            baseline_value=80,
            completed_at=YESTERDAY,
            claimed_at=YESTERDAY,
            updated_at=YESTERDAY,
            expires_at=B,
        )
    result = flush(run, [(user, KILLS, 100, 2), (finisher, KILLS, 100, 6)], goals)
    assert [r["outcome"] for r in result] == ["applied", "applied"]
    g = row(conn, user, "g")
    assert (g["status"], g["progress"], g["baseline_value"], g["completed_at"], g["claimed_at"]) == (
        "not_started",
        100,
        98,
        None,
        None,
    )
    assert (g["expires_at"], g["updated_at"]) == (N, T)
    done = row(conn, finisher, "g")
    assert (done["status"], done["baseline_value"], done["completed_at"], done["claimed_at"]) == (
        "completed",
        94,
        T,
        None,
    )


def test_flush_resets_a_stale_goal_with_reset_progress_and_carries_over_without_it(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [
        Goal("reset", KILLS, mode="relative", target=5, rotating=True, reset=True),
        Goal("carry", KILLS, mode="relative", target=5, rotating=True, reset=False),
    ]
    for goal in goals:
        insert_row(
            conn,
            user,
            goal.goal_id,
            status="completed",
            progress=60,
            baseline_value=50,
            completed_at=YESTERDAY,
            updated_at=YESTERDAY - timedelta(days=3),
            expires_at=B,
        )
    flush(run, [(user, KILLS, 62, 2)], goals)
    reset = row(conn, user, "reset")
    assert (reset["status"], reset["progress"], reset["baseline_value"], reset["completed_at"]) == (
        "in_progress",
        62,
        60,
        None,
    )
    assert (reset["expires_at"], reset["updated_at"]) == (N, T)
    carry = row(conn, user, "carry")
    assert (carry["status"], carry["progress"], carry["baseline_value"], carry["completed_at"]) == (
        "completed",
        62,
        50,
        YESTERDAY,
    )
    assert (carry["expires_at"], carry["updated_at"]) == (N, T)


def test_flush_stale_relative_login_keeps_the_raw_total_and_restarts_its_baseline(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    insert_row(conn, user, "g", status="in_progress", progress=10, baseline_value=8, updated_at=YESTERDAY)
    flush(run, [(user, "login", None, 1)], [Goal("g", "login", mode="relative", target=3, rotating=True, reset=True)])
    g = row(conn, user, "g")
    assert (g["progress"], g["baseline_value"], g["status"]) == (11, 10, "in_progress")


def test_flush_sets_expires_at_only_for_stale_rows_or_rows_without_one(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [
        Goal("no_expiry", "login", rotating=True),
        Goal("has_expiry", "login", rotating=True),
        Goal("plain", "login"),
    ]
    earlier = N - timedelta(hours=1)
    insert_row(conn, user, "no_expiry", updated_at=B)
    insert_row(conn, user, "has_expiry", updated_at=B, expires_at=earlier)
    insert_row(conn, user, "plain", expires_at=earlier)
    flush(run, [(user, "login", None, 1)], goals)
    assert [row(conn, user, g.goal_id)["expires_at"] for g in goals] == [N, earlier, earlier]
    assert [row(conn, user, g.goal_id)["updated_at"] for g in goals] == [T, T, T]


def test_flush_clamps_extreme_values_instead_of_failing_the_batch(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    goals = [Goal("abs", KILLS, target=10), Goal("rel", KILLS, mode="relative", target=5)]
    huge, negative, low = f"{user}-huge", f"{user}-neg", f"{user}-low"
    for user_id in (huge, negative, low):
        for goal in goals:
            insert_row(conn, user_id, goal.goal_id)
    insert_row(conn, user, "logins", progress=INT_MAX - 1)
    result = flush(
        run,
        [
            (huge, KILLS, 5_000_000_000, 5_000_000_000),
            (negative, KILLS, -5, 1),
            (low, KILLS, INT_MIN, 5),
            (user, "login", None, 10),
        ],
        goals + [Goal("logins", "login", target=1)],
    )
    assert [r["outcome"] for r in result] == ["applied"] * 4
    assert (row(conn, huge, "abs")["progress"], row(conn, huge, "abs")["status"]) == (INT_MAX, "completed")
    rel = row(conn, huge, "rel")
    assert (rel["progress"], rel["baseline_value"], rel["status"]) == (INT_MAX, 0, "completed")
    assert (row(conn, negative, "abs")["progress"], row(conn, negative, "abs")["status"]) == (0, "in_progress")
    assert row(conn, negative, "rel")["baseline_value"] == -6
    low_rel = row(conn, low, "rel")
    assert (low_rel["progress"], low_rel["baseline_value"], low_rel["status"]) == (0, INT_MIN, "completed")
    assert row(conn, user, "logins")["progress"] == INT_MAX


def test_flush_defers_a_whole_entry_with_a_locked_row_and_applies_the_others(
    run: Runner, conn: psycopg.Connection[Any], db_url: str, user: str
) -> None:
    goals = [Goal("g1", "login", target=100), Goal("g2", "login", target=100)]
    other = f"{user}-b"
    for user_id in (user, other):
        insert_row(conn, user_id, "g1", progress=1)
        insert_row(conn, user_id, "g2", progress=1)
    with psycopg.connect(db_url) as claim:
        claim.execute("SELECT 1 FROM user_goal_progress WHERE user_id = %s AND goal_id = 'g1' FOR UPDATE", (user,))
        result = flush(run, [(user, "login", None, 1), (other, "login", None, 1)], goals)
        assert [(r["user_id"], r["outcome"], r["goal_ids"]) for r in result] == [
            (user, "deferred", []),
            (other, "applied", ["g1", "g2"]),
        ]
        assert [row(conn, user, g)["progress"] for g in ("g1", "g2")] == [1, 1]
        assert [row(conn, user, g)["updated_at"] for g in ("g1", "g2")] == [T, T]
        assert [row(conn, other, g)["progress"] for g in ("g1", "g2")] == [2, 2]
    later = T + timedelta(seconds=1)
    assert flush(run, [(user, "login", None, 1)], goals, later)[0]["outcome"] == "applied"
    assert [row(conn, user, g)["progress"] for g in ("g1", "g2")] == [2, 2]


def test_flush_inserts_implied_rows_with_the_entry_applied_as_it_updates_real_rows_of_the_same_values(
    run: Runner, conn: psycopg.Connection[Any], user: str
) -> None:
    members = (("g1", "c1", "daily"), ("g2", "c1", None), ("g3", "c2", None), ("g4", "c2", None))
    set_id = register_set(run, *members)
    real = f"{user}-real"
    for user_id in (user, real):
        initialize(run, user_id, set_id, YESTERDAY)
    # `real` holds real rows with the values `user`'s implied rows read as.
    run("materialize_implied_goals", user_id=real, goal_ids=["g1", "g2", "g3", "g4"])
    goals = [
        Goal("g1", KILLS, rotating=True, reset=True),
        Goal("g2", KILLS, mode="relative", target=5),
        Goal("g3", "login", target=1),
        Goal("g9", KILLS),  # fed, but in no default set: no row
    ]
    entries = [
        (u, source, value, inc, T) for u in (user, real) for source, value, inc in ((KILLS, 7, 7), ("login", None, 1))
    ]
    result = flush(run, entries, goals, T + timedelta(hours=1))
    assert [(r["user_id"], r["outcome"], r["goal_ids"]) for r in result] == [
        (user, "applied", ["g1", "g2"]),
        (user, "applied", ["g3"]),
        (real, "applied", ["g1", "g2"]),
        (real, "applied", ["g3"]),
    ]
    assert real_goal_ids(conn, user) == ["g1", "g2", "g3"]  # g4, not fed, stays implied
    for goal_id in ("g1", "g2", "g3"):
        inserted, updated = row(conn, user, goal_id), row(conn, real, goal_id)
        assert inserted is not None and updated is not None
        assert {**inserted, "user_id": real} == updated, goal_id
    assert (row(conn, user, "g3") or {})["status"] == "completed"


def test_flush_of_an_entry_with_real_and_implied_rows_defers_both_while_a_real_one_is_locked_then_writes_both(
    run: Runner, conn: psycopg.Connection[Any], db_url: str, user: str
) -> None:
    set_id = register_set(run, ("g1", "c1", None), ("g2", "c1", None))
    initialize(run, user, set_id, YESTERDAY)
    run("materialize_implied_goals", user_id=user, goal_ids=["g1"])
    goals = [Goal("g1", KILLS), Goal("g2", KILLS)]
    with psycopg.connect(db_url) as claim:
        claim.execute("SELECT 1 FROM user_goal_progress WHERE user_id = %s AND goal_id = 'g1' FOR UPDATE", (user,))
        assert [r["outcome"] for r in flush(run, [(user, KILLS, 3, 3)], goals)] == ["deferred"]
        assert real_goal_ids(conn, user) == ["g1"]  # g2 not inserted either
    result = flush(run, [(user, KILLS, 3, 3)], goals)
    assert [(r["outcome"], r["goal_ids"]) for r in result] == [("applied", ["g1", "g2"])]
    assert [(row(conn, user, g) or {})["progress"] for g in ("g1", "g2")] == [3, 3]


def test_flush_fails_whole_when_another_writer_inserts_an_implied_row_first_and_applies_on_retry(
    registry: Registry, run: Runner, conn: psycopg.Connection[Any], db_url: str, user: str
) -> None:
    set_id = register_set(run, ("g1", "c1", None), ("g2", "c1", None))
    initialize(run, user, set_id, YESTERDAY)
    goals = [Goal("g1", KILLS), Goal("g2", KILLS)]
    failures: list[BaseException] = []

    def flush_in_its_own_session() -> None:
        with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as session:
            try:
                flush(Runner(registry, session), [(user, KILLS, 3, 3)], goals)
            except psycopg.errors.UniqueViolation as exc:
                failures.append(exc)

    with psycopg.connect(db_url, row_factory=dict_row) as writer:  # a set-active making g2 real, not committed yet
        Runner(registry, writer)("materialize_implied_goals", user_id=user, goal_ids=["g2"])
        thread = threading.Thread(target=flush_in_its_own_session)
        thread.start()
        wait_until_a_session_waits_on_a_lock(conn, user)
        writer.commit()
        thread.join(timeout=10)
    assert len(failures) == 1
    assert real_goal_ids(conn, user) == ["g2"]  # nothing of the flush was written: g1 still implied
    assert (row(conn, user, "g2") or {})["progress"] == 0
    result = flush(run, [(user, KILLS, 3, 3)], goals)
    assert [(r["outcome"], r["goal_ids"]) for r in result] == [("applied", ["g1", "g2"])]
    assert [(row(conn, user, g) or {})["progress"] for g in ("g1", "g2")] == [3, 3]

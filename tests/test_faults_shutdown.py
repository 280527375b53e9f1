"""SIGTERM while event calls wait for their commit (issue 11; docs/events.md#shutdown): the buffer drains as
the gRPC server stops, so each waiting call is answered with its commit instead of being cancelled."""

from __future__ import annotations

import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from service.transport.auth import mint_token
from tests.support.serve import ServeProcess, base_env, http_get, player_call, publish_logins

pytestmark = pytest.mark.integration

SECRET = "shutdown-secret-" + "x" * 24


def test_sigterm_answers_the_calls_waiting_for_a_commit_with_their_commit(pg_url: str, redis_url: str) -> None:
    # The flush interval is far away: only the shutdown's drain can commit the waiting calls.
    env = base_env(
        DATABASE_URL=pg_url, REDIS_URL=redis_url, CHALLENGE_JWT_SECRET=SECRET, CHALLENGE_FLUSH_INTERVAL_MS="600000"
    )
    users = [f"term-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    serve = ServeProcess(env).start()
    try:
        serve.wait_ready()
        for user in users:
            player_call(serve, mint_token(SECRET.encode(), user), "POST", "/v1/challenges/initialize")
        with ThreadPoolExecutor(len(users)) as pool:
            calls = [pool.submit(publish_logins, serve, user, 2) for user in users]
            deadline = time.monotonic() + 30
            while http_get(serve.admin("/admin/buffer"))[1]["pending_waiters"] < len(users):
                assert time.monotonic() < deadline and not any(call.done() for call in calls)
                time.sleep(0.05)
            code, _, stderr = serve.stop(signal.SIGTERM)
            results = [call.result() for call in calls]
    finally:
        serve.kill()
    assert code == 0, stderr
    assert [(r.accepted, r.committed) for r in results] == [(2, True)] * len(users)
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT user_id, progress FROM user_goal_progress WHERE user_id = ANY(%s) AND goal_id = 's1-welcome'",
            (users,),
        ).fetchall()
    assert sorted(progress for _, progress in rows) == [2] * len(users)

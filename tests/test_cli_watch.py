"""`challengectl watch` against a real `serve` (docs/cli.md#commands, docs/cli.md#output-conventions; X11): the snapshot and NDJSON changes
when piped, `--once`, `--count`, `--challenge`, `--active-only`, a failed poll retried with backoff,
Ctrl-C exiting 0, and the Live table on a terminal."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from challengectl.cli import main
from service.config.resources import example_catalog_path
from service.domain.catalog import load_catalog
from service.proto.challengectl.v1 import ingest_pb2, ingest_pb2_grpc
from service.transport.auth import mint_token
from tests.servers import free_port
from tests.support.cli import isolate_cli, run_on_tty
from tests.support.serve import REPO_ROOT, ServeProcess, base_env, service_env

pytestmark = pytest.mark.integration

SECRET = "cli-watch-secret-0123456789abcdef"
CATALOG = load_catalog(example_catalog_path())
LOGIN_GOAL = "s1-regular"


@pytest.fixture(scope="module")
def service(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[ServeProcess]:
    with ServeProcess(service_env(pg_url, redis_url, f"{redis_prefix}watch", SECRET)) as serve:
        yield serve


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path, CHALLENGE_JWT_SECRET=SECRET)


def service_flags(service: ServeProcess, api_port: int | None = None) -> list[str]:
    return [
        "--api-url",
        f"http://127.0.0.1:{api_port or service.http_port}/challenge",
        "--admin-url",
        f"http://127.0.0.1:{service.admin_port}",
        "--grpc-addr",
        f"127.0.0.1:{service.grpc_port}",
    ]


def cli(service: ServeProcess, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main([*service_flags(service), *args])
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def new_player(service: ServeProcess) -> str:
    user = f"watch-{uuid.uuid4().hex[:10]}"
    request = urllib.request.Request(
        service.api("/challenge/v1/challenges/initialize"),
        method="POST",
        data=b"",
        headers={"Authorization": f"Bearer {mint_token(SECRET.encode(), user)}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    return user


def publish_login(service: ServeProcess, user: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        result = ingest_pb2_grpc.EventIngestStub(channel).Publish(
            ingest_pb2.EventBatch(
                events=[ingest_pb2.Event(id=str(uuid.uuid4()), user_id=user, kind=ingest_pb2.EVENT_KIND_LOGIN)]
            ),
            timeout=10,
        )
    assert result.accepted == 1


class WatchProcess:
    """`challengectl watch` as a subprocess with piped stdout, read line by line in a thread."""

    def __init__(self, service: ServeProcess, args: list[str], api_port: int | None = None) -> None:
        env = {**base_env(PYTHONPATH=str(REPO_ROOT)), "CHALLENGE_JWT_SECRET": SECRET}
        # A shell may start background jobs with SIGINT ignored, which the child would inherit.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "challengectl", *service_flags(service, api_port), "watch", *args],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # noqa: PLW1509 (no locks taken)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        # Never let a stuck watch hang the test run (a blocking readline on its stderr included).
        self.watchdog = threading.Timer(45, self.process.kill)
        self.watchdog.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def next_record(self, timeout_s: float = 15) -> dict:
        return json.loads(self.lines.get(timeout=timeout_s))

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; (exit code, stderr)."""
        self.process.send_signal(signal.SIGINT)
        self.watchdog.cancel()
        try:
            _, stderr = self.process.communicate(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        return self.process.returncode, stderr


def test_piped_watch_streams_changes_and_ctrl_c_exits_0(service: ServeProcess) -> None:
    user = new_player(service)
    watch = WatchProcess(service, ["--user", user, "--interval", "200ms"])
    try:
        first = watch.next_record()
        assert first["user_id"] == user and first["ts"].endswith("Z")
        assert len(first["changes"]) == len(CATALOG.goals)  # the full snapshot: every goal, old values null
        assert all(c["old_progress"] is None and c["old_status"] is None for c in first["changes"])
        publish_login(service, user)
        record = watch.next_record()
        while not record["changes"]:
            record = watch.next_record()
        changed = {c["goal_id"]: c for c in record["changes"]}
        assert changed[LOGIN_GOAL] == {
            "challenge_id": "season-1",
            "goal_id": LOGIN_GOAL,
            "old_progress": 0,
            "new_progress": 1,
            "old_status": "not_started",
            "new_status": "in_progress",
        }
        assert set(changed) == {goal.goal_id for goal in CATALOG.login_goals if goal.default_assigned}
    finally:
        code, stderr = watch.interrupt()
    assert code == 0, stderr
    assert "Error" not in stderr and "Traceback" not in stderr


def test_failed_polls_are_reported_and_retried(service: ServeProcess) -> None:
    watch = WatchProcess(service, ["--user", "nobody", "--interval", "100ms"], api_port=free_port())
    try:
        assert watch.process.stderr is not None
        line = watch.process.stderr.readline()
        assert line.startswith("Warning: poll failed: cannot connect to the REST API") and "retrying in 0.2s" in line
        line = watch.process.stderr.readline()
        assert "retrying in 0.4s" in line  # backing off
    finally:
        code, _ = watch.interrupt()
    assert code == 0


def test_once_prints_the_snapshot(service: ServeProcess, capsys) -> None:
    user = new_player(service)
    code, out, err = cli(service, ["watch", "--user", user, "--once", "--active-only"], capsys)
    assert code == 0, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert {c["goal_id"] for c in record["changes"]} == {goal.goal_id for goal in CATALOG.default_goals}
    assert all(c["new_status"] == "not_started" and c["new_progress"] == 0 for c in record["changes"])

    code, out, err = cli(service, ["watch", "--user", user, "--once", "--challenge", "season-1"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert [c["goal_id"] for c in record["changes"]] == [g.goal_id for g in CATALOG.challenges_by_id["season-1"].goals]


def test_count_polls_and_reports_no_change_when_nothing_happened(service: ServeProcess, capsys) -> None:
    user = new_player(service)
    code, out, err = cli(service, ["watch", "--user", user, "--count", "2", "--interval", "100ms"], capsys)
    assert code == 0, err
    first, second = [json.loads(line) for line in out.splitlines()]
    assert first["changes"] and second["changes"] == []


def test_piped_watch_honours_the_output_format(service: ServeProcess, capsys) -> None:
    user = new_player(service)
    code, out, err = cli(
        service, ["-o", "yaml", "watch", "--user", user, "--count", "2", "--interval", "100ms"], capsys
    )
    assert code == 0, err
    documents = [document for document in yaml.safe_load_all(out) if document is not None]
    assert [document["user_id"] for document in documents] == [user, user]
    assert documents[0]["changes"] and documents[1]["changes"] == []
    code, out, err = cli(service, ["-o", "table", "watch", "--user", user, "--once"], capsys)
    assert code == 0, err
    assert "CHALLENGE" in out and "PROGRESS" in out and not out.lstrip().startswith("{")


def test_unknown_challenge_exits_3_without_retrying(service: ServeProcess, capsys) -> None:
    code, _, err = cli(service, ["watch", "--user", "u1", "--challenge", "no-such-challenge"], capsys)
    assert code == 3 and err.startswith("Error: CHALLENGE_NOT_FOUND")


def test_watch_needs_a_user(service: ServeProcess, capsys) -> None:
    code, _, err = cli(service, ["watch", "--once"], capsys)
    assert code == 2 and "needs --user" in err


def test_live_table_on_a_terminal(service: ServeProcess) -> None:
    user = new_player(service)
    code, screen = run_on_tty(
        [*service_flags(service), "watch", "--user", user, "--once", "--active-only"], CHALLENGE_JWT_SECRET=SECRET
    )
    assert code == 0, screen
    assert "CHALLENGE" in screen and "PROGRESS" in screen and f"{user} · poll 1" in screen
    assert "0/7" in screen  # s1-regular: progress/target

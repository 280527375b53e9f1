"""CLI conventions (docs/cli.md#output-conventions, docs/cli.md#destructive-actions; X2-X6, X13): exit codes, output formats, colour, the Error/Hint
shape, the confirmation rule, the service clients and token minting, against a real `serve`."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import yaml

from challengectl.cli import hoist_output_options
from challengectl.context import CliContext
from challengectl.errors import CliError
from challengectl.output import Output, confirm, status_text
from service import __version__
from service.config.resources import example_catalog_path
from service.domain.catalog import load_catalog
from tests.conftest import new_database
from tests.servers import free_port
from tests.support.cli import cli_env, isolate_cli, run_cli, run_on_tty
from tests.support.serve import REPO_ROOT, ServeProcess, base_env, http_get

pytestmark = pytest.mark.integration

SECRET = "cli-conventions-secret-0123456789abcdef"
ESC = "\x1b["


def run_piped(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "challengectl", *args],
        env=cli_env(**env),
        text=True,
        capture_output=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def service(pg_admin_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A real `serve` on free ports with its own database, Redis key prefix and HS256 secret file."""
    secret_dir = tmp_path_factory.mktemp("cli-secret")
    secret_file = secret_dir / "jwt.secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    with new_database(pg_admin_url, "cli_conventions") as database_url:
        serve = ServeProcess(
            base_env(
                DATABASE_URL=database_url,
                REDIS_URL=redis_url,
                CHALLENGE_REDIS_KEY_PREFIX=f"clitest{os.getpid()}",
                CHALLENGE_JWT_SECRET_FILE=str(secret_file),
            )
        )
        serve.start()
        serve.wait_ready()
        serve.secret_file = secret_file  # type: ignore[attr-defined]
        serve.database_url = database_url  # type: ignore[attr-defined]
        try:
            yield serve
        finally:
            serve.stop()


def service_flags(serve: ServeProcess) -> dict[str, str]:
    return {
        "api_url": f"http://127.0.0.1:{serve.http_port}/challenge",
        "admin_url": f"http://127.0.0.1:{serve.admin_port}",
        "grpc_addr": f"127.0.0.1:{serve.grpc_port}",
    }


def api_error(flags: dict[str, object], method: str, path: str, user: str | None = "cli-user") -> CliError:
    """Make one ApiClient call that must fail; return the CliError."""
    cli = CliContext(flags=dict(flags))
    with pytest.raises(CliError) as failure:
        cli.run(lambda clients: clients.api.send(method, path, user=user))
    return failure.value


# --- exit codes (X2) -----------------------------------------------------------------------------


def test_exit_0_version_reports_the_running_service(service: ServeProcess, capsys) -> None:
    flags = service_flags(service)
    code, out, err = run_cli(
        [
            "--admin-url",
            flags["admin_url"],
            "--database-url",
            service.database_url,
            "--redis-url",
            "redis://127.0.0.1:6379/0",
            "version",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["cli_version"] == __version__ and report["service_version"] == __version__
    assert report["schema_version"] >= 1
    assert report["catalog_fingerprint"] == load_catalog(example_catalog_path()).fingerprint
    assert report["postgres_version"].split(".")[0].isdigit()
    assert report["redis_version"].split(".")[0].isdigit()
    assert report["unreachable"] == {}


def test_version_shows_unreachable_parts_without_failing(capsys) -> None:
    closed = free_port()
    code, out, _ = run_cli(
        [
            "--admin-url",
            f"http://127.0.0.1:{closed}",
            "--database-url",
            f"postgresql://postgres@127.0.0.1:{closed}/postgres",
            "--redis-url",
            f"redis://127.0.0.1:{closed}/0",
            "version",
        ],
        capsys,
    )
    assert code == 0
    report = json.loads(out)
    assert report["service_version"] is None and report["postgres_version"] is None
    assert set(report["unreachable"]) == {"service", "postgres", "redis"}
    assert "connection refused" in report["unreachable"]["service"]


def test_exit_1_business_error_keeps_the_service_error_code(service: ServeProcess) -> None:
    challenge = load_catalog(example_catalog_path()).challenges[0]
    goal = challenge.goals[0]
    flags = {**service_flags(service), "jwt_secret_file": str(service.secret_file)}
    error = api_error(flags, "POST", f"/v1/challenges/{challenge.challenge_id}/goals/{goal.goal_id}/claim")
    assert error.exit_code == 1
    assert error.code == "GOAL_NOT_COMPLETED" and error.message.startswith("GOAL_NOT_COMPLETED: ")


def test_exit_3_unknown_challenge(service: ServeProcess) -> None:
    flags = {**service_flags(service), "jwt_secret_file": str(service.secret_file)}
    error = api_error(flags, "GET", "/v1/challenges/no-such-challenge")
    assert (error.exit_code, error.code) == (3, "CHALLENGE_NOT_FOUND")


def test_exit_4_rejected_token_with_the_token_hint(service: ServeProcess) -> None:
    forged = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60}, "x" * 32, algorithm="HS256")
    error = api_error({**service_flags(service), "token": forged}, "GET", "/v1/challenges")
    assert error.exit_code == 4
    assert error.hint == "pass --token, or mint one with 'challengectl token mint --user <id>'"


def test_exit_4_no_secret_to_mint_a_token(capsys) -> None:
    code, out, err = run_cli(["-o", "json", "token", "mint", "--user", "alice"], capsys)
    assert code == 4
    assert json.loads(out)["error"]["exit_code"] == 4
    assert err.startswith("Error: no JWT secret") and "\nHint: " in err


def test_exit_5_connection_refused_hints_to_start_the_service() -> None:
    error = api_error({"api_url": f"http://127.0.0.1:{free_port()}/challenge", "token": "t"}, "GET", "/v1/challenges")
    assert error.exit_code == 5 and "connection refused" in error.message
    assert error.hint == "is the service running? start it with 'challengectl serve' or set --api-url"


def test_exit_5_rest_url_on_the_grpc_port_says_so(service: ServeProcess) -> None:
    grpc_port = service.grpc_port
    flags = {
        "api_url": f"http://127.0.0.1:{grpc_port}/challenge",
        "grpc_addr": f"127.0.0.1:{grpc_port}",
        "token": "t",
        "timeout_s": 3,
    }
    error = api_error(flags, "GET", "/v1/challenges")
    assert error.exit_code == 5
    assert error.hint == f"{grpc_port} is the gRPC port; the REST API listens on 8000"


def test_exit_5_admin_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        cli = CliContext(flags={"admin_url": f"http://127.0.0.1:{silent.getsockname()[1]}"}, timeout_override_s=0.3)
        with pytest.raises(CliError) as failure:
            cli.run(lambda clients: clients.admin.get("/admin/config"))
    assert failure.value.exit_code == 5 and "did not answer" in failure.value.message


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_exit_130_on_sigint() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(30)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "challengectl",
                "--timeout",
                "60s",
                "--admin-url",
                f"http://127.0.0.1:{silent.getsockname()[1]}",
                "version",
            ],
            env=cli_env(),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As from a terminal: a background job of a non-interactive shell inherits SIGINT ignored, and Python
            # then keeps it ignored (the CLI rightly respects that).
            preexec_fn=_default_sigint,
        )
        connection, _ = silent.accept()  # the command is now waiting for the admin API
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        connection.close()
    assert process.returncode == 130
    assert err.startswith("Error: interrupted") and "Traceback" not in err


def test_exit_2_usage_errors(capsys) -> None:
    code, _, err = run_cli(["-o", "xml", "config", "show"], capsys)
    assert code == 2 and err.startswith("Error: unknown output format 'xml'")
    code, _, err = run_cli(["--timeout", "5 parsecs", "config", "show"], capsys)
    assert code == 2 and "Hint: " in err
    code, _, err = run_cli(["config", "show", "--no-such-flag"], capsys)
    assert code == 2 and err.startswith("Error: No such option: --no-such-flag")


# --- output (X3) ---------------------------------------------------------------------------------


def test_json_is_the_default_when_piped_and_a_table_on_a_tty() -> None:
    piped = run_piped(["config", "show"])
    assert piped.returncode == 0, piped.stderr
    body = json.loads(piped.stdout)
    assert body["total"] == len(body["items"]) and {"name", "value", "source"} <= set(body["items"][0])
    code, screen = run_on_tty(["config", "show"])
    assert code == 0
    assert "NAME" in screen and "http_port" in screen and '"items"' not in screen


def test_yaml_csv_and_no_headers(capsys) -> None:
    code, out, _ = run_cli(["-o", "yaml", "config", "show"], capsys)
    assert code == 0 and yaml.safe_load(out)["total"] > 50
    code, out, _ = run_cli(["-o", "csv", "config", "show"], capsys)
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0] == ["name", "value", "source", "origin"]
    assert ["http_port", "8000", "default", ""] in rows
    code, out, _ = run_cli(["-o", "csv", "--no-headers", "config", "show"], capsys)
    assert list(csv.reader(io.StringIO(out)))[0][0] == "http_host"
    code, out, _ = run_cli(["-o", "table", "--no-headers", "config", "show"], capsys)
    assert code == 0 and "NAME" not in out and out.split()[0] == "http_host"


def test_csv_of_a_non_list_is_a_usage_error(capsys) -> None:
    code, out, err = run_cli(["-o", "csv", "version"], capsys)
    assert code == 2 and out == "" and err.startswith("Error: -o csv needs list-shaped output")


def test_output_options_may_follow_the_command(capsys) -> None:
    code, out, _ = run_cli(["config", "show", "-o", "csv", "--no-headers"], capsys)
    assert code == 0 and out.startswith("http_host,")


def test_ndjson_streaming_when_piped() -> None:
    buffer = io.StringIO()
    out = Output(None, stdout=buffer)
    assert out.format == "json" and out.streams_ndjson
    out.ndjson({"ts": "2024-01-01T00:00:00Z", "changes": []})
    out.ndjson({"ts": "2024-01-01T00:00:01Z", "changes": [{"goal_id": "g"}]})
    lines = buffer.getvalue().splitlines()
    assert [json.loads(line)["ts"] for line in lines] == ["2024-01-01T00:00:00Z", "2024-01-01T00:00:01Z"]


# --- colour (X4) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "coloured"),
    [
        ([], {}, True),
        ([], {"NO_COLOR": "1"}, False),
        ([], {"TERM": "dumb"}, False),
        (["--no-color"], {}, False),
        (["--no-color"], {"FORCE_COLOR": "1"}, False),
    ],
)
def test_colour_on_a_terminal(args: list[str], env: dict[str, str], coloured: bool) -> None:
    code, screen = run_on_tty([*args, "-o", "table", "config", "show"], **env)
    assert code == 0 and "http_port" in screen
    assert (ESC in screen) is coloured


@pytest.mark.parametrize(
    ("args", "env", "coloured"),
    [
        ([], {}, False),
        ([], {"FORCE_COLOR": "1"}, True),
        ([], {"CLICOLOR_FORCE": "1"}, True),
        (["--color"], {}, True),
        (["--color"], {"TERM": "dumb", "NO_COLOR": "1"}, True),
    ],
)
def test_colour_when_piped(args: list[str], env: dict[str, str], coloured: bool) -> None:
    result = run_piped([*args, "-o", "table", "config", "show"], **env)
    assert result.returncode == 0 and "http_port" in result.stdout
    assert (ESC in result.stdout) is coloured


def test_markers_and_words_survive_without_colour() -> None:
    buffer = io.StringIO()
    out = Output("table", stdout=buffer, color=False)
    for status in ("pass", "warn", "fail"):
        out.console.print(status_text(status, "detail"))
    assert buffer.getvalue().splitlines() == ["✓ PASS detail", "! WARN detail", "✗ FAIL detail"]


# --- errors (X6) ---------------------------------------------------------------------------------


def test_error_shape_json_object_and_no_secret(capsys) -> None:
    code, out, err = run_cli(
        ["-o", "json", "--database-url", "postgresql://ops:hunter2@127.0.0.1:1/db", "db", "migrate", "--yes"], capsys
    )
    assert code == 5
    error = json.loads(out)["error"]
    assert set(error) == {"code", "message", "hint", "exit_code"} and error["exit_code"] == 5
    lines = err.splitlines()
    assert lines[0].startswith("Error: ") and lines[1].startswith("Hint: ")
    assert "hunter2" not in out + err and "Traceback" not in err
    assert any(line.startswith("Warning: --database-url holds a password") for line in lines)


def test_debug_prints_a_curl_line_with_the_token_masked(service: ServeProcess) -> None:
    token = jwt.encode({"sub": "dbg", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    lines: list[str] = []
    cli = CliContext(flags={**service_flags(service), "token": token}, debug=True)
    cli._debug_line = lines.append  # type: ignore[method-assign]
    body = cli.run(lambda clients: clients.api.get("/v1/challenges", user="dbg"))
    assert isinstance(body["challenges"], list)
    assert lines == [
        f"curl -sS -X GET http://127.0.0.1:{service.http_port}/challenge/v1/challenges -H 'Authorization: Bearer ****'"
    ]


def test_debug_shows_the_traceback(capsys) -> None:
    code, _, err = run_cli(["--debug", "token", "mint", "--user", "alice"], capsys)
    assert code == 4 and "Traceback" in err and "\nError: no JWT secret" in err


# --- confirmation (X5 helper) --------------------------------------------------------------------


def test_confirm_rules(capsys) -> None:
    assert confirm("flush 3 keys", yes=False, dry_run=True) is False
    assert "dry run: would flush 3 keys; nothing changed" in capsys.readouterr().err
    assert confirm("flush 3 keys", yes=True) is True
    with pytest.raises(CliError) as refused:  # stdin is not a terminal under pytest
        confirm("flush 3 keys", yes=False)
    assert (refused.value.exit_code, refused.value.hint) == (2, "add --yes")


def test_confirm_asks_on_a_terminal_with_default_no(tmp_path: Path) -> None:
    script = (
        "import sys\nfrom challengectl.output import confirm\nfrom challengectl.errors import CliError\n"
        "try:\n    confirm('drop everything', yes=False)\nexcept CliError as e:\n    sys.exit(e.exit_code)\n"
    )
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=cli_env(), stdin=terminal, stdout=terminal, stderr=terminal, cwd=REPO_ROOT
    )
    os.close(terminal)
    prompt = b""
    while b"[y/N]" not in prompt:
        select.select([controller], [], [], 30)
        prompt += os.read(controller, 1024)
    os.write(controller, b"\n")  # Enter takes the default
    assert process.wait(timeout=30) == 2
    os.close(controller)
    assert b"Drop everything? [y/N]" in prompt


# --- player identity and token minting (X13) -----------------------------------------------------


def test_minted_token_is_accepted_by_the_service(service: ServeProcess, capsys) -> None:
    code, out, err = run_cli(
        ["token", "mint", "--user", "alice", "--ttl", "10m", "--jwt-secret-file", str(service.secret_file)], capsys
    )
    assert code == 0, err
    token = out.strip()
    assert out == token + "\n" and token.count(".") == 2
    status, body, _ = http_get(service.api("/challenge/v1/challenges"), {"Authorization": f"Bearer {token}"})
    assert status == 200 and isinstance(body["challenges"], list)


def test_player_calls_mint_from_the_data_dir_secret(service: ServeProcess, tmp_path: Path) -> None:
    data_dir = tmp_path / "serve-data"
    data_dir.mkdir()
    (data_dir / "jwt.secret").write_text(service.secret_file.read_text())
    cli = CliContext(flags={**service_flags(service), "data_dir": str(data_dir)})
    body = cli.run(lambda clients: clients.api.post("/v1/challenges/initialize", user="data-dir-user"))
    assert body["newAssignments"] == len(load_catalog(example_catalog_path()).default_goals)


def test_player_calls_without_any_secret_exit_4(service: ServeProcess) -> None:
    error = api_error(service_flags(service), "GET", "/v1/challenges")
    assert error.exit_code == 4 and "no player token" in error.message


def test_player_commands_need_a_user() -> None:
    with pytest.raises(CliError) as missing:
        CliContext().require_user()
    assert missing.value.exit_code == 2 and "--user" in missing.value.hint
    assert CliContext(flags={"user": "bob"}).require_user() == "bob"


def test_ingest_client_publishes_and_maps_grpc_errors(service: ServeProcess) -> None:
    from service.proto.challengectl.v1 import ingest_pb2

    batch = ingest_pb2.EventBatch(
        batch_id="b1",
        events=[ingest_pb2.Event(id="cli-evt-1", user_id="ingest-user", kind=ingest_pb2.EVENT_KIND_LOGIN)],
    )
    result = CliContext(flags=service_flags(service)).run(lambda clients: clients.ingest.publish(batch))
    assert result.batch_id == "b1" and result.accepted + result.skipped + result.duplicates == 1
    closed = CliContext(flags={"grpc_addr": f"127.0.0.1:{free_port()}"}, timeout_override_s=2)
    with pytest.raises(CliError) as failure:
        closed.run(lambda clients: clients.ingest.publish(batch))
    assert failure.value.exit_code == 5 and failure.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["users", "init", "--user", "alice"], ["--user", "alice", "users", "init"]),
        (["version", "-o", "json"], ["-o", "json", "version"]),
        (
            ["--api-url", "http://h/c", "challenges", "list", "--token", "t"],
            ["--token", "t", "--api-url", "http://h/c", "challenges", "list"],
        ),
        # `events send login` defines its own --user: it stays with the command
        (["events", "send", "login", "--user", "bob"], ["events", "send", "login", "--user", "bob"]),
    ],
)
def test_global_options_may_follow_the_command(argv, expected) -> None:
    assert hoist_output_options(argv) == expected

"""`config show|validate|path|init`, `token mint`, `completion` and the help conventions (docs/configuration.md#sources-and-precedence,
docs/cli.md#command-tree, docs/cli.md#commands; X14 precedence and aliases, C5 warnings in `config validate`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import jwt
import pytest

from service.config.resources import example_catalog_path
from service.config.settings import SPECS
from tests.support.cli import cli_env, isolate_cli, run_cli
from tests.support.serve import REPO_ROOT

SECRET = "config-tests-secret-0123456789abcdefgh"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


def settings_of(out: str) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(out)["items"]}


def write_config(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "config" / "challengectl" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path, monkeypatch, capsys) -> None:
    write_config(
        tmp_path,
        'api_url = "http://file/challenge"\nadmin_url = "http://file:8080"\n'
        'grpc_addr = "file:6565"\nnamespace = "file-ns"\n',
    )
    monkeypatch.setenv("CHALLENGE_API_URL", "http://env/challenge")
    monkeypatch.setenv("CHALLENGE_ADMIN_URL", "http://env:8080")
    code, out, err = run_cli(["--api-url", "http://flag/challenge", "--timeout", "2m", "config", "show"], capsys)
    assert code == 0, err
    rows = settings_of(out)
    assert (rows["api_url"]["value"], rows["api_url"]["source"]) == ("http://flag/challenge", "flag")
    assert (rows["admin_url"]["value"], rows["admin_url"]["source"], rows["admin_url"]["origin"]) == (
        "http://env:8080",
        "env",
        "CHALLENGE_ADMIN_URL",
    )
    assert (rows["grpc_addr"]["value"], rows["grpc_addr"]["source"]) == ("file:6565", "file")
    assert (rows["namespace"]["value"], rows["namespace"]["source"]) == ("file-ns", "file")
    assert (rows["timeout_s"]["value"], rows["timeout_s"]["source"]) == (120, "flag")
    assert (rows["http_port"]["value"], rows["http_port"]["source"]) == (8000, "default")
    assert rows["user"]["value"] is None


def test_profiles_override_the_top_level(tmp_path, monkeypatch, capsys) -> None:
    write_config(
        tmp_path,
        'namespace = "top"\nadmin_url = "http://top:8080"\n[profiles.staging]\nadmin_url = "http://staging:8080"\n',
    )
    code, out, _ = run_cli(["--profile", "staging", "config", "show"], capsys)
    rows = settings_of(out)
    assert rows["admin_url"]["value"] == "http://staging:8080" and rows["namespace"]["value"] == "top"
    assert "[profiles.staging]" in rows["admin_url"]["origin"]
    monkeypatch.setenv("CHALLENGE_PROFILE", "nope")
    code, _, err = run_cli(["config", "show"], capsys)
    assert code == 2 and "no [profiles.nope]" in err


@pytest.mark.parametrize(
    ("env", "setting", "value"),
    [
        ({"AB_NAMESPACE": "ab"}, "namespace", "ab"),
        ({"AB_NAMESPACE": "ab", "CHALLENGE_NAMESPACE": "primary"}, "namespace", "primary"),
        ({"BASE_PATH": "/legacy"}, "base_path", "/legacy"),
        ({"CHALLENGE_CONFIG_PATH": "/etc/c.json"}, "catalog_path", "/etc/c.json"),
        ({"PLUGIN_GRPC_SERVER_AUTH_ENABLED": "false"}, "auth", "none"),
        ({"LOG_LEVEL": "debug"}, "log_level", "debug"),
        ({"REFRESH_INTERVAL": "42"}, "jwks_refresh_s", 42),
    ],
)
def test_reference_aliases(env, setting, value, monkeypatch, capsys) -> None:
    for name, raw in env.items():
        monkeypatch.setenv(name, raw)
    code, out, _ = run_cli(["config", "show"], capsys)
    row = settings_of(out)[setting]
    assert code == 0 and (row["value"], row["source"]) == (value, "env")
    assert row["origin"] in env


def test_secrets_are_masked_unless_revealed(monkeypatch, capsys) -> None:
    monkeypatch.setenv("CHALLENGE_ADMIN_TOKEN", "admin-s3cret")
    monkeypatch.setenv("DATABASE_URL", "postgresql://ops:pw-s3cret@db/challenge")
    code, out, _ = run_cli(["config", "show"], capsys)
    rows = settings_of(out)
    assert "s3cret" not in out
    assert rows["admin_token"]["value"] == "****"
    assert rows["database_url"]["value"] == "postgresql://ops:****@db/challenge"
    code, out, _ = run_cli(["config", "show", "--secrets"], capsys)
    assert settings_of(out)["admin_token"]["value"] == "admin-s3cret"


def test_invalid_setting_names_the_setting_and_its_source(monkeypatch, capsys) -> None:
    monkeypatch.setenv("CHALLENGE_HTTP_PORT", "eighty")
    code, _, err = run_cli(["config", "show"], capsys)
    assert code == 2
    assert err.startswith("Error: invalid setting 'http_port' from env CHALLENGE_HTTP_PORT")


def test_config_file_with_secrets_readable_by_others_warns(tmp_path, capsys) -> None:
    config = write_config(tmp_path, 'admin_token = "t0ken-value"\n', mode=0o644)
    code, _, err = run_cli(["config", "path"], capsys)
    assert code == 0 and f"Warning: config file {config} holds secrets and is readable by others" in err
    config.chmod(0o600)
    code, _, err = run_cli(["config", "path"], capsys)
    assert "Warning" not in err


def test_secret_flag_warns(capsys) -> None:
    code, _, err = run_cli(["--token", "abcdef", "config", "path"], capsys)
    assert code == 0 and "Warning: --token is visible in shell history and ps" in err


def test_validate_ok_and_catalog_warnings(tmp_path, capsys) -> None:
    code, out, _ = run_cli(["config", "validate", "--catalog", str(example_catalog_path())], capsys)
    assert code == 0 and json.loads(out)["valid"] is True
    catalog = json.loads(example_catalog_path().read_text())
    catalog["legacyKey"] = True
    path = tmp_path / "warn.json"
    path.write_text(json.dumps(catalog))
    code, out, _ = run_cli(["-o", "text", "config", "validate", "--catalog", str(path)], capsys)
    assert code == 0
    assert any(line.startswith("warning: ") and "legacyKey" in line for line in out.splitlines())


def test_validate_reports_every_error_and_exits_2(tmp_path, capsys) -> None:
    goal = (
        '{{"goalId":"{g}","name":"G","eventSource":"{src}","requirement":{{"statCode":"k","operator":">=",'
        '"targetValue":1}},"reward":{{"type":"ITEM","rewardId":"i","quantity":1}}}}'
    )
    path = tmp_path / "bad.json"
    path.write_text(
        '{"challenges":[{"challengeId":"c","name":"C","goals":['
        + goal.format(g="a", src="kills")
        + ","
        + goal.format(g="b", src="stars")
        + "]}]}"
    )
    code, out, err = run_cli(["-o", "text", "config", "validate", "--catalog", str(path)], capsys)
    assert code == 2
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "'kills'" in errors[0] and "'stars'" in errors[1]
    assert err.startswith("Error: configuration invalid: 2 error(s)")


def test_validate_lists_twenty_errors_then_a_count(tmp_path, capsys) -> None:
    catalog = json.loads(example_catalog_path().read_text())
    goals = catalog["challenges"][0]["goals"]
    for index in range(30):
        goals.append(dict(goals[0], goalId=f"bad-{index}", eventSource="kills"))
    path = tmp_path / "many.json"
    path.write_text(json.dumps(catalog))
    code, out, _ = run_cli(["-o", "text", "config", "validate", "--catalog", str(path)], capsys)
    assert code == 2
    lines = out.splitlines()
    assert len([line for line in lines if line.startswith("error: ")]) == 21
    assert "error: ... and 10 more" in lines
    code, out, _ = run_cli(["-o", "json", "config", "validate", "--catalog", str(path)], capsys)
    assert len(json.JSONDecoder().raw_decode(out)[0]["errors"]) == 30  # then the {"error": ...} line


def test_path_and_init(tmp_path, capsys) -> None:
    default = tmp_path / "config" / "challengectl" / "config.toml"
    code, out, _ = run_cli(["config", "path"], capsys)
    assert (code, out) == (0, f"{default}\n")
    code, out, _ = run_cli(["config", "init"], capsys)
    assert code == 0 and out == f"{default}\n"
    assert default.stat().st_mode & 0o777 == 0o600
    template = default.read_text()
    assert tomllib.loads(template) == {}  # everything commented out
    for spec in SPECS:
        if spec.name != "config_file":
            assert f"# {spec.name} = " in template
    code, _, err = run_cli(["config", "init"], capsys)
    assert code == 2 and "Hint: add --force" in err
    custom = tmp_path / "elsewhere.toml"
    code, out, _ = run_cli(["--config-file", str(custom), "config", "init", "--force"], capsys)
    assert code == 0 and custom.exists()


def test_token_mint_claims_and_ttl(monkeypatch, capsys) -> None:
    monkeypatch.setenv("CHALLENGE_JWT_SECRET", SECRET)
    code, out, err = run_cli(
        ["token", "mint", "--user", "alice", "--ttl", "90s", "--claim", "role=tester", "--claim", "level=3"], capsys
    )
    assert code == 0, err
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 90
    assert (claims["role"], claims["level"]) == ("tester", 3)
    assert abs(claims["iat"] - time.time()) < 60
    code, _, err = run_cli(["token", "mint", "--user", "alice", "--claim", "sub=bob"], capsys)
    assert code == 2
    code, _, err = run_cli(["token", "mint"], capsys)
    assert code == 2 and "--user" in err
    code, out, _ = run_cli(["token", "mint", "--user", "alice", "-o", "json"], capsys)
    assert code == 0 and jwt.decode(json.loads(out)["token"], SECRET, algorithms=["HS256"])["sub"] == "alice"


def test_token_mint_uses_the_embedded_data_dir_secret(tmp_path, capsys) -> None:
    data_dir = tmp_path / "data" / "challengectl"  # the default data dir under XDG_DATA_HOME
    data_dir.mkdir(parents=True)
    (data_dir / "jwt.secret").write_text(SECRET + "\n")
    code, out, _ = run_cli(["--user", "carol", "token", "mint"], capsys)
    assert code == 0 and jwt.decode(out.strip(), SECRET, algorithms=["HS256"])["sub"] == "carol"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "powershell"])
def test_completion_show(shell, capsys) -> None:
    code, out, _ = run_cli(["completion", "show", shell], capsys)
    assert code == 0 and "_CHALLENGECTL_COMPLETE" in out


@pytest.mark.slow
def test_completion_install_and_the_completion_protocol(tmp_path) -> None:
    env = cli_env(HOME=str(tmp_path), SHELL="/bin/bash")
    installed = subprocess.run(
        [sys.executable, "-m", "challengectl", "completion", "install", "bash"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert installed.returncode == 0, installed.stderr
    assert "_CHALLENGECTL_COMPLETE" in (tmp_path / ".bash_completions" / "challengectl.sh").read_text()
    completed = subprocess.run(
        [sys.executable, "-m", "challengectl"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={**env, "_CHALLENGECTL_COMPLETE": "complete_bash", "COMP_WORDS": "challengectl con", "COMP_CWORD": "1"},
    )
    assert "config" in completed.stdout.split()


@pytest.mark.parametrize(
    "command",
    [
        ["config", "show"],
        ["config", "validate"],
        ["config", "path"],
        ["config", "init"],
        ["version"],
        ["token", "mint"],
        ["completion", "show"],
        ["completion", "install"],
    ],
)
def test_help_has_examples_with_jq_and_no_markup(command, capsys) -> None:
    code, out, _ = run_cli([*command, "--help"], capsys)
    assert code == 0
    examples = out.split("Examples:", 1)[1]
    assert examples.count("challengectl ") >= 2 and "jq" in examples
    assert "[bold" not in out and "[/" not in out


def test_root_help_names_env_vars_and_exit_codes(capsys) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for env_name in (
        "CHALLENGE_API_URL",
        "CHALLENGE_GRPC_ADDR",
        "CHALLENGE_ADMIN_URL",
        "DATABASE_URL",
        "REDIS_URL",
        "CHALLENGE_DATA_DIR",
        "CHALLENGE_TOKEN",
        "CHALLENGE_USER",
        "CHALLENGE_OUTPUT",
        "NO_COLOR",
        "CHALLENGE_DEBUG",
        "CHALLENGE_TIMEOUT_S",
        "CHALLENGE_CONFIG_FILE",
        "CHALLENGE_PROFILE",
    ):
        assert env_name in out
    for code_line in (
        "  0  success",
        "  1  the operation failed",
        "  5  dependency",
        " 99  the command ran",
        "130  interrupted",
    ):
        assert code_line in out
    assert "--install-completion" in out and "--show-completion" in out


def test_show_names_the_catalog_file_in_use_and_its_source(monkeypatch, capsys) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)  # the embedded default, no catalog file configured
    monkeypatch.delenv("CHALLENGE_CATALOG_PATH", raising=False)
    code, out, _ = run_cli(["config", "show"], capsys)
    catalog = settings_of(out)["catalog_path"]
    assert code == 0 and catalog["value"] == str(example_catalog_path())
    assert catalog["source"].startswith("bundled example")
    monkeypatch.setenv("CHALLENGE_CATALOG_PATH", "/etc/challenges.json")
    code, out, _ = run_cli(["config", "show"], capsys)
    row = settings_of(out)["catalog_path"]
    assert (row["value"], row["source"]) == ("/etc/challenges.json", "env")

"""Running the CLI in tests: in this process (`run_cli`), as a subprocess on a pipe or a pseudo-terminal
(`cli_env`, `run_on_tty`), and `isolate_cli`, the clean environment every CLI test module starts from."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from challengectl.cli import main
from tests.support.serve import REPO_ROOT, base_env

COLOUR_VARIABLES = ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE")


def isolate_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clear_urls: bool = True, **settings: str) -> None:
    """No CHALLENGE_* setting, colour variable (nor, with `clear_urls`, DATABASE_URL/REDIS_URL) of this
    machine; config and data dirs under `tmp_path` (no stray config file, embedded data dir or
    jwt.secret); then `settings` set."""
    cleared = (*COLOUR_VARIABLES, *(("DATABASE_URL", "REDIS_URL") if clear_urls else ()))
    for name in list(os.environ):
        if name.startswith("CHALLENGE_") or name in cleared:
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real entry point in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: `base_env`, a colour terminal, no stray data dir, `extra`."""
    env = base_env(PYTHONPATH=str(REPO_ROOT))
    for name in (*COLOUR_VARIABLES, "COLUMNS"):
        env.pop(name, None)
    env["TERM"] = "xterm-256color"
    env["XDG_DATA_HOME"] = env["XDG_CONFIG_HOME"]  # no stray embedded data dir or jwt.secret
    env.update(extra)
    return env


def run_on_tty(args: list[str], **env: str) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; (exit code, everything written)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "challengectl", *args],
        env=cli_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        cwd=REPO_ROOT,
    )
    os.close(terminal)
    chunks = []
    while True:
        ready, _, _ = select.select([controller], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")

"""The CLI starts without the service runtime: the root and every command module load none of the heavy
libraries at import, and the root's command index matches what the command modules register."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from challengectl.cli import COMMANDS, load_command_module

HEAVY = ("uvicorn", "starlette", "grpc", "aiohttp", "psycopg", "redis")
COMMAND_MODULES = sorted({entry.module for entry in COMMANDS.values()})


def loaded_heavy_modules(code: str) -> list[str]:
    """The HEAVY top-level packages loaded after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return [name for name in json.loads(done.stdout.splitlines()[-1]) if name in HEAVY]


def test_importing_the_cli_loads_no_service_runtime() -> None:
    assert loaded_heavy_modules("import challengectl.cli") == []


def test_root_help_loads_no_service_runtime() -> None:
    code = (
        "import contextlib, io\nfrom challengectl.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])"
    )
    assert loaded_heavy_modules(code) == []


def test_no_command_module_imports_the_service_runtime_at_load() -> None:
    imports = "\n".join(f"import challengectl.commands.{module}" for module in COMMAND_MODULES)
    assert loaded_heavy_modules(imports) == []


def test_command_index_matches_the_registered_commands() -> None:
    registered: dict[str, tuple[str, bool, str]] = {}
    for module in COMMAND_MODULES:
        for name, command in load_command_module(module).commands.items():
            registered[name] = (module, command.hidden, command.get_short_help_str(limit=1000))
    assert set(registered) == set(COMMANDS)
    for name, entry in COMMANDS.items():
        module, hidden, summary = registered[name]
        assert (entry.module, entry.hidden) == (module, hidden), name
        if not hidden:
            assert entry.summary == summary, name


def test_root_help_lists_every_visible_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "challengectl", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    )
    listed = [
        line.split()[0]
        for line in done.stdout.split("Commands:")[1].split("Exit codes:")[0].splitlines()
        if line.strip()
    ]
    assert listed == [name for name, entry in COMMANDS.items() if not entry.hidden]

"""The typer root app: global options (docs/configuration.md#cli-settings), the wiring of the command groups, and `main`, which
turns every failure into `Error:`/`Hint:` lines and an exit code (docs/cli.md#exit-codes, docs/cli.md#errors-and-hints).

Command modules plug in with a `register(app: typer.Typer) -> None` function (adding their commands,
sub-apps and hidden aliases). `COMMANDS` names every top-level command, its module and its one-line summary,
so that `challengectl --help` lists them without importing any command module, and a command imports only
its own module (and what that needs) when it runs (bench/cli_startup.py measures it).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

from challengectl.context import (
    CliContext,
    config_file_warning,
    parse_duration,
    secret_flag_warnings,
    setting_option,
    timeout_setting,
)
from challengectl.errors import EXIT_CODES_TABLE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliError
from challengectl.output import FORMATS, resolve_format, to_json
from service.config.settings import MASK, SPECS_BY_NAME


@dataclass(frozen=True)
class CommandEntry:
    """A top-level command: the module that registers it and the summary `--help` shows for it."""

    module: str
    summary: str = ""
    hidden: bool = False


# In the order `--help` lists them. A summary must equal the first sentence of the command's own help
# (tests/test_cli_startup.py checks it); hidden entries are the reference CLI's aliases.
COMMANDS: dict[str, CommandEntry] = {
    "serve": CommandEntry(
        "serve",
        "Run the service: player API, gRPC ingest, admin API and flusher (embedded PostgreSQL/Redis by default).",
    ),
    "doctor": CommandEntry(
        "doctor", "Run one-shot health checks across every dependency; exit 99 when any check fails."
    ),
    "version": CommandEntry("version", "CLI, service, schema, catalog, PostgreSQL and Redis versions."),
    "watch": CommandEntry("watch", "Poll a player's challenges and highlight changes; Ctrl-C exits 0."),
    "explain": CommandEntry(
        "explain",
        "Explain a named query (or one ad-hoc SELECT) with parameters from a real user: plan, indexes, findings.",
    ),
    "pool": CommandEntry("pool", "Connection usage: the service's pools against PostgreSQL's max_connections."),
    "top": CommandEntry(
        "top", "Live view of a running service: routes, events, buffer, pool, cache, PostgreSQL and Redis."
    ),
    "config": CommandEntry("config", "Show, validate and initialise the configuration."),
    "completion": CommandEntry("completion", "Shell completion scripts (bash, zsh, fish, powershell)."),
    "token": CommandEntry("token", "Mint player tokens for local use."),
    "users": CommandEntry("users", "Create, inspect, delete and age players."),
    "challenges": CommandEntry("challenges", "The player's challenges, goals and rotation status (acts as --user)."),
    "goals": CommandEntry("goals", "Activate, select and claim the player's goals (acts as --user)."),
    "events": CommandEntry("events", "Send events to the gRPC ingestion service and check de-duplication."),
    "cache": CommandEntry("cache", "Warm, flush and inspect the Redis cache of active views."),
    "db": CommandEntry("db", "Inspect and migrate the PostgreSQL database."),
    "loadtest": CommandEntry("loadtest", "Load-test a running service and analyse the results (docs/loadtest.md)."),
    "initialize-player": CommandEntry("users", hidden=True),
    "list-challenges": CommandEntry("challenges", hidden=True),
    "get-challenge": CommandEntry("challenges", hidden=True),
    "get-rotation-status": CommandEntry("challenges", hidden=True),
    "set-goal-active": CommandEntry("goals", hidden=True),
    "batch-select": CommandEntry("goals", hidden=True),
    "random-select": CommandEntry("goals", hidden=True),
    "claim-reward": CommandEntry("goals", hidden=True),
    "trigger-event": CommandEntry("events", hidden=True),
}


def load_command_module(module: str) -> TyperGroup:
    """The commands `challengectl.commands.<module>` registers, as a click group of their own."""
    scratch = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False)
    importlib.import_module(f"challengectl.commands.{module}").register(scratch)
    return typer.main.get_group(scratch)


class LazyCommands(TyperGroup):
    """The root group: imports a command's module only when that command is looked up (to run it, complete
    it or show its help); the root's own help lists `COMMANDS` without importing anything."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [name for name, entry in COMMANDS.items() if not entry.hidden]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = COMMANDS.get(cmd_name)
        if cmd_name not in self.commands and entry is not None:
            for name, command in load_command_module(entry.module).commands.items():
                self.commands.setdefault(name, command)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        visible = [(name, entry.summary) for name, entry in COMMANDS.items() if not entry.hidden]
        width = formatter.width - 6 - max(len(name) for name, _ in visible)
        with formatter.section("Commands"):
            formatter.write_dl([(name, _one_line(summary, width)) for name, summary in visible])


def _one_line(text: str, width: int) -> str:
    """`text` cut at a word boundary to fit `width` columns, marked with '...' (as click shortens help)."""
    if len(text) <= width:
        return text
    return text[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


# click rewraps help paragraphs; `\b` keeps this one as written.
EXIT_CODES_EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES_TABLE)

app = typer.Typer(
    cls=LazyCommands,
    name="challengectl",
    help="Run, drive and diagnose the challenge service.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# The CliContext of the running invocation, so `main` can honour -o json / --debug for errors.
_invocation: CliContext | None = None
# Security warnings about the invocation (secrets given as flags, a readable config file).
_pending_warnings: list[str] = []


@app.callback()
def root(
    ctx: typer.Context,
    api_url: str | None = setting_option(
        "api_url", help_text="player REST API base URL, e.g. http://127.0.0.1:8000/challenge"
    ),
    grpc_addr: str | None = setting_option("grpc_addr", help_text="gRPC ingest address host:port"),
    admin_url: str | None = setting_option("admin_url", help_text="admin API URL"),
    database_url: str | None = setting_option("database_url", help_text="PostgreSQL URL; unset: the embedded one"),
    redis_url: str | None = setting_option("redis_url", help_text="Redis URL, or 'disabled'; unset: the embedded one"),
    data_dir: str | None = setting_option("data_dir", help_text="embedded servers and JWT secret"),
    token: str | None = setting_option("token", help_text="player JWT (prefer the env var: flags show in ps)"),
    user: str | None = setting_option("user", help_text="player id for player commands"),
    output: str | None = typer.Option(
        None,
        "-o",
        "--output",
        help=f"{'|'.join(FORMATS)}; default table on a TTY, json when piped [env: CHALLENGE_OUTPUT]",
    ),
    no_headers: bool = typer.Option(False, "--no-headers", help="omit table and CSV headers"),
    color: bool | None = typer.Option(
        None,
        "--color/--no-color",
        help="force or disable colour [env: NO_COLOR, FORCE_COLOR, CLICOLOR_FORCE]",
        show_default=False,
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress bars or status output"),
    debug: bool | None = typer.Option(
        None, "--debug", help="tracebacks and a curl/grpcurl line per call [env: CHALLENGE_DEBUG]", show_default=False
    ),
    timeout: str | None = typer.Option(
        None, "--timeout", help="request timeout <n>[ms|s|m|h|d], default 10s [env: CHALLENGE_TIMEOUT_S]"
    ),
    config_file: str | None = setting_option(
        "config_file", help_text="TOML config file, default $XDG_CONFIG_HOME/challengectl/config.toml"
    ),
    profile: str | None = setting_option("profile", help_text="config file profile [profiles.NAME]"),
) -> None:
    """Run, drive and diagnose the challenge service."""
    global _invocation
    timeout_s = parse_duration(timeout, "--timeout") if timeout is not None else None
    if timeout_s is not None and timeout_s <= 0:
        raise CliError(f"invalid --timeout '{timeout}': must be above zero", "e.g. --timeout 10s", EXIT_USAGE)
    if output is not None:
        output = resolve_format(output, stdout_is_tty=False)
    flags = {name: value for name, value in ctx.params.items() if name in SPECS_BY_NAME}
    flags.update(output=output, timeout_s=timeout_setting(timeout_s) if timeout_s is not None else None)
    flags = {name: value for name, value in flags.items() if value is not None}
    env_debug = os.environ.get("CHALLENGE_DEBUG", "").strip().lower() in ("1", "true", "yes")
    ctx.obj = _invocation = CliContext(
        flags=flags,
        debug=bool(debug) if debug is not None else env_debug,
        quiet=quiet,
        no_headers=no_headers,
        color=color,
        timeout_override_s=timeout_s,
    )
    # Printed when the command ends (after any Error:/Hint: lines, which stay first on stderr).
    _pending_warnings[:] = secret_flag_warnings(flags)
    file_warning = config_file_warning(config_file or os.environ.get("CHALLENGE_CONFIG_FILE") or None)
    if file_warning:
        _pending_warnings.append(file_warning)


def _secret_values() -> list[str]:
    """Secret values that must never be printed, from the invocation and the environment."""
    values = [
        os.environ.get(name, "")
        for name in (
            "CHALLENGE_TOKEN",
            "CHALLENGE_JWT_SECRET",
            "CHALLENGE_ADMIN_TOKEN",
            "CHALLENGE_GRPC_TOKEN",
            "CHALLENGE_REWARD_WEBHOOK_SECRET",
        )
    ]
    if _invocation is not None:
        values.append(str(_invocation.flags.get("token") or ""))
    return [value for value in values if len(value) >= 4]


_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]+):[^@\s]+@")


def redact(text: str) -> str:
    """`text` with URL passwords and known secret values masked."""
    text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    for secret in _secret_values():
        text = text.replace(secret, MASK)
    return text


def _wants_json_errors() -> bool:
    """`-o json` (flag, env or config file) also writes the error object to stdout (docs/cli.md#errors-and-hints)."""
    if _invocation is None:
        return False
    requested = _invocation.flags.get("output")
    if requested is None:
        try:
            requested = _invocation.settings().output
        except CliError:
            return False
    return requested == "json"


def report_error(error: CliError) -> None:
    """`Error:` / `Hint:` on stderr; with -o json also `{"error": {...}}` on stdout."""
    error.message = redact(" ".join(error.message.split()))
    error.hint = redact(" ".join(error.hint.split()))
    if _wants_json_errors():
        print(to_json(error.as_json(), pretty=False), flush=True)
    print(f"Error: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"Hint: {error.hint}", file=sys.stderr)
    sys.stderr.flush()


def _debugging(argv: list[str]) -> bool:
    if _invocation is not None:
        return _invocation.debug
    return "--debug" in argv


def _typer_failure(failure: typer.TyperException) -> CliError | None:
    """A CliError for click's usage errors and other failures; None for a bare group, whose help it prints
    (click reports both as exit-2 exceptions carrying the command's context)."""
    context: typer.Context | None = getattr(failure, "ctx", None)
    if failure.exit_code != EXIT_USAGE or context is None:
        return CliError(failure.format_message(), "", failure.exit_code or EXIT_FAILED)
    if failure.format_message() == context.get_help():
        print(context.get_help(), file=sys.stderr)
        return None
    return CliError(failure.format_message(), f"see '{context.command_path} --help'", EXIT_USAGE)


# Global options may also follow the command (`challengectl version -o json`, `challengectl users init
# --user alice`), as users type them; they are moved before the command unless that command defines an
# option of the same name. The value says whether the option takes a value.
HOISTABLE_OPTIONS = {
    "-o": True,
    "--output": True,
    "--no-headers": False,
    "-q": False,
    "--quiet": False,
    "--debug": False,
    "--color": False,
    "--no-color": False,
    "--user": True,
    "--token": True,
    "--api-url": True,
    "--admin-url": True,
    "--grpc-addr": True,
    "--database-url": True,
    "--redis-url": True,
    "--data-dir": True,
    "--timeout": True,
}


def hoist_output_options(args: list[str]) -> list[str]:
    """`args` with output options given after the command moved in front of it (see HOISTABLE_OPTIONS)."""
    command: Any = typer.main.get_command(app)
    takes_value = {name for param in command.params if getattr(param, "is_flag", True) is False for name in param.opts}
    position = 0
    while position < len(args) and args[position].startswith("-"):
        if args[position] == "--":
            return args
        position += 2 if args[position] in takes_value else 1
    if position >= len(args):
        return args
    head, rest = args[:position], args[position:]
    while rest and isinstance(command, TyperGroup):
        subcommand = command.get_command(typer.Context(command), rest[0])
        if subcommand is None:
            break
        command, head, rest = subcommand, head + [rest[0]], rest[1:]
    own = {name for param in command.params for name in (*param.opts, *getattr(param, "secondary_opts", []))}
    moved: list[str] = []
    kept: list[str] = []
    index = 0
    while index < len(rest):
        token = rest[index]
        if token == "--":
            kept += rest[index:]
            break
        name = token.split("=", 1)[0]
        if name in HOISTABLE_OPTIONS and name not in own:
            needs_value = HOISTABLE_OPTIONS[name] and "=" not in token
            moved += rest[index : index + (2 if needs_value else 1)]
            index += 2 if needs_value else 1
            continue
        kept.append(token)
        index += 1
    return moved + head + kept if moved else args


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn every failure into an exit code."""
    global _invocation
    _invocation = None
    _pending_warnings.clear()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _run(args)
    finally:
        for warning in _pending_warnings:
            print(f"Warning: {warning}", file=sys.stderr)


def _run(args: list[str]) -> None:
    try:
        result: Any = app(args=hoist_output_options(args), prog_name="challengectl", standalone_mode=False)
    except CliError as error:
        if _debugging(args):
            traceback.print_exc()
        report_error(error)
        sys.exit(error.exit_code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        report_error(CliError("interrupted", "", EXIT_INTERRUPTED))
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as failure:
        mapped = _typer_failure(failure)
        if mapped is None:
            sys.exit(EXIT_USAGE)
        report_error(mapped)
        sys.exit(mapped.exit_code)
    except BrokenPipeError:
        # `challengectl ... | head`: the reader went away; point stdout at devnull so the final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_FAILED)
    except Exception as unexpected:  # a bug or an unmapped failure: one line, no locals, no secrets
        if _debugging(args):
            traceback.print_exc()
        report_error(
            CliError(
                f"unexpected {type(unexpected).__name__}: {unexpected}",
                "rerun with --debug for the traceback",
                EXIT_FAILED,
                code="INTERNAL",
            )
        )
        sys.exit(EXIT_FAILED)
    if result == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130), returned here
        report_error(CliError("interrupted", "", EXIT_INTERRUPTED))
    sys.exit(result if isinstance(result, int) else 0)

"""The typer root app: global options, the command groups, and the mapping of failures to
`Error:`/`Hint:` lines and exit codes (SPEC §10)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import click
import typer

from challengectl.commands import db as db_commands
from challengectl.commands import serve as serve_commands
from challengectl.errors import EXIT_INTERRUPTED, EXIT_USAGE, CliError
from service.settings import Settings, SettingsError, load_settings

EXIT_CODES_EPILOG = (
    "Exit codes: 0 success; 1 operation failed; 2 usage or configuration error; 3 not found; "
    "4 authentication failed; 5 dependency unavailable; 99 a gate failed; 130 interrupted."
)

app = typer.Typer(
    name="challengectl",
    help="Run, drive and diagnose the challenge service.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class GlobalOptions:
    """Options given before the command; they are the `flag` layer of the settings (SPEC §9.1)."""

    flags: dict[str, Any] = field(default_factory=dict)
    debug: bool = False
    quiet: bool = False

    def settings(self, **command_flags: Any) -> Settings:
        """Settings with the command's own flags over the global ones."""
        merged = {**self.flags, **{k: v for k, v in command_flags.items() if v is not None}}
        try:
            return load_settings(merged)
        except SettingsError as exc:
            raise CliError(str(exc), "see 'challengectl config show' for every setting and its source",
                           EXIT_USAGE) from None


@app.callback()
def root(
    ctx: typer.Context,
    config_file: Optional[str] = typer.Option(None, "--config-file", help="TOML config file [env: CHALLENGE_CONFIG_FILE]"),
    profile: Optional[str] = typer.Option(None, "--profile", help="config file profile [env: CHALLENGE_PROFILE]"),
    database_url: Optional[str] = typer.Option(None, "--database-url", help="PostgreSQL URL [env: DATABASE_URL]"),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help="Redis URL, or 'disabled' [env: REDIS_URL]"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="embedded servers and JWT secret [env: CHALLENGE_DATA_DIR]"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="table|json|yaml|csv|text [env: CHALLENGE_OUTPUT]"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress output"),
    debug: Optional[bool] = typer.Option(None, "--debug", help="show tracebacks [env: CHALLENGE_DEBUG]"),
) -> None:
    """Run, drive and diagnose the challenge service."""
    flags = {"config_file": config_file, "profile": profile, "database_url": database_url,
             "redis_url": redis_url, "data_dir": data_dir, "output": output, "debug": debug}
    ctx.obj = GlobalOptions(flags={k: v for k, v in flags.items() if v is not None},
                            debug=bool(debug), quiet=quiet)


app.command("serve", help=serve_commands.HELP, epilog=serve_commands.EXAMPLES)(serve_commands.serve)
app.add_typer(db_commands.app, name="db")


def _print_error(error: CliError) -> None:
    print(f"Error: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"Hint: {error.hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn every failure into an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        result = app(args=argv, standalone_mode=False)
    except CliError as error:
        if debug:
            raise
        _print_error(error)
        sys.exit(error.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Abort:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as usage:
        usage.show()
        sys.exit(usage.exit_code)
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(result if isinstance(result, int) else 0)

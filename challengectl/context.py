"""The per-invocation state every command receives as `ctx.obj` (a `CliContext`), plus small helpers
commands share: `parse_duration` for `<n>[ms|s|m|h|d]` options and `command_group` for sub-apps.

    @app.command("list")
    def list_challenges(ctx: typer.Context) -> None:
        cli = ctx.obj                                  # CliContext
        user = cli.require_user()                      # --user / CHALLENGE_USER, else exit 2
        payload = cli.run(lambda c: c.api.get("/v1/challenges", user=user))
        cli.output.emit(payload, rows=payload["data"], columns=["challengeId", "name"])
"""

from __future__ import annotations

import base64
import json
import math
import os
import stat
import sys
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from challengectl.durations import EXAMPLES as DURATION_EXAMPLES
from challengectl.durations import duration_seconds
from challengectl.errors import EXIT_USAGE, CliError
from challengectl.output import Output
from service.config.settings import Settings, SettingsError, default_config_path, load_settings

if TYPE_CHECKING:
    from challengectl.client import Clients

T = TypeVar("T")


# Global flags that carry secrets: accepted, but they show up in shell history and `ps` (docs/configuration.md#sources-and-precedence).
SECRET_FLAGS = {"token": ("--token", "CHALLENGE_TOKEN")}
URL_FLAGS = {"database_url": ("--database-url", "DATABASE_URL"), "redis_url": ("--redis-url", "REDIS_URL")}


def parse_duration(text: str, option: str = "duration") -> float:
    """`<n>[ms|s|m|h|d]`, parts such as `1m30s`, or a bare number of seconds (`challengectl.durations`)
    → seconds; anything else → CliError exit 2."""
    try:
        return duration_seconds(text)
    except ValueError:
        raise CliError(
            f"invalid {option} '{text}': expected <n>[ms|s|m|h|d], e.g. {DURATION_EXAMPLES}",
            f"e.g. {option} 10s",
            EXIT_USAGE,
        ) from None


def examples(*commands: str) -> str:
    """A command's help epilog: `commands` under "Examples:", one per line, exactly as typed. The
    leading `\\b` stops click from re-wrapping the paragraph, so every example stays copy-pasteable."""
    return "\b\nExamples:\n" + "".join(f"  {command}\n" for command in commands)


def setting_option(name: str, flag: str | None = None, help_text: str = "", **options: Any) -> Any:
    """A typer option that overrides the setting `name` for one invocation (None: not given): `flag` (default
    `--<name with dashes>`), its help `help_text`, the setting's choices and its environment variable."""
    from service.config.settings import SPECS_BY_NAME

    spec = SPECS_BY_NAME[name]
    parts = [help_text, "|".join(spec.choices), f"[env: {spec.env_names[0]}]"]
    flag = flag or "--" + name.replace("_", "-")
    return typer.Option(None, flag, help=" ".join(part for part in parts if part), show_default=False, **options)


def command_group(help_text: str, **kwargs: Any) -> typer.Typer:
    """A typer sub-app with the project's conventions: no rich markup in help, no pretty exceptions
    (they would print locals such as DSNs and tokens), `-h/--help`, help when called bare."""
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        **kwargs,
    )


def register_group(root: typer.Typer, app: typer.Typer, name: str, aliases: dict[str, Callable[..., Any]]) -> None:
    """Add `app` to `root` as the group `name`, and each of `aliases` (a hidden top-level name → one of
    the group's command functions) as a top-level command with that command's epilog."""
    root.add_typer(app, name=name)
    epilogs = {command.callback: command.epilog for command in app.registered_commands}
    for alias, function in aliases.items():
        root.command(alias, hidden=True, epilog=epilogs[function])(function)


@dataclass
class CliContext:
    """What the root callback built from the global options.

    - `flags`: the global options that were given, by setting name (the `flag` layer of docs/configuration.md#sources-and-precedence);
    - `settings(**command_flags)`: the effective Settings (command flags over global ones; cached);
    - `output`: the Output (format, tables, JSON/YAML/CSV, stderr hints/warnings/progress);
    - `clients()`: a fresh lazy `Clients` (api/admin/ingest); `run(fn)` runs `fn(clients)` in asyncio
      and closes them; `require_user()`: `--user` or exit 2;
    - `timeout_s` (exact `--timeout`, may be fractional), `debug`, `quiet`.
    """

    flags: dict[str, Any] = field(default_factory=dict)
    debug: bool = False
    quiet: bool = False
    no_headers: bool = False
    color: bool | None = None
    timeout_override_s: float | None = None
    _settings: Settings | None = None
    _output: Output | None = None

    def settings(self, **command_flags: Any) -> Settings:
        """Settings with the command's own flags (setting name → value, None = not given) over the
        global ones. Invalid settings raise CliError exit 2 naming the setting and its source."""
        given = {k: v for k, v in command_flags.items() if v is not None}
        if not given and self._settings is not None:
            return self._settings
        try:
            settings = load_settings({**self.flags, **given})
        except SettingsError as exc:
            raise CliError(
                str(exc), "see 'challengectl config show' for every setting and its source", EXIT_USAGE
            ) from None
        if not given:
            self._settings = settings
        return settings

    @property
    def output(self) -> Output:
        """The Output for this invocation (format from -o / CHALLENGE_OUTPUT / TTY detection)."""
        if self._output is None:
            fmt = self.flags.get("output")
            if fmt is None:
                fmt = self.settings().output
            self._output = Output(fmt, no_headers=self.no_headers, quiet=self.quiet, color=self.color)
        return self._output

    @property
    def timeout_s(self) -> float:
        """The request timeout: `--timeout` exactly, else the `timeout_s` setting."""
        if self.timeout_override_s is not None:
            return self.timeout_override_s
        return float(self.settings().timeout_s)

    def clients(self, settings: Settings | None = None) -> Clients:
        """Lazily-connecting clients for the settings (default: the global ones)."""
        from challengectl.client import Clients

        debug_print = self._debug_line if self.debug or (settings or self.settings()).debug else None
        return Clients(settings or self.settings(), timeout_s=self.timeout_s, debug_print=debug_print)

    def run(self, main: Callable[[Clients], Awaitable[T]], settings: Settings | None = None) -> T:
        """Run `main(clients)` to completion in a new event loop; the clients are closed afterwards.
        Ctrl-C surfaces as KeyboardInterrupt (exit 130 in `cli.main`)."""

        async def runner() -> T:
            async with self.clients(settings) as clients:
                return await main(clients)

        import asyncio

        return asyncio.run(runner())

    def require_user(self, alternatives: str = "", **command_flags: Any) -> str:
        """The player to act as: `--user` / `CHALLENGE_USER`, else the subject of `--token` /
        `CHALLENGE_TOKEN` (the token names its player), else CliError exit 2 (naming the command's
        other ways to name players, `alternatives`)."""
        settings = self.settings(**command_flags)
        user = settings.user or token_subject(settings.token)
        if not user:
            raise CliError(
                f"this command acts as a player and needs --user (or --token{alternatives})",
                "add --user <id> or set CHALLENGE_USER",
                EXIT_USAGE,
            )
        return user

    def _debug_line(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)


def token_subject(token: str | None) -> str | None:
    """The `sub` claim of a JWT, read without checking the signature (the service checks it); None when
    `token` is not a JWT with a string subject."""
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) and subject else None


def get_cli(ctx: typer.Context) -> CliContext:
    """The CliContext of any (sub)command's typer context."""
    obj = ctx.find_root().obj
    if not isinstance(obj, CliContext):
        raise RuntimeError("challengectl commands must run under the root app (ctx.obj is not set)")
    return obj


def secret_flag_warnings(flags: dict[str, Any]) -> list[str]:
    """Warnings for secrets given as flags (visible in shell history and `ps`), docs/configuration.md#sources-and-precedence."""
    warnings = []
    for name, (flag, env) in SECRET_FLAGS.items():
        if flags.get(name):
            warnings.append(f"{flag} is visible in shell history and ps; prefer {env}")
    for name, (flag, env) in URL_FLAGS.items():
        if flags.get(name) and _url_has_password(str(flags[name])):
            warnings.append(f"{flag} holds a password, visible in shell history and ps; prefer {env}")
    return warnings


def config_file_warning(config_file: str | None) -> str | None:
    """A warning when the config file holds secrets and is readable by group or others (docs/configuration.md#sources-and-precedence)."""
    path = Path(config_file).expanduser() if config_file else default_config_path()
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if not mode & 0o044:
            return None
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if not _holds_secrets(document):
        return None
    return f"config file {path} holds secrets and is readable by others (mode {mode:04o}); run 'chmod 600 {path}'"


def _holds_secrets(document: dict[str, Any]) -> bool:
    for key, value in document.items():
        if isinstance(value, dict):
            if _holds_secrets(value):
                return True
        elif key.endswith(("_token", "_secret")) or key == "token":
            return True
        elif isinstance(value, str) and _url_has_password(value):
            return True
    return False


def _url_has_password(url: str) -> bool:
    if "://" in url:
        authority = url.split("://", 1)[1].partition("@")
        return bool(authority[1]) and ":" in authority[0]
    return "password=" in url


def timeout_setting(seconds: float) -> int:
    """The integer `timeout_s` setting recorded for a `--timeout` (at least 1 s)."""
    return max(1, math.ceil(seconds))

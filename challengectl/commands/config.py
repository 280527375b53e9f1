"""`challengectl config show | validate | path | init`: the effective settings and their sources, validation
of the settings and a catalog, and the config file (docs/configuration.md#sources-and-precedence, docs/cli.md#commands)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from challengectl.context import CliContext, command_group, examples, get_cli
from challengectl.errors import EXIT_USAGE, CliError
from challengectl.output import Column
from service.config.resolution import catalog_path_source, resolve_catalog_path
from service.config.settings import SPECS, Settings, SettingsError, default_config_path

app = command_group("Show, validate and initialise the configuration.")

SHOW_EXAMPLES = examples(
    "challengectl config show",
    'challengectl config show -o json | jq -r \'.items[] | select(.source != "default") | "\\(.name)=\\(.value)"\'',
    "challengectl --profile staging config show --secrets",
)

VALIDATE_EXAMPLES = examples(
    "challengectl config validate",
    "challengectl config validate --catalog config/challenges.json",
    "challengectl config validate -o json | jq '.errors | length'",
)

PATH_EXAMPLES = examples(
    "challengectl config path",
    '$EDITOR "$(challengectl config path)"',
    "challengectl config path -o json | jq -r .path",
)

INIT_EXAMPLES = examples(
    "challengectl config init",
    "challengectl --config-file ./challengectl.toml config init --force",
    "challengectl config init -o json | jq -r .path",
)


@app.command("show", epilog=SHOW_EXAMPLES)
def show(
    ctx: typer.Context,
    secrets: bool = typer.Option(False, "--secrets", help="reveal secret values (asks for confirmation on a TTY)"),
) -> None:
    """Every setting with its effective value and where it came from (flag, env, file, default)."""
    cli = get_cli(ctx)
    settings = cli.settings()
    if secrets and sys.stdin.isatty() and sys.stdout.isatty():
        if not typer.confirm("Reveal secret values on screen?", default=False, err=True):
            secrets = False
    rows = setting_rows(settings, reveal_secrets=secrets)
    cli.output.emit_list(rows, ["name", "value", "source", Column("origin", "FROM")])


def setting_rows(
    settings: Settings, reveal_secrets: bool = False, environ: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per setting: name, value (secrets masked unless revealed), source and its origin
    (the flag, the environment variable that won, or the config file)."""
    env = os.environ if environ is None else environ
    effective = settings.effective(reveal_secrets=reveal_secrets)
    config_path = str(Path(settings.config_file).expanduser()) if settings.config_file else str(default_config_path())
    rows = []
    for spec in SPECS:
        entry = effective[spec.name]
        value = entry["value"]
        if spec.name == "api_url" and value is None:
            value = settings.resolved_api_url()
        elif spec.name == "data_dir" and value is None:
            value = str(settings.resolved_data_dir())
        source = entry["source"]
        if spec.name == "catalog_path":  # the file serve loads, which may be the bundled example
            value, source = str(resolve_catalog_path(settings)), catalog_path_source(settings)
        if source == "env":
            origin = next((name for name in spec.env_names if env.get(name)), "PLUGIN_GRPC_SERVER_AUTH_ENABLED")
        elif source == "file":
            origin = config_path + (f" [profiles.{settings.profile}]" if settings.profile else "")
        elif source == "flag":
            origin = "command line"
        else:
            origin = ""
        rows.append({"name": spec.name, "value": value, "source": source, "origin": origin})
    return rows


@app.command("validate", epilog=VALIDATE_EXAMPLES)
def validate(
    ctx: typer.Context,
    catalog: str | None = typer.Option(
        None, "--catalog", help="challenges.json to check [env: CHALLENGE_CATALOG_PATH]"
    ),
) -> None:
    """Validate the settings and a catalog: every error and warning, one per line; exit 2 on any error."""
    from service.domain.catalog import first_lines, grouped_warnings

    cli = get_cli(ctx)
    errors, warnings, catalog_path = _validate(cli, catalog)
    out = cli.output
    result = {"valid": not errors, "catalog_path": catalog_path, "errors": errors, "warnings": warnings}
    # On screen: the first errors and each distinct warning once; JSON/CSV rows keep every one.
    lines = [f"error: {e}" for e in first_lines(errors)] + [f"warning: {w}" for w in grouped_warnings(warnings)]
    if not errors:
        lines.append(
            f"ok: settings and catalog {catalog_path} are valid"
            + (f" ({len(warnings)} warning(s))" if warnings else "")
        )
    out.emit(
        result,
        rows=[{"severity": "error", "message": e} for e in errors]
        + [{"severity": "warning", "message": w} for w in warnings],
        columns=["severity", "message"],
        table=lambda: "\n".join(lines),
        text=lambda: "\n".join(lines),
    )
    if errors:
        raise CliError(f"configuration invalid: {len(errors)} error(s)", "fix the errors listed above", EXIT_USAGE)


def _validate(cli: CliContext, catalog_option: str | None) -> tuple[list[str], list[str], str | None]:
    from service.config.resolution import resolve_catalog_path, validate_settings
    from service.domain.catalog import CatalogError, load_catalog

    try:
        settings = cli.settings(catalog_path=catalog_option)
    except CliError as exc:
        return [exc.message], [], catalog_option
    errors: list[str] = []
    try:
        validate_settings(settings)
    except SettingsError as exc:
        errors.append(str(exc))
    catalog_path = str(resolve_catalog_path(settings))
    try:
        catalog = load_catalog(catalog_path)
    except CatalogError as exc:
        return errors + exc.errors, exc.warnings, catalog_path
    return errors, list(catalog.warnings), catalog_path


@app.command("path", epilog=PATH_EXAMPLES)
def path(ctx: typer.Context) -> None:
    """Print the config file location (the bare path; an object with -o json|yaml)."""
    cli = get_cli(ctx)
    config_path = config_file_path(cli.settings())
    out = cli.output
    if out.explicit and out.format in ("json", "yaml"):
        out.emit_object({"path": str(config_path), "exists": config_path.exists()})
    else:
        out.write(str(config_path))


def config_file_path(settings: Settings) -> Path:
    """`--config-file` / CHALLENGE_CONFIG_FILE, else $XDG_CONFIG_HOME/challengectl/config.toml."""
    return Path(settings.config_file).expanduser() if settings.config_file else default_config_path()


@app.command("init", epilog=INIT_EXAMPLES)
def init(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="overwrite an existing config file"),
) -> None:
    """Write a commented TOML template of every setting to the config file (mode 0600)."""
    cli = get_cli(ctx)
    target = _init_target(cli)
    if target.exists() and not force:
        raise CliError(f"config file {target} already exists", "add --force to overwrite it", EXIT_USAGE)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(config_template())
    os.chmod(target, 0o600)  # an existing file keeps its old mode through O_TRUNC
    out = cli.output
    if out.explicit and out.format in ("json", "yaml"):
        out.emit_object({"path": str(target), "written": True})
    else:
        out.write(str(target))
    out.info(f"wrote a commented template of every setting to {target}")


def _init_target(cli: CliContext) -> Path:
    # The file named by --config-file may not exist yet, which load_settings refuses; read the name directly.
    given = cli.flags.get("config_file") or os.environ.get("CHALLENGE_CONFIG_FILE")
    return Path(given).expanduser() if given else default_config_path()


def config_template() -> str:
    """A TOML file where every setting appears commented out with its default, environment variable
    and notes; uncomment a line to set it."""
    lines = [
        "# challengectl configuration (TOML). Precedence: flags > environment > this file > defaults.",
        "# Keys are the setting names; uncomment a line to set it. Profiles: [profiles.<name>] sections,",
        "# selected with --profile or CHALLENGE_PROFILE. Keep this file mode 0600 if it holds secrets.",
        "",
    ]
    for spec in SPECS:
        if spec.name in ("config_file",):
            continue
        notes = [f"env {', '.join(spec.env_names)}"]
        if spec.choices:
            notes.append("one of " + "|".join(spec.choices))
        if spec.secret:
            notes.append("secret")
        if spec.doc:
            notes.append(spec.doc)
        lines.append(f"# {spec.name}: {'; '.join(notes)}")
        lines.append(f"# {spec.name} = {_toml_value(spec.default, spec.kind)}")
    lines += ["", "# [profiles.staging]", '# api_url = "https://staging.example.net/challenge"', ""]
    return "\n".join(lines)


def _toml_value(value: Any, kind: str) -> str:
    if value is None:
        return '""' if kind in ("str", "choice") else "0"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def register(root: typer.Typer) -> None:
    """Add the `config` group to the root app."""
    root.add_typer(app, name="config")

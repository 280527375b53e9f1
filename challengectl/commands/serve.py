"""`challengectl serve`: run the service in the foreground, or `--check` its configuration."""

from __future__ import annotations

import sys

import typer

from challengectl.context import examples, setting_option
from challengectl.errors import EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from service.config.settings import SettingsError

HELP = "Run the service: player API, gRPC ingest, admin API and flusher (embedded PostgreSQL/Redis by default)."
EXAMPLES = examples(
    "challengectl serve",
    "DATABASE_URL=postgresql://postgres@127.0.0.1/postgres REDIS_URL=redis://127.0.0.1:6379/0 challengectl serve --port 9000",
    "challengectl serve --check --catalog config/challenges.json && curl -s localhost:8080/admin/config | jq .catalog_fingerprint",
)


def serve(
    ctx: typer.Context,
    check: bool = typer.Option(False, "--check", help="validate settings and catalog, check dependencies, then exit"),
    http_host: str | None = setting_option("http_host", "--host", "player API address"),
    http_port: int | None = setting_option("http_port", "--port", "player API port"),
    workers: int | None = setting_option("workers", help_text="HTTP worker processes"),
    grpc_host: str | None = setting_option("grpc_host"),
    grpc_port: int | None = setting_option("grpc_port"),
    admin_host: str | None = setting_option("admin_host"),
    admin_port: int | None = setting_option("admin_port"),
    base_path: str | None = setting_option("base_path"),
    namespace: str | None = setting_option("namespace"),
    catalog_path: str | None = setting_option("catalog_path", "--catalog", "challenges.json"),
    data_dir: str | None = setting_option("data_dir"),
    database_url: str | None = setting_option("database_url"),
    redis_url: str | None = setting_option("redis_url"),
    embedded: str | None = setting_option("embedded"),
    migrate: bool | None = typer.Option(
        None, "--migrate/--no-migrate", help="apply pending migrations at startup [env: CHALLENGE_MIGRATE]"
    ),
    db_pool_max: int | None = setting_option("db_pool_max"),
    auth: str | None = setting_option("auth"),
    jwt_secret_file: str | None = setting_option("jwt_secret_file"),
    jwt_jwks_url: str | None = setting_option("jwt_jwks_url", "--jwks-url"),
    ack_mode: str | None = setting_option("ack_mode"),
    reward_mode: str | None = setting_option("reward_mode"),
    flush_interval_ms: int | None = setting_option("flush_interval_ms"),
    log_level: str | None = setting_option("log_level"),
    log_format: str | None = setting_option("log_format"),
) -> None:
    # Every option but --check and --migrate overrides the setting of its parameter's name.
    from service.runtime.app import serve as run_service
    from service.runtime.preflight import check_configuration
    from service.runtime.startup import StartupError
    from service.telemetry.logs import configure_logging

    overrides = {name: value for name, value in ctx.params.items() if name not in ("check", "migrate")}
    settings = ctx.obj.settings(**overrides, migrate=None if migrate is None else ("auto" if migrate else "off"))
    configure_logging(settings.log_level, settings.resolved_log_format())
    try:
        if check:
            for line in check_configuration(settings):
                print(line)
            return
        exit_code = run_service(settings)
    except SettingsError as exc:
        raise CliError(
            str(exc), "see 'challengectl config show' for every setting and its source", EXIT_USAGE
        ) from None
    except StartupError as exc:
        raise CliError(str(exc), exc.hint or _hint_for(exc.exit_code), exc.exit_code) from None
    sys.exit(exit_code)


def _hint_for(exit_code: int) -> str:
    if exit_code == EXIT_UNAVAILABLE:
        return "check that PostgreSQL and Redis are reachable"
    return "run 'challengectl serve --check' to validate the configuration"


def register(app: typer.Typer) -> None:
    """Add `serve` to the root app."""
    app.command("serve", help=HELP, epilog=EXAMPLES)(serve)

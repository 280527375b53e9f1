"""`challengectl serve`: run the service in the foreground, or `--check` its configuration."""

from __future__ import annotations

import sys

import typer

from challengectl.context import examples
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
    host: str | None = typer.Option(None, "--host", help="player API address [env: CHALLENGE_HTTP_HOST]"),
    port: int | None = typer.Option(None, "--port", help="player API port [env: CHALLENGE_HTTP_PORT]"),
    workers: int | None = typer.Option(None, "--workers", help="HTTP worker processes [env: CHALLENGE_WORKERS]"),
    grpc_host: str | None = typer.Option(None, "--grpc-host", help="[env: CHALLENGE_GRPC_HOST]"),
    grpc_port: int | None = typer.Option(None, "--grpc-port", help="[env: CHALLENGE_GRPC_PORT]"),
    admin_host: str | None = typer.Option(None, "--admin-host", help="[env: CHALLENGE_ADMIN_HOST]"),
    admin_port: int | None = typer.Option(None, "--admin-port", help="[env: CHALLENGE_ADMIN_PORT]"),
    base_path: str | None = typer.Option(None, "--base-path", help="[env: CHALLENGE_BASE_PATH]"),
    namespace: str | None = typer.Option(None, "--namespace", help="[env: CHALLENGE_NAMESPACE]"),
    catalog: str | None = typer.Option(None, "--catalog", help="challenges.json [env: CHALLENGE_CATALOG_PATH]"),
    data_dir: str | None = typer.Option(None, "--data-dir", help="[env: CHALLENGE_DATA_DIR]"),
    database_url: str | None = typer.Option(None, "--database-url", help="[env: DATABASE_URL]"),
    redis_url: str | None = typer.Option(None, "--redis-url", help="[env: REDIS_URL]"),
    embedded: str | None = typer.Option(None, "--embedded", help="auto|never|always [env: CHALLENGE_EMBEDDED]"),
    migrate: bool | None = typer.Option(
        None, "--migrate/--no-migrate", help="apply pending migrations at startup [env: CHALLENGE_MIGRATE]"
    ),
    db_pool_max: int | None = typer.Option(None, "--db-pool-max", help="[env: CHALLENGE_DB_POOL_MAX]"),
    auth: str | None = typer.Option(None, "--auth", help="jwt|none [env: CHALLENGE_AUTH]"),
    jwt_secret_file: str | None = typer.Option(None, "--jwt-secret-file", help="[env: CHALLENGE_JWT_SECRET_FILE]"),
    jwks_url: str | None = typer.Option(None, "--jwks-url", help="[env: CHALLENGE_JWT_JWKS_URL]"),
    ack_mode: str | None = typer.Option(None, "--ack-mode", help="commit|buffered [env: CHALLENGE_ACK_MODE]"),
    reward_mode: str | None = typer.Option(None, "--reward-mode", help="log|webhook [env: CHALLENGE_REWARD_MODE]"),
    flush_interval_ms: int | None = typer.Option(
        None, "--flush-interval-ms", help="[env: CHALLENGE_FLUSH_INTERVAL_MS]"
    ),
    log_level: str | None = typer.Option(
        None, "--log-level", help="debug|info|warning|error [env: CHALLENGE_LOG_LEVEL]"
    ),
    log_format: str | None = typer.Option(None, "--log-format", help="json|text [env: CHALLENGE_LOG_FORMAT]"),
) -> None:
    from service.runtime.app import serve as run_service
    from service.runtime.preflight import check_configuration
    from service.runtime.startup import StartupError
    from service.telemetry.logs import configure_logging

    settings = ctx.obj.settings(
        http_host=host,
        http_port=port,
        workers=workers,
        grpc_host=grpc_host,
        grpc_port=grpc_port,
        admin_host=admin_host,
        admin_port=admin_port,
        base_path=base_path,
        namespace=namespace,
        catalog_path=catalog,
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_url,
        embedded=embedded,
        migrate=None if migrate is None else ("auto" if migrate else "off"),
        db_pool_max=db_pool_max,
        auth=auth,
        jwt_secret_file=jwt_secret_file,
        jwt_jwks_url=jwks_url,
        ack_mode=ack_mode,
        reward_mode=reward_mode,
        flush_interval_ms=flush_interval_ms,
        log_level=log_level,
        log_format=log_format,
    )
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

"""`challengectl users init|show|delete|backdate` (docs/cli.md#commands).

- `init` creates players through the REST API, concurrently, each call with its own identity.
- `show`, `delete` and `backdate` work on one player directly in PostgreSQL (named queries of the
  registry, as the service runs them) and Redis (the service's own key helpers and cache code).
  `delete` and `backdate` invalidate the player's cache after their commit (docs/cache.md#read-your-writes) and ask for
  confirmation (docs/cli.md#destructive-actions). The hidden alias `initialize-player` is `users init`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from challengectl.connections import connect_service_redis, database_target, require_service_redis_url
from challengectl.context import CliContext, command_group, examples, get_cli, parse_duration, register_group
from challengectl.errors import (
    EXIT_AUTH,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)
from challengectl.output import Column, Output, confirm, rfc3339
from service.config.settings import Settings
from service.domain.catalog import Catalog
from service.domain.rules import ProgressRow, is_locked, is_stale, utc_now, view, would_reset

if TYPE_CHECKING:
    import psycopg
    from redis.asyncio import Redis

    from challengectl.client import ApiResponse, Clients
    from service.storage.registry import Registry

T = TypeVar("T")

app = command_group("Create, inspect, delete and age players.")

CLI_APPLICATION_NAME = "challengectl-cli"
CONNECT_TIMEOUT_S = 5
DEFAULT_PREFIX = "user-"
BULK_PLAYERS = 100  # an init of at least this many players analyzes the tables afterwards
HINT_INIT = "create the player with 'challengectl users init <user>'"
# `users init` under admission control: waits between retries of one player after 503 SERVICE_OVERLOADED.
OVERLOAD_FIRST_WAIT_S = 0.5
OVERLOAD_MAX_WAIT_S = 5.0
OVERLOAD_WAIT_TOTAL_S = 30.0

INIT_EXAMPLES = examples(
    "challengectl users init alice bob",
    "challengectl users init --count 100 --prefix load- --concurrency 16 -o json | jq '{new_users, returning_users}'",
    "challengectl users init --from-file players.txt -o csv",
)

SHOW_EXAMPLES = examples(
    "challengectl users show alice",
    "challengectl users show alice --goal daily-login -o json | jq '.rows[] | {goal_id, stale, would_reset, view}'",
    "challengectl users show alice -o json | jq .cache",
)

DELETE_EXAMPLES = examples(
    "challengectl users delete alice --dry-run",
    "challengectl users delete alice --yes",
    "challengectl users delete alice --yes -o json | jq .rows_deleted",
)

BACKDATE_EXAMPLES = examples(
    "challengectl users backdate alice --by 2d --yes",
    "challengectl users backdate alice --by 8d --goal weekly-wins --goal weekly-captures --yes",
    "challengectl users backdate alice --by 1d --yes -o json | jq '.goals[].updated_at'",
)


# --- users init ----------------------------------------------------------------------------------


@app.command("init", epilog=INIT_EXAMPLES)
def init_users(
    ctx: typer.Context,
    users: list[str] | None = typer.Argument(
        None, metavar="USER", help="player ids; default --user [env: CHALLENGE_USER]"
    ),
    from_file: Path | None = typer.Option(
        None,
        "--from-file",
        metavar="F",
        help="one player id per line ('-' = stdin; blank lines and # comments skipped)",
    ),
    count: int | None = typer.Option(
        None, "--count", min=1, metavar="N", help="generate N players <prefix>1..<prefix>N"
    ),
    prefix: str = typer.Option(DEFAULT_PREFIX, "--prefix", metavar="P", help="prefix of the generated player ids"),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=256, help="initialize calls in flight"),
) -> None:
    """Initialize players through the API: default goals for new players, catch-up for returning ones.

    A player counts as new when the call assigned goals to it (newAssignments > 0)."""
    cli = get_cli(ctx)
    players = collect_players(cli, users or [], from_file, count, prefix)
    settings = cli.settings()
    if settings.token and len(players) > 1:
        cli.output.warn("--token / CHALLENGE_TOKEN is one identity: every call acts as that token's player")
    out = cli.output
    with out.progress("initializing players", total=len(players)) as bar:
        results = cli.run(lambda clients: initialize_all(clients, players, concurrency, bar.advance))
    report = init_report(results)
    out.emit(report, rows=report["items"], columns=INIT_COLUMNS, table=lambda: init_table(out, report))
    if len(players) >= BULK_PLAYERS:
        analyze_after_seeding(cli, settings)
    failed = [item for item in results if item["error"]]
    if failed:
        first = failed[0]["error"]
        raise CliError(
            f"{len(failed)} of {len(results)} players failed to initialize; first: "
            f"{failed[0]['user_id']}: {first['message']}",
            first["hint"] or "",
            first["exit_code"],
            code=first["code"],
        )


def analyze_after_seeding(cli: CliContext, settings: Settings) -> None:
    """ANALYZE the tables after a bulk init, so that plans (and `explain`) see the new rows at once instead
    of after autovacuum's next round; skipped, with a note, when the service's database is not known."""
    import psycopg

    from challengectl.connections import service_database_url
    from service.storage.statistics import analyze_database
    from service.storage.store import short_reason

    url = service_database_url(settings)
    if url is None:
        cli.output.info("tables not analyzed: the service's database is unknown here; run 'challengectl db analyze'")
        return
    try:
        done = analyze_database(url, CLI_APPLICATION_NAME)
    except psycopg.Error as exc:
        cli.output.warn(f"could not analyze the tables: {short_reason(exc, url)}; run 'challengectl db analyze'")
        return
    cli.output.info("analyzed " + ", ".join(f"{item.table} ({item.duration_ms:.0f} ms)" for item in done))


def collect_players(
    cli: CliContext, users: Sequence[str], from_file: Path | None, count: int | None, prefix: str
) -> list[str]:
    """The players to initialize, in order, without repeats: arguments, then the file, then the
    generated ids; `--user` when none of them is given. Invalid ids are a usage error (exit 2)."""
    from service.transport.auth import is_valid_user_id

    players = list(users)
    if from_file is not None:
        players += read_players_file(from_file)
    if count is not None:
        players += [f"{prefix}{index}" for index in range(1, count + 1)]
    if not players:
        if users or from_file is not None:
            raise CliError("no player ids to initialize (the file lists none)", "add ids, or use --count N", EXIT_USAGE)
        players = [cli.require_user()]
    invalid = [player for player in players if not is_valid_user_id(player)]
    if invalid:
        raise CliError(
            f"invalid player id {invalid[0]!r}: 1-100 characters, no control characters, no '{{' or '}}'",
            "fix the id (or --prefix)",
            EXIT_USAGE,
        )
    return list(dict.fromkeys(players))


def read_players_file(path: Path) -> list[str]:
    """Player ids from a file, one per line; `-` reads stdin."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read --from-file {path}: {exc.strerror or exc}", "check the path", EXIT_USAGE) from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


async def initialize_all(
    clients: Clients, players: Sequence[str], concurrency: int, advance: Callable[[], None]
) -> list[dict[str, Any]]:
    """Initialize every player with at most `concurrency` calls in flight; results in input order.

    A failure that concerns one player (a business error, a 404) is recorded on its result; one that
    concerns every call (service unreachable, authentication) stops the run with that error."""
    results: list[dict[str, Any] | None] = [None] * len(players)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(players):
            index, next_index = next_index, next_index + 1
            results[index] = await initialize_one(clients, players[index])
            advance()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(players)))))
    return [result for result in results if result is not None]


async def initialize_one(clients: Clients, player: str) -> dict[str, Any]:
    """One `POST /v1/challenges/initialize` as `player`, retried while the service sheds load."""
    try:
        response = await send_through_overload(clients, "POST", "/v1/challenges/initialize", player)
    except CliError as error:
        if error.exit_code in (EXIT_UNAVAILABLE, EXIT_AUTH):
            raise
        return {
            "user_id": player,
            "new": None,
            "new_assignments": None,
            "total_active": None,
            "duration_ms": None,
            "error": {"code": error.code, "message": error.message, "hint": error.hint, "exit_code": error.exit_code},
        }
    body = response.body or {}
    new_assignments = int(body.get("newAssignments", 0))
    return {
        "user_id": player,
        "new": new_assignments > 0,
        "new_assignments": new_assignments,
        "total_active": body.get("totalActive"),
        "duration_ms": round(response.duration_ms, 2),
        "error": None,
    }


async def send_through_overload(clients: Clients, method: str, path: str, player: str) -> ApiResponse:
    """`clients.api.send`, repeated after a 503 `SERVICE_OVERLOADED` (admission control, docs/http-api.md#http-limits):
    each wait is at least the reply's `Retry-After` and grows by doubling backoff, until the waits would pass
    `OVERLOAD_WAIT_TOTAL_S`; then (or on any other 503) the 503 is raised as without retries (exit 5)."""
    from challengectl.errors import error_from_http
    from service.domain.backoff import doubling_backoff

    waited_s, failures = 0.0, 0
    while True:
        response = await clients.api.send(method, path, user=player, accept=(503,))
        if response.status != 503:
            return response
        failures += 1
        delay_s = max(
            retry_after_s(response.headers), doubling_backoff(OVERLOAD_FIRST_WAIT_S, OVERLOAD_MAX_WAIT_S, failures)
        )
        body = response.body
        overloaded = isinstance(body, dict) and body.get("errorCode") == "SERVICE_OVERLOADED"
        if not overloaded or waited_s + delay_s > OVERLOAD_WAIT_TOTAL_S:
            raise error_from_http(response.status, body, method, clients.api.url(path))
        await asyncio.sleep(delay_s)
        waited_s += delay_s


def retry_after_s(headers: Mapping[str, str]) -> float:
    """The `Retry-After` header in seconds (at most `OVERLOAD_MAX_WAIT_S`); 0 when absent or not a number."""
    value = next((value for name, value in headers.items() if name.lower() == "retry-after"), "")
    try:
        return min(max(float(value), 0.0), OVERLOAD_MAX_WAIT_S)
    except ValueError:
        return 0.0


def init_report(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`{"items", "total", "new_users", "returning_users", "failed_users"}`."""
    return {
        "items": list(results),
        "total": len(results),
        "new_users": sum(1 for item in results if item["new"] is True),
        "returning_users": sum(1 for item in results if item["new"] is False),
        "failed_users": sum(1 for item in results if item["error"]),
    }


INIT_COLUMNS = [
    Column("user_id", "USER"),
    Column("new"),
    Column("new_assignments", "NEW ASSIGNMENTS", justify="right"),
    Column("total_active", "ACTIVE", justify="right"),
    Column("duration_ms", "MS", justify="right"),
    Column("error", render=lambda error: Text(error["message"] if error else "-")),
]


def init_table(out: Output, report: Mapping[str, Any]) -> RenderableType:
    summary = f"{report['total']} players: {report['new_users']} new, {report['returning_users']} returning" + (
        f", {report['failed_users']} failed" if report["failed_users"] else ""
    )
    return Group(out.table(report["items"], INIT_COLUMNS), Text(summary))


# --- direct PostgreSQL and Redis access ----------------------------------------------------------


_registry: Registry | None = None


def registry() -> Registry:
    """The service's named-query registry, loaded once."""
    from service.storage.registry import load_registry

    global _registry
    if _registry is None:
        _registry = load_registry()
    return _registry


@contextmanager
def player_database(settings: Settings) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A connection to the configured (or embedded) database; failures are CliErrors exit 5."""
    import psycopg
    from psycopg.rows import dict_row

    from challengectl import database

    with database_target(settings) as target:
        try:
            connection = database.connect(target.url, autocommit=False, row_factory=dict_row)
        except psycopg.Error as exc:
            raise database.unreachable(
                target.url, exc, "check --database-url / DATABASE_URL, or run 'challengectl doctor'"
            ) from None
        try:
            with connection:
                yield connection
        except psycopg.errors.UndefinedTable:
            raise CliError(
                "the challenge tables do not exist in this database", "run 'challengectl db migrate'", EXIT_UNAVAILABLE
            ) from None
        except psycopg.Error as exc:
            raise CliError(
                f"PostgreSQL failed: {_first_line(exc)}", "run 'challengectl doctor'", EXIT_UNAVAILABLE
            ) from None


def run_named(
    connection: psycopg.Connection[dict[str, Any]], name: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Run the registry statement `name` with `params`; its rows."""
    return connection.execute(registry().get(name).sql, params).fetchall()


def redis_url_of(settings: Settings) -> str | None:
    """The Redis the service caches in; None when the cache is disabled. No Redis to be found is a
    CliError exit 5."""
    return None if settings.cache_disabled() else require_service_redis_url(settings)


def with_redis(cli: CliContext, url: str, action: Callable[[Redis], Awaitable[T]]) -> T:
    """Run `action(client)` on a short-lived client of `url` (a cluster client on a Redis Cluster, as the
    service connects); Redis failures are CliErrors exit 5."""
    from service.storage.cache import REDIS_FAILURES

    async def runner() -> T:
        client = await connect_service_redis(url, cli.settings().redis_mode, cli.timeout_s)
        try:
            return await action(client)
        except REDIS_FAILURES as exc:
            raise CliError(
                f"Redis unreachable: {type(exc).__name__}: {exc}",
                "check --redis-url / REDIS_URL, or run 'challengectl doctor'",
                EXIT_UNAVAILABLE,
            ) from None
        finally:
            await client.aclose()

    return asyncio.run(runner())


def invalidate_player(cli: CliContext, settings: Settings, url: str, user: str, delete_synced: bool) -> int:
    """Rotate the player's cache token and unlink its view (docs/cache.md#entries-and-tokens); with `delete_synced`, also
    unlink every synced marker. Returns the markers removed. Failure is a CliError exit 5 that says
    the database change is already committed."""
    from service.storage.cache import Cache, CacheUnavailableError

    async def invalidate(client: Redis) -> int:
        # Invalidation and marker deletion do not read entries, so no catalog fingerprint is needed.
        cache = Cache(
            client,
            settings.redis_key_prefix,
            "",
            settings.cache_ttl_s,
            settings.synced_ttl_s,
            journal_max=1,
            probe_interval_ms=settings.redis_probe_interval_ms,
        )
        try:
            if await cache.invalidate(user) is None:
                raise CacheUnavailableError(f"could not rotate the cache token of user {user!r}")
            return await cache.delete_synced(user) if delete_synced else 0
        finally:
            await cache.stop()  # closes its pipelined connection

    try:
        return with_redis(cli, url, invalidate)
    except (CacheUnavailableError, CliError) as exc:
        raise CliError(
            f"the database change for user {user!r} is committed, but its cache was not invalidated "
            f"({getattr(exc, 'message', exc)}); the service may serve old rows for up to "
            f"{settings.cache_ttl_s}s",
            f"when Redis answers, run 'challengectl cache flush --user {user} --yes'",
            EXIT_UNAVAILABLE,
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- users show ----------------------------------------------------------------------------------


@app.command("show", epilog=SHOW_EXAMPLES)
def show_user(
    ctx: typer.Context,
    user: str = typer.Argument(..., metavar="USER", help="the player id"),
    goal: str | None = typer.Option(None, "--goal", metavar="G", help="only this goal's row and grants"),
) -> None:
    """Everything about one player, read directly from PostgreSQL and Redis: raw rows with their
    rotation state and view values, reward grants, and the cache state."""
    from challengectl.catalogs import service_catalog
    from challengectl.cli_queries import fetch_all

    cli = get_cli(ctx)
    settings = cli.settings()
    catalog = service_catalog(settings)
    with player_database(settings) as connection:
        rows = [ProgressRow.from_mapping(row) for row in run_named(connection, "user_progress", {"user_id": user})]
        grants = fetch_all(
            connection, "cli_reward_grants", RewardGrant, {"namespace": settings.namespace, "user_id": user}
        )
    if not rows:
        raise CliError(f"user {user!r} has no progress rows", HINT_INIT, EXIT_NOT_FOUND)
    shown = [row for row in rows if goal is None or row.goal_id == goal]
    if not shown:
        raise CliError(
            f"user {user!r} has no row for goal {goal!r}",
            f"list the user's goals with 'challengectl users show {user}'",
            EXIT_NOT_FOUND,
        )
    report = {
        "user_id": user,
        "namespace": settings.namespace,
        "checked_at": utc_now(),
        "catalog": {"path": catalog.path, "fingerprint": catalog.fingerprint},
        "rows": describe_rows(catalog, rows, shown),
        "reward_grants": [asdict(grant) for grant in grants if goal is None or grant.goal_id == goal],
        "cache": cache_state(cli, settings, catalog, user, rows),
    }
    out = cli.output
    out.emit_object(report, table=lambda: show_table(out, report))


def describe_rows(catalog: Catalog, rows: Sequence[ProgressRow], shown: Sequence[ProgressRow]) -> list[dict[str, Any]]:
    """The raw columns of each shown row plus `stale`, `would_reset`, `locked` and the view (docs/rules.md#staleness-and-the-view,
    docs/rules.md#prerequisites-and-locked) at this instant; rows whose goal left the catalog have nulls there."""
    now = utc_now()
    rows_by_goal_id = {row.goal_id: row for row in rows}
    described = []
    for row in shown:
        goal = catalog.goals_by_id.get(row.goal_id)
        item: dict[str, Any] = {
            "goal_id": row.goal_id,
            "challenge_id": row.challenge_id,
            "in_catalog": goal is not None,
            "progress": row.progress,
            "baseline_value": row.baseline_value,
            "status": row.status,
            "is_active": row.is_active,
            "completed_at": row.completed_at,
            "claimed_at": row.claimed_at,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "assigned_at": row.assigned_at,
            "expires_at": row.expires_at,
            "stale": None,
            "would_reset": None,
            "locked": None,
            "view": None,
        }
        if goal is not None:
            goal_view = view(goal, row, now)
            item.update(
                stale=is_stale(goal, row, now),
                would_reset=would_reset(goal, row, now),
                locked=is_locked(goal, rows_by_goal_id, catalog.goals_by_id, now),
                view={
                    "progress": goal_view.progress,
                    "status": goal_view.status,
                    "completed_at": goal_view.completed_at,
                    "claimed_at": goal_view.claimed_at,
                },
            )
        described.append(item)
    return described


def cache_state(
    cli: CliContext, settings: Settings, catalog: Catalog, user: str, rows: Sequence[ProgressRow]
) -> dict[str, Any]:
    """The player's cache entry as the service would judge it (docs/cache.md#entries-and-tokens): present, valid, token and
    fingerprint match, TTLs, whether its rows equal PostgreSQL's active rows, and the synced marker of
    the current catalog fingerprint. An unreachable Redis is reported here (and warned about), not
    raised: the PostgreSQL part stays useful during a Redis outage."""
    from service.storage.cache import active_key, decode_entry, synced_key, token_key

    try:
        url = redis_url_of(settings)
    except CliError as exc:
        cli.output.warn(exc.message)
        return {"enabled": True, "reachable": False, "error": exc.message}
    if url is None:
        return {"enabled": False}
    prefix = settings.redis_key_prefix
    keys = (token_key(prefix, user), active_key(prefix, user), synced_key(prefix, user, catalog.fingerprint))

    async def read(client: Redis) -> tuple[list[Any], int, int]:
        values = await client.mget(keys)
        return values, await client.pttl(keys[0]), await client.pttl(keys[1])

    try:
        (token_raw, entry_raw, synced_raw), token_ttl, entry_ttl = with_redis(cli, url, read)
    except CliError as exc:
        cli.output.warn(exc.message)
        return {"enabled": True, "reachable": False, "error": exc.message}
    token = token_raw.decode() if token_raw is not None else None
    entry = decode_entry(entry_raw) if entry_raw is not None else None
    active_rows = sorted((row for row in rows if row.is_active), key=lambda row: row.goal_id)
    state: dict[str, Any] = {
        "enabled": True,
        "reachable": True,
        "token_present": token is not None,
        "token_ttl_ms": token_ttl if token_ttl >= 0 else None,
        "entry_present": entry_raw is not None,
        "entry_parses": entry is not None,
        "entry_ttl_ms": entry_ttl if entry_ttl >= 0 else None,
        "token_match": None,
        "fingerprint_match": None,
        "entry_valid": False,
        "entry_rows": None,
        "matches_database": None,
        "synced_marker": synced_raw is not None,
        "synced_key": keys[2],
    }
    if entry is not None:
        entry_rows = entry.active_rows(user, catalog.default_goals)
        state.update(
            token_match=token is not None and entry.token == token,
            fingerprint_match=entry.fingerprint == catalog.fingerprint,
            entry_rows=len(entry_rows),
            matches_database=sorted(entry_rows, key=lambda row: row.goal_id) == active_rows,
        )
        state["entry_valid"] = bool(state["token_match"] and state["fingerprint_match"])
    return state


ROW_COLUMNS = [
    Column("goal_id", "GOAL"),
    Column("challenge_id", "CHALLENGE"),
    Column("progress", "RAW", justify="right"),
    Column("baseline_value", "BASELINE", justify="right"),
    Column("status"),
    Column("is_active", "ACTIVE"),
    Column("updated_at", "UPDATED", render=lambda value: Text(rfc3339(value) if value else "-")),
    Column("stale"),
    Column("would_reset", "WOULD RESET"),
    Column("view", "VIEW", render=lambda v: Text(f"{v['progress']} {v['status']}" if v else "-")),
    Column("locked"),
]


@dataclass(frozen=True)
class RewardGrant:
    """One row of reward_grants, as `users show` reads it (`cli_reward_grants`)."""

    goal_id: str
    generation: int
    challenge_id: str
    idempotency_key: str
    reward_type: str
    reward_id: str
    quantity: int
    mode: str
    attempts: int
    granted_at: datetime


GRANT_COLUMNS = [
    Column("goal_id", "GOAL"),
    Column("generation", "GEN", justify="right"),
    Column("reward_id", "REWARD"),
    Column("quantity", "QTY", justify="right"),
    Column("mode"),
    Column("attempts", justify="right"),
    Column("granted_at", "GRANTED", render=lambda value: Text(rfc3339(value))),
]


def show_table(out: Output, report: Mapping[str, Any]) -> RenderableType:
    grants = report["reward_grants"]
    return Group(
        Text(f"user {report['user_id']} (namespace {report['namespace']}), catalog {report['catalog']['fingerprint']}"),
        out.table(report["rows"], ROW_COLUMNS, title="progress rows"),
        out.table(grants, GRANT_COLUMNS, title="reward grants") if grants else Text("reward grants: none"),
        out.key_value_table(report["cache"], title="cache"),
    )


# --- users delete --------------------------------------------------------------------------------


@app.command("delete", epilog=DELETE_EXAMPLES)
def delete_user(
    ctx: typer.Context,
    user: str = typer.Argument(..., metavar="USER", help="the player id"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would be deleted, change nothing"),
) -> None:
    """Delete a player's progress rows in the namespace, rotate its cache token and delete its synced
    markers. Reward grants stay as the audit record."""
    cli = get_cli(ctx)
    settings = cli.settings()
    url = redis_url_of(settings)
    with player_database(settings) as connection:
        doomed = [
            row["goal_id"]
            for row in run_named(connection, "user_progress", {"user_id": user})
            if row["namespace"] == settings.namespace
        ]
    # Reached before anything changes: a Redis that cannot be invalidated must not leave the rows
    # deleted while the service still serves them from its cache.
    markers = (
        with_redis(cli, url, lambda client: count_synced_markers(client, settings.redis_key_prefix, user))
        if url is not None
        else 0
    )
    action = (
        f"delete {len(doomed)} progress row(s) of user {user!r} in namespace {settings.namespace!r}, "
        f"delete {markers} synced marker(s) and rotate its cache token"
    )
    result = {
        "user_id": user,
        "namespace": settings.namespace,
        "dry_run": dry_run,
        "rows_deleted": len(doomed),
        "goal_ids": doomed,
        "synced_markers_deleted": markers,
        "cache_invalidated": url is not None and not dry_run,
    }
    if not confirm(action, yes, dry_run):
        cli.output.emit_object(result)
        return
    with player_database(settings) as connection:
        deleted = [
            row["goal_id"]
            for row in run_named(connection, "delete_user_data", {"namespace": settings.namespace, "user_id": user})
        ]
    removed = invalidate_player(cli, settings, url, user, delete_synced=True) if url is not None else 0
    result.update(rows_deleted=len(deleted), goal_ids=sorted(deleted), synced_markers_deleted=removed)
    cli.output.emit_object(result)


async def count_synced_markers(client: Redis, prefix: str, user: str) -> int:
    """How many synced markers (any catalog fingerprint) the player has."""
    from service.storage.cache import scan_pattern_for_user

    pattern = scan_pattern_for_user(prefix, user, "synced:*")
    return len([key async for key in client.scan_iter(match=pattern, count=1000)])


# --- users backdate ------------------------------------------------------------------------------


@app.command("backdate", epilog=BACKDATE_EXAMPLES)
def backdate_user(
    ctx: typer.Context,
    user: str = typer.Argument(..., metavar="USER", help="the player id"),
    by: str = typer.Option(
        ..., "--by", metavar="DURATION", help="how far back to move updated_at, <n>[ms|s|m|h|d], e.g. 2d"
    ),
    goals: list[str] | None = typer.Option(
        None, "--goal", metavar="G", help="only this goal (repeatable); default every row"
    ),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
) -> None:
    """Move a player's updated_at back so that rotating goals see a boundary (testing rotation), then
    invalidate its cache."""
    cli = get_cli(ctx)
    settings = cli.settings()
    seconds = int(parse_duration(by, "--by"))
    if seconds < 1:
        raise CliError(f"invalid --by '{by}': at least 1s", "e.g. --by 2d", EXIT_USAGE)
    goal_ids = list(dict.fromkeys(goals)) if goals else None
    url = redis_url_of(settings)
    with player_database(settings) as connection:
        matched = [
            row["goal_id"]
            for row in run_named(connection, "user_progress", {"user_id": user})
            if goal_ids is None or row["goal_id"] in goal_ids
        ]
    if not matched:
        target = f"rows for goal(s) {', '.join(goal_ids)}" if goal_ids else "progress rows"
        raise CliError(f"user {user!r} has no {target}", HINT_INIT, EXIT_NOT_FOUND)
    if url is not None:
        with_redis(cli, url, lambda client: client.ping())
    confirm(f"move updated_at of {len(matched)} row(s) of user {user!r} back by {by} and invalidate its cache", yes)
    with player_database(settings) as connection:
        changed = run_named(
            connection, "backdate_user_goals", {"user_id": user, "goal_ids": goal_ids, "seconds": seconds}
        )
    if url is not None:
        invalidate_player(cli, settings, url, user, delete_synced=False)
    changed.sort(key=lambda row: row["goal_id"])
    result: dict[str, Any] = {
        "user_id": user,
        "by_ms": seconds * 1000,
        "rows_changed": len(changed),
        "goals": [{"goal_id": row["goal_id"], "updated_at": row["updated_at"]} for row in changed],
        "cache_invalidated": url is not None,
    }
    out = cli.output
    out.emit(
        result,
        rows=result["goals"],
        columns=[Column("goal_id", "GOAL"), Column("updated_at", "UPDATED")],
        table=lambda: Group(
            out.table(result["goals"], [Column("goal_id", "GOAL"), Column("updated_at", "UPDATED")]),
            Text(f"{len(changed)} row(s) of {user} moved back by {by}"),
        ),
    )


def register(root: typer.Typer) -> None:
    """Add the `users` group and the hidden `initialize-player` alias to the root app."""
    register_group(root, app, "users", {"initialize-player": init_users})

"""`challengectl cache warm|flush|stats|keys`: the Redis cache of active views (docs/cache.md, docs/cli.md#commands, docs/diagnostics.md#redis).

- `warm` fills active views with the service's own cache code (`service.storage.cache.Cache`) and protocol
  (docs/cache.md#entries-and-tokens: MGET, then the PostgreSQL read, then the conditional fill), and sets the synced marker only for
  users who hold a row for every default goal.
- `flush` finds keys with SCAN and removes them with UNLINK; `…:tok` keys are rotated through the
  service's invalidation (fresh token, its TTL rule), never deleted (docs/cache.md#degradation-and-recovery); de-duplication markers are
  kept unless `--include-dedup`; keys outside the cache's layout are never touched.
- `stats` and `keys` are read-only views of `/admin/cache`, Redis INFO and a throttled SCAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from challengectl.connections import connect_service_redis, database_target, require_service_redis_url
from challengectl.context import CliContext, command_group, examples, get_cli, parse_duration
from challengectl.errors import EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from challengectl.humanize import human_bytes
from challengectl.output import Column, Output, confirm, format_cell
from challengectl.ticker import parse_interval, run_watch
from service.config.settings import Settings
from service.domain.catalog import Catalog
from service.domain.rules import ProgressRow, split_active_view
from service.telemetry.pool_stats import nearest_rank

if TYPE_CHECKING:
    import psycopg

    from challengectl.client import Clients
    from challengectl.redis_diagnostics import (
        KeyLayout,
    )
    from service.storage.cache import Cache
    from service.storage.store import Queries, Store

app = command_group("Warm, flush and inspect the Redis cache of active views.")

WARM_EXAMPLES = examples(
    "challengectl cache warm --user alice --user bob",
    "challengectl cache warm --all-active --concurrency 16 -o json | jq '.markers_set'",
    "challengectl cache warm --users-file players.txt",
)

FLUSH_EXAMPLES = examples(
    "challengectl cache flush --user alice --yes",
    "challengectl cache flush --all --dry-run -o json | jq '.removed'",
    "challengectl cache flush --pattern 'ch:{load-*' --include-dedup --must-match --yes",
)

STATS_EXAMPLES = examples(
    "challengectl cache stats",
    "challengectl cache stats -o json | jq '.redis.hit_ratio'",
    "challengectl cache stats --watch --interval 5s",
)

KEYS_EXAMPLES = examples(
    "challengectl cache keys --top 10",
    "challengectl cache keys --user alice -o json | jq '.entry.rows'",
    "challengectl cache keys --pattern 'ch:{load-*' --sample 5000 --sleep 50ms --must-match",
)

ACTIVE_USERS_PAGE = 1000
STATS_SCAN_LIMIT = 10_000
PING_EVERY_S = 0.1
KIND_ORDER = ("active", "tok", "synced", "evt", "other")

# ---------------------------------------------------------------------------------------------------
# Shared plumbing


async def service_fingerprint(clients: Clients) -> str | None:
    """The running service's catalog fingerprint (`/admin/config`), or None when it is not reachable."""
    try:
        config = await clients.admin.get("/admin/config")
    except CliError:
        return None
    return config.get("catalog_fingerprint") if isinstance(config, dict) else None


async def _redis_client(cli: CliContext, url: str, max_connections: int = 4) -> Any:
    """The service's own client factory (`connect_service_redis`) with the CLI's (longer) request timeout."""
    return await connect_service_redis(url, cli.settings().redis_mode, cli.timeout_s, max_connections)


def _cache_for(settings: Settings, client: Any, fingerprint: str) -> Cache:
    """The service's Cache over `client`, with the settings' TTLs and prefix."""
    from service.storage.cache import Cache

    return Cache(
        client,
        settings.redis_key_prefix,
        fingerprint,
        settings.cache_ttl_s,
        settings.synced_ttl_s,
        settings.cache_journal_max,
        settings.redis_probe_interval_ms,
    )


# ---------------------------------------------------------------------------------------------------
# warm


@dataclass
class WarmTotals:
    """What `cache warm` did, for the summary."""

    users: int = 0
    entries_written: int = 0
    already_valid: int = 0
    fill_skipped: int = 0  # a write changed the token between the MGET and the fill (docs/cache.md#entries-and-tokens)
    tokens_created: int = 0
    markers_set: int = 0

    @property
    def keys_written(self) -> int:
        return self.entries_written + self.tokens_created + self.markers_set


class Warmer:
    """Warms one user at a time with the service's protocol: MGET (`Cache.read_active`), then the
    PostgreSQL read, then the conditional fill (`Cache.fill_active`); the synced marker only when the
    user holds a row for every default goal of the catalog."""

    def __init__(self, cache: Cache, store: Store, queries: Queries, catalog: Catalog) -> None:
        self._cache = cache
        self._store = store
        self._queries = queries
        self._catalog = catalog
        self._default_goal_ids = [goal.goal_id for goal in catalog.default_goals]
        self.totals = WarmTotals()

    async def warm(self, user_id: str) -> None:
        read = await self._cache.read_active(user_id, include_synced=False)
        if read.bypassed:
            raise _redis_failed(f"reading the cached view of user {user_id!r}")
        async with self._store.connection() as conn:
            view = None if read.entry is not None else await self._read_active_view(conn, user_id)
            has_defaults = await self._has_every_default_goal(conn, user_id)
        self.totals.users += 1
        if view is None:
            self.totals.already_valid += 1
        elif await self._cache.fill_active(user_id, read, *view):
            self.totals.entries_written += 1
            if read.token is None:  # the fill created the token too
                self.totals.tokens_created += 1
        elif self._cache.healthy:
            self.totals.fill_skipped += 1
        if has_defaults and await self._cache.set_synced(user_id):
            self.totals.markers_set += 1
        if not self._cache.healthy:
            raise _redis_failed(f"warming user {user_id!r}")

    async def _read_active_view(
        self, conn: psycopg.AsyncConnection[Any], user_id: str
    ) -> tuple[list[ProgressRow], list[ProgressRow]]:
        """`active_view` split as the service splits it (`rules.split_active_view`): the active rows, and
        the inactive rows of prerequisites that an active goal needs."""
        from psycopg.rows import class_row

        fetched = await self._queries.rows(
            conn,
            "active_view",
            {"user_id": user_id, "prereq_goal_ids": list(self._catalog.prerequisite_ids)},
            class_row(ProgressRow),
        )
        return split_active_view(fetched, self._catalog.goals_by_id)

    async def _has_every_default_goal(self, conn: psycopg.AsyncConnection[Any], user_id: str) -> bool:
        if not self._default_goal_ids:
            return True
        held = await self._queries.rows(conn, "goals_by_ids", {"user_id": user_id, "goal_ids": self._default_goal_ids})
        return len({row["goal_id"] for row in held}) == len(self._default_goal_ids)


def _redis_failed(doing: str) -> CliError:
    return CliError(
        f"Redis failed while {doing}; the users before it are warmed",
        "check --redis-url / REDIS_URL and run the command again (warming is idempotent)",
        EXIT_UNAVAILABLE,
    )


def read_users_file(path: str) -> list[str]:
    """User ids, one per line (`-` reads stdin); blank lines and `#` comments are skipped."""
    from service.transport.auth import is_valid_user_id

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(
            f"cannot read --users-file {path}: {exc.strerror or exc}", "check the path", EXIT_USAGE
        ) from None
    users = []
    for number, line in enumerate(text.splitlines(), 1):
        user = line.strip()
        if not user or user.startswith("#"):
            continue
        if not is_valid_user_id(user):
            raise _invalid_user_id(f"on line {number} of {path}", "fix or remove that line")
        users.append(user)
    return users


def _invalid_user_id(which: str, hint: str) -> CliError:
    return CliError(
        f"invalid user id {which}: 1-100 characters, no control characters, no '{{' or '}}'", hint, EXIT_USAGE
    )


async def active_users(store: Store, skip: set[str]) -> AsyncIterator[list[str]]:
    """Every user with an active row, a page at a time, without the ids in `skip`."""
    from challengectl.cli_queries import fetch_values_async

    after = ""
    while True:
        async with store.connection() as conn:
            params = {"after": after, "page": ACTIVE_USERS_PAGE}
            page = await fetch_values_async(conn, "cli_active_users_page", params)
        if not page:
            return
        after = page[-1]
        yield [user for user in page if user not in skip]


async def _user_batches(explicit: list[str], all_active: bool, store: Store, batch: int) -> AsyncIterator[list[str]]:
    for start in range(0, len(explicit), batch):
        yield explicit[start : start + batch]
    if all_active:
        async for page in active_users(store, set(explicit)):
            yield page


async def run_warm(
    clients: Clients,
    cli: CliContext,
    settings: Settings,
    database_url: str,
    redis_url: str,
    explicit: list[str],
    all_active: bool,
    concurrency: int,
) -> dict[str, Any]:
    """Warm the users (explicit ones first, then every active user) `concurrency` at a time."""
    from challengectl.catalogs import service_catalog
    from challengectl.redis_diagnostics import redis_failures_as_cli_errors
    from service.storage.cache import ping
    from service.storage.registry import load_registry
    from service.storage.store import PoolConfig, Queries, Store, StoreUnavailable, open_pool

    catalog = service_catalog(settings)
    running = await service_fingerprint(clients)
    if running is not None and running != catalog.fingerprint:
        raise CliError(
            f"the catalog {catalog.path} (fingerprint {catalog.fingerprint}) is not the running service's "
            f"(fingerprint {running}); its entries would never be valid",
            "point CHALLENGE_CATALOG_PATH at the service's catalog",
            EXIT_USAGE,
        )
    async with contextlib.AsyncExitStack() as resources:
        client = await _redis_client(cli, redis_url, concurrency + 1)
        resources.push_async_callback(client.aclose)
        async with redis_failures_as_cli_errors(redis_url, "connecting"):
            await ping(client)
        try:
            store = Store(await open_pool(database_url, "cli", PoolConfig(min_size=1, max_size=concurrency)))
            resources.push_async_callback(store.close)
            cache = _cache_for(settings, client, catalog.fingerprint)
            resources.push_async_callback(cache.stop)  # closes its pipelined connection
            warmer = Warmer(cache, store, Queries(load_registry()), catalog)
            started = time.perf_counter()
            await _warm_all(
                cli.output,
                warmer,
                _user_batches(explicit, all_active, store, concurrency * 64),
                None if all_active else len(explicit),
                concurrency,
            )
            elapsed = time.perf_counter() - started
        except StoreUnavailable as exc:
            raise CliError(str(exc), "check --database-url / DATABASE_URL", EXIT_UNAVAILABLE) from None
    totals = warmer.totals
    return {
        **asdict(totals),
        "keys_written": totals.keys_written,
        "duration_ms": round(elapsed * 1000, 1),
        "users_per_s": round(totals.users / elapsed, 1) if elapsed > 0 else None,
    }


async def _warm_all(
    out: Output, warmer: Warmer, batches: AsyncIterator[list[str]], total: int | None, concurrency: int
) -> None:
    """Warm batch after batch, `concurrency` users at a time, with a progress bar on stderr."""
    limit = asyncio.Semaphore(concurrency)
    with out.progress("warming", total=total) as bar:

        async def warm_one(user: str) -> None:
            async with limit:
                await warmer.warm(user)
            bar.advance()

        async for batch in batches:
            await asyncio.gather(*(warm_one(user) for user in batch))


@app.command("warm", epilog=WARM_EXAMPLES)
def warm(
    ctx: typer.Context,
    user: list[str] = typer.Option([], "--user", help="a user to warm (repeatable)"),
    users_file: str | None = typer.Option(None, "--users-file", help="file of user ids, one per line ('-': stdin)"),
    all_active: bool = typer.Option(False, "--all-active", help="every user with an active row"),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=256, help="users warmed at a time"),
) -> None:
    """Fill active views with the service's cache protocol; set synced markers where every default goal has a row."""
    from service.transport.auth import is_valid_user_id

    cli = get_cli(ctx)
    for name in user:
        if not is_valid_user_id(name):
            raise _invalid_user_id(repr(name), "check --user")
    explicit = list(dict.fromkeys([*user, *(read_users_file(users_file) if users_file else [])]))
    if not explicit and not all_active:
        raise CliError("no users to warm", "give --user U, --users-file F or --all-active", EXIT_USAGE)
    settings = cli.settings()
    redis_url = require_service_redis_url(settings)
    with database_target(settings) as target:
        summary = cli.run(
            lambda clients: run_warm(clients, cli, settings, target.url, redis_url, explicit, all_active, concurrency)
        )
    lines = [
        f"warmed {summary['users']} users: {summary['entries_written']} views written, "
        f"{summary['already_valid']} already valid, {summary['fill_skipped']} skipped (written meanwhile), "
        f"{summary['markers_set']} synced markers set; {summary['keys_written']} keys in "
        f"{summary['duration_ms']:.0f} ms ({summary['users_per_s'] or 0:g} users/s)"
    ]
    cli.output.emit_object(summary, text=lambda: lines[0])


# ---------------------------------------------------------------------------------------------------
# flush


@dataclass
class FlushTotals:
    """What `cache flush` matched and did (or, with --dry-run, would do)."""

    matched: int = 0
    removed: int = 0
    tokens_rotated: int = 0
    dedup_kept: int = 0
    foreign_kept: int = 0  # matched the pattern but not the cache's key layout


async def flush_keys(
    client: Any,
    cache: Cache,
    layout: KeyLayout,
    patterns: Iterable[str],
    include_dedup: bool,
    dry_run: bool,
    totals: FlushTotals,
) -> None:
    """SCAN each pattern; per reply, rotate the matched tokens (the service's invalidation: a fresh token
    and the view unlinked) and UNLINK the views, synced markers and, with `include_dedup`, the event
    markers. Keys outside the layout are left alone."""
    from challengectl.redis_diagnostics import scan_batches

    for pattern in patterns:
        async for batch in scan_batches(client, pattern):
            keys = [layout.classify(raw) for raw in batch]
            totals.matched += len(keys)
            rotate = [key.user_id for key in keys if key.kind == "tok" and key.user_id is not None]
            remove = [
                key.raw for key in keys if key.kind in ("active", "synced") or (key.kind == "evt" and include_dedup)
            ]
            totals.dedup_kept += sum(1 for key in keys if key.kind == "evt" and not include_dedup)
            totals.foreign_kept += sum(1 for key in keys if key.kind == "other")
            if dry_run:
                totals.tokens_rotated += len(rotate)
                totals.removed += len(remove)
                continue
            if rotate:
                await cache.invalidate_many(rotate)
                if not cache.healthy:
                    raise _redis_failed_flush(totals)
                totals.tokens_rotated += len(rotate)
            if remove:
                totals.removed += await client.unlink(*remove)


def _redis_failed_flush(totals: FlushTotals) -> CliError:
    return CliError(
        f"Redis failed while rotating tokens after {totals.removed} keys were removed",
        "check --redis-url / REDIS_URL and run the flush again",
        EXIT_UNAVAILABLE,
    )


def flush_patterns(prefix: str, users: list[str], pattern: str | None, everything: bool) -> tuple[list[str], str]:
    """The SCAN patterns of exactly one selector, and how to describe it; user ids are escaped."""
    from challengectl.redis_diagnostics import KeyLayout
    from service.storage.cache import scan_pattern_for_user

    chosen = sum((bool(users), pattern is not None, everything))
    if chosen != 1:
        raise CliError(
            "cache flush needs exactly one of --user, --pattern or --all",
            "e.g. challengectl cache flush --user alice --yes",
            EXIT_USAGE,
        )
    if users:
        return [scan_pattern_for_user(prefix, user) for user in users], f"user(s) {', '.join(users)}"
    if pattern is not None:
        return [pattern], f"pattern {pattern}"
    return [KeyLayout(prefix).all_keys_pattern()], f"every user under prefix '{prefix}'"


@app.command("flush", epilog=FLUSH_EXAMPLES)
def flush(
    ctx: typer.Context,
    user: list[str] = typer.Option([], "--user", help="flush this user's keys (repeatable)"),
    pattern: str | None = typer.Option(
        None, "--pattern", help="SCAN MATCH glob over full key names, e.g. 'ch:{load-*'"
    ),
    everything: bool = typer.Option(
        False, "--all", help="every key under redis_key_prefix [env: CHALLENGE_REDIS_KEY_PREFIX]"
    ),
    include_dedup: bool = typer.Option(
        False, "--include-dedup", help="also remove event de-duplication markers (evt:)"
    ),
    must_match: bool = typer.Option(False, "--must-match", help="exit 3 when no key matched"),
    dry_run: bool = typer.Option(False, "--dry-run", help="count what would be removed, change nothing"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
) -> None:
    """Remove cache keys with SCAN + UNLINK; tokens are rotated, never deleted; de-dup markers kept by default."""
    from challengectl.redis_diagnostics import KeyLayout, redis_failures_as_cli_errors

    cli = get_cli(ctx)
    settings = cli.settings()
    prefix = settings.redis_key_prefix
    patterns, selector = flush_patterns(prefix, user, pattern, everything)
    dedup = "removed" if include_dedup else "kept"
    proceed = confirm(
        f"flush the cache keys of {selector} (tokens rotated, de-duplication markers {dedup})", yes, dry_run
    )
    redis_url = require_service_redis_url(settings)
    totals = FlushTotals()

    async def run() -> None:
        client = await _redis_client(cli, redis_url)
        try:
            # Rotation needs no catalog: the fingerprint only matters for reads and synced markers.
            cache = _cache_for(settings, client, fingerprint="")
            async with redis_failures_as_cli_errors(redis_url, "flushing keys"):
                await flush_keys(client, cache, KeyLayout(prefix), patterns, include_dedup, not proceed, totals)
        finally:
            await client.aclose()

    asyncio.run(run())
    summary = {"patterns": patterns, "dry_run": not proceed, **asdict(totals)}
    verb = "would remove" if not proceed else "removed"
    cli.output.emit_object(
        summary,
        text=lambda: (
            f"matched {totals.matched} keys: {verb} {totals.removed}, tokens rotated {totals.tokens_rotated}, "
            f"de-dup markers kept {totals.dedup_kept}, other keys kept {totals.foreign_kept}"
        ),
    )
    if must_match and totals.matched == 0:
        raise CliError(
            f"no key matched {', '.join(patterns)}", "check --user / --pattern and redis_key_prefix", EXIT_NOT_FOUND
        )


# ---------------------------------------------------------------------------------------------------
# stats


async def collect_cache_stats(
    clients: Clients, client: Any, redis_url: str, layout: KeyLayout, ping_ms: list[float] | None = None
) -> dict[str, Any]:
    """`/admin/cache` (None when the service is unreachable), Redis INFO, and keys by kind from a SCAN of
    at most STATS_SCAN_LIMIT keys. `ping_ms`: PING round trips measured since the last call."""
    from challengectl.redis_diagnostics import read_server_summary, redis_failures_as_cli_errors, take_inventory

    try:
        service: dict[str, Any] | None = await clients.admin.get("/admin/cache")
        service_error = None
    except CliError as exc:
        service, service_error = None, exc.message
    async with redis_failures_as_cli_errors(redis_url, "reading INFO and scanning keys"):
        server = await read_server_summary(client)
        inventory = await take_inventory(
            client, layout, layout.all_keys_pattern(), sample=0, top=0, sleep_s=0.0, limit=STATS_SCAN_LIMIT
        )
    stats: dict[str, Any] = {
        "service": service,
        "redis": server,
        "keys": {
            "pattern": inventory.pattern,
            "scanned": inventory.scanned,
            "complete": inventory.complete,
            "by_kind": inventory.by_kind,
        },
        "warnings": cache_warnings(service, server),
        "unreachable": {"service": service_error} if service_error else {},
    }
    if ping_ms is not None:
        stats["ping_ms"] = {
            "samples": len(ping_ms),
            "p50": round(nearest_rank(ping_ms, 0.50), 3),
            "p99": round(nearest_rank(ping_ms, 0.99), 3),
        }
        ping_ms.clear()
    return stats


def cache_warnings(service: dict[str, Any] | None, server: dict[str, Any]) -> list[str]:
    """What an operator should act on (docs/cache.md#degradation-and-recovery, docs/cache.md#sizing)."""
    warnings = []
    policy = server.get("maxmemory_policy") or ""
    if not policy.startswith("volatile-"):
        warnings.append(f"maxmemory-policy is {policy or 'unknown'}; volatile-ttl or volatile-lru is recommended")
    if server.get("evicted_keys"):
        warnings.append(f"Redis evicted {server['evicted_keys']} keys: size maxmemory so that eviction does not happen")
    if service is not None and (service.get("bypass") or not service.get("healthy", True)):
        warnings.append(
            f"the service bypasses the cache (healthy={service.get('healthy')}, "
            f"journal_pending={service.get('journal_pending')})"
        )
    return warnings


def render_stats(stats: dict[str, Any], no_headers: bool = False) -> RenderableType:
    service, redis, keys = stats["service"], stats["redis"], stats["keys"]
    rows: list[tuple[str, Any]] = []
    if service is not None:
        rows += [
            (
                "service: enabled / healthy / bypass",
                " / ".join(format_cell(service.get(key)) for key in ("enabled", "healthy", "bypass")),
            ),
            (
                "service: hit ratio",
                _ratio(service.get("hit_ratio") if service.get("hits", 0) + service.get("misses", 0) else None),
            ),
            ("service: hits / misses", f"{service.get('hits')} / {service.get('misses')}"),
        ]
        for kind, counts in (service.get("by_kind") or {}).items():
            rows.append((f"service: {kind} hits / misses", f"{counts.get('hits')} / {counts.get('misses')}"))
        rows += [
            ("service: bypassed / errors", f"{service.get('bypassed')} / {service.get('errors')}"),
            (
                "service: invalidations (failed)",
                f"{service.get('invalidations')} ({service.get('invalidation_failures')})",
            ),
            ("service: journal pending", service.get("journal_pending")),
        ]
    rows += [
        (
            "redis: version / uptime",
            f"{redis['redis_version']} / {redis['uptime_s']} s" + (" (cluster)" if redis["cluster_enabled"] else ""),
        ),
        ("redis: hit ratio (all clients)", _ratio(redis["hit_ratio"])),
        ("redis: hits / misses", f"{redis['keyspace_hits']} / {redis['keyspace_misses']}"),
        ("redis: evicted / expired keys", f"{redis['evicted_keys']} / {redis['expired_keys']}"),
        ("redis: ops/s / commands", f"{redis['ops_per_sec']} / {redis['commands_processed']}"),
        (
            "redis: memory used / peak / max",
            f"{human_bytes(redis['used_memory_bytes'])} / {human_bytes(redis['used_memory_peak_bytes'])}"
            f" / {human_bytes(redis['maxmemory_bytes']) if redis['maxmemory_bytes'] else 'unlimited'}",
        ),
        (
            "redis: maxmemory policy / fragmentation",
            f"{redis['maxmemory_policy']} / {redis['mem_fragmentation_ratio']}",
        ),
        (
            "redis: clients connected / blocked / rejected",
            f"{redis['connected_clients']} / {redis['blocked_clients']} / {redis['rejected_connections']}",
        ),
    ]
    rows += [
        (f"redis: {db} keys (with expiry)", f"{counts['keys']} ({counts['expires']})")
        for db, counts in redis["keyspace"].items()
    ]
    scope = "" if keys["complete"] else f", first {keys['scanned']} scanned"
    rows += [(f"keys {keys['pattern']}: {kind}{scope}", keys["by_kind"].get(kind, 0)) for kind in KIND_ORDER]
    if "ping_ms" in stats:
        rows.append(("redis: PING p50 / p99 ms", f"{stats['ping_ms']['p50']} / {stats['ping_ms']['p99']}"))
    parts: list[RenderableType] = [_kv_table(rows, no_headers)]
    parts += [Text(f"! WARN {warning}") for warning in stats["warnings"]]
    parts += [Text(f"{name} unreachable: {message}") for name, message in stats["unreachable"].items()]
    return Group(*parts)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _kv_table(rows: list[tuple[str, Any]], no_headers: bool) -> Table:
    table = Table(show_header=not no_headers, header_style="bold", box=None, pad_edge=False)
    table.add_column("METRIC")
    table.add_column("VALUE", justify="right")
    for name, value in rows:
        table.add_row(name, format_cell(value))
    return table


@app.command("stats", epilog=STATS_EXAMPLES)
def stats(
    ctx: typer.Context,
    watch: bool = typer.Option(
        False, "--watch", help="refresh every --interval until Ctrl-C, with PING latency (NDJSON when piped)"
    ),
    interval: str = typer.Option("2s", "--interval", help="refresh interval for --watch, <n>[ms|s|m|h]"),
) -> None:
    """Service and Redis cache health: hit ratios, memory, evictions, keys by kind."""
    from challengectl.redis_diagnostics import KeyLayout
    from service.storage.cache import REDIS_FAILURES, ping

    cli = get_cli(ctx)
    interval_s = parse_interval(interval)
    settings = cli.settings()
    redis_url = require_service_redis_url(settings)
    layout = KeyLayout(settings.redis_key_prefix)
    out = cli.output
    if not watch:

        async def once(clients: Clients) -> dict[str, Any]:
            client = await _redis_client(cli, redis_url)
            try:
                return await collect_cache_stats(clients, client, redis_url, layout)
            finally:
                await client.aclose()

        report = cli.run(once)
        if out.format != "table":
            for warning in report["warnings"]:
                out.warn(warning)
        out.emit_object(report, table=lambda: render_stats(report, out.no_headers))
        return
    client = None
    ping_ms: list[float] = []

    async def tick(clients: Clients) -> dict[str, Any]:
        nonlocal client
        client = client or await _redis_client(cli, redis_url)
        return await collect_cache_stats(clients, client, redis_url, layout, ping_ms)

    async def measure_latency(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if client is not None:
                with contextlib.suppress(*REDIS_FAILURES):  # the next tick reports a Redis failure
                    ping_ms.append(await ping(client))
            await asyncio.sleep(min(PING_EVERY_S, max(0.0, deadline - time.monotonic())))

    run_watch(cli, interval_s, tick, lambda report: render_stats(report, out.no_headers), measure_latency)


# ---------------------------------------------------------------------------------------------------
# keys


def render_inventory(inventory: dict[str, Any], out: Output) -> RenderableType:
    """Counts by kind, the sampled TTL distribution and the largest sampled keys."""
    states = inventory["evt_states_sampled"]
    partial = "" if inventory["complete"] else " (partial scan)"
    return Group(
        Text(f"keys matching {inventory['pattern']}{partial}", style="bold"),
        out.table(
            [{"kind": kind, "keys": inventory["by_kind"].get(kind, 0)} for kind in KIND_ORDER],
            [Column("kind"), Column("keys", justify="right")],
        ),
        Text(f"evt markers sampled: {states['pending']} pending, {states['done']} done"),
        Text(f"TTL of {inventory['sampled']} sampled keys", style="bold"),
        out.table(
            [{"ttl": bucket, "keys": count} for bucket, count in inventory["ttl_distribution"].items()],
            [Column("ttl"), Column("keys", justify="right")],
        ),
        Text("largest sampled keys (MEMORY USAGE)", style="bold"),
        out.table(
            inventory["largest"],
            [Column("key"), Column("kind"), Column("bytes", justify="right"), Column("ttl_s", "TTL S", "right")],
        ),
    )


def render_user(state: dict[str, Any], out: Output) -> RenderableType:
    """One user's keys, the decoded active entry and its rows, synced and event markers."""
    parts: list[RenderableType] = [
        Text(f"cache keys of user {state['user_id']}", style="bold"),
        out.table(state["keys"], [Column("key"), Column("kind"), Column("ttl_s", "TTL S", "right")]),
    ]
    entry = state["entry"]
    if entry is None:
        parts.append(Text("active entry: none"))
    elif not entry["decodes"]:
        parts.append(Text(f"active entry: does not decode ({entry['bytes']} bytes)"))
    else:
        parts.append(
            Text(
                f"active entry: valid={format_cell(entry['valid'])} "
                f"token_matches={format_cell(entry['token_matches'])} fingerprint={entry['fingerprint']} "
                f"(current: {format_cell(entry['fingerprint_matches'])}), {len(entry['rows'])} rows, "
                f"{len(entry['pre'])} prerequisite rows, {entry['bytes']} bytes"
            )
        )
        parts.append(
            out.table(
                [*entry["rows"], *entry["pre"]],
                [
                    Column("goal_id", "GOAL"),
                    Column("challenge_id", "CHALLENGE"),
                    Column("progress", justify="right"),
                    Column("status"),
                    Column("is_active", "ACTIVE"),
                    Column("updated_at", "UPDATED"),
                ],
            )
        )
    synced = ", ".join(
        f"{marker['fingerprint']}{' (current)' if marker['current'] else ''}" for marker in state["synced"]
    )
    parts.append(
        Text(
            f"synced markers: {synced or 'none'}; evt markers: {state['evt']['pending']} pending, "
            f"{state['evt']['done']} done"
        )
    )
    return Group(*parts)


@app.command("keys", epilog=KEYS_EXAMPLES)
def keys(
    ctx: typer.Context,
    pattern: str | None = typer.Option(
        None, "--pattern", help="SCAN MATCH glob over full key names (default '<prefix>:*')"
    ),
    user: str | None = typer.Option(None, "--user", help="decode this user's keys instead of counting"),
    top: int = typer.Option(10, "--top", min=0, help="largest N sampled keys by MEMORY USAGE"),
    sample: int = typer.Option(1000, "--sample", min=0, help="keys whose TTL and size are sampled"),
    sleep: str = typer.Option("0.01", "--sleep", help="pause between SCAN calls, seconds or <n>[ms|s]"),
    must_match: bool = typer.Option(False, "--must-match", help="exit 3 when no key matched"),
) -> None:
    """Key inventory: counts by kind, TTL distribution, largest keys; or one user's keys decoded."""
    from challengectl.redis_diagnostics import KeyLayout, redis_failures_as_cli_errors, take_inventory, user_cache_state

    cli = get_cli(ctx)
    sleep_s = parse_duration(sleep, "--sleep")
    settings = cli.settings()
    redis_url = require_service_redis_url(settings)
    layout = KeyLayout(settings.redis_key_prefix)
    out = cli.output
    if user is not None and pattern is not None:
        raise CliError("give --user or --pattern, not both", "see 'challengectl cache keys --help'", EXIT_USAGE)

    async def run(clients: Clients) -> dict[str, Any]:
        client = await _redis_client(cli, redis_url)
        try:
            async with redis_failures_as_cli_errors(redis_url, "scanning keys"):
                if user is not None:
                    fingerprint = await service_fingerprint(clients) or _local_fingerprint(settings, out)
                    return await user_cache_state(client, layout, user, fingerprint)
                inventory = await take_inventory(
                    client, layout, pattern or layout.all_keys_pattern(), sample=sample, top=top, sleep_s=sleep_s
                )
                return inventory.as_dict()
        finally:
            await client.aclose()

    result = cli.run(run)
    if user is not None:
        out.emit(result, rows=result["keys"], table=lambda: render_user(result, out))
        matched = len(result["keys"]) + result["evt"]["pending"] + result["evt"]["done"]
    else:
        by_kind = [{"kind": kind, "keys": result["by_kind"].get(kind, 0)} for kind in KIND_ORDER]
        out.emit(result, rows=by_kind, table=lambda: render_inventory(result, out))
        matched = result["scanned"]
    if must_match and matched == 0:
        raise CliError(
            f"no key matched {'the keys of user ' + repr(user) if user is not None else pattern or layout.all_keys_pattern()}",
            "check --user / --pattern and redis_key_prefix",
            EXIT_NOT_FOUND,
        )


def _local_fingerprint(settings: Settings, out: Output) -> str | None:
    """The local catalog's fingerprint when the service cannot be asked; None (with a warning) without one."""
    from challengectl.catalogs import service_catalog

    try:
        return service_catalog(settings).fingerprint
    except CliError as exc:
        out.warn(f"cannot tell current from older synced markers: {exc.message}")
        return None


def register(root: typer.Typer) -> None:
    """Add the `cache` group to the root app."""
    root.add_typer(app, name="cache")

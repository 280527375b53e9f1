"""Resource snapshots while a load test runs (docs/loadtest.md#resource-snapshots): the service's CPU and RSS (`/metrics`), DB and
Redis pools (`/admin/pool`), cache counters (`/admin/cache`), the event buffer (`/admin/buffer`),
PostgreSQL connections by state and waits (`pg_stat_activity`), the machine's CPU, and Redis hit ratio and ops/s (`INFO stats`),
sampled every interval and summarised as min/avg/max. At the end: the top `pg_stat_statements` entries
and the `user_goal_progress` table statistics. A source that cannot be read is left out with a note."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import psutil
import psycopg

from challengectl import database
from challengectl.cli_queries import fetch_all_async
from challengectl.connections import connect_service_redis
from challengectl.loadtest.servicemetrics import (
    FLUSH_DURATION,
    Samples,
    histogram_deltas,
    parse_samples,
    quantile_bucket,
    scalar,
)
from challengectl.pg_diagnostics import (
    PROJECT_TABLES,
    ConnectionCount,
    StatementStats,
    StatementStatsUnavailable,
    TableStats,
    connection_groups_params,
    connection_limits_async,
    statement_stats_view,
    top_statements,
)
from challengectl.ratios import hit_pct
from challengectl.redis_diagnostics import stats_of_every_primary
from service.storage.cache import RedisClient, ping

APPLICATION_NAME = "challengectl-loadtest"
REDIS_TIMEOUT_S = 2
# The table statistics a run compares before and after (`cli_table_stats`).
_TABLE_STAT_FIELDS = {
    "seq_scan": "seq_scan",
    "seq_tup_read": "seq_tup_read",
    "idx_scan": "idx_scan",
    "n_tup_ins": "n_tup_ins",
    "n_tup_upd": "n_tup_upd",
    "n_tup_hot_upd": "n_tup_hot_upd",
    "n_tup_del": "n_tup_del",
    "n_live_tup": "live_rows",
    "n_dead_tup": "dead_rows",
}
_TOP_QUERY_LIMIT = 10
_QUERY_CHARS = 300


class ResourceSampler:
    """Samples every source once per `interval_s` until stopped. `generator_stats` supplies the
    generator's own numbers (lag p99, dropped, CPU) for each row."""

    def __init__(
        self,
        admin_url: str,
        admin_token: str | None,
        database_url: str | None,
        redis_url: str | None,
        interval_s: float,
        generator_stats: Callable[[], dict[str, Any]] = dict,
        redis_mode: str = "auto",
    ) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.interval_s = interval_s
        self.series: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.capacity: dict[str, Any] = {}
        self.metrics_before: Samples | None = None
        self.metrics_after: Samples | None = None
        self.table_stats_before: dict[str, dict[str, int]] = {}
        self._headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._database_url = database_url
        self._redis_url = redis_url if redis_url and redis_url.strip().lower() != "disabled" else None
        self._redis_mode = redis_mode
        self._generator_stats = generator_stats
        self._session: aiohttp.ClientSession | None = None
        self._pg: psycopg.AsyncConnection[Any] | None = None
        self._redis: RedisClient | None = None
        self._started = 0.0
        self.started_unix: float | None = None
        self._previous: dict[str, float] = {}
        self._previous_samples: Samples | None = None

    async def open(self) -> None:
        """Connect to every reachable source and take the first snapshot (the window's start)."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        if self._database_url:
            try:
                self._pg = await database.connect_async(self._database_url, application_name=APPLICATION_NAME)
                self.capacity["pg_max_connections"] = (await connection_limits_async(self._pg)).max_connections
                self.table_stats_before = await self._table_stats()
            except psycopg.Error as error:
                self._pg = None
                self.notes.append(f"PostgreSQL statistics omitted: {_first_line(error)}")
        else:
            self.notes.append("PostgreSQL statistics omitted: no database URL (set DATABASE_URL or --database-url)")
        if self._redis_url:
            try:
                self._redis = await connect_service_redis(self._redis_url, self._redis_mode, REDIS_TIMEOUT_S)
                await ping(self._redis)
            except Exception as error:  # redis raises many unrelated types on a bad URL or refused connection
                self._redis = None
                self.notes.append(f"Redis statistics omitted: {_first_line(error)}")
        else:
            self.notes.append("Redis statistics omitted: cache disabled or no Redis URL")
        self._started = time.monotonic()
        self.started_unix = time.time()
        text = await self._get_text("/metrics")
        self.metrics_before = parse_samples(text) if text is not None else None
        await self.sample()

    async def close(self) -> None:
        """Take the last snapshot (the window's end) and disconnect."""
        await self.sample()
        text = await self._get_text("/metrics")
        self.metrics_after = parse_samples(text) if text is not None else None
        if self._session is not None:
            await self._session.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every interval until `stop` is set."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
                return
            except TimeoutError:
                await self.sample()

    async def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t_s": round(time.monotonic() - self._started, 2)}
        # Since the previous call; the first call (the sample in `open`) has no interval: it only starts the count.
        machine_cpu_pct = psutil.cpu_percent(interval=None)
        row["machine_cpu_pct"] = machine_cpu_pct if self.series else None
        now = time.monotonic()
        metrics_text, pool, cache, buffer = await asyncio.gather(
            self._get_text("/metrics"),
            self._get_json("/admin/pool"),
            self._get_json("/admin/cache"),
            self._get_json("/admin/buffer"),
        )
        if metrics_text is not None:
            samples = parse_samples(metrics_text)
            cpu = scalar(samples, "process_cpu_seconds_total")
            rss = scalar(samples, "process_resident_memory_bytes")
            row["service_cpu_pct"] = self._rate("cpu", cpu, now, 100.0)
            row["service_rss_mb"] = round(rss / 1e6, 1) if rss is not None else None
            row["flush_deferred_total"] = scalar(samples, "challenge_flush_deferred_total")
            row["flush_ms_p95_interval"] = self._flush_p95_ms(samples)
        if pool:
            db, redis_pool = pool.get("db", {}), pool.get("redis", {})
            self.capacity["db_pool_max"] = db.get("max_size")
            self.capacity["redis_pool_max"] = redis_pool.get("max_connections")
            row.update(
                {
                    "db_pool_in_use": db.get("in_use"),
                    "db_pool_waiting": db.get("waiting"),
                    "db_pool_utilisation_pct": _pct(db.get("utilisation")),
                    "db_pool_peak_in_use": db.get("peak_in_use"),
                    "db_pool_acquire_timeouts": db.get("acquire_timeouts"),
                    "redis_pool_in_use": redis_pool.get("in_use"),
                }
            )
        if cache:
            row["cache_hit_ratio_pct"] = self._ratio("cache", cache.get("hits"), cache.get("misses"))
            row["cache_bypassed"] = cache.get("bypassed")
        if buffer:
            self.capacity["buffer_capacity"] = buffer.get("capacity")
            row.update(
                {
                    "buffer_entries": buffer.get("entries"),
                    "buffer_peak_entries": buffer.get("peak_entries"),
                    "flush_ms_p95": buffer.get("flush_ms_p95"),
                    "buffer_exhausted": (buffer.get("events") or {}).get("exhausted"),
                }
            )
        if self._pg is not None and await self._pg_usable():
            row.update(await self._pg_connections())
        elif self._pg is not None:
            row["pg_error"] = "no connection to PostgreSQL"
        if self._redis is not None:
            row.update(await self._redis_stats(now))
        row.update(self._generator_stats())
        self.series.append(row)
        return row

    def summary(self) -> dict[str, dict[str, float]]:
        """min/avg/max of every numeric series field."""
        fields: dict[str, list[float]] = {}
        for row in self.series:
            for key, value in row.items():
                if key != "t_s" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    fields.setdefault(key, []).append(float(value))
        return {
            key: {"min": round(min(v), 3), "avg": round(sum(v) / len(v), 3), "max": round(max(v), 3)}
            for key, v in fields.items()
        }

    async def database_report(self) -> dict[str, Any]:
        """Top statements by total time and the table statistics before/after (docs/loadtest.md#resource-snapshots).
        A database lost at the end of the run leaves them out with a note; the report is still written."""
        if self._pg is None:
            return {"top_queries": [], "table_stats": {}, "note": "no database access"}
        if not await self._pg_usable():
            return {"top_queries": [], "table_stats": {}, "note": "PostgreSQL unreachable at the end of the run"}
        try:
            report: dict[str, Any] = {
                "top_queries": await self._top_queries(),
                "table_stats": {"before": self.table_stats_before, "after": await self._table_stats()},
            }
        except psycopg.Error as error:
            report = {"top_queries": [], "table_stats": {}, "note": f"PostgreSQL failed: {_first_line(error)}"}
        await self._pg.close()
        return report

    async def _pg_usable(self) -> bool:
        """The statistics connection, reconnected when a PostgreSQL restart or outage closed it."""
        assert self._pg is not None and self._database_url is not None
        if not self._pg.closed:
            return True
        try:
            self._pg = await database.connect_async(self._database_url, None, 2, APPLICATION_NAME)
        except psycopg.Error as error:
            self._note_once(f"PostgreSQL statistics interrupted: {_first_line(error)}")
            return False
        return True

    async def _top_queries(self) -> list[dict[str, Any]]:
        assert self._database_url is not None
        try:
            stats = await asyncio.to_thread(_top_statements, self._database_url)
        except (psycopg.Error, StatementStatsUnavailable) as error:
            self.notes.append(f"pg_stat_statements unavailable: {_first_line(error)}")
            return []
        return [
            {
                "calls": entry.calls,
                "total_ms": round(entry.total_ms, 1),
                "mean_ms": round(entry.mean_ms, 3),
                "rows": entry.rows,
                "query": " ".join(entry.query[:_QUERY_CHARS].split()),
            }
            for entry in stats
        ]

    async def _table_stats(self) -> dict[str, dict[str, int]]:
        assert self._pg is not None
        stats = await fetch_all_async(self._pg, "cli_table_stats", TableStats, {"tables": list(PROJECT_TABLES)})
        return {
            table.table_name: {name: int(getattr(table, field)) for name, field in _TABLE_STAT_FIELDS.items()}
            for table in stats
        }

    async def _pg_connections(self) -> dict[str, Any]:
        assert self._pg is not None
        try:
            params = connection_groups_params(include_self=False)
            groups = await fetch_all_async(self._pg, "cli_connections_by_state", ConnectionCount, params)
            limits = await connection_limits_async(self._pg)
        except psycopg.Error as error:
            return {"pg_error": _first_line(error)}
        by_state: dict[str, int] = {}
        for group in groups:
            by_state[group.state] = by_state.get(group.state, 0) + group.connections
        return {
            "pg_connections_total": sum(by_state.values()),
            "pg_connections_active": by_state.get("active", 0),
            "pg_connections_waiting": sum(group.waiting_on_server for group in groups if group.state == "active"),
            "pg_connections_idle": by_state.get("idle", 0),
            "pg_connections_idle_in_transaction": by_state.get("idle in transaction", 0),
            "pg_connections_free": limits.free,
        }

    async def _redis_stats(self, now: float) -> dict[str, Any]:
        assert self._redis is not None
        try:
            stats = await stats_of_every_primary(self._redis)
        except Exception as error:  # a Redis outage mid-run is recorded, not fatal
            return {"redis_error": _first_line(error)}
        return {
            "redis_hit_ratio_pct": self._ratio("redis", stats.get("keyspace_hits"), stats.get("keyspace_misses")),
            "redis_ops_per_s": self._rate("redis_ops", stats.get("total_commands_processed"), now, 1.0),
        }

    def _rate(self, key: str, value: float | None, now: float, factor: float) -> float | None:
        """Per-second rate of a cumulative counter since the previous sample."""
        if value is None:
            return None
        previous = self._previous.get(key)
        previous_at = self._previous.get(key + "@")
        self._previous[key], self._previous[key + "@"] = float(value), now
        if previous is None or previous_at is None or now <= previous_at:
            return None
        return round((float(value) - previous) / (now - previous_at) * factor, 2)

    def _flush_p95_ms(self, samples: Samples) -> float | None:
        """p95 of the flushes since the previous sample, estimated from the service's flush histogram
        (`/admin/buffer`'s flush_ms_p95 covers the last 2048 flushes, a minute or more of a run)."""
        previous, self._previous_samples = self._previous_samples, samples
        if previous is None:
            return None
        buckets = histogram_deltas(previous, samples, FLUSH_DURATION, ()).get(())
        if not buckets or buckets.get(math.inf, 0.0) <= 0:
            return None
        return round(quantile_bucket(buckets, 0.95)[2] * 1000, 3)

    def _ratio(self, key: str, hits: float | None, misses: float | None) -> float | None:
        """Hit ratio % of the hits and misses since the previous sample (None when there were none)."""
        if hits is None or misses is None:
            return None
        previous_hits, previous_misses = self._previous.get(key + "_h"), self._previous.get(key + "_m")
        self._previous[key + "_h"], self._previous[key + "_m"] = float(hits), float(misses)
        if previous_hits is None or previous_misses is None:
            return None
        return hit_pct(hits - previous_hits, misses - previous_misses)

    async def _get_text(self, path: str) -> str | None:
        body = await self._get(path)
        return body.decode("utf-8", errors="replace") if body is not None else None

    async def _get_json(self, path: str) -> dict[str, Any] | None:
        body = await self._get(path)
        if body is None:
            return None
        try:
            return json.loads(body)
        except ValueError as error:
            self._note_once(f"admin {path} unreachable: {_first_line(error)}")
            return None

    async def _get(self, path: str) -> bytes | None:
        """The body of an admin GET, or None (noted once) when it failed."""
        assert self._session is not None
        try:
            async with self._session.get(self.admin_url + path, headers=self._headers) as response:
                if response.status != 200:
                    self._note_once(f"admin {path} answered HTTP {response.status}")
                    return None
                return await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            self._note_once(f"admin {path} unreachable: {_first_line(error) or type(error).__name__}")
            return None

    def _note_once(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)


def _pct(value: float | None) -> float | None:
    return round(value * 100, 2) if isinstance(value, (int, float)) else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _top_statements(database_url: str) -> list[StatementStats]:
    """The run's top statements by total time, on a short session of its own (`pg_diagnostics` reads
    pg_stat_statements synchronously)."""
    with database.connect(database_url, application_name=APPLICATION_NAME) as conn:
        return top_statements(conn, statement_stats_view(conn), order="total", limit=_TOP_QUERY_LIMIT)

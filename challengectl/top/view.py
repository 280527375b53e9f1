"""The numbers `top` shows, from two consecutive Readings: per-route rates and percentiles from the
`/metrics` deltas (the loadtest's own parser and `histogram_quantile` estimate), event ingestion,
buffer and flushes, the DB pool against `max_connections`, cache and Redis figures, PostgreSQL
sessions and blocking chains. A source that did not answer gives its panel an `error` instead."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from challengectl.loadtest.servicemetrics import (
    FLUSH_DURATION,
    GRPC_DURATION,
    HTTP_DURATION,
    HTTP_REQUESTS,
    Samples,
    counter_deltas,
    histogram_deltas,
    quantile_bucket,
    scalar,
)
from challengectl.ratios import hit_pct
from challengectl.top.sources import Reading

GRPC_REQUESTS = "challenge_grpc_requests_total"
EVENTS = "challenge_events_total"
ACK_WAIT = "challenge_ack_wait_seconds"
FLUSH_DEFERRED = "challenge_flush_deferred_total"
FLUSH_FAILURES = "challenge_flush_failures_total"
SORTS = ("rps", "p95", "errors", "route")
PEAK_FIELDS = ("rps", "events_per_s", "pool_in_use", "pool_waiting", "buffer_entries")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _quantiles_ms(buckets: dict[float, float] | None) -> tuple[float | None, float | None]:
    """(p50, p95) in ms of delta buckets; None when nothing was observed."""
    if not buckets or buckets.get(math.inf, 0.0) <= 0:
        return None, None
    return _ms(quantile_bucket(buckets, 0.5)[2]), _ms(quantile_bucket(buckets, 0.95)[2])


def _rate(delta: float | None, window_s: float | None) -> float | None:
    if delta is None or not window_s:
        return None
    return round(delta / window_s, 2)


def routes(before: Samples | None, after: Samples, window_s: float | None) -> list[dict[str, Any]]:
    """Per `METHOD route`: requests and errors per second over the window, p50/p95 in ms, and the
    cumulative request count at the second reading (to compare with `/metrics` itself)."""
    totals: Counter[str] = Counter()
    for (sample, labels), value in after.items():
        if sample == HTTP_REQUESTS:
            label_map = dict(labels)
            totals[f"{label_map.get('method', '')} {label_map.get('route', '')}"] += int(value)
    if before is None:
        return [{"route": route, "requests_total": total} for route, total in sorted(totals.items())]
    by_status = counter_deltas(before, after, HTTP_REQUESTS, ("method", "route", "status"))
    buckets = histogram_deltas(before, after, HTTP_DURATION, ("method", "route"))
    rows = []
    for route, total in sorted(totals.items()):
        method, _, path = route.partition(" ")
        counts = {status: n for (m, r, status), n in by_status.items() if (m, r) == (method, path)}
        p50, p95 = _quantiles_ms(buckets.get((method, path)))
        requests = sum(counts.values())
        rows.append(
            {
                "route": route,
                "requests": int(round(requests)),
                "requests_total": total,
                "rps": _rate(requests, window_s),
                "p50_ms": p50,
                "p95_ms": p95,
                "errors_per_s": _rate(sum(n for s, n in counts.items() if s.startswith("5")), window_s),
                "client_errors_per_s": _rate(sum(n for s, n in counts.items() if s.startswith("4")), window_s),
            }
        )
    return rows


def sort_routes(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """Busiest first (`rps`), slowest first (`p95`), most failing first (`errors`), or by name."""
    if sort == "route":
        return sorted(rows, key=lambda row: row["route"])
    key = {"rps": "rps", "p95": "p95_ms", "errors": "errors_per_s"}[sort]
    return sorted(rows, key=lambda row: (-(row.get(key) or 0.0), row["route"]))


def events(before: Samples | None, after: Samples, window_s: float | None) -> dict[str, Any]:
    """Events per second by outcome, gRPC calls per second, and the ack wait p50/p95 of the window."""
    view: dict[str, Any] = {"events_total": int(scalar(after, EVENTS) or 0)}
    if before is None:
        return view
    outcomes = counter_deltas(before, after, EVENTS, ("outcome",))
    calls = counter_deltas(before, after, GRPC_REQUESTS, ("code",))
    ack_p50, ack_p95 = _quantiles_ms(histogram_deltas(before, after, ACK_WAIT, ()).get(()))
    _, grpc_p95 = _quantiles_ms(histogram_deltas(before, after, GRPC_DURATION, ()).get(()))
    refused = sum(n for (outcome,), n in outcomes.items() if outcome in ("rejected", "exhausted"))
    view.update(
        {
            "events_per_s": _rate(sum(outcomes.values()), window_s),
            "accepted_per_s": _rate(outcomes.get(("accepted",), 0.0), window_s),
            "duplicates_per_s": _rate(outcomes.get(("duplicate",), 0.0), window_s),
            "refused_per_s": _rate(refused, window_s),
            "grpc_calls_per_s": _rate(sum(calls.values()), window_s),
            "grpc_errors_per_s": _rate(sum(n for (code,), n in calls.items() if code != "OK"), window_s),
            "grpc_p95_ms": grpc_p95,
            "ack_p50_ms": ack_p50,
            "ack_p95_ms": ack_p95,
        }
    )
    return view


def buffer(
    before: Samples | None, after: Samples | None, body: dict[str, Any] | None, window_s: float | None
) -> dict[str, Any]:
    """`/admin/buffer` (entries against capacity, peak, oldest entry) with the flushes of the window
    from `/metrics` (flushes/s, flush ms p50/p95, deferred rows)."""
    view: dict[str, Any] = {}
    if body is not None:
        view.update(
            {
                "entries": body.get("entries"),
                "capacity": body.get("capacity"),
                "peak_entries": body.get("peak_entries"),
                "oldest_entry_age_ms": body.get("oldest_entry_age_ms"),
                "pending_waiters": body.get("pending_waiters"),
            }
        )
    if after is not None:
        view["deferred_total"] = int(scalar(after, FLUSH_DEFERRED) or 0)
        view["flush_failures_total"] = int(scalar(after, FLUSH_FAILURES) or 0)
    if before is not None and after is not None:
        flushes = histogram_deltas(before, after, FLUSH_DURATION, ()).get(()) or {}
        view["flush_ms_p50"], view["flush_ms_p95"] = _quantiles_ms(flushes)
        view["flushes_per_s"] = _rate(flushes.get(math.inf, 0.0), window_s)
        view["deferred_per_s"] = _rate(view["deferred_total"] - int(scalar(before, FLUSH_DEFERRED) or 0), window_s)
    return view


def pool(body: dict[str, Any] | None, postgres: dict[str, Any] | None) -> dict[str, Any]:
    """The service's PostgreSQL pool (`/admin/pool`) against the server's connection limit."""
    view: dict[str, Any] = {}
    if body is not None:
        db = body.get("db", {})
        view.update(
            {
                "in_use": db.get("in_use"),
                "size": db.get("size"),
                "max": db.get("max_size"),
                "waiting": db.get("waiting"),
                "peak_in_use": db.get("peak_in_use"),
                "acquire_wait_ms_p95": db.get("acquire_wait_ms_p95"),
                "acquire_timeouts": db.get("acquire_timeouts"),
            }
        )
    if postgres is not None:
        view.update(
            {
                "max_connections": postgres["max_connections"],
                "usable_connections": postgres["usable_connections"],
                "server_sessions": postgres["on_server"],
            }
        )
    return view


def cache(before: dict[str, Any] | None, after: dict[str, Any], window_s: float | None) -> dict[str, Any]:
    """Cache lookups per second and the hit ratio of the window (`/admin/cache` deltas), and since start."""
    hits, misses = after.get("hits", 0), after.get("misses", 0)
    view: dict[str, Any] = {
        "healthy": after.get("healthy"),
        "enabled": after.get("enabled"),
        "hit_ratio_total_pct": hit_pct(hits, misses, 1),
        "bypassed": after.get("bypassed"),
        "errors": after.get("errors"),
        "journal_pending": after.get("journal_pending"),
        "ops_per_s": None,
        "hit_ratio_pct": None,
    }
    if before is not None:
        delta_hits, delta_misses = hits - before.get("hits", 0), misses - before.get("misses", 0)
        view["ops_per_s"] = _rate(delta_hits + delta_misses, window_s)
        view["hit_ratio_pct"] = hit_pct(delta_hits, delta_misses, 1)
    return view


def postgres(body: dict[str, Any]) -> dict[str, Any]:
    """Sessions of the service's database by state and application, the longest running query, and
    each blocked session with what blocks it."""
    by_state: Counter[str] = Counter()
    by_application: Counter[str] = Counter()
    for group in body["groups"]:
        by_state[group["state"]] += group["connections"]
        by_application[group["application_name"] or "(unnamed)"] += group["connections"]
    longest = body["longest"]
    return {
        "in_database": body["in_database"],
        "on_server": body["on_server"],
        "max_connections": body["max_connections"],
        "by_state": dict(by_state.most_common()),
        "by_application": dict(by_application.most_common()),
        "longest": None
        if longest is None
        else {key: longest[key] for key in ("pid", "application_name", "state", "duration_ms", "query")},
        "blocking": [
            {
                "pid": blocked["pid"],
                "blocked_by": blocked["blocker_pids"],
                "lock_wait_ms": blocked["lock_wait_ms"],
                "lock_mode": blocked["lock_mode"],
                "relation": blocked["relation"],
                "query": blocked["query"],
                "blocker_queries": {
                    pid: (body["blockers"].get(pid) or {}).get("query") for pid in blocked["blocker_pids"]
                },
            }
            for blocked in body["blocked"]
        ],
    }


def redis(body: dict[str, Any]) -> dict[str, Any]:
    keys = ("used_memory_bytes", "maxmemory_bytes", "maxmemory_policy", "ops_per_sec", "connected_clients")
    view = {key: body.get(key) for key in keys}
    view["hit_ratio_pct"] = round(100 * body["hit_ratio"], 1) if body.get("hit_ratio") is not None else None
    view["evicted_keys"] = body.get("evicted_keys")
    return view


def _with_error(view: dict[str, Any] | None, reading: Reading, *sources: str) -> dict[str, Any]:
    errors = [reading.errors[source] for source in sources if source in reading.errors]
    return {**(view or {}), "error": "; ".join(dict.fromkeys(errors)) or None}


def build_view(previous: Reading | None, current: Reading, sort: str = "rps") -> dict[str, Any]:
    """The JSON-able view of `current`, with rates over the window since `previous` (None: the
    first reading, so no rates yet)."""
    window_s = round(current.at - previous.at, 3) if previous is not None else None
    before = previous.metrics if previous is not None else None
    after = current.metrics
    view: dict[str, Any] = {"window_s": window_s, "sort": sort}
    view["routes"] = sort_routes(routes(before, after, window_s), sort) if after is not None else []
    view["routes_error"] = current.errors.get("metrics")
    view["events"] = _with_error(events(before, after, window_s) if after is not None else None, current, "metrics")
    view["buffer"] = _with_error(buffer(before, after, current.buffer, window_s), current, "buffer", "metrics")
    view["pool"] = _with_error(pool(current.pool, current.postgres), current, "pool")
    cache_before = previous.cache if previous is not None else None
    view["cache"] = _with_error(
        cache(cache_before, current.cache, window_s) if current.cache is not None else None, current, "cache"
    )
    view["postgres"] = _with_error(
        postgres(current.postgres) if current.postgres is not None else None, current, "postgres"
    )
    view["redis"] = _with_error(redis(current.redis) if current.redis is not None else None, current, "redis")
    return view


class Peaks:
    """The highest values `top` has shown since it started or since `r` reset them."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def update(self, view: dict[str, Any]) -> dict[str, float]:
        now = {
            "rps": sum(row.get("rps") or 0.0 for row in view["routes"]),
            "events_per_s": view["events"].get("events_per_s") or 0.0,
            "pool_in_use": view["pool"].get("in_use") or 0,
            "pool_waiting": view["pool"].get("waiting") or 0,
            "buffer_entries": view["buffer"].get("entries") or 0,
        }
        for name in PEAK_FIELDS:
            self.values[name] = max(self.values.get(name, 0.0), now[name])
        return dict(self.values)

    def reset(self) -> None:
        self.values.clear()

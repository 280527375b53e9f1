"""The service's own view of a run, from two scrapes of its Prometheus `/metrics` (docs/http-api.md#admin-and-metrics): request
counts and latency histograms per route and per gRPC method over the window between the scrapes, with
`histogram_quantile`-style p95 estimates and the bucket each p95 falls in."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

HTTP_DURATION = "challenge_http_request_duration_seconds"
GRPC_DURATION = "challenge_grpc_request_duration_seconds"
HTTP_REQUESTS = "challenge_http_requests_total"
FLUSH_DURATION = "challenge_flush_duration_seconds"
QUERY_DURATION = "challenge_db_query_duration_seconds"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of an exposition text, keyed by (sample name, sorted labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def scalar(samples: Samples, name: str) -> float | None:
    """The value of an unlabelled sample (e.g. `process_cpu_seconds_total`), summed over label sets."""
    values = [value for (sample, _), value in samples.items() if sample == name]
    return sum(values) if values else None


def _buckets(samples: Samples, name: str, key_labels: tuple[str, ...]) -> dict[tuple[str, ...], dict[float, float]]:
    result: dict[tuple[str, ...], dict[float, float]] = defaultdict(dict)
    for (sample, labels), value in samples.items():
        if sample != f"{name}_bucket":
            continue
        label_map = dict(labels)
        key = tuple(label_map.get(k, "") for k in key_labels)
        result[key][float(label_map["le"])] = value
    return result


def quantile_bucket(buckets: dict[float, float], q: float) -> tuple[float, float, float]:
    """(lower bound, upper bound, linear estimate) in seconds of the q-quantile of cumulative buckets,
    as PromQL's histogram_quantile computes it."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return 0.0, 0.0, 0.0
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound, bound, previous_bound
            width = count - previous_count
            fraction = (rank - previous_count) / width if width > 0 else 1.0
            return previous_bound, bound, previous_bound + (bound - previous_bound) * fraction
        previous_bound, previous_count = bound, count
    return previous_bound, previous_bound, previous_bound


def histogram_deltas(
    before: Samples, after: Samples, name: str, key_labels: tuple[str, ...]
) -> dict[tuple[str, ...], dict[float, float]]:
    """The cumulative buckets of histogram `name` observed between two scrapes, per value of
    `key_labels` (a series absent before counts from zero)."""
    start, end = _buckets(before, name, key_labels), _buckets(after, name, key_labels)
    return {
        key: {bound: value - start.get(key, {}).get(bound, 0.0) for bound, value in end_buckets.items()}
        for key, end_buckets in sorted(end.items())
    }


def counter_deltas(
    before: Samples, after: Samples, name: str, key_labels: tuple[str, ...]
) -> dict[tuple[str, ...], float]:
    """How much counter `name` grew between two scrapes, summed per value of `key_labels`."""
    deltas: dict[tuple[str, ...], float] = defaultdict(float)
    for (sample, labels), value in after.items():
        if sample == name:
            label_map = dict(labels)
            deltas[tuple(label_map.get(k, "") for k in key_labels)] += value - before.get((sample, labels), 0.0)
    return dict(deltas)


def window_view(before: Samples, after: Samples) -> dict[str, Any]:
    """Per HTTP route+method and per gRPC method: requests, and p95 (estimate and bucket) in ms, over
    the window between two scrapes."""
    view: dict[str, Any] = {"http": {}, "grpc": {}}
    for kind, name, keys in (("http", HTTP_DURATION, ("method", "route")), ("grpc", GRPC_DURATION, ("method",))):
        for key, delta in histogram_deltas(before, after, name, keys).items():
            count = delta.get(math.inf, 0.0)
            if count <= 0:
                continue
            lower, upper, estimate = quantile_bucket(delta, 0.95)
            view[kind][" ".join(key)] = {
                "count": int(round(count)),
                "p95_ms": round(estimate * 1000, 3),
                "p95_bucket_ms": [round(lower * 1000, 3), None if math.isinf(upper) else round(upper * 1000, 3)],
            }
    return view


def named_query_timings(samples: Samples) -> list[dict[str, Any]]:
    """Per named query, from the service's own histogram since it started: calls, total, mean and p95 (ms)."""
    sums = {
        dict(labels).get("query", ""): value
        for (name, labels), value in samples.items()
        if name == f"{QUERY_DURATION}_sum"
    }
    timings = []
    for (query,), buckets in sorted(_buckets(samples, QUERY_DURATION, ("query",)).items()):
        calls = buckets.get(math.inf, 0.0)
        if calls <= 0:
            continue
        total_ms = sums.get(query, 0.0) * 1000
        timings.append(
            {
                "query_name": query,
                "calls": int(round(calls)),
                "total_ms": round(total_ms, 3),
                "mean_ms": round(total_ms / calls, 3),
                "p95_ms": round(quantile_bucket(buckets, 0.95)[2] * 1000, 3),
            }
        )
    return timings

"""`observe_many`: the same histogram as one `observe` per amount (service/telemetry/event_metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from service.telemetry.event_metrics import observe_many
from service.telemetry.metrics import LATENCY_BUCKETS


def samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    (metric,) = histogram.collect()
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_observe_many_equals_one_observe_per_amount() -> None:
    amounts = [0.0, 0.0004, 0.001, 0.0011, 0.25, 0.25, 3.0, 1e9, *LATENCY_BUCKETS]
    one_by_one = Histogram("one", "", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    at_once = Histogram("one", "", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for amount in amounts:
        one_by_one.observe(amount)

    observe_many(at_once, amounts)
    observe_many(at_once, [])

    assert samples(at_once) == samples(one_by_one)
    assert samples(at_once)[("one_count", "")] == len(amounts)

"""Latency recording (docs/loadtest.md#measurement-model): HDR histograms from 1 µs to 60 s with 3 significant digits, per
endpoint and phase, with ok/failure counts; their wire form (encoded histograms) for merging the
results of several generator processes; and the summary numbers the reports show."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
DROPPED = "dropped"
PERCENTILES = (50, 90, 95, 99)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    """Record a duration, clamped into the histogram's range (a 61 s timeout is recorded as 60 s)."""
    histogram.record_value(min(HIGHEST_US, max(LOWEST_US, int(seconds * 1_000_000))))


def encode(histogram: HdrHistogram) -> str:
    return histogram.encode().decode("ascii")


def decode(text: str) -> HdrHistogram:
    decoded = HdrHistogram.decode(text.encode("ascii"))
    # Decoding yields a histogram sized to the encoded range; re-adding into a full-range one keeps merges
    # of differently sized histograms safe.
    full = new_histogram()
    full.add(decoded)
    return full


def latency_summary_ms(histogram: HdrHistogram) -> dict[str, float]:
    """p50/p90/p95/p99/avg/min/max in ms (all 0 for an empty histogram)."""
    if histogram.get_total_count() == 0:
        return {"p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0, "avg": 0.0, "min": 0.0, "max": 0.0}
    values = histogram.get_percentile_to_value_dict(list(PERCENTILES))
    summary = {f"p{p}": round(values[p] / 1000, 3) for p in PERCENTILES}
    summary["avg"] = round(histogram.get_mean_value() / 1000, 3)
    summary["min"] = round(histogram.get_min_value() / 1000, 3)
    summary["max"] = round(histogram.get_max_value() / 1000, 3)
    return summary


@dataclass
class EndpointStats:
    """What one endpoint did in one phase. `latency` runs from the scheduled time to completion,
    `service` from the actual send to completion; dropped operations have neither."""

    latency: HdrHistogram = field(default_factory=new_histogram)
    service: HdrHistogram = field(default_factory=new_histogram)
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return self.ok + sum(self.failures.values())

    def record(self, latency_s: float, service_s: float, failure: str | None) -> None:
        record_seconds(self.latency, latency_s)
        record_seconds(self.service, service_s)
        if failure is None:
            self.ok += 1
        else:
            self.failures[failure] += 1

    def record_dropped(self) -> None:
        self.failures[DROPPED] += 1

    def merge(self, other: EndpointStats) -> None:
        self.latency.add(other.latency)
        self.service.add(other.service)
        self.ok += other.ok
        self.failures.update(other.failures)

    def to_wire(self) -> dict[str, Any]:
        return {
            "latency_hdr": encode(self.latency),
            "service_hdr": encode(self.service),
            "ok": self.ok,
            "failures": dict(self.failures),
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> EndpointStats:
        return cls(
            decode(wire["latency_hdr"]),
            decode(wire["service_hdr"]),
            int(wire["ok"]),
            Counter({k: int(v) for k, v in wire["failures"].items()}),
        )

    def summary(self) -> dict[str, Any]:
        """The report entry of docs/loadtest.md#json-report without the target (count, ok, success, failures, latencies)."""
        count = self.count
        return {
            "count": count,
            "ok": self.ok,
            "success_pct": round(100.0 * self.ok / count, 4) if count else 100.0,
            "failures": dict(sorted(self.failures.items(), key=lambda item: (-item[1], item[0]))),
            "latency_ms": latency_summary_ms(self.latency),
            "service_time_ms": latency_summary_ms(self.service),
            "latency_hdr": encode(self.latency),
        }

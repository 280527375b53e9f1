"""Prometheus metrics of the service (SPEC §5.6), prefix `challenge_`."""

from __future__ import annotations

from prometheus_client import Gauge

BUILD_INFO = Gauge(
    "challenge_build_info", "Build and catalog of this process (always 1)",
    ["version", "catalog_fingerprint", "ack_mode"],
)

# Histogram buckets of SPEC §5.6: 0.5 ms to 30 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

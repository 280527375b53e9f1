"""Prometheus metrics of the service (SPEC §5.6), prefix `challenge_`."""

from __future__ import annotations

from prometheus_client import Gauge

BUILD_INFO = Gauge(
    "challenge_build_info", "Build and catalog of this process (always 1)",
    ["version", "catalog_fingerprint", "ack_mode"],
)

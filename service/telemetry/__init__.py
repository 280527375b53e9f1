"""Telemetry: Prometheus metrics, pool statistics and logging setup shared by every layer."""

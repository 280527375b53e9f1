"""Checks before any load is sent (docs/loadtest.md#loadtest-run): readiness (REST `/readyz` and gRPC health), the catalog
fingerprint against the profile's, a probe request that checks authentication and whether the profile's
users already have rows, `POST /admin/reset-peaks`, and the service's settings from `/admin/config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from challengectl.errors import (
    EXIT_AUTH,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    HINT_START_SERVICE,
    CliError,
    error_from_http,
)

PROBE_CHALLENGE = "challenge-001"
PREFLIGHT_TIMEOUT_S = 10.0
SETTINGS_EXCERPT = (
    "workers",
    "db_pool_max",
    "db_pool_timeout_ms",
    "redis_pool_max",
    "ack_mode",
    "flush_interval_ms",
    "flush_workers",
    "flush_batch_max",
    "buffer_max_entries",
    "cache_ttl_s",
    "auth",
    "namespace",
)


@dataclass
class ServiceFacts:
    """What preflight learned about the target service."""

    catalog_fingerprint: str
    users_have_rows: bool
    admin_reachable: bool
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def setting(self, name: str, default: Any = None) -> Any:
        entry = self.config.get(name)
        return entry.get("value", default) if isinstance(entry, dict) else default

    def settings_excerpt(self) -> dict[str, Any]:
        return {name: self.setting(name) for name in SETTINGS_EXCERPT if name in self.config}


async def check_grpc_health(grpc_addr: str, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """gRPC health of service "" must be SERVING; otherwise exit 5."""
    async with grpc.aio.insecure_channel(grpc_addr) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            raise CliError(
                f"gRPC health check on {grpc_addr} failed: {error.code().name}",
                f"is the service running? start it with 'challengectl serve' or set --grpc-addr (now {grpc_addr})",
                EXIT_UNAVAILABLE,
            ) from None
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        raise CliError(f"gRPC health on {grpc_addr} reports {status}", "run 'challengectl doctor'", EXIT_UNAVAILABLE)


async def run_preflight(
    *,
    api_url: str,
    grpc_addr: str,
    admin_url: str,
    admin_token: str | None,
    expected_fingerprint: str,
    profile: str,
    probe_headers: dict[str, str],
    needs_grpc: bool,
) -> ServiceFacts:
    """Run the preflight checks in the documented order (docs/loadtest.md#loadtest-run); raise CliError with exit 5 (not ready / unreachable),
    2 (catalog mismatch) or 4 (authentication)."""
    api_url = api_url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=PREFLIGHT_TIMEOUT_S)
    admin_headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.get(f"{api_url}/readyz") as response:
                ready_status = response.status
                fingerprint = response.headers.get("X-Catalog-Fingerprint", "")
                ready_body = await response.json(content_type=None) if ready_status != 200 else {}
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            raise CliError(f"the service at {api_url} is unreachable", HINT_START_SERVICE, EXIT_UNAVAILABLE) from None
        if ready_status != 200:
            reason = ready_body.get("message") if isinstance(ready_body, dict) else None
            raise CliError(
                f"the service is not ready: {reason or f'HTTP {ready_status}'}",
                "run 'challengectl doctor'",
                EXIT_UNAVAILABLE,
            )
        if needs_grpc:
            await check_grpc_health(grpc_addr)
        if fingerprint != expected_fingerprint:
            raise CliError(
                f"the service's catalog (fingerprint {fingerprint or 'unknown'}) is not the {profile} catalog "
                f"({expected_fingerprint})",
                f"write it with 'challengectl loadtest run --profile {profile} --write-catalog {profile}.json' "
                f"and restart the service with CHALLENGE_CATALOG_PATH={profile}.json",
                EXIT_USAGE,
            )
        probe_url = f"{api_url}/v1/challenges/{PROBE_CHALLENGE}?active_only=true"
        try:
            async with session.get(probe_url, headers=probe_headers) as response:
                probe_status = response.status
                probe_body = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            raise CliError(f"the probe request to {api_url} failed", HINT_START_SERVICE, EXIT_UNAVAILABLE) from None
        if probe_status in (401, 403):
            error = error_from_http(probe_status, probe_body, "GET", probe_url)
            raise CliError(
                f"the probe request was refused: {error.message}",
                "pass --jwt-secret-file with the service's HS256 secret, or --auth none when the "
                "service runs with auth = none",
                EXIT_AUTH,
            )
        if probe_status != 200:
            raise error_from_http(probe_status, probe_body, "GET", probe_url)
        has_rows = bool(isinstance(probe_body, dict) and probe_body.get("goals"))
        facts = ServiceFacts(fingerprint, has_rows, admin_reachable=False)
        try:
            async with session.post(f"{admin_url.rstrip('/')}/admin/reset-peaks", headers=admin_headers) as response:
                if response.status in (200, 204):
                    facts.admin_reachable = True
                else:
                    facts.notes.append(f"POST /admin/reset-peaks answered HTTP {response.status}")
            async with session.get(f"{admin_url.rstrip('/')}/admin/config", headers=admin_headers) as response:
                if response.status == 200:
                    facts.config = await response.json()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            facts.notes.append(f"admin API at {admin_url} unreachable: no peaks reset, no resource snapshots")
    return facts

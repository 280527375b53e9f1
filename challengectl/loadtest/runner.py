"""One `loadtest run` from preflight to report: preflight, resource sampling, the generator with its live
progress, the service's own metrics for the same window, and the JSON report with thresholds and findings.
Ctrl-C stops the schedule; the partial run is still reported, with `interrupted: true`."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from challengectl.loadtest import findings
from challengectl.loadtest.generator import GeneratorConfig, GeneratorFailed, run_generator
from challengectl.loadtest.live import LiveProgress
from challengectl.loadtest.operations import GeneratorOptions
from challengectl.loadtest.preflight import run_preflight
from challengectl.loadtest.profiles import Profile, user_id_of
from challengectl.loadtest.report import build_report
from challengectl.loadtest.schedule import PhasePlan
from challengectl.loadtest.servicemetrics import window_view
from challengectl.loadtest.snapshots import ResourceSampler
from challengectl.loadtest.thresholds import Threshold
from challengectl.loadtest.timeseries import build_timeseries
from service import __version__
from service.transport.auth import mint_token


@dataclass(frozen=True, kw_only=True)
class RunRequest(GeneratorOptions):
    """Everything `loadtest run` decided from its options and settings."""

    profile: Profile
    plans: list[PhasePlan]
    thresholds: list[Threshold]
    admin_url: str
    admin_token: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    redis_mode: str = "auto"
    procs: int = 1
    sample_interval_s: float = 1.0
    label: str = ""
    notes: str = ""
    baseline: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False
    warn: Callable[[str], None] = print


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_sha() -> str | None:
    """The checkout's commit when the CLI runs from a git work tree, else None."""
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


def probe_headers(request: RunRequest) -> dict[str, str]:
    user = user_id_of(1)
    if request.auth == "none":
        return {"X-Mock-User-Id": user}
    assert request.jwt_key is not None
    return {"Authorization": f"Bearer {mint_token(request.jwt_key, user, 600)}"}


async def execute(request: RunRequest) -> dict[str, Any]:
    """Run the load test; return the report. Preflight failures raise CliError before any load."""
    needs_grpc = any(p.kind == "gameplay" and p.event_rate > 0 for p in request.plans)
    facts = await run_preflight(
        api_url=request.api_url,
        grpc_addr=request.grpc_addr,
        admin_url=request.admin_url,
        admin_token=request.admin_token,
        expected_fingerprint=request.profile.catalog().fingerprint,
        profile=request.profile.name,
        probe_headers=probe_headers(request),
        needs_grpc=needs_grpc,
    )
    if facts.users_have_rows and request.plans[0].kind == "init":
        request.warn(
            f"{user_id_of(1)} already has rows: the init phase will mostly measure returning players; "
            "add --reset --yes for a cold start"
        )
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    config = GeneratorConfig(
        **{**request.generator_options(), "namespace": facts.setting("namespace", request.namespace)},
        phases=tuple(request.plans),
        run_id=run_id,
    )
    progress = LiveProgress(request.profile.name, request.plans, quiet=request.quiet)
    sampler = ResourceSampler(
        request.admin_url,
        request.admin_token,
        request.database_url,
        request.redis_url,
        request.sample_interval_s,
        progress.take_sample,
        redis_mode=request.redis_mode,
    )
    await sampler.open()
    stop_sampling = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop_sampling))
    interrupted = _InterruptFlag(request.warn)
    started_at = _utc_now()
    try:
        with interrupted, progress:
            result = await run_generator(config, request.procs, interrupted.is_set, progress.update)
    except GeneratorFailed:
        stop_sampling.set()
        await asyncio.gather(sampling, return_exceptions=True)
        await sampler.close()
        raise
    finished_at = _utc_now()
    stop_sampling.set()
    # A target outage must never cost the report: sampling failures become notes.
    for failure in await asyncio.gather(sampling, return_exceptions=True):
        if isinstance(failure, Exception):
            sampler.notes.append(f"resource sampling stopped early: {type(failure).__name__}: {failure}")
    try:
        await sampler.close()
        database = await sampler.database_report()
    except Exception as error:  # noqa: BLE001 - whatever the end-of-run snapshot hit, the report is written
        sampler.notes.append(f"end-of-run snapshot failed: {type(error).__name__}: {error}")
        database = {"top_queries": [], "table_stats": {}, "note": "end-of-run snapshot failed"}
    service_view = (
        window_view(sampler.metrics_before, sampler.metrics_after)
        if sampler.metrics_before is not None and sampler.metrics_after is not None
        else None
    )
    report = build_report(
        tool={"name": "challengectl", "version": __version__, "git_sha": git_sha()},
        run={
            "id": run_id,
            "label": request.label or request.profile.name,
            "notes": request.notes,
            "profile": request.profile.name,
            "started_at": started_at,
            "finished_at": finished_at,
            "interrupted": interrupted.is_set() or result.interrupted,
            "options": {**request.options, "phases": [plan.as_option() for plan in request.plans]},
        },
        target={
            "api_url": request.api_url,
            "grpc_addr": request.grpc_addr,
            "service_version": facts.config.get("service_version"),
            "catalog_fingerprint": facts.catalog_fingerprint,
            "ack_mode": facts.setting("ack_mode"),
            "settings": facts.settings_excerpt(),
            "cache_enabled": not _cache_disabled(facts.setting("redis_url")),
        },
        environment={
            "hostname": socket.gethostname(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "generator_procs": request.procs,
        },
        plans=request.plans,
        result=result,
        thresholds=request.thresholds,
        resources={
            "interval_s": request.sample_interval_s,
            "series": sampler.series,
            "summary": sampler.summary(),
            "capacity": sampler.capacity,
            "notes": sampler.notes,
        },
        database=database,
        service_view=service_view,
        timeseries=build_timeseries(result, request.plans, sampler.started_unix),
        baseline=request.baseline,
        notes=facts.notes,
    )
    report["findings"] = findings.generate(report)
    return report


def _cache_disabled(redis_url: Any) -> bool:
    return isinstance(redis_url, str) and redis_url.strip().lower() == "disabled"


class _InterruptFlag:
    """First Ctrl-C: stop the schedule and still write the report. Second: the default behaviour."""

    def __init__(self, warn: Callable[[str], None]) -> None:
        self._set = False
        self._warn = warn
        self._loop: asyncio.AbstractEventLoop | None = None

    def is_set(self) -> bool:
        return self._set

    def __enter__(self) -> _InterruptFlag:
        self._loop = asyncio.get_running_loop()
        try:
            self._loop.add_signal_handler(signal.SIGINT, self._on_signal)
        except (NotImplementedError, RuntimeError):  # not the main thread: Ctrl-C keeps its default
            self._loop = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGINT)

    def _on_signal(self) -> None:
        if self._set:
            return
        self._set = True
        self._warn("interrupted: stopping the schedule and writing the report (Ctrl-C again to abort)")
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGINT)
            self._loop = None

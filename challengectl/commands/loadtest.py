"""`challengectl loadtest run|compare|report` (docs/loadtest.md): drive a running service with an open-model load,
write the versioned JSON report and the Markdown analysis, compare two runs, re-render a report."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from challengectl.connections import database_target
from challengectl.context import command_group, examples, get_cli
from challengectl.errors import (
    EXIT_AUTH,
    EXIT_GATE,
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)
from challengectl.loadtest import compare as compare_module
from challengectl.loadtest.htmlreport import render_compare_html, render_html, write_chart_files
from challengectl.loadtest.markdown import fmt_ms, render_markdown
from challengectl.loadtest.profiles import (
    DEFAULT_SUCCESS_MIN_PCT,
    DEFAULT_USERS,
    PROFILES,
    get_profile,
    write_catalog,
)
from challengectl.loadtest.report import (
    ReportError,
    baseline_reference,
    load_report,
    write_report,
)
from challengectl.loadtest.schedule import (
    ScheduleError,
    build_phases,
    parse_duration,
    parse_phase_override,
    planned_operations,
)
from challengectl.loadtest.thresholds import (
    ThresholdError,
    effective_thresholds,
    parse_threshold,
)
from challengectl.output import confirm, to_json
from service.config.settings import SettingsError

app = command_group("Load-test a running service and analyse the results (docs/loadtest.md).")

DEFAULT_REQUEST_TIMEOUT_S = 30.0

RUN_EXAMPLES = examples(
    "challengectl loadtest run --profile seed-m3 --write-catalog seed-m3.json",
    "challengectl loadtest run --profile seed-m3 --reset --yes --phase init=20s@150 --duration 40s --scale 0.25 --out run.json",
    "challengectl loadtest run --profile seed-m3 --threshold 'initialize_new:p95<50ms' --threshold '*:success>99.9%' --baseline base.json",
)
COMPARE_EXAMPLES = examples(
    "challengectl loadtest compare cache-off.json cache-on.json",
    "challengectl loadtest compare base.json cand.json --metric p95,p99 --tolerance 5% -o json | jq .regressions",
    "challengectl loadtest compare cache-off.json cache-on.json --html cache-on-vs-off.html",
)
REPORT_EXAMPLES = examples(
    "challengectl loadtest report run.json > run.md",
    "challengectl loadtest report cache-on.json --baseline cache-off.json --out cache-on-vs-off.md",
    "challengectl loadtest report run.json --out run.md --html run.html",
)


def _usage(message: str, hint: str) -> CliError:
    return CliError(message, hint, EXIT_USAGE)


def _default_out(profile: str) -> Path:
    return Path(f"loadtest-{profile}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json")


@app.command("run", epilog=RUN_EXAMPLES)
def run(
    ctx: typer.Context,
    profile: str = typer.Option(..., "--profile", help=f"load profile: {'|'.join(PROFILES)}"),
    duration: str | None = typer.Option(None, "--duration", help="length of the gameplay phase, e.g. 30m"),
    phase: list[str] = typer.Option(
        [], "--phase", help="override a phase NAME=DURATION[@RATE[/EVENT_RATE]], e.g. init=20s@200 (repeatable)"
    ),
    scale: float = typer.Option(1.0, "--scale", help="multiply every rate by K"),
    users: int = typer.Option(DEFAULT_USERS, "--users", min=1, help="number of users user-000001 …"),
    jwt_secret_file: str | None = typer.Option(
        None,
        "--jwt-secret-file",
        help="HS256 secret to sign each user's token; default jwt_secret, jwt_secret_file or <data_dir>/jwt.secret",
    ),
    auth: str = typer.Option("jwt", "--auth", help="jwt: a token per user; none: X-Mock-User-Id"),
    warmup: str | None = typer.Option(
        None,
        "--warmup",
        help="ramp 10 % → 100 % of the first phase's rate over D (reported as phase warmup, not gated)",
    ),
    event_rpc: str = typer.Option(
        "ags", "--event-rpc", help="ags: one OnMessage call per event; publish: EventIngest.Publish batches"
    ),
    event_batch: int = typer.Option(50, "--event-batch", min=1, help="events per Publish batch"),
    max_inflight: int = typer.Option(
        4000, "--max-inflight", min=1, help="operations outstanding at most; beyond it they are dropped and counted"
    ),
    procs: int | None = typer.Option(None, "--procs", min=1, help="generator processes (default min(CPUs, 4))"),
    seed: int = typer.Option(7, "--seed", help="RNG seed for a reproducible mix"),
    threshold: list[str] = typer.Option(
        [], "--threshold", help="gate [PHASE/]LABEL:STAT OP VALUE[UNIT], e.g. initialize_new:p95<50ms (repeatable)"
    ),
    no_default_thresholds: bool = typer.Option(False, "--no-default-thresholds", help="drop the profile's targets"),
    success_min: float = typer.Option(DEFAULT_SUCCESS_MIN_PCT, "--success-min", help="overall success % gate"),
    sample_interval: str = typer.Option("1s", "--sample-interval", help="resource sampling period"),
    baseline: str | None = typer.Option(
        None, "--baseline", help="a previous run's JSON, compared in the Markdown report"
    ),
    out: str | None = typer.Option(None, "--out", help="JSON report path (default loadtest-<profile>-<UTC>.json)"),
    report: str | None = typer.Option(None, "--report", help="Markdown report path (default next to --out, .md)"),
    html: str | None = typer.Option(None, "--html", help="HTML report path (default next to --out, .html)"),
    label: str = typer.Option("", "--label", help="run name in the report"),
    notes: str = typer.Option("", "--notes", help="the change under test, for the report"),
    reset: bool = typer.Option(
        False, "--reset", help="truncate progress and grants and clear the cache first (needs --yes off a TTY)"
    ),
    yes: bool = typer.Option(False, "--yes", help="confirm --reset"),
    write_catalog_path: str | None = typer.Option(
        None, "--write-catalog", help="write the profile's catalog to FILE and exit"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the schedule and exit"),
) -> None:
    """Run a load profile against the service. Latency counts from each operation's scheduled time
    (open model); the per-request timeout is the global --timeout, default 30 s here. Exit 99 when a
    threshold fails or the generator fell behind, 130 when interrupted (the reports are still written)."""
    from challengectl.loadtest.generator import GeneratorFailed
    from challengectl.loadtest.runner import RunRequest, execute

    cli = get_cli(ctx)
    try:
        chosen = get_profile(profile)
    except KeyError as error:
        raise _usage(str(error.args[0]), f"use --profile {'|'.join(PROFILES)}") from None
    if write_catalog_path:
        fingerprint = write_catalog(chosen, Path(write_catalog_path))
        cli.output.emit_object(
            {
                "profile": chosen.name,
                "path": str(Path(write_catalog_path).resolve()),
                "catalog_fingerprint": fingerprint,
            }
        )
        cli.output.hint(f"start the service with CHALLENGE_CATALOG_PATH={write_catalog_path}")
        return
    if auth not in ("jwt", "none"):
        raise _usage(f"invalid --auth '{auth}'", "use --auth jwt or --auth none")
    if event_rpc not in ("ags", "publish"):
        raise _usage(f"invalid --event-rpc '{event_rpc}'", "use --event-rpc ags or --event-rpc publish")
    try:
        plans = build_phases(
            chosen,
            duration_s=parse_duration(duration) if duration else None,
            overrides=[parse_phase_override(text) for text in phase],
            scale=scale,
            warmup_s=parse_duration(warmup) if warmup else 0.0,
        )
        interval_s = parse_duration(sample_interval)
        thresholds = effective_thresholds(
            [parse_threshold(text) for text in threshold],
            use_defaults=not no_default_thresholds,
            success_min=success_min,
        )
    except (ScheduleError, ThresholdError) as error:
        raise _usage(str(error), "see 'challengectl loadtest run --help'") from None
    if dry_run and not reset:
        _print_schedule(cli, chosen.name, plans, event_batch if event_rpc == "publish" else 1)
        return
    settings = cli.settings()
    if reset:
        _reset(cli, settings, yes, dry_run)
        if dry_run:
            _print_schedule(cli, chosen.name, plans, event_batch if event_rpc == "publish" else 1)
            return
    jwt_key = None
    if auth == "jwt":
        jwt_key = _jwt_key(jwt_secret_file, settings)
    baseline_doc = _load(baseline) if baseline else None
    out_path = Path(out) if out else _default_out(chosen.name)
    report_path = Path(report) if report else out_path.with_suffix(".md")
    html_path = Path(html) if html else out_path.with_suffix(".html")
    generator_procs = procs or min(os.cpu_count() or 1, 4)
    request = RunRequest(
        profile=chosen,
        plans=plans,
        thresholds=thresholds,
        api_url=settings.resolved_api_url(),
        grpc_addr=settings.grpc_addr,
        admin_url=settings.admin_url,
        admin_token=settings.admin_token,
        grpc_token=settings.grpc_token,
        database_url=_database_url(settings),
        redis_url=_redis_url(settings),
        redis_mode=settings.redis_mode,
        namespace=settings.namespace,
        users=users,
        auth=auth,
        jwt_key=jwt_key,
        event_rpc=event_rpc,
        event_batch=event_batch,
        max_inflight=max_inflight,
        procs=generator_procs,
        seed=seed,
        timeout_s=cli.timeout_override_s or DEFAULT_REQUEST_TIMEOUT_S,
        sample_interval_s=interval_s,
        label=label,
        notes=notes,
        baseline=baseline_reference(baseline, baseline_doc) if baseline and baseline_doc else None,
        options={
            "scale": scale,
            "users": users,
            "auth": auth,
            "event_rpc": event_rpc,
            "event_batch": event_batch,
            "max_inflight": max_inflight,
            "procs": generator_procs,
            "seed": seed,
            "timeout_s": cli.timeout_override_s or DEFAULT_REQUEST_TIMEOUT_S,
            "warmup_s": plans[0].duration_s if plans[0].is_warmup else 0,
            "reset": reset,
            "thresholds": [t.expr for t in thresholds],
        },
        quiet=cli.quiet,
        warn=cli.output.warn,
    )
    try:
        result = asyncio.run(execute(request))
    except GeneratorFailed as error:
        raise CliError(
            str(error), "rerun with --procs 1 to run the generator in this process", EXIT_UNAVAILABLE
        ) from None
    write_report(result, out_path)
    _write_markdown(result, baseline_doc, report_path)
    html_path.write_text(render_html(result), encoding="utf-8")
    _print_summary(cli, result, out_path, report_path, html_path)
    if result["run"]["interrupted"]:
        raise typer.Exit(EXIT_INTERRUPTED)
    if result["verdict"] != "pass":
        raise typer.Exit(EXIT_GATE)


def _jwt_key(jwt_secret_file: str | None, settings: Any) -> bytes:
    from challengectl.client import local_jwt_secret
    from service.transport.auth import read_secret_file

    if jwt_secret_file:
        try:
            return read_secret_file(Path(jwt_secret_file).expanduser())
        except SettingsError as error:
            raise _usage(str(error), "check --jwt-secret-file") from None
    key = local_jwt_secret(settings)
    if key is None:
        raise CliError(
            "no HS256 secret to mint the users' tokens",
            "pass --jwt-secret-file (the service's jwt_secret_file), or --auth none when the service "
            "runs with auth = none",
            EXIT_AUTH,
        )
    return key


def _running_embedded(settings: Any) -> dict[str, Any]:
    from service.runtime.embedded import discover

    return discover(settings.resolved_data_dir()) or {}


def _database_url(settings: Any) -> str | None:
    return settings.database_url or _running_embedded(settings).get("database_url")


def _redis_url(settings: Any) -> str | None:
    if settings.cache_disabled():
        return None
    return settings.redis_url or _running_embedded(settings).get("redis_url")


def _reset(cli: Any, settings: Any, yes: bool, dry_run: bool) -> None:
    """`--reset`: confirmation, then TRUNCATE and cache clear (docs/cli.md#destructive-actions, docs/loadtest.md#loadtest-run)."""
    from challengectl.loadtest.reset import clear_cache, truncate_tables

    prefix = settings.redis_key_prefix
    redis_url = _redis_url(settings)
    action = "truncate user_goal_progress, user_initializations and reward_grants" + (
        f" and remove every '{prefix}:*' Redis key (token keys are rotated)" if redis_url else ""
    )
    if not confirm(action, yes, dry_run):
        return
    with database_target(settings) as target:
        try:
            truncate_tables(target.url)
        except Exception as error:  # psycopg raises many types for an unreachable or unmigrated database
            raise CliError(
                f"cannot reset the database: {str(error).strip().splitlines()[0]}",
                "check --database-url / DATABASE_URL and run 'challengectl db migrate'",
                EXIT_UNAVAILABLE,
            ) from None
    if redis_url:
        try:
            cleared = asyncio.run(clear_cache(redis_url, settings.redis_mode, prefix))
        except Exception as error:  # redis-py raises many types for an unreachable server
            raise CliError(
                f"cannot clear the cache: {str(error).strip().splitlines()[0] or type(error).__name__}",
                "check --redis-url / REDIS_URL",
                EXIT_UNAVAILABLE,
            ) from None
        cli.output.info(
            f"reset: tables truncated, {cleared.keys_removed} keys removed, {cleared.tokens_rotated} token keys rotated"
        )
    else:
        cli.output.info("reset: tables truncated (cache disabled or no Redis URL: nothing to clear)")


def _print_schedule(cli: Any, profile: str, plans: list[Any], event_batch: int) -> None:
    rows = planned_operations(plans, event_batch)
    cli.output.emit_list(
        rows,
        [
            "phase",
            "kind",
            "start_s",
            "duration_s",
            "rate",
            "event_rate",
            "ramp_from",
            "api_operations",
            "events",
            "event_calls",
        ],
        title=f"{profile} schedule",
    )


def _write_markdown(report: dict[str, Any], baseline: dict[str, Any] | None, path: Path) -> None:
    """The Markdown report at `path`, its charts as SVG files in `<stem>-charts/` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(report, baseline, write_chart_files(report, path)), encoding="utf-8")


def _print_summary(cli: Any, report: dict[str, Any], out_path: Path, report_path: Path, html_path: Path) -> None:
    """Thresholds first (✓/✗ with the observed value), then the per-endpoint table (docs/loadtest.md#loadtest-run)."""
    endpoints = {
        label: {k: v for k, v in entry.items() if k != "latency_hdr"}
        for label, entry in report["overall"]["endpoints"].items()
    }
    summary = {
        "verdict": report["verdict"],
        "interrupted": report["run"]["interrupted"],
        "thresholds": report["thresholds"],
        "endpoints": endpoints,
        "generator": report["generator"],
        "json_report": str(out_path),
        "markdown_report": str(report_path),
        "html_report": str(html_path),
    }

    def table() -> Any:
        gates = Table(title="thresholds", box=None, pad_edge=False, header_style="bold")
        for column in ("", "threshold", "observed"):
            gates.add_column(column)
        for result in report["thresholds"]:
            mark = "!" if result["pass"] is None else ("✓" if result["pass"] else "✗")
            style = "yellow" if result["pass"] is None else ("green" if result["pass"] else "bold red")
            observed = (
                "no data"
                if result["observed"] is None
                else (f"{result['observed']:.3f} %" if result["unit"] == "%" else fmt_ms(result["observed"]))
            )
            gates.add_row(Text(mark, style=style), result["expr"], observed)
        # The terminal gets the headline columns; the JSON and Markdown reports carry every statistic.
        per_endpoint = Table(title="endpoints (non-warm-up phases)", box=None, pad_edge=False, header_style="bold")
        any_failures = any(entry["failures"] for entry in endpoints.values())
        columns = ["endpoint", "count", "success", "p50", "p95", "p99", "max", "target"]
        for column in columns + (["failures"] if any_failures else []):
            per_endpoint.add_column(
                column, justify="left" if column in ("endpoint", "failures") else "right", no_wrap=column != "failures"
            )
        for label, entry in endpoints.items():
            latency = entry["latency_ms"]
            cells = [
                label,
                f"{entry['count']:,}",
                f"{entry['success_pct']:.2f}%",
                *(fmt_ms(latency[k]) for k in ("p50", "p95", "p99", "max")),
                fmt_ms(entry.get("target_p95_ms")),
            ]
            if any_failures:
                cells.append(", ".join(f"{name}×{count}" for name, count in list(entry["failures"].items())[:2]))
            per_endpoint.add_row(*cells)
        generator = report["generator"]
        verdict = {"pass": "✓ PASS", "fail": "✗ FAIL", "invalid": "! INVALID (generator-limited)"}[report["verdict"]]
        footer = Text(
            f"verdict {verdict} · send lag p99 {fmt_ms(generator['lag_ms']['p99'])} · dropped "
            f"{generator['dropped']} · reports {out_path} {report_path}"
        )
        return Group(gates, Text(""), per_endpoint, Text(""), footer)

    cli.output.emit_object(summary, table=table)


def _load(path: str) -> dict[str, Any]:
    try:
        return load_report(path)
    except ReportError as error:
        raise _usage(str(error), "pass a JSON report written by 'challengectl loadtest run'") from None


@app.command("compare", epilog=COMPARE_EXAMPLES)
def compare(
    ctx: typer.Context,
    base: str = typer.Argument(..., help="baseline report (JSON)"),
    candidate: str = typer.Argument(..., help="candidate report (JSON)"),
    metric: str = typer.Option(
        ",".join(compare_module.DEFAULT_METRICS), "--metric", help="metrics to compare, comma-separated"
    ),
    tolerance: str = typer.Option("10%", "--tolerance", help="latency regression tolerance"),
    success_tolerance: float = typer.Option(
        0.05, "--success-tolerance", help="success regression tolerance in percentage points"
    ),
    html: str | None = typer.Option(None, "--html", help="also write an HTML page with both runs' charts overlaid"),
) -> None:
    """Compare two runs per endpoint and metric; exit 99 when the candidate regressed beyond tolerance."""
    cli = get_cli(ctx)
    try:
        metrics = compare_module.parse_metrics(metric)
        tolerance_pct = compare_module.parse_tolerance(tolerance)
    except compare_module.CompareError as error:
        raise _usage(str(error), "see 'challengectl loadtest compare --help'") from None
    base_doc, candidate_doc = _load(base), _load(candidate)
    comparison = compare_module.compare_reports(base_doc, candidate_doc, metrics, tolerance_pct, success_tolerance)
    comparison["base"]["path"], comparison["candidate"]["path"] = base, candidate
    if html:
        Path(html).write_text(render_compare_html(base_doc, candidate_doc, comparison), encoding="utf-8")
        cli.output.info(f"wrote {html}")

    def table() -> Table:
        grid = Table(
            box=None,
            pad_edge=False,
            header_style="bold",
            title=f"{comparison['base']['label']} → {comparison['candidate']['label']} "
            f"(tolerance {tolerance_pct:g} %, success {success_tolerance:g} pp)",
        )
        for column in ("endpoint", "metric", "base", "candidate", "change", "status", "target"):
            grid.add_column(column, justify="right" if column in ("base", "candidate", "change") else "left")
        for row in comparison["rows"]:
            grid.add_row(
                row["endpoint"],
                row["metric"],
                _value_text(row, "base"),
                _value_text(row, "candidate"),
                _change_text(row),
                _status_text(row["status"]),
                _target_text(row),
            )
        return grid

    cli.output.emit_object(comparison, table=table)
    if comparison["regressions"]:
        raise typer.Exit(EXIT_GATE)


def _value_text(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if value is None:
        return "—"
    return f"{value:.3f} %" if row["unit"] == "%" else fmt_ms(value)


def _change_text(row: dict[str, Any]) -> str:
    if row["change"] is None:
        return "—"
    return f"{row['change']:+.2f} {row['change_unit']}"


def _status_text(status: str) -> Text:
    marks = {
        "improved": ("✓ improved", "green"),
        "unchanged": ("= unchanged", ""),
        "regressed": ("✗ regressed", "bold red"),
        "missing": ("! missing", "yellow"),
    }
    text, style = marks[status]
    return Text(text, style=style)


def _target_text(row: dict[str, Any]) -> str:
    base, candidate = row["base_target_pass"], row["candidate_target_pass"]
    if base is None and candidate is None:
        return ""
    word = {True: "PASS", False: "FAIL", None: "—"}
    return f"{word[base]} → {word[candidate]}"


@app.command("report", epilog=REPORT_EXAMPLES)
def report_command(
    ctx: typer.Context,
    run_file: str = typer.Argument(..., metavar="RUN.json", help="a report written by 'loadtest run'"),
    baseline: str | None = typer.Option(None, "--baseline", help="a previous run's JSON to compare against"),
    fmt: str = typer.Option("md", "--format", help="md or json"),
    out: str | None = typer.Option(None, "--out", help="write to FILE instead of stdout (md: charts in FILE-charts/)"),
    html: str | None = typer.Option(None, "--html", help="also write the self-contained HTML report to FILE"),
) -> None:
    """Render a report again from its JSON file (no network access)."""
    if fmt not in ("md", "json"):
        raise _usage(f"invalid --format '{fmt}'", "use --format md or --format json")
    document = _load(run_file)
    baseline_doc = None
    if baseline:
        baseline_doc = _load(baseline)
        document["baseline"] = baseline_reference(baseline, baseline_doc)
    if html:
        Path(html).write_text(render_html(document), encoding="utf-8")
        get_cli(ctx).output.info(f"wrote {html}")
    if out and fmt == "md":
        _write_markdown(document, baseline_doc, Path(out))
        get_cli(ctx).output.info(f"wrote {out}")
        return
    text = render_markdown(document, baseline_doc) if fmt == "md" else to_json(document)
    if out:
        Path(out).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        get_cli(ctx).output.info(f"wrote {out}")
    else:
        typer.echo(text.rstrip("\n"))


def register(root: typer.Typer) -> None:
    """Add the `loadtest` group to the root app."""
    root.add_typer(app, name="loadtest")

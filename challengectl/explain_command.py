"""The `explain NAME` command, registered both at the top level (commands/explain.py) and as `db explain
NAME` (commands/db.py): the plan of a named query, or of one ad-hoc SELECT, with parameters taken from a real user, the indexes used and the findings (docs/cli.md#explain).

The statement comes from the registry through the service's own loader; `explain_runner` samples the
user and runs the EXPLAIN in a rolled-back transaction; `plans` reads the plan. This module wires them
and renders the result: a tree on a TTY, the raw plan plus the analysis with `-o json`.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from challengectl.connections import database_target
from challengectl.context import examples, get_cli, parse_duration
from challengectl.errors import EXIT_GATE, EXIT_NOT_FOUND, EXIT_USAGE, CliError
from challengectl.output import PIPED_WIDTH, Output, confirm, format_cell, listing
from challengectl.plans import (
    ESTIMATE_ERROR_FACTOR,
    SEVERITIES,
    PlanAnalysis,
    PlanContext,
    PlanNode,
    analyze_plan,
    node_conditions,
    timeout_analysis,
)
from service.config.settings import Settings, mask_url_password
from service.domain.catalog import Catalog

if TYPE_CHECKING:
    from challengectl.explain_runner import ExplainOptions, ExplainRun, ExplainSession, SampleUser, Statement
    from service.storage.registry import Registry

EXPLAIN_EXAMPLES = examples(
    "challengectl explain active-goals",
    "challengectl explain apply_event_updates --sample heavy --yes -o json | jq '.analysis.findings'",
    'challengectl explain --sql "SELECT count(*) FROM user_goal_progress WHERE is_active" --fail-on crit',
)

SEVERITY_STYLES = {"info": "cyan", "warn": "yellow", "crit": "bold red"}
SEVERITY_MARKERS = {"info": "i", "warn": "!", "crit": "✗"}
PLAN_FORMATS = ("tree", "text")


def explain_command(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="named query; '-' and '_' are alike (active-goals = active_goals)"),
    list_queries: bool = typer.Option(False, "--list", help="list every named query with its kind, parameters and doc"),
    sql: str | None = typer.Option(None, "--sql", help="explain one ad-hoc SELECT instead of a named query"),
    user: str | None = typer.Option(
        None, "--user", help="take the parameters from this user's rows (default: a sampled user)"
    ),
    sample: str = typer.Option(
        "typical",
        "--sample",
        help="how to pick the user without --user: typical (TABLESAMPLE SYSTEM) or heavy (most rows among a sample)",
    ),
    param: list[str] | None = typer.Option(
        None, "--param", help="override a parameter: name=value (repeatable; arrays as a,b or a JSON array; null; now)"
    ),
    analyze: bool | None = typer.Option(
        None,
        "--analyze/--no-analyze",
        help="run the statement (inside a rolled-back transaction); default on for named queries, off for --sql",
        show_default=False,
    ),
    buffers: bool = typer.Option(
        True, "--buffers/--no-buffers", help="report shared buffer hits, reads, dirtied and written blocks"
    ),
    statement_timeout: str = typer.Option(
        "10s", "--statement-timeout", help="statement_timeout of the EXPLAIN, <n>[ms|s|m]"
    ),
    large_table_rows: int = typer.Option(
        10_000, "--large-table-rows", min=0, help="a Seq Scan on a table estimated above this many rows is critical"
    ),
    slow_ms: float | None = typer.Option(
        None, "--slow-ms", min=0, help="execution time that is slow; default 10 for reads, 50 for writes and locks"
    ),
    fail_on: str | None = typer.Option(
        None, "--fail-on", help="exit 99 when a finding of this severity or higher is present: warn or crit"
    ),
    plan_format: str = typer.Option(
        "tree", "--format", help="tree (the analysed plan) or text (PostgreSQL's own text plan)"
    ),
    catalog: str | None = typer.Option(
        None, "--catalog", help="challenges.json for catalog-derived parameters [env: CHALLENGE_CATALOG_PATH]"
    ),
    yes: bool = typer.Option(
        False, "--yes", help="run lock and write queries against a non-embedded database without asking"
    ),
) -> None:
    """Explain a named query (or one ad-hoc SELECT) with parameters from a real user: plan, indexes, findings."""
    from challengectl.explain_runner import (
        SAMPLE_MODES,
        ExplainOptions,
        ExplainSession,
        parse_param_overrides,
        relations_in_plan,
    )

    cli = get_cli(ctx)
    out: Output = cli.output
    registry = _load_registry()
    if list_queries:
        _emit_query_list(out, registry)
        return
    sample = _choice(sample, SAMPLE_MODES, "--sample")
    plan_format = _choice(plan_format, PLAN_FORMATS, "--format")
    if fail_on is not None:
        fail_on = _choice(fail_on, ("warn", "crit"), "--fail-on")
    statement = _statement(registry, name, sql)
    timeout_ms = int(parse_duration(statement_timeout, "--statement-timeout") * 1000)
    if timeout_ms < 1:
        raise CliError(
            f"invalid --statement-timeout '{statement_timeout}': must be above zero",
            "e.g. --statement-timeout 10s",
            EXIT_USAGE,
        )
    options = ExplainOptions(
        analyze=analyze if analyze is not None else statement.name is not None,
        buffers=buffers,
        statement_timeout_ms=timeout_ms,
    )
    now = datetime.now(UTC)
    overrides = parse_param_overrides(param or [], statement, now)
    settings = cli.settings(catalog_path=catalog)
    sample_user = user or cli.flags.get("user")

    with database_target(settings) as target:
        if options.analyze and statement.kind != "read" and not target.embedded:
            confirm(
                f"execute {statement.name} ({statement.kind} query) inside a rolled-back transaction on "
                f"{mask_url_password(target.url)} (it may briefly hold row locks)",
                yes,
            )
        with ExplainSession(target.url, statement_timeout_ms=timeout_ms, connect_timeout_s=cli.timeout_s) as session:
            chosen, params = _parameters(
                session, registry, statement, settings, out, sample_user, sample, overrides, now
            )
            run = session.explain(statement, params, options)
            if run.plan is not None:
                run.tables = session.table_info(relations_in_plan(run.plan))
            text_plan = None
            if plan_format == "text" and run.timeout is None:
                text_run = session.explain(
                    statement,
                    params,
                    ExplainOptions(
                        analyze=options.analyze,
                        buffers=options.buffers,
                        statement_timeout_ms=timeout_ms,
                        text_format=True,
                    ),
                )
                text_plan = text_run.text_plan
            role = session.role

    context = PlanContext(
        kind=statement.kind,
        expect_index=statement.expect_index,
        large_table_rows=large_table_rows,
        slow_ms=slow_ms,
        tables=run.tables,
        role=role,
    )
    limit = f"{timeout_ms} ms" if run.timeout == "statement_timeout" else "1s"
    analysis = (
        analyze_plan(run.plan, context) if run.plan is not None else timeout_analysis(run.timeout or "", limit, context)
    )
    report = ExplainReport(statement, chosen, params, options, run, text_plan, analysis, context, plan_format)
    out.emit_object(
        report.as_json(),
        table=lambda: report.renderable(out.no_headers),
        text=lambda: _plain(report.renderable(out.no_headers)),
    )
    if fail_on is not None and analysis.has_severity(fail_on):
        gated = [
            finding for finding in analysis.findings if SEVERITIES.index(finding.severity) >= SEVERITIES.index(fail_on)
        ]
        out.err.print(
            f"explain: {len(gated)} finding(s) at or above {fail_on} (--fail-on {fail_on})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_GATE)


def add_explain_command(group: typer.Typer) -> None:
    """Add `explain` to `group` (the root app, or the `db` group)."""
    group.command("explain", epilog=EXPLAIN_EXAMPLES)(explain_command)


# --- inputs ---------------------------------------------------------------------------------------


def _load_registry() -> Registry:
    from service.storage.registry import RegistryError, load_registry

    try:
        return load_registry()
    except RegistryError as exc:
        raise CliError(f"the query registry is invalid: {exc}", "fix sql/queries.sql", EXIT_USAGE) from None


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    lowered = value.strip().lower()
    if lowered not in choices:
        raise CliError(
            f"invalid {option} '{value}': expected {' or '.join(choices)}", f"e.g. {option} {choices[0]}", EXIT_USAGE
        )
    return lowered


def _statement(registry: Registry, name: str | None, sql: str | None) -> Statement:
    from challengectl.explain_runner import Statement, ad_hoc_statement
    from service.storage.registry import UnknownQueryError

    if name and sql is not None:
        raise CliError("give a query NAME or --sql, not both", "e.g. challengectl explain active-goals", EXIT_USAGE)
    if sql is not None:
        return ad_hoc_statement(sql, registry)
    if not name:
        raise CliError("explain needs a query NAME, --sql or --list", "see 'challengectl explain --list'", EXIT_USAGE)
    try:
        return Statement.named(registry.lookup(name))
    except UnknownQueryError as unknown:
        matches = f"; close matches: {', '.join(unknown.close_matches)}" if unknown.close_matches else ""
        raise CliError(
            f"unknown query '{name}'{matches}", "see 'challengectl explain --list'", EXIT_NOT_FOUND
        ) from None


def _parameters(
    session: ExplainSession,
    registry: Registry,
    statement: Statement,
    settings: Settings,
    out: Output,
    user: str | None,
    sample: str,
    overrides: dict[str, Any],
    now: datetime,
) -> tuple[SampleUser | None, dict[str, Any]]:
    """The sample user (None when every parameter was given) and the bound parameters."""
    from challengectl.explain_runner import ParamDefaults, derive_params

    needed = [name for name in statement.param_types if name not in overrides]
    if not needed:
        return None, dict(overrides)
    chosen = session.given_user(user) if user else session.sample_user(sample)
    catalog = _catalog(settings, out)
    defaults = ParamDefaults(namespace=settings.namespace, reward_mode=settings.reward_mode)
    generation = None
    if "generation" in needed and "next_claim_generation" in registry:
        claim_goal = chosen.first_active
        generation = session.next_claim_generation(
            registry.get("next_claim_generation"),
            {
                "namespace": claim_goal.namespace or settings.namespace,
                "user_id": chosen.user_id,
                "goal_id": claim_goal.goal_id,
            },
        )
    params = derive_params(statement, chosen, catalog, defaults, now, generation)
    params.update(overrides)
    missing = [name for name in statement.param_types if name not in params]
    if missing:
        raise CliError(
            f"no value for parameter(s) {', '.join(missing)}", f"pass --param {missing[0]}=VALUE", EXIT_USAGE
        )
    return chosen, {name: params[name] for name in statement.param_types}


def _catalog(settings: Settings, out: Output) -> Catalog | None:
    """The service's catalog, for prerequisite ids, event sources, rotations and rewards; without one the
    parameters come from the rows alone (a warning says so)."""
    from challengectl.catalogs import service_catalog

    try:
        return service_catalog(settings)
    except CliError as unusable:
        out.warn(f"catalog unavailable ({unusable.message}); parameters are derived from the user's rows only")
        return None


def _emit_query_list(out: Output, registry: Registry) -> None:
    items = [
        {
            "name": query.name,
            "kind": query.kind,
            "params": ", ".join(f"{param.name} {param.type}" for param in query.params),
            "expect_index": query.expect_index,
            "doc": query.doc,
        }
        for query in registry
    ]
    out.emit(listing(items), rows=items, columns=["name", "kind", "params", "expect_index", "doc"])


# --- the report -----------------------------------------------------------------------------------


class ExplainReport:
    """Everything one explain produced, as JSON (snake_case, with PostgreSQL's raw plan) or as a
    renderable: header, plan tree (or text plan), totals, indexes used, findings."""

    def __init__(
        self,
        statement: Statement,
        sample: SampleUser | None,
        params: dict[str, Any],
        options: ExplainOptions,
        run: ExplainRun,
        text_plan: str | None,
        analysis: PlanAnalysis,
        context: PlanContext,
        plan_format: str,
    ) -> None:
        self.statement = statement
        self.sample = sample
        self.params = params
        self.options = options
        self.run = run
        self.text_plan = text_plan
        self.analysis = analysis
        self.context = context
        self.plan_format = plan_format

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "query": {
                "name": self.statement.name,
                "kind": self.statement.kind,
                "doc": self.statement.doc,
                "expect_index": self.statement.expect_index,
                "sql": self.statement.sql,
            },
            "sample_user": None
            if self.sample is None
            else {
                "user_id": self.sample.user_id,
                "chosen_by": self.sample.chosen_by,
                "rows": len(self.sample.rows),
                "active_rows": len(self.sample.active_rows),
            },
            "params": self.params,
            "options": {
                "analyze": self.options.analyze,
                "buffers": self.options.buffers,
                "statement_timeout_ms": self.options.statement_timeout_ms,
                "large_table_rows": self.context.large_table_rows,
                "slow_ms": self.context.slow_threshold_ms,
                "format": self.plan_format,
            },
            "timeout": self.run.timeout,
            "plan": self.run.plan,
            "analysis": self.analysis.as_json(),
        }
        if self.text_plan is not None:
            body["text_plan"] = self.text_plan
        return body

    def renderable(self, no_headers: bool = False) -> RenderableType:
        parts: list[RenderableType] = [self._header()]
        if self.text_plan is not None:
            parts += [_heading("Plan (PostgreSQL text)"), Text(self.text_plan)]
        elif self.analysis.root is not None:
            parts += [_heading("Plan"), plan_tree(self.analysis.root)]
        if self.analysis.totals is not None:
            parts += [_heading("Totals"), self._totals()]
        parts += [_heading("Indexes used"), self._indexes(no_headers)]
        parts += [_heading("Findings"), self._findings()]
        return Group(*parts)

    def _header(self) -> RenderableType:
        import sqlparse

        statement = self.statement
        rows = Table.grid(padding=(0, 2))
        rows.add_column(style="bold")
        rows.add_column()
        rows.add_row("Query", f"{statement.name or '(ad hoc)'} ({statement.kind})")
        if statement.doc:
            rows.add_row("Doc", statement.doc)
        if statement.expect_index:
            rows.add_row("Expects", statement.expect_index)
        if self.sample is not None:
            rows.add_row(
                "User",
                f"{self.sample.user_id} ({self.sample.chosen_by}; {len(self.sample.rows)} rows, "
                f"{len(self.sample.active_rows)} active)",
            )
        for key, value in self.params.items():
            rows.add_row(f"  {key}", format_cell(value))
        mode = "EXPLAIN ANALYZE (rolled back)" if self.options.analyze else "EXPLAIN (not executed)"
        rows.add_row("Mode", f"{mode}, statement_timeout {self.options.statement_timeout_ms} ms, lock_timeout 1s")
        pretty = sqlparse.format(statement.sql, reindent=True, keyword_case="upper")
        sql = Syntax(pretty, "sql", theme="ansi_dark", background_color="default", word_wrap=True)
        return Group(rows, Text(""), sql)

    def _totals(self) -> RenderableType:
        totals = self.analysis.totals
        assert totals is not None
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("Planning", _ms(totals.planning_ms))
        if totals.execution_ms is not None:
            grid.add_row("Execution", _ms(totals.execution_ms))
        if totals.rows is not None:
            grid.add_row("Rows", f"{totals.rows:,.0f}")
        grid.add_row(
            "Buffers",
            f"hit {totals.shared_hit_blocks}  read {totals.shared_read_blocks}  "
            f"dirtied {totals.shared_dirtied_blocks}  written {totals.shared_written_blocks}"
            + (
                f"  temp read {totals.temp_read_blocks} written {totals.temp_written_blocks}"
                if totals.temp_read_blocks or totals.temp_written_blocks
                else ""
            ),
        )
        if totals.wal_records is not None:
            grid.add_row(
                "WAL", f"records {totals.wal_records}  full-page images {totals.wal_fpi}  bytes {totals.wal_bytes}"
            )
        return grid

    def _indexes(self, no_headers: bool) -> RenderableType:
        expected = self.analysis.expected_index
        table = Table(box=None, pad_edge=False, show_header=not no_headers, header_style="bold")
        for header in ("INDEX", "TABLE", "USE", "NODE", "EXPECTED"):
            table.add_column(header)
        for use in self.analysis.indexes_used:
            mark = Text("✓ expected", style="green") if use.index == expected else Text("-")
            table.add_row(use.index, use.table or "-", use.role, use.node, mark)
        if expected and not self.analysis.expected_index_used:
            table.add_row(expected, "-", "not used", "-", Text("✗ expected, not used", style="bold red"))
        if not table.rows:
            return Text("none")
        return table

    def _findings(self) -> RenderableType:
        """One block per finding: severity and node, then what was seen and the advice, each on its own
        line at full width (so a CREATE INDEX statement stays on one line when it fits)."""
        if not self.analysis.findings:
            return Text("✓ none", style="green")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column()
        for finding in self.analysis.findings:
            label = Text(
                f"{SEVERITY_MARKERS[finding.severity]} {finding.severity.upper()}",
                style=SEVERITY_STYLES[finding.severity],
            )
            grid.add_row(label, Text(finding.node or "(whole statement)", style="bold"))
            grid.add_row("", finding.message)
            grid.add_row("", Text(f"advice: {finding.advice}"))
        return grid


def plan_tree(root: PlanNode) -> Tree:
    """The plan as a rich Tree: per node its title, rows estimated vs actual × loops (highlighted at
    10× error), times, buffers, conditions with rows removed, and sort details."""
    tree = Tree(_node_text(root), guide_style="dim")

    def add(branch: Tree, node: PlanNode) -> None:
        for child in node.children:
            add(branch.add(_node_text(child)), child)

    add(tree, root)
    return tree


def _node_text(node: PlanNode) -> Text:
    text = Text()
    text.append(f"#{node.node_id} ", style="dim")
    text.append(node.title, style="bold")
    estimated = f"{node.estimated_rows:,.0f}"
    if node.actual_rows is None:
        text.append(f"  rows est {estimated}")
    else:
        error = node.estimate_error or 1.0
        rows = f"  rows est {estimated} → actual {node.actual_rows:,.0f} × {node.loops}"
        if error >= ESTIMATE_ERROR_FACTOR:
            text.append(rows + f" (! {error:.0f}× off)", style="bold red")
        else:
            text.append(rows)
        text.append(f"  time {node.get('Actual Startup Time', 0):.3f}..{node.get('Actual Total Time', 0):.3f} ms")
    if node.get("Shared Hit Blocks") is not None:
        text.append(
            f"  buffers hit {node.get('Shared Hit Blocks')} read {node.get('Shared Read Blocks', 0)} "
            f"dirtied {node.get('Shared Dirtied Blocks', 0)} written {node.get('Shared Written Blocks', 0)}",
            style="dim",
        )
    for label, condition in node_conditions(node).items():
        text.append(f"\n{label}: {condition}")
        removed_key = {
            "Filter": "Rows Removed by Filter",
            "Join Filter": "Rows Removed by Join Filter",
            "Recheck Cond": "Rows Removed by Index Recheck",
        }.get(label)
        if removed_key and node.get(removed_key) is not None:
            text.append(f"  (rows removed: {float(node.get(removed_key)) * max(node.loops, 1):,.0f})")
    if node.get("Conflict Arbiter Indexes"):
        text.append(
            f"\nConflict: {node.get('Conflict Resolution', '')} on {', '.join(node.get('Conflict Arbiter Indexes'))}"
        )
    if node.get("Sort Key"):
        text.append(f"\nSort Key: {', '.join(node.get('Sort Key'))}")
    if node.get("Sort Method"):
        style = "bold red" if node.get("Sort Space Type") == "Disk" else ""
        text.append(
            f"\nSort: {node.get('Sort Method')}, {node.get('Sort Space Type')} {node.get('Sort Space Used')} kB",
            style=style,
        )
    if node.get("Hash Batches") is not None:
        batches = int(node.get("Hash Batches") or 1)
        text.append(
            f"\nHash: {batches} batch(es), peak memory {node.get('Peak Memory Usage')} kB",
            style="bold red" if batches > 1 else "",
        )
    if node.get("Heap Fetches") is not None:
        text.append(f"\nHeap Fetches: {node.get('Heap Fetches')}")
    return text


def _heading(title: str) -> Text:
    return Text(f"\n{title}", style="bold underline")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def _plain(renderable: RenderableType) -> str:
    """The renderable as plain text (for `-o text`)."""
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=PIPED_WIDTH, no_color=True, color_system=None, force_terminal=False, highlight=False
    )
    console.print(renderable)
    return buffer.getvalue().rstrip("\n")

"""Reading PostgreSQL query plans (docs/cli.md#explain): the `EXPLAIN (FORMAT JSON)` document as a node tree,
the totals, the indexes a plan uses, and the findings with their advice.

Everything here is a pure function of the plan and of what the caller read about the tables the plan
touches (`TableInfo`), so the rules can be tested on recorded plans without a database.

    analysis = analyze_plan(explain_json, PlanContext(kind="read", expect_index="idx_ugp_user_active",
                                                      tables={"user_goal_progress": table_info}))
    analysis.findings        # [Finding(rule, severity, node, message, advice), ...]
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from challengectl.expected_indexes import EXPECTED_INDEXES, ExpectedIndex, IndexKey, is_covered_by
from challengectl.humanize import human_bytes

SEVERITIES = ("info", "warn", "crit")

DEFAULT_LARGE_TABLE_ROWS = 10_000
SLOW_READ_MS = 10.0
SLOW_WRITE_MS = 50.0
# An estimate this many times off the actual row count is highlighted; a finding needs ACTUAL_ROWS_MIN too.
ESTIMATE_ERROR_FACTOR = 10.0
ESTIMATE_ACTUAL_ROWS_MIN = 100
FILTER_REMOVED_FACTOR = 10.0
FILTER_REMOVED_MIN = 1_000
HEAP_FETCHES_MIN = 100
HEAP_FETCHES_SHARE = 0.1
SLOWEST_NODES_SHOWN = 3

SCAN_NODE_TYPES = ("Index Scan", "Index Only Scan", "Bitmap Index Scan")


@dataclass(frozen=True)
class IndexInfo:
    """One index as the catalog describes it. `columns` are the key columns (expressions as text);
    `opclasses` and `collations` are the per-key-column oids as text; these, the access method, the
    expression list and the INCLUDE columns are what the duplicate check compares."""

    name: str
    table: str
    columns: tuple[str, ...]
    unique: bool = False
    primary: bool = False
    valid: bool = True
    predicate: str | None = None
    opclasses: tuple[str, ...] = ()
    collations: tuple[str, ...] = ()
    definition: str = ""
    access_method: str = "btree"
    expressions: str | None = None
    include_columns: tuple[str, ...] = ()

    @property
    def key(self) -> IndexKey:
        """The parts the docs/data-model.md#indexes duplicate rule compares (this index's fields of those names)."""
        return IndexKey(**{part.name: getattr(self, part.name) for part in fields(IndexKey)})


@dataclass(frozen=True)
class TableInfo:
    """A table a plan touches: the planner's row estimate (`pg_class.reltuples`), its indexes, and whether
    the planner has column statistics for it (`pg_stats`; none before the first ANALYZE of its rows)."""

    name: str
    estimated_rows: float
    indexes: tuple[IndexInfo, ...] = ()
    has_statistics: bool = True

    def index(self, name: str) -> IndexInfo | None:
        return next((index for index in self.indexes if index.name == name), None)


@dataclass(frozen=True)
class PlanContext:
    """What the rules need besides the plan: the query's kind and expected index, the thresholds, the
    tables by name, and the role (for `ALTER ROLE ... SET work_mem` advice)."""

    kind: str = "read"
    expect_index: str | None = None
    large_table_rows: int = DEFAULT_LARGE_TABLE_ROWS
    slow_ms: float | None = None
    tables: Mapping[str, TableInfo] = field(default_factory=dict)
    role: str | None = None

    @property
    def slow_threshold_ms(self) -> float:
        if self.slow_ms is not None:
            return self.slow_ms
        return SLOW_READ_MS if self.kind == "read" else SLOW_WRITE_MS


@dataclass
class PlanNode:
    """One plan node, numbered in pre-order from 1. Actual values are None without ANALYZE; rows are
    per loop, as PostgreSQL reports them."""

    node_id: int
    node_type: str
    raw: dict[str, Any] = field(repr=False)
    children: list[PlanNode] = field(default_factory=list)
    parent: PlanNode | None = field(default=None, repr=False)
    # For a CTE Scan: the time of the CTE's own subtree, which PostgreSQL also counts inside the scan.
    cte_ms: float = 0.0

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def relation(self) -> str | None:
        return self.raw.get("Relation Name")

    @property
    def index_name(self) -> str | None:
        return self.raw.get("Index Name")

    @property
    def table(self) -> str | None:
        """The relation this node reads: its own, or for a Bitmap Index Scan its heap parent's."""
        if self.relation:
            return self.relation
        if self.node_type == "Bitmap Index Scan":
            ancestor = self.parent
            while ancestor is not None and not ancestor.relation:
                ancestor = ancestor.parent
            return ancestor.relation if ancestor is not None else None
        return None

    @property
    def estimated_rows(self) -> float:
        return float(self.raw.get("Plan Rows", 0))

    @property
    def actual_rows(self) -> float | None:
        value = self.raw.get("Actual Rows")
        return None if value is None else float(value)

    @property
    def loops(self) -> int:
        return int(self.raw.get("Actual Loops", 1) or 0)

    @property
    def actual_total_rows(self) -> float | None:
        rows = self.actual_rows
        return None if rows is None else rows * self.loops

    @property
    def inclusive_ms(self) -> float | None:
        """Time spent in this node and below, over all loops."""
        total = self.raw.get("Actual Total Time")
        return None if total is None else float(total) * self.loops

    @property
    def exclusive_ms(self) -> float | None:
        """Time spent in this node itself: its inclusive time minus its children's."""
        own = self.inclusive_ms
        if own is None:
            return None
        below = sum(child.inclusive_ms or 0.0 for child in self.children)
        return max(0.0, own - below - self.cte_ms)

    @property
    def estimate_error(self) -> float | None:
        """How many times the estimate is off the actual row count (≥ 1), or None without ANALYZE."""
        actual = self.actual_rows
        if actual is None or self.loops == 0:
            return None
        estimated = max(self.estimated_rows, 1.0)
        observed = max(actual, 1.0)
        return max(estimated / observed, observed / estimated)

    @property
    def rows_removed_by_filter(self) -> float:
        """Rows removed by the node's filters, over all loops."""
        per_loop = float(self.raw.get("Rows Removed by Filter", 0)) + float(
            self.raw.get("Rows Removed by Join Filter", 0)
        )
        return per_loop * max(self.loops, 1)

    @property
    def label(self) -> str:
        """`#3 Seq Scan on user_goal_progress`: how findings name the node."""
        return f"#{self.node_id} {self.title}"

    @property
    def title(self) -> str:
        kind = self.node_type
        if self.raw.get("Parallel Aware"):
            kind = f"Parallel {kind}"
        if self.node_type == "ModifyTable" and self.raw.get("Operation"):
            kind = self.raw["Operation"]
        parts = [kind]
        if self.node_type in ("Index Scan", "Index Only Scan") and self.index_name:
            parts.append(f"using {self.index_name}")
        elif self.node_type == "Bitmap Index Scan" and self.index_name:
            parts.append(f"on {self.index_name}")
        if self.relation:
            parts.append(f"on {self.relation}")
            alias = self.raw.get("Alias")
            if alias and alias != self.relation:
                parts.append(alias)
        elif self.raw.get("CTE Name"):
            parts.append(f"on {self.raw['CTE Name']}")
        elif self.raw.get("Function Name"):
            parts.append(f"on {self.raw['Function Name']}")
        subplan = self.raw.get("Subplan Name")
        if subplan:
            parts.insert(0, f"[{subplan}]")
        return " ".join(parts)

    def walk(self) -> Iterator[PlanNode]:
        """This node and every node below it, in pre-order."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class IndexUse:
    """An index the plan uses: `role` is `scan` (an index node), `arbiter` (ON CONFLICT) or
    `unique_check` (a unique index an INSERT maintains and checks)."""

    index: str
    table: str | None
    node: str
    role: str


@dataclass(frozen=True)
class Finding:
    """One problem or observation: `rule` is a stable id, `node` the plan node it is about (if any)."""

    rule: str
    severity: str
    node: str | None
    message: str
    advice: str


def plan_info(rule: str, message: str, advice: str) -> Finding:
    """An info finding about the whole plan (no node)."""
    return Finding(rule=rule, severity="info", node=None, message=message, advice=advice)


@dataclass(frozen=True)
class PlanTotals:
    planning_ms: float | None
    execution_ms: float | None
    rows: float | None
    shared_hit_blocks: int
    shared_read_blocks: int
    shared_dirtied_blocks: int
    shared_written_blocks: int
    temp_read_blocks: int
    temp_written_blocks: int
    wal_records: int | None
    wal_fpi: int | None
    wal_bytes: int | None


@dataclass
class PlanAnalysis:
    root: PlanNode | None
    totals: PlanTotals | None
    indexes_used: list[IndexUse]
    expected_index: str | None
    expected_index_used: bool | None
    findings: list[Finding]

    @property
    def max_severity(self) -> str | None:
        ranks = [SEVERITIES.index(finding.severity) for finding in self.findings]
        return SEVERITIES[max(ranks)] if ranks else None

    def has_severity(self, threshold: str) -> bool:
        """Whether any finding is at `threshold` or above (the `--fail-on` gate)."""
        floor = SEVERITIES.index(threshold)
        return any(SEVERITIES.index(finding.severity) >= floor for finding in self.findings)

    def nodes(self) -> list[PlanNode]:
        return list(self.root.walk()) if self.root is not None else []

    def as_json(self) -> dict[str, Any]:
        """The analysis with snake_case keys (the raw plan is emitted beside it, unchanged)."""
        return {
            "totals": None if self.totals is None else vars(self.totals),
            "nodes": [node_json(node) for node in self.nodes()],
            "indexes_used": [vars(use) for use in self.indexes_used],
            "expected_index": self.expected_index,
            "expected_index_used": self.expected_index_used,
            "findings": [vars(finding) for finding in self.findings],
            "max_severity": self.max_severity,
        }


def node_json(node: PlanNode) -> dict[str, Any]:
    """The summary of one node as the CLI shows it, snake_case."""
    return {
        "node_id": node.node_id,
        "parent_id": node.parent.node_id if node.parent is not None else None,
        "node_type": node.node_type,
        "title": node.title,
        "relation": node.table,
        "index": node.index_name,
        "estimated_rows": node.estimated_rows,
        "actual_rows": node.actual_rows,
        "loops": node.loops if node.actual_rows is not None else None,
        "estimate_error": node.estimate_error,
        "actual_startup_ms": node.get("Actual Startup Time"),
        "actual_total_ms": node.get("Actual Total Time"),
        "exclusive_ms": node.exclusive_ms,
        "shared_hit_blocks": node.get("Shared Hit Blocks"),
        "shared_read_blocks": node.get("Shared Read Blocks"),
        "shared_dirtied_blocks": node.get("Shared Dirtied Blocks"),
        "shared_written_blocks": node.get("Shared Written Blocks"),
        "conditions": node_conditions(node),
        "rows_removed_by_filter": node.rows_removed_by_filter if node.actual_rows is not None else None,
        "sort_method": node.get("Sort Method"),
        "sort_space_kb": node.get("Sort Space Used"),
        "sort_space_type": node.get("Sort Space Type"),
    }


CONDITION_KEYS = ("Index Cond", "Recheck Cond", "Filter", "Join Filter", "Hash Cond", "Merge Cond", "TID Cond")


def node_conditions(node: PlanNode) -> dict[str, str]:
    """The node's conditions by PostgreSQL's label (`Filter`, `Index Cond`, ...)."""
    return {key: node.raw[key] for key in CONDITION_KEYS if node.raw.get(key)}


# --- parsing -------------------------------------------------------------------------------------


class PlanFormatError(ValueError):
    """The document is not the output of `EXPLAIN (FORMAT JSON)`."""


def plan_document(explain_json: Any) -> dict[str, Any]:
    """The top-level object of EXPLAIN's JSON output (a one-element list, or the object itself)."""
    document = explain_json[0] if isinstance(explain_json, list) and explain_json else explain_json
    if not isinstance(document, dict) or not isinstance(document.get("Plan"), dict):
        raise PlanFormatError("not an EXPLAIN (FORMAT JSON) document: no 'Plan' object")
    return document


def parse_plan(explain_json: Any) -> PlanNode:
    """The root node of an EXPLAIN (FORMAT JSON) document, with ids in pre-order from 1."""
    counter = iter(range(1, 1_000_000))

    def build(raw: dict[str, Any], parent: PlanNode | None) -> PlanNode:
        node = PlanNode(node_id=next(counter), node_type=str(raw.get("Node Type", "?")), raw=raw, parent=parent)
        node.children = [build(child, node) for child in raw.get("Plans", [])]
        return node

    root = build(plan_document(explain_json)["Plan"], None)
    cte_times = {node.get("Subplan Name"): node.inclusive_ms or 0.0 for node in root.walk() if node.get("Subplan Name")}
    for node in root.walk():
        if node.node_type == "CTE Scan":
            node.cte_ms = cte_times.get(f"CTE {node.get('CTE Name')}", 0.0)
    return root


def plan_totals(explain_json: Any) -> PlanTotals:
    """Planning and execution time, rows returned, and the root's (inclusive) buffer and WAL counters."""
    document = plan_document(explain_json)
    root = document["Plan"]

    def blocks(key: str) -> int:
        return int(root.get(key, 0) or 0)

    rows = root.get("Actual Rows")
    return PlanTotals(
        planning_ms=document.get("Planning Time"),
        execution_ms=document.get("Execution Time"),
        rows=None if rows is None else float(rows) * int(root.get("Actual Loops", 1) or 0),
        shared_hit_blocks=blocks("Shared Hit Blocks"),
        shared_read_blocks=blocks("Shared Read Blocks"),
        shared_dirtied_blocks=blocks("Shared Dirtied Blocks"),
        shared_written_blocks=blocks("Shared Written Blocks"),
        temp_read_blocks=blocks("Temp Read Blocks"),
        temp_written_blocks=blocks("Temp Written Blocks"),
        wal_records=root.get("WAL Records"),
        wal_fpi=root.get("WAL FPI"),
        wal_bytes=root.get("WAL Bytes"),
    )


# --- indexes used --------------------------------------------------------------------------------


def indexes_used(root: PlanNode, tables: Mapping[str, TableInfo] | None = None) -> list[IndexUse]:
    """Every index of an Index Scan, Index Only Scan or Bitmap Index Scan node, every ON CONFLICT
    arbiter index, and the unique indexes of an INSERT's target table (each index once per role)."""
    tables = tables or {}
    uses: list[IndexUse] = []
    seen: set[tuple[str, str]] = set()

    def add(index: str, table: str | None, node: PlanNode, role: str) -> None:
        # An arbiter is already known to be used: its unique check is not listed again.
        if (index, role) not in seen and not (role == "unique_check" and (index, "arbiter") in seen):
            seen.add((index, role))
            uses.append(IndexUse(index=index, table=table, node=node.label, role=role))

    for node in root.walk():
        if node.node_type in SCAN_NODE_TYPES and node.index_name:
            add(node.index_name, node.table, node, "scan")
        for arbiter in node.get("Conflict Arbiter Indexes", []) or []:
            add(arbiter, node.relation, node, "arbiter")
        if node.node_type == "ModifyTable" and node.get("Operation") == "Insert" and node.relation:
            for index in _unique_indexes(node.relation, tables):
                add(index, node.relation, node, "unique_check")
    return uses


def _unique_indexes(table: str, tables: Mapping[str, TableInfo]) -> list[str]:
    info = tables.get(table)
    if info is not None:
        return [index.name for index in info.indexes if index.unique or index.primary]
    # Without catalog information, PostgreSQL's default primary key name is the best guess.
    return [f"{table}_pkey"]


# --- findings ------------------------------------------------------------------------------------


def analyze_plan(explain_json: Any, context: PlanContext) -> PlanAnalysis:
    """Parse the plan and apply every rule of docs/cli.md#explain (plus the duplicate-index rule of docs/data-model.md#indexes)."""
    root = parse_plan(explain_json)
    totals = plan_totals(explain_json)
    used = indexes_used(root, context.tables)
    expected_used = None
    if context.expect_index:
        expected_used = any(use.index == context.expect_index for use in used)
    findings: list[Finding] = []
    findings += seq_scan_findings(root, context)
    findings += expected_index_findings(used, context)
    findings += estimate_findings(root)
    findings += filter_findings(root, context)
    findings += spill_findings(root, context)
    findings += heap_fetch_findings(root)
    findings += duplicate_index_findings(root, context)
    findings += cold_cache_findings(totals)
    findings += planning_time_findings(totals)
    findings += slow_findings(root, totals, context)
    findings.sort(key=lambda finding: -SEVERITIES.index(finding.severity))
    return PlanAnalysis(
        root=root,
        totals=totals,
        indexes_used=used,
        expected_index=context.expect_index,
        expected_index_used=expected_used,
        findings=findings,
    )


def timeout_analysis(which: str, limit: str, context: PlanContext) -> PlanAnalysis:
    """The analysis of an EXPLAIN that hit `lock_timeout` or `statement_timeout`: no plan, one crit finding."""
    advice = (
        "look for the blocking sessions: challengectl db activity --blocking"
        if which == "lock_timeout"
        else "look for the blocking sessions (challengectl db activity --blocking); if nothing blocks, the "
        "statement itself is slow: rerun with --no-analyze to see the plan without running it"
    )
    finding = Finding(
        rule="timeout",
        severity="crit",
        node=None,
        message=f"{which} ({limit}) was hit: the statement did not finish",
        advice=advice,
    )
    return PlanAnalysis(
        root=None,
        totals=None,
        indexes_used=[],
        expected_index=context.expect_index,
        expected_index_used=None,
        findings=[finding],
    )


def seq_scan_findings(root: PlanNode, context: PlanContext) -> list[Finding]:
    """crit: a Seq Scan on a relation estimated above `large_table_rows` rows."""
    findings = []
    for node in root.walk():
        if node.node_type != "Seq Scan" or not node.relation:
            continue
        info = context.tables.get(node.relation)
        relation_rows = info.estimated_rows if info is not None and info.estimated_rows >= 0 else node.estimated_rows
        if relation_rows <= context.large_table_rows:
            continue
        findings.append(
            Finding(
                rule="seq_scan_large_table",
                severity="crit",
                node=node.label,
                message=(
                    f"sequential scan of {node.relation} (about {_count(relation_rows)} rows, above "
                    f"--large-table-rows {_count(context.large_table_rows)})"
                ),
                advice=seq_scan_advice(node, info),
            )
        )
    return findings


def seq_scan_advice(node: PlanNode, info: TableInfo | None) -> str:
    """The index that would serve the scan's filter: a missing expected index of docs/data-model.md#indexes when one
    matches, otherwise an index built from the filter (equality columns, then ranges, partial predicate)."""
    table = node.relation or "?"
    filter_text = node.get("Filter")
    if not filter_text:
        return (
            f"the statement reads all of {table}; restrict it with a WHERE clause that the primary key "
            f"or an index serves"
        )
    shape = filter_shape(filter_text)
    expected = _missing_expected_index(table, shape, info)
    if expected is not None:
        state = "is missing" if info is None or info.index(expected.index_name) is None else "is INVALID"
        return f"the expected index {expected.index_name} (docs/data-model.md#indexes) {state}: {expected.create_sql};"
    return f"{index_sql(table, shape)} (to serve the filter {filter_text})"


def _missing_expected_index(table: str, shape: FilterShape, info: TableInfo | None) -> ExpectedIndex | None:
    for expected in EXPECTED_INDEXES:
        if expected.table_name != table or not set(expected.columns) <= set(shape.equality):
            continue
        present = info.index(expected.index_name) if info is not None else None
        if present is not None and present.valid:
            continue
        if expected.predicate is None or expected.predicate in shape.predicates:
            return expected
    return None


def expected_index_findings(used: Sequence[IndexUse], context: PlanContext) -> list[Finding]:
    """warn: the query's `expect-index` does not appear among the indexes used."""
    expected = context.expect_index
    if not expected or any(use.index == expected for use in used):
        return []
    present = None
    for info in context.tables.values():
        present = info.index(expected) or present
    known = next((index for index in EXPECTED_INDEXES if index.index_name == expected), None)
    table = present.table if present is not None else (known.table_name if known is not None else None)
    if present is None and context.tables and known is not None:
        advice = f"the index {expected} does not exist: {known.create_sql};"
    elif present is not None and not present.valid:
        advice = f"the index {expected} is INVALID (a failed concurrent build): REINDEX INDEX CONCURRENTLY {expected};"
    elif present is not None and (not_meaningful := _plan_not_meaningful(present.table, context)) is not None:
        return [not_meaningful]
    elif present is not None:
        advice = (
            f"{expected} exists and is valid, but the planner chose another path: ANALYZE {table} and "
            f"rerun; an index that duplicates it can draw the planner away (see db indexes duplicates)"
        )
    else:
        advice = (
            f"check that {expected} exists and is valid (challengectl db indexes expected); "
            f"ANALYZE {table or 'the table'}"
        )
    used_names = ", ".join(dict.fromkeys(use.index for use in used)) or "no index"
    return [
        Finding(
            rule="expected_index_not_used",
            severity="warn",
            node=None,
            message=f"the plan does not use the expected index {expected} (it uses {used_names})",
            advice=advice,
        )
    ]


def _plan_not_meaningful(table: str, context: PlanContext) -> Finding | None:
    """info instead of a missing-index warning: with no statistics, or on a table this small, the planner
    rightly prefers another path, so the plan says nothing about the index yet."""
    info = context.tables.get(table)
    if info is None:
        return None
    if not info.has_statistics:
        reason = f"no planner statistics for {table}"
    elif info.estimated_rows < context.large_table_rows:
        reason = (
            f"{table} is tiny (about {_count(max(info.estimated_rows, 0))} rows, below --large-table-rows "
            f"{_count(context.large_table_rows)}), where another path is cheaper"
        )
    else:
        return None
    return plan_info(
        "plan_not_meaningful",
        f"statistics missing or table tiny: {reason}; the plan is not meaningful yet",
        "run `challengectl db analyze`, and explain again once the table holds realistic data",
    )


def estimate_findings(root: PlanNode) -> list[Finding]:
    """warn: estimated rows ≥ 10× off the actual rows, where the node returned at least 100 rows."""
    findings = []
    for node in root.walk():
        error = node.estimate_error
        total = node.actual_total_rows
        if error is None or total is None or error < ESTIMATE_ERROR_FACTOR or total < ESTIMATE_ACTUAL_ROWS_MIN:
            continue
        table = node.table or _first_relation_below(node)
        columns = filter_shape(" AND ".join(node_conditions(node).values())).columns
        statistics = (
            f"ALTER TABLE {table} ALTER COLUMN {columns[0]} SET STATISTICS 1000; ANALYZE {table};"
            if table and columns
            else "raise the filtered column's statistics target (ALTER TABLE ... ALTER COLUMN ... SET STATISTICS 1000)"
        )
        findings.append(
            Finding(
                rule="row_estimate_off",
                severity="warn",
                node=node.label,
                message=(
                    f"estimated {_count(node.estimated_rows)} rows, actual {_count(node.actual_rows or 0)} "
                    f"× {node.loops} loop(s): {error:.0f}× off"
                ),
                advice=f"ANALYZE {table or 'the tables involved'}; if it persists, {statistics}",
            )
        )
    return findings


def filter_findings(root: PlanNode, context: PlanContext) -> list[Finding]:
    """warn: a filter removed more than 10× the rows the node returned, and more than 1 000 rows."""
    findings = []
    for node in root.walk():
        if node.actual_rows is None:
            continue
        removed = node.rows_removed_by_filter
        returned = node.actual_total_rows or 0.0
        if removed <= FILTER_REMOVED_MIN or removed <= FILTER_REMOVED_FACTOR * returned:
            continue
        filter_text = node.get("Filter") or node.get("Join Filter") or ""
        table = node.table
        if table and node.get("Filter"):
            advice = index_sql(table, filter_shape(filter_text))
            expected = _missing_expected_index(table, filter_shape(filter_text), context.tables.get(table))
            if expected is not None:
                advice = f"{expected.create_sql};"
            advice = f"an index or partial index covering the filter columns: {advice}"
        else:
            advice = "an index or partial index covering the filter columns, so the rows are not read and discarded"
        findings.append(
            Finding(
                rule="rows_removed_by_filter",
                severity="warn",
                node=node.label,
                message=(
                    f"the filter removed {_count(removed)} rows to return {_count(returned)}"
                    + (f" ({filter_text})" if filter_text else "")
                ),
                advice=advice,
            )
        )
    return findings


def spill_findings(root: PlanNode, context: PlanContext) -> list[Finding]:
    """warn: a sort or hash that spilled to disk, or a hash that needed more than one batch."""
    findings = []
    role = context.role or "<role>"
    for node in root.walk():
        observed_kb = None
        what = ""
        if node.get("Sort Space Type") == "Disk":
            observed_kb = float(node.get("Sort Space Used", 0))
            what = f"the sort ({node.get('Sort Method', 'external')}) spilled {_kb(observed_kb)} to disk"
        elif int(node.get("Hash Batches", 1) or 1) > 1:
            observed_kb = float(node.get("Peak Memory Usage", 0)) * int(node.get("Hash Batches", 1))
            what = (
                f"the hash used {node.get('Hash Batches')} batches (peak memory "
                f"{_kb(float(node.get('Peak Memory Usage', 0)))} per batch)"
            )
        elif float(node.get("Disk Usage", 0) or 0) > 0:
            observed_kb = float(node.get("Disk Usage", 0))
            what = f"the {node.node_type.lower()} spilled {_kb(observed_kb)} to disk"
        if observed_kb is None:
            continue
        suggested_mb = max(4, 2 ** math.ceil(math.log2(max(observed_kb * 2 / 1024, 1))))
        findings.append(
            Finding(
                rule="spill_to_disk",
                severity="warn",
                node=node.label,
                message=what,
                advice=(
                    f"raise work_mem for this role above the {_kb(observed_kb)} observed: "
                    f"ALTER ROLE {role} SET work_mem = '{suggested_mb}MB';"
                ),
            )
        )
    return findings


def heap_fetch_findings(root: PlanNode) -> list[Finding]:
    """info: an Index Only Scan that still visited the heap for many rows (visibility map not set)."""
    findings = []
    for node in root.walk():
        if node.node_type != "Index Only Scan" or node.get("Heap Fetches") is None:
            continue
        fetches = float(node.get("Heap Fetches", 0))
        returned = node.actual_total_rows or 0.0
        if fetches < HEAP_FETCHES_MIN or fetches <= HEAP_FETCHES_SHARE * returned:
            continue
        findings.append(
            Finding(
                rule="heap_fetches",
                severity="info",
                node=node.label,
                message=f"the index-only scan fetched {_count(fetches)} heap tuples for {_count(returned)} rows",
                advice=f"VACUUM {node.table or 'the table'}; (sets the visibility map, so the heap is not visited)",
            )
        )
    return findings


def duplicate_index_findings(root: PlanNode, context: PlanContext) -> list[Finding]:
    """warn: an index of a table in the plan that the primary key makes redundant (docs/data-model.md#indexes, docs/diagnostics.md#postgresql): see
    `duplicates_of_primary_key`."""
    findings = []
    nodes_by_index = {node.index_name: node for node in root.walk() if node.index_name}
    tables_in_plan = dict.fromkeys(node.table for node in root.walk() if node.table)
    for table in tables_in_plan:
        info = context.tables.get(table)
        if info is None:
            continue
        for index, primary in duplicates_of_primary_key(info):
            node = nodes_by_index.get(index.name)
            used = " and this plan uses it" if node is not None else ""
            findings.append(
                Finding(
                    rule="duplicate_of_primary_key",
                    severity="warn",
                    node=node.label if node is not None else None,
                    message=(
                        f"index {index.name} ({', '.join(index.columns)}) duplicates the primary key "
                        f"{primary.name} ({', '.join(primary.columns)}) of {table}{used}"
                    ),
                    advice=(
                        f"the primary key serves the same lookups; drop the duplicate (it costs every write): "
                        f"DROP INDEX CONCURRENTLY {index.name};"
                    ),
                )
            )
    return findings


def duplicates_of_primary_key(info: TableInfo) -> list[tuple[IndexInfo, IndexInfo]]:
    """The (duplicate, primary key) pairs of one table: the indexes the primary key covers by the rule
    `db indexes` and `doctor` apply (`challengectl.expected_indexes.is_covered_by`)."""
    primary = next((index for index in info.indexes if index.primary), None)
    if primary is None:
        return []
    return [
        (index, primary) for index in info.indexes if index is not primary and is_covered_by(index.key, primary.key)
    ]


def cold_cache_findings(totals: PlanTotals) -> list[Finding]:
    """info: most shared buffers were read from disk (or the OS cache) rather than hit in shared_buffers."""
    read, hit = totals.shared_read_blocks, totals.shared_hit_blocks
    if read == 0 or read <= hit:
        return []
    return [
        plan_info(
            "cold_cache",
            f"{read} of {read + hit} shared buffers were read rather than hit",
            "a cold cache: rerun the command; if it stays cold, check that shared_buffers holds the working set",
        )
    ]


def planning_time_findings(totals: PlanTotals) -> list[Finding]:
    """info: planning took longer than execution (expected for an ad-hoc run of a prepared statement)."""
    if totals.planning_ms is None or totals.execution_ms is None or totals.planning_ms <= totals.execution_ms:
        return []
    return [
        plan_info(
            "planning_over_execution",
            f"planning ({totals.planning_ms:.3f} ms) took longer than execution ({totals.execution_ms:.3f} ms)",
            "the service prepares its statements, so it pays planning rarely; this is expected for an ad-hoc run",
        )
    ]


def slow_findings(root: PlanNode, totals: PlanTotals, context: PlanContext) -> list[Finding]:
    """warn: execution slower than `--slow-ms`; the advice names the nodes with the largest share of time."""
    threshold = context.slow_threshold_ms
    if totals.execution_ms is None or totals.execution_ms <= threshold:
        return []
    ranked = sorted(
        (node for node in root.walk() if node.exclusive_ms is not None), key=lambda node: -(node.exclusive_ms or 0.0)
    )[:SLOWEST_NODES_SHOWN]
    total = max(sum(node.exclusive_ms or 0.0 for node in root.walk()), totals.execution_ms, 1e-9)
    shares = "; ".join(
        f"{node.label} {100 * (node.exclusive_ms or 0.0) / total:.0f}% ({node.exclusive_ms or 0.0:.2f} ms)"
        for node in ranked
    )
    return [
        Finding(
            rule="slow_execution",
            severity="warn",
            node=ranked[0].label if ranked else None,
            message=f"execution took {totals.execution_ms:.2f} ms, above {threshold:g} ms for a {context.kind} query",
            advice=f"the largest shares of time: {shares}",
        )
    ]


# --- filters and index suggestions ---------------------------------------------------------------


@dataclass(frozen=True)
class FilterShape:
    """The columns of a filter that an index can serve: equality (`=`, `= ANY`), range (`<`, `>`, ...),
    and boolean predicates (`is_active`, `NOT is_active`) usable in a partial index."""

    equality: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()
    predicates: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.equality + self.ranges))


_IDENT = r'(?:"[^"]+"|\w+)'
_COLUMN = rf"\(?(?:{_IDENT}\.)?({_IDENT})\)?(?:::[\w ]+(?:\(\d+\))?(?:\[\])?)?"
_COMPARISON = re.compile(rf"^{_COLUMN}\s*(=|<=|>=|<|>)\s*(ANY\s*)?(.+)$", re.IGNORECASE | re.DOTALL)
_BOOLEAN = re.compile(rf"^(NOT\s+)?(?:{_IDENT}\.)?({_IDENT})$", re.IGNORECASE)
_COLUMN_REFERENCE = re.compile(rf"(?:^|[^\w'.]){_IDENT}\.{_IDENT}")
_LITERAL = re.compile(r"'(?:[^']|'')*'")
_RANGE_OPERATORS = ("<", ">", "<=", ">=")


def filter_shape(filter_text: str) -> FilterShape:
    """The index-relevant shape of a plan filter such as
    `(((user_goal_progress.user_id)::text = 'u1'::text) AND user_goal_progress.is_active)`."""
    equality: list[str] = []
    ranges: list[str] = []
    predicates: list[str] = []
    for conjunct in split_conjuncts(filter_text):
        boolean = _BOOLEAN.match(conjunct)
        if boolean:
            column = _unquote(boolean.group(2))
            predicates.append(f"NOT {column}" if boolean.group(1) else column)
            continue
        comparison = _COMPARISON.match(conjunct)
        if not comparison:
            continue
        column, operator, right = _unquote(comparison.group(1)), comparison.group(2), comparison.group(4)
        if _COLUMN_REFERENCE.search(_LITERAL.sub("''", right)):
            continue  # a join condition, not a constant or parameter
        if operator == "=":
            equality.append(column)
        elif operator in _RANGE_OPERATORS:
            ranges.append(column)
    return FilterShape(tuple(dict.fromkeys(equality)), tuple(dict.fromkeys(ranges)), tuple(dict.fromkeys(predicates)))


def index_sql(table: str, shape: FilterShape) -> str:
    """`CREATE INDEX CONCURRENTLY ON table (equality columns, range columns) [WHERE predicates];`."""
    if not shape.columns and not shape.predicates:
        return f"CREATE INDEX CONCURRENTLY ON {table} (<the filtered columns>);"
    columns = shape.columns or (shape.predicates[0].removeprefix("NOT "),)
    where = f" WHERE {' AND '.join(shape.predicates)}" if shape.columns and shape.predicates else ""
    return f"CREATE INDEX CONCURRENTLY ON {table} ({', '.join(columns)}){where};"


def split_conjuncts(expression: str) -> list[str]:
    """The top-level AND terms of an expression, each without its enclosing parentheses."""
    text = _strip_parens(expression.strip())
    terms: list[str] = []
    start = 0
    for index, depth, quoted in _nesting(text):
        if index >= start and not quoted and depth == 0 and text[index : index + 5].upper() == " AND ":
            terms.append(text[start:index])
            start = index + 5
    terms.append(text[start:])
    return [_strip_parens(term.strip()) for term in terms if term.strip()]


def _strip_parens(text: str) -> str:
    """`text` without parentheses that enclose all of it."""
    while text.startswith("(") and text.endswith(")") and _closing_paren(text) == len(text) - 1:
        text = text[1:-1].strip()
    return text


def _closing_paren(text: str) -> int:
    """The index of the parenthesis that closes the one `text` starts with, or -1."""
    for index, depth, quoted in _nesting(text):
        if not quoted and depth == 1 and text[index] == ")":
            return index
    return -1


def _nesting(text: str) -> Iterator[tuple[int, int, bool]]:
    """For each character: its index, the parenthesis depth before it, and whether it is inside quotes."""
    depth = 0
    quoted = False
    for index, char in enumerate(text):
        yield index, depth, quoted
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1


def _unquote(identifier: str) -> str:
    return identifier[1:-1] if identifier.startswith('"') and identifier.endswith('"') else identifier


def _first_relation_below(node: PlanNode) -> str | None:
    return next((below.table for below in node.walk() if below.table), None)


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _kb(kilobytes: float) -> str:
    return human_bytes(kilobytes * 1024)

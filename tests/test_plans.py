"""challengectl.plans on recorded and synthetic EXPLAIN (FORMAT JSON) documents: the node tree, the
totals, the indexes used, and each finding rule of docs/cli.md#explain firing and not firing."""

from __future__ import annotations

from typing import Any

import pytest

from challengectl.plans import (
    IndexInfo,
    PlanContext,
    PlanFormatError,
    TableInfo,
    analyze_plan,
    duplicates_of_primary_key,
    filter_shape,
    index_sql,
    indexes_used,
    parse_plan,
    plan_totals,
    split_conjuncts,
    timeout_analysis,
)

UGP = "user_goal_progress"
PKEY = IndexInfo(
    "user_goal_progress_pkey",
    UGP,
    ("user_id", "goal_id"),
    unique=True,
    primary=True,
    opclasses=("3126", "3126"),
    collations=("100", "100"),
)
ACTIVE = IndexInfo(
    "idx_ugp_user_active", UGP, ("user_id",), predicate="is_active", opclasses=("3126",), collations=("100",)
)
CREATE_ACTIVE = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ugp_user_active ON user_goal_progress (user_id) WHERE is_active;"
)

# Recorded on PostgreSQL 15 (trimmed to the fields the rules read): `active_goals` over 240 000 rows.
RECORDED_ACTIVE_GOALS: list[dict[str, Any]] = [
    {
        "Plan": {
            "Node Type": "Sort",
            "Plan Rows": 9,
            "Actual Startup Time": 0.149,
            "Actual Total Time": 0.15,
            "Actual Rows": 12,
            "Actual Loops": 1,
            "Sort Key": ["user_goal_progress.goal_id"],
            "Sort Method": "quicksort",
            "Sort Space Used": 26,
            "Sort Space Type": "Memory",
            "Shared Hit Blocks": 18,
            "Shared Read Blocks": 0,
            "Shared Dirtied Blocks": 0,
            "Shared Written Blocks": 0,
            "Plans": [
                {
                    "Node Type": "Bitmap Heap Scan",
                    "Parent Relationship": "Outer",
                    "Relation Name": UGP,
                    "Schema": "public",
                    "Alias": UGP,
                    "Plan Rows": 9,
                    "Actual Startup Time": 0.032,
                    "Actual Total Time": 0.117,
                    "Actual Rows": 12,
                    "Actual Loops": 1,
                    "Recheck Cond": "(((user_goal_progress.user_id)::text = 'user-000042'::text) AND user_goal_progress.is_active)",
                    "Rows Removed by Index Recheck": 0,
                    "Shared Hit Blocks": 15,
                    "Shared Read Blocks": 0,
                    "Plans": [
                        {
                            "Node Type": "Bitmap Index Scan",
                            "Parent Relationship": "Outer",
                            "Index Name": "idx_ugp_user_active",
                            "Plan Rows": 9,
                            "Actual Startup Time": 0.027,
                            "Actual Total Time": 0.028,
                            "Actual Rows": 12,
                            "Actual Loops": 1,
                            "Index Cond": "((user_goal_progress.user_id)::text = 'user-000042'::text)",
                            "Shared Hit Blocks": 3,
                            "Shared Read Blocks": 0,
                        }
                    ],
                }
            ],
        },
        "Planning Time": 0.302,
        "Execution Time": 0.176,
    }
]

# Recorded on PostgreSQL 15 after dropping idx_ugp_user_active and the primary key (trimmed).
RECORDED_SEQ_SCAN: list[dict[str, Any]] = [
    {
        "Plan": {
            "Node Type": "Gather Merge",
            "Plan Rows": 8,
            "Actual Startup Time": 30.379,
            "Actual Total Time": 37.127,
            "Actual Rows": 7,
            "Actual Loops": 1,
            "Workers Planned": 2,
            "Workers Launched": 2,
            "Shared Hit Blocks": 4567,
            "Shared Read Blocks": 0,
            "Plans": [
                {
                    "Node Type": "Sort",
                    "Parent Relationship": "Outer",
                    "Plan Rows": 4,
                    "Actual Startup Time": 22.685,
                    "Actual Total Time": 22.686,
                    "Actual Rows": 2,
                    "Actual Loops": 3,
                    "Sort Method": "quicksort",
                    "Sort Space Used": 25,
                    "Sort Space Type": "Memory",
                    "Shared Hit Blocks": 4567,
                    "Plans": [
                        {
                            "Node Type": "Seq Scan",
                            "Parent Relationship": "Outer",
                            "Parallel Aware": True,
                            "Relation Name": UGP,
                            "Schema": "public",
                            "Alias": UGP,
                            "Plan Rows": 4,
                            "Actual Startup Time": 12.965,
                            "Actual Total Time": 22.617,
                            "Actual Rows": 2,
                            "Actual Loops": 3,
                            "Filter": "(user_goal_progress.is_active AND ((user_goal_progress.user_id)::text = 'user-009427'::text))",
                            "Rows Removed by Filter": 79998,
                            "Shared Hit Blocks": 4493,
                        }
                    ],
                }
            ],
        },
        "Planning Time": 0.158,
        "Execution Time": 37.15,
    }
]


def node(node_type: str, *children: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A plan node; `fields` use PostgreSQL's keys with spaces written as underscores."""
    raw = {"Node Type": node_type, "Plan Rows": 1}
    raw.update({key.replace("_", " "): value for key, value in fields.items()})
    if children:
        raw["Plans"] = list(children)
    return raw


def doc(root: dict[str, Any], planning: float | None = 0.01, execution: float | None = 1.0) -> list[dict[str, Any]]:
    document: dict[str, Any] = {"Plan": root}
    if planning is not None:
        document["Planning Time"] = planning
    if execution is not None:
        document["Execution Time"] = execution
    return [document]


def analysed(actual_rows: float, loops: int = 1, total_ms: float = 0.1, **fields: Any) -> dict[str, Any]:
    return {
        "Actual_Rows": actual_rows,
        "Actual_Loops": loops,
        "Actual_Startup_Time": 0.0,
        "Actual_Total_Time": total_ms,
        **fields,
    }


def rules(document: Any, **context: Any) -> list[str]:
    return [finding.rule for finding in analyze_plan(document, PlanContext(**context)).findings]


def ugp_table(rows: float = 240_000, *indexes: IndexInfo) -> dict[str, TableInfo]:
    return {UGP: TableInfo(UGP, rows, indexes or (PKEY, ACTIVE))}


# --- parsing, totals, indexes used ---------------------------------------------------------------


def test_recorded_plan_parses_into_a_numbered_tree_with_totals() -> None:
    root = parse_plan(RECORDED_ACTIVE_GOALS)
    assert [(n.node_id, n.node_type) for n in root.walk()] == [
        (1, "Sort"),
        (2, "Bitmap Heap Scan"),
        (3, "Bitmap Index Scan"),
    ]
    bitmap = list(root.walk())[2]
    assert bitmap.table == UGP  # from the heap scan above it
    assert bitmap.label == "#3 Bitmap Index Scan on idx_ugp_user_active"
    totals = plan_totals(RECORDED_ACTIVE_GOALS)
    assert (totals.planning_ms, totals.execution_ms, totals.rows, totals.shared_hit_blocks) == (0.302, 0.176, 12, 18)
    assert parse_plan(RECORDED_ACTIVE_GOALS[0]).node_type == "Sort"  # the object itself is accepted too


def test_not_a_plan_is_rejected() -> None:
    with pytest.raises(PlanFormatError):
        parse_plan([{"QUERY PLAN": "Seq Scan"}])


def test_recorded_active_goals_uses_the_expected_index_without_warnings() -> None:
    analysis = analyze_plan(RECORDED_ACTIVE_GOALS, PlanContext(expect_index="idx_ugp_user_active", tables=ugp_table()))
    assert [(use.index, use.role) for use in analysis.indexes_used] == [("idx_ugp_user_active", "scan")]
    assert analysis.expected_index_used is True
    assert not analysis.has_severity("warn")
    assert [finding.rule for finding in analysis.findings] == ["planning_over_execution"]


def test_indexes_used_lists_scans_arbiters_and_insert_unique_checks_once() -> None:
    insert = node(
        "ModifyTable",
        node("Function Scan", Function_Name="unnest"),
        Operation="Insert",
        Relation_Name=UGP,
        Conflict_Arbiter_Indexes=["user_goal_progress_pkey"],
    )
    uses = indexes_used(parse_plan(doc(insert)), ugp_table())
    assert [(use.index, use.role) for use in uses] == [("user_goal_progress_pkey", "arbiter")]

    grants = TableInfo(
        "reward_grants",
        10,
        (IndexInfo("reward_grants_pkey", "reward_grants", ("namespace",), unique=True, primary=True),),
    )
    plain_insert = node("ModifyTable", node("Result"), Operation="Insert", Relation_Name="reward_grants")
    uses = indexes_used(parse_plan(doc(plain_insert)), {"reward_grants": grants})
    assert [(use.index, use.role) for use in uses] == [("reward_grants_pkey", "unique_check")]

    scans = node(
        "Nested Loop",
        node("Index Only Scan", Index_Name="a", Relation_Name=UGP),
        node("Index Scan", Index_Name="b", Relation_Name=UGP),
    )
    assert [use.index for use in indexes_used(parse_plan(doc(scans)))] == ["a", "b"]


# --- seq scan on a large table (crit) ------------------------------------------------------------


def test_recorded_seq_scan_is_critical_with_the_expected_index_as_advice() -> None:
    tables = ugp_table(240_000, IndexInfo("other", UGP, ("goal_id",)))
    analysis = analyze_plan(RECORDED_SEQ_SCAN, PlanContext(expect_index="idx_ugp_user_active", tables=tables))
    crit = [f for f in analysis.findings if f.severity == "crit"]
    assert [f.rule for f in crit] == ["seq_scan_large_table"]
    assert crit[0].node == "#3 Parallel Seq Scan on user_goal_progress"
    assert CREATE_ACTIVE in crit[0].advice
    assert analysis.has_severity("crit") and analysis.max_severity == "crit"
    assert {"expected_index_not_used", "rows_removed_by_filter", "slow_execution"} <= {
        f.rule for f in analysis.findings
    }


def test_seq_scan_advice_built_from_the_filter_when_no_expected_index_matches() -> None:
    scan = node(
        "Seq Scan",
        Relation_Name=UGP,
        Filter="((user_goal_progress.progress > 3) AND "
        "((user_goal_progress.status)::text = 'x'::text) AND (NOT user_goal_progress.is_active))",
    )
    findings = analyze_plan(doc(scan), PlanContext(tables=ugp_table())).findings
    advice = next(f.advice for f in findings if f.rule == "seq_scan_large_table")
    assert advice.startswith("CREATE INDEX CONCURRENTLY ON user_goal_progress (status, progress) WHERE NOT is_active;")


def test_seq_scan_advice_names_an_invalid_expected_index() -> None:
    invalid = IndexInfo("idx_ugp_user_active", UGP, ("user_id",), predicate="is_active", valid=False)
    scan = node(
        "Seq Scan",
        Relation_Name=UGP,
        Filter="(((user_goal_progress.user_id)::text = 'u'::text) AND user_goal_progress.is_active)",
    )
    findings = analyze_plan(doc(scan), PlanContext(tables=ugp_table(240_000, PKEY, invalid))).findings
    advice = next(f.advice for f in findings if f.rule == "seq_scan_large_table")
    assert "is INVALID" in advice and CREATE_ACTIVE in advice


def test_seq_scan_on_a_small_table_or_an_index_scan_is_not_flagged() -> None:
    scan = node("Seq Scan", Relation_Name=UGP, Filter="(user_goal_progress.progress > 3)")
    assert "seq_scan_large_table" not in rules(doc(scan), tables=ugp_table(9_000))
    assert "seq_scan_large_table" in rules(doc(scan), tables=ugp_table(9_000), large_table_rows=5_000)
    index_scan = node("Index Scan", Relation_Name=UGP, Index_Name="user_goal_progress_pkey")
    assert "seq_scan_large_table" not in rules(doc(index_scan), tables=ugp_table())
    # Without table statistics the node's own estimate decides.
    assert "seq_scan_large_table" in rules(doc(node("Seq Scan", Relation_Name=UGP, Plan_Rows=50_000)))


# --- expected index (warn) -----------------------------------------------------------------------


def test_expected_index_not_used_fires_with_create_advice_when_it_is_missing() -> None:
    plan = doc(node("Index Scan", Relation_Name=UGP, Index_Name="user_goal_progress_pkey"))
    analysis = analyze_plan(plan, PlanContext(expect_index="idx_ugp_user_active", tables=ugp_table(240_000, PKEY)))
    finding = next(f for f in analysis.findings if f.rule == "expected_index_not_used")
    assert finding.severity == "warn" and CREATE_ACTIVE in finding.advice
    assert "user_goal_progress_pkey" in finding.message
    assert analysis.expected_index_used is False


def test_without_statistics_or_on_a_tiny_table_the_plan_is_not_meaningful_yet() -> None:
    """A fresh install: the index exists, but the planner rightly scans a table it knows nothing about
    (or one this small); that is an info, not a missing-index warning."""
    scan = doc(node("Seq Scan", Relation_Name=UGP, Filter="((user_id)::text = 'u'::text)", Plan_Rows=10))
    no_statistics = {UGP: TableInfo(UGP, -1, (PKEY, ACTIVE), has_statistics=False)}
    for tables in (no_statistics, ugp_table(4_000)):
        analysis = analyze_plan(scan, PlanContext(expect_index="idx_ugp_user_active", tables=tables))
        assert [(f.rule, f.severity) for f in analysis.findings] == [("plan_not_meaningful", "info")]
        assert "statistics missing or table tiny" in analysis.findings[0].message
        assert "challengectl db analyze" in analysis.findings[0].advice
    # A large analyzed table that does not use its index is a real finding.
    analysis = analyze_plan(scan, PlanContext(expect_index="idx_ugp_user_active", tables=ugp_table(240_000)))
    assert ("expected_index_not_used", "warn") in [(f.rule, f.severity) for f in analysis.findings]


def test_expected_index_used_as_arbiter_or_scan_does_not_fire() -> None:
    upsert = node(
        "ModifyTable",
        node("Result"),
        Operation="Insert",
        Relation_Name=UGP,
        Conflict_Arbiter_Indexes=["user_goal_progress_pkey"],
    )
    assert "expected_index_not_used" not in rules(doc(upsert), expect_index="user_goal_progress_pkey")
    assert "expected_index_not_used" not in rules(RECORDED_ACTIVE_GOALS, expect_index="idx_ugp_user_active")
    assert "expected_index_not_used" not in rules(RECORDED_ACTIVE_GOALS)


# --- estimates, filters, spills, heap fetches ----------------------------------------------------


def test_row_estimate_off_by_ten_times_with_enough_actual_rows() -> None:
    off = node(
        "Index Scan",
        Relation_Name=UGP,
        Index_Name="x",
        Plan_Rows=10,
        Index_Cond="(user_id = 'u'::text)",
        **analysed(150),
    )
    findings = analyze_plan(doc(off), PlanContext()).findings
    finding = next(f for f in findings if f.rule == "row_estimate_off")
    assert "ANALYZE user_goal_progress" in finding.advice and "SET STATISTICS" in finding.advice
    assert "row_estimate_off" not in rules(doc(node("Seq Scan", Plan_Rows=1, **analysed(99))))
    assert "row_estimate_off" not in rules(doc(node("Seq Scan", Plan_Rows=50, **analysed(400))))
    assert "row_estimate_off" not in rules(doc(node("Seq Scan", Plan_Rows=5000)))  # no ANALYZE


def test_rows_removed_by_filter() -> None:
    wasteful = node(
        "Bitmap Heap Scan",
        Relation_Name=UGP,
        Filter="(user_goal_progress.progress > 3)",
        Rows_Removed_by_Filter=5000,
        **analysed(10),
    )
    finding = next(f for f in analyze_plan(doc(wasteful), PlanContext()).findings if f.rule == "rows_removed_by_filter")
    assert finding.severity == "warn" and "CREATE INDEX CONCURRENTLY ON user_goal_progress (progress)" in finding.advice
    few = node("Seq Scan", Relation_Name=UGP, Filter="(progress > 3)", Rows_Removed_by_Filter=900, **analysed(1))
    assert "rows_removed_by_filter" not in rules(doc(few))
    selective = node(
        "Seq Scan", Relation_Name=UGP, Filter="(progress > 3)", Rows_Removed_by_Filter=5000, **analysed(1000)
    )
    assert "rows_removed_by_filter" not in rules(doc(selective))


def test_sort_and_hash_spills() -> None:
    disk_sort = node(
        "Sort", Sort_Method="external merge", Sort_Space_Used=20480, Sort_Space_Type="Disk", **analysed(10)
    )
    finding = next(
        f for f in analyze_plan(doc(disk_sort), PlanContext(role="svc")).findings if f.rule == "spill_to_disk"
    )
    assert "ALTER ROLE svc SET work_mem = '64MB'" in finding.advice and "20.0 MB" in finding.advice
    batches = node("Hash", Hash_Batches=4, Peak_Memory_Usage=4000, **analysed(10))
    assert "spill_to_disk" in rules(doc(batches))
    in_memory = node(
        "Hash Join",
        node("Sort", Sort_Method="quicksort", Sort_Space_Used=25, Sort_Space_Type="Memory"),
        node("Hash", Hash_Batches=1, Peak_Memory_Usage=9),
    )
    assert "spill_to_disk" not in rules(doc(in_memory))


def test_heap_fetches_of_an_index_only_scan() -> None:
    fetching = node(
        "Index Only Scan", Relation_Name=UGP, Index_Name="user_goal_progress_pkey", Heap_Fetches=500, **analysed(600)
    )
    finding = next(f for f in analyze_plan(doc(fetching), PlanContext()).findings if f.rule == "heap_fetches")
    assert finding.severity == "info" and finding.advice.startswith("VACUUM user_goal_progress")
    clean = node(
        "Index Only Scan", Relation_Name=UGP, Index_Name="user_goal_progress_pkey", Heap_Fetches=0, **analysed(600)
    )
    assert "heap_fetches" not in rules(doc(clean))


# --- duplicate of the primary key ----------------------------------------------------------------


@pytest.mark.parametrize(
    "duplicate",
    [
        IndexInfo("ugp_user", UGP, ("user_id",), opclasses=("3126",), collations=("100",)),
        IndexInfo("ugp_user_goal", UGP, ("user_id", "goal_id"), opclasses=("3126", "3126"), collations=("100", "100")),
    ],
)
def test_duplicate_of_the_primary_key_is_flagged(duplicate: IndexInfo) -> None:
    plan = doc(node("Index Scan", Relation_Name=UGP, Index_Name="user_goal_progress_pkey"))
    findings = analyze_plan(plan, PlanContext(tables=ugp_table(240_000, PKEY, ACTIVE, duplicate))).findings
    finding = next(f for f in findings if f.rule == "duplicate_of_primary_key")
    assert finding.severity == "warn" and f"DROP INDEX CONCURRENTLY {duplicate.name};" in finding.advice
    assert finding.node is None  # the table has it; this plan does not use it
    used = doc(node("Index Scan", Relation_Name=UGP, Index_Name=duplicate.name))
    findings = analyze_plan(used, PlanContext(tables=ugp_table(240_000, PKEY, duplicate))).findings
    assert (
        next(f for f in findings if f.rule == "duplicate_of_primary_key").node
        == f"#1 Index Scan using {duplicate.name} on {UGP}"
    )


@pytest.mark.parametrize(
    "not_duplicate",
    [
        ACTIVE,  # partial: a different predicate
        IndexInfo("ugp_unique_user", UGP, ("user_id",), unique=True),
        IndexInfo("ugp_goal", UGP, ("goal_id",)),
        IndexInfo("ugp_user_pattern", UGP, ("user_id",), opclasses=("10049",), collations=("100",)),
        IndexInfo("ugp_user_c", UGP, ("user_id",), opclasses=("3126",), collations=("950",)),
        IndexInfo("ugp_wider", UGP, ("user_id", "goal_id", "status")),
    ],
)
def test_indexes_that_do_not_duplicate_the_primary_key(not_duplicate: IndexInfo) -> None:
    assert duplicates_of_primary_key(TableInfo(UGP, 1, (PKEY, not_duplicate))) == []


# --- totals-based rules --------------------------------------------------------------------------


def test_cold_cache() -> None:
    cold = node("Seq Scan", Shared_Hit_Blocks=3, Shared_Read_Blocks=40, **analysed(1))
    assert "cold_cache" in rules(doc(cold))
    warm = node("Seq Scan", Shared_Hit_Blocks=40, Shared_Read_Blocks=3, **analysed(1))
    assert "cold_cache" not in rules(doc(warm))


def test_planning_longer_than_execution() -> None:
    plan = node("Result", **analysed(1))
    assert "planning_over_execution" in rules(doc(plan, planning=2.0, execution=1.0))
    assert "planning_over_execution" not in rules(doc(plan, planning=0.5, execution=1.0))
    assert "planning_over_execution" not in rules(doc(plan, planning=2.0, execution=None))  # no ANALYZE


def test_slow_execution_thresholds_by_kind_and_advice_names_the_slowest_node() -> None:
    plan = node(
        "Nested Loop",
        node("Seq Scan", Relation_Name="t", **analysed(1, total_ms=18.0)),
        node("Index Scan", Relation_Name="t", Index_Name="i", **analysed(1, total_ms=1.0)),
        **analysed(1, total_ms=20.0),
    )
    findings = analyze_plan(doc(plan, execution=20.0), PlanContext(kind="read")).findings
    slow = next(f for f in findings if f.rule == "slow_execution")
    assert slow.severity == "warn" and slow.advice.split(";")[0].endswith("#2 Seq Scan on t 90% (18.00 ms)")
    assert "slow_execution" not in rules(doc(plan, execution=20.0), kind="write")
    assert "slow_execution" in rules(doc(plan, execution=60.0), kind="lock")
    assert "slow_execution" not in rules(doc(plan, execution=20.0), kind="read", slow_ms=25)


def test_timeout_is_a_critical_finding_pointing_at_the_blockers() -> None:
    analysis = timeout_analysis("lock_timeout", "1s", PlanContext(expect_index="x"))
    [finding] = analysis.findings
    assert finding.severity == "crit" and "db activity --blocking" in finding.advice
    assert analysis.has_severity("crit") and analysis.root is None


def test_gate_thresholds() -> None:
    analysis = analyze_plan(RECORDED_ACTIVE_GOALS, PlanContext(expect_index="something_else"))
    assert analysis.max_severity == "warn"
    assert analysis.has_severity("warn") and not analysis.has_severity("crit")


# --- filter parsing ------------------------------------------------------------------------------


def test_split_conjuncts_respects_parentheses_and_quotes() -> None:
    assert split_conjuncts("((a = 1) AND ((b)::text = 'x AND y'::text) AND (c OR d))") == [
        "a = 1",
        "(b)::text = 'x AND y'::text",
        "c OR d",
    ]


def test_filter_shape_and_index_sql() -> None:
    shape = filter_shape(
        "(((u.user_id)::text = ANY ('{a,b}'::text[])) AND (u.updated_at < '2024-01-01 00:00:00.5+00'::"
        "timestamp with time zone) AND u.is_active AND (u.goal_id = v.goal_id))"
    )
    assert shape.equality == ("user_id",) and shape.ranges == ("updated_at",) and shape.predicates == ("is_active",)
    assert index_sql("t", shape) == "CREATE INDEX CONCURRENTLY ON t (user_id, updated_at) WHERE is_active;"
    assert index_sql("t", filter_shape("(a.x OR a.y)")) == "CREATE INDEX CONCURRENTLY ON t (<the filtered columns>);"

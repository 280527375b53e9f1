"""Unit tests of the named-query registry parser and of the bundled `sql/queries.sql` (docs/data-model.md#named-queries, docs/cli.md#explain)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.storage.registry import (
    REQUIRED_QUERIES,
    NamedQuery,
    QueryParam,
    RegistryError,
    UnknownQueryError,
    load_registry,
)

# The docs/data-model.md#named-queries table: kind and declared parameters, in order. "all reward_grants columns" are the table's
# columns in table order; the flush's entry and goal-definition arrays are the registry's own contract.
DOCUMENTED_TABLE: dict[str, tuple[str, tuple[str, ...]]] = {
    "active_goals": ("read", ("user_id",)),
    "user_goal_count": ("read", ("user_id",)),
    "user_progress": ("read", ("user_id",)),
    "challenge_progress": ("read", ("user_id", "challenge_id")),
    "goals_by_ids": ("read", ("user_id", "goal_ids")),
    "active_view": ("read", ("user_id", "prereq_goal_ids")),
    "player_rows": ("read", ("user_id", "prereq_goal_ids", "every_row")),
    "register_default_goal_set": ("write", ("default_set_id", "goal_ids", "challenge_ids", "schedules")),
    "initialize_view": ("write", ("user_id", "namespace", "default_set_id", "now", "prereq_goal_ids")),
    "materialize_implied_goals": ("write", ("user_id", "goal_ids")),
    "set_goal_active": ("write", ("user_id", "goal_id", "challenge_id", "namespace", "is_active", "expires_at", "now")),
    "batch_set_goal_active": ("write", ("user_id", "namespace", "goal_ids", "challenge_ids", "expires_at", "now")),
    "deactivate_challenge_goals": ("write", ("user_id", "challenge_id", "keep_goal_ids")),
    "rotation_catch_up": ("write", ("user_id", "goal_ids", "boundaries", "next_boundaries", "reset_flags", "now")),
    "progress_for_update": ("lock", ("user_id", "goal_id")),
    "next_claim_generation": ("read", ("namespace", "user_id", "goal_id")),
    "record_claim": (
        "write",
        (
            "user_id",
            "goal_id",
            "now",
            "namespace",
            "generation",
            "challenge_id",
            "idempotency_key",
            "reward_type",
            "reward_id",
            "quantity",
            "mode",
            "attempts",
        ),
    ),
    "apply_event_updates": (
        "write",
        (
            "entry_user_ids",
            "entry_sources",
            "entry_values",
            "entry_incs",
            "entry_event_ats",
            "goal_ids",
            "goal_sources",
            "goal_progress_modes",
            "goal_targets",
            "goal_boundaries",
            "goal_next_boundaries",
            "goal_reset_flags",
            "goal_reselect_flags",
            "now",
        ),
    ),
    "delete_user_data": ("write", ("namespace", "user_id")),
    "backdate_user_goals": ("write", ("user_id", "goal_ids", "seconds")),
}

ARRAY_PARAMS = {
    "goal_ids",
    "challenge_ids",
    "prereq_goal_ids",
    "keep_goal_ids",
    "boundaries",
    "next_boundaries",
    "reset_flags",
    "schedules",
    "entry_user_ids",
    "entry_sources",
    "goal_sources",
}

VALID_ENTRY = """\
-- name: first_query
-- kind: read
-- params: user_id text
-- doc: First.
SELECT 1 WHERE %(user_id)s::text IS NOT NULL;
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "queries.sql"
    path.write_text(text, encoding="utf-8")
    return path


def test_required_queries_constant_is_the_spec_table() -> None:
    assert list(REQUIRED_QUERIES) == list(DOCUMENTED_TABLE)


def test_bundled_file_has_every_required_name_with_the_spec_kind_and_params() -> None:
    registry = load_registry()
    for name, (kind, params) in DOCUMENTED_TABLE.items():
        query = registry.get(name)
        assert query.kind == kind, name
        assert query.param_names == params, name
        assert query.doc, name
    for query in registry:
        for param in query.params:
            is_array = param.name in ARRAY_PARAMS or (
                query.name in ("apply_event_updates", "batch_set_goal_active")
                and param.name not in ("now", "user_id", "namespace")
            )
            assert param.type.endswith("[]") == is_array, (query.name, param)


def test_bundled_file_takes_time_only_from_the_now_parameter() -> None:
    for query in load_registry():
        assert "now()" not in query.sql.lower(), query.name
        assert "current_timestamp" not in query.sql.lower(), query.name
        if query.kind == "write" and query.name not in (
            "deactivate_challenge_goals",
            "delete_user_data",
            "register_default_goal_set",
            "materialize_implied_goals",
            "backdate_user_goals",
        ):
            assert "now" in query.param_names, query.name


def test_bundled_expect_index_names_are_spec_indexes() -> None:
    known = {
        "user_goal_progress_pkey",
        "idx_ugp_user_active",
        "reward_grants_pkey",
        "user_initializations_pkey",
        "default_goal_sets_pkey",
    }
    registry = load_registry()
    assert registry.get("active_goals").expect_index == "idx_ugp_user_active"
    for query in registry:
        assert query.expect_index in known | {None}, query.name


def test_statement_text_has_no_terminating_semicolon_and_doc_continues_across_lines() -> None:
    query = load_registry().get("apply_event_updates")
    assert not query.sql.rstrip().endswith(";")
    assert query.sql.lstrip().upper().startswith("WITH")
    assert "'deferred'" in query.doc and "'no_row'" in query.doc and "'applied'" in query.doc


def test_parses_fields_of_an_entry(tmp_path: Path) -> None:
    text = """\
-- A preamble comment is allowed.

-- name: two_params
-- kind: lock
-- params: user_id text, goal_ids text[]
-- expect-index: some_index
-- doc: Locks things,
--      over two lines.
SELECT 1
  FROM t
 WHERE a = %(user_id)s AND b = ANY (%(goal_ids)s) AND c LIKE 'x%%'
   FOR UPDATE;

-- trailing comment of the entry
"""
    registry = load_registry(_write(tmp_path, text), required=("two_params",))
    query = registry.get("two_params")
    assert query == NamedQuery(
        name="two_params",
        kind="lock",
        params=(QueryParam("user_id", "text"), QueryParam("goal_ids", "text[]")),
        sql="SELECT 1\n  FROM t\n WHERE a = %(user_id)s AND b = ANY (%(goal_ids)s) AND c LIKE 'x%%'\n   FOR UPDATE",
        expect_index="some_index",
        doc="Locks things, over two lines.",
    )
    assert registry.names() == ["two_params"]
    assert [q.name for q in registry] == ["two_params"]


def test_numbered_form_has_postgresql_placeholders_in_order_of_first_use() -> None:
    params = (QueryParam("b", "bigint"), QueryParam("a", "text"))
    query = NamedQuery("q", "read", params, "SELECT %(a)s, %(b)s::bigint, %(a)s LIKE 'x%%'", None, "")
    assert query.numbered() == ("SELECT $1, $2::bigint, $1 LIKE 'x%'", ("a", "b"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (VALID_ENTRY + "\n" + VALID_ENTRY, "duplicate query name 'first_query'"),
        (VALID_ENTRY.replace("IS NOT NULL", "= %(goal_id)s"), "not declared in '-- params:': goal_id"),
        (VALID_ENTRY.replace("%(user_id)s::text", "1"), "declared parameters not used by the statement: user_id"),
        (VALID_ENTRY.replace("NULL;", "NULL; SELECT 2;"), "2 statements"),
        (VALID_ENTRY.replace("kind: read", "kind: query"), "kind 'query' is not one of read, write, lock"),
        (VALID_ENTRY.replace("IS NOT NULL", "LIKE '5%'"), "not a named placeholder"),
        (VALID_ENTRY.replace("IS NOT NULL", "= %s"), "not a named placeholder"),
        (VALID_ENTRY.replace("NULL;", "NULL"), "does not end with ';'"),
        (VALID_ENTRY.replace("-- doc: First.\n", ""), "missing '-- doc:' header"),
        (VALID_ENTRY.replace("-- doc:", "-- docs:"), "unknown header field 'docs'"),
        (VALID_ENTRY.replace("user_id text", "user_id text, user_id text"), "parameter 'user_id' declared twice"),
        ("SELECT 1;\n" + VALID_ENTRY, "SQL text before the first '-- name:' header"),
    ],
    ids=[
        "duplicate",
        "undeclared-placeholder",
        "unused-param",
        "two-statements",
        "bad-kind",
        "bare-percent",
        "positional",
        "no-semicolon",
        "no-doc",
        "unknown-field",
        "param-twice",
        "text-before-first-name",
    ],
)
def test_malformed_files_raise_registry_error_naming_file_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(RegistryError) as raised:
        load_registry(path, required=())
    assert message in str(raised.value)
    assert str(path) in str(raised.value)


def test_missing_required_name_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="required queries missing: second_query, third_query"):
        load_registry(_write(tmp_path, VALID_ENTRY), required=("first_query", "second_query", "third_query"))


def test_unreadable_file_raises_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read query registry"):
        load_registry(tmp_path / "absent.sql", required=())


def test_unknown_name_gives_close_matches() -> None:
    registry = load_registry()
    with pytest.raises(UnknownQueryError) as raised:
        registry.get("active_goal")
    assert raised.value.name == "active_goal"
    assert "active_goals" in raised.value.close_matches
    assert "did you mean: active_goals" in str(raised.value)
    with pytest.raises(UnknownQueryError) as nothing_close:
        registry.get("zzzz")
    assert nothing_close.value.close_matches == []
    assert str(nothing_close.value) == "unknown query 'zzzz'"


def test_lookup_treats_dash_and_underscore_alike() -> None:
    registry = load_registry()
    assert registry.lookup("active-goals") is registry.get("active_goals")
    assert registry.lookup("apply-event_updates").name == "apply_event_updates"
    with pytest.raises(UnknownQueryError) as raised:
        registry.lookup("active-goal")
    assert raised.value.name == "active-goal"
    assert raised.value.close_matches[0] == "active_goals"
    with pytest.raises(UnknownQueryError):
        registry.get("active-goals")


def test_the_cli_statements_load_through_the_same_registry() -> None:
    from challengectl.cli_queries import CLI_QUERIES, cli_registry

    registry = cli_registry()
    assert sorted(query.name for query in registry) == sorted(CLI_QUERIES)
    assert {query.name: [param.name for param in query.params] for query in registry}["cli_reward_grants"] == [
        "namespace",
        "user_id",
    ]

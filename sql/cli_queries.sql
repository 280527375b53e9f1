-- The CLI's own statements (diagnostics, `users`, `cache warm`, `loadtest --reset`), named like the
-- service's in sql/queries.sql and loaded through the same registry (challengectl/cli_queries.py).
-- Entry format: as in sql/queries.sql.

-- name: cli_reward_grants
-- kind: read
-- params: namespace text, user_id text
-- doc: Every reward grant of one user in the namespace, by goal and generation (`users show`).
SELECT goal_id, generation, challenge_id, idempotency_key, reward_type, reward_id, quantity, mode, attempts, granted_at
  FROM reward_grants
 WHERE namespace = %(namespace)s AND user_id = %(user_id)s
 ORDER BY goal_id, generation;


-- name: cli_active_users_page
-- kind: read
-- params: after text, page int
-- expect-index: idx_ugp_user_active
-- doc: One page of the users with an active row or an initialization record (whose default goals are implied,
--      docs/data-model.md#implied-default-goals), after `after` (keyset pagination, `cache warm --all-active`).
SELECT user_id
  FROM (SELECT user_id FROM user_goal_progress WHERE is_active AND user_id > %(after)s
        UNION
        SELECT user_id FROM user_initializations WHERE user_id > %(after)s) AS users
 ORDER BY user_id
 LIMIT %(page)s;


-- name: cli_catalog_rows
-- kind: read
-- params: goal_ids text[], challenge_ids text[]
-- doc: Progress rows whose goal is not in the catalog, or whose challenge_id differs from the catalog's,
--      counted per goal (`doctor`'s catalog-rows check); at most 20 groups.
SELECT p.goal_id, p.challenge_id, c.challenge_id AS catalog_challenge_id, count(*) AS row_count
FROM user_goal_progress p
LEFT JOIN unnest(%(goal_ids)s::text[], %(challenge_ids)s::text[]) AS c(goal_id, challenge_id)
  ON c.goal_id = p.goal_id
WHERE c.goal_id IS NULL OR c.challenge_id <> p.challenge_id
GROUP BY p.goal_id, p.challenge_id, c.challenge_id
ORDER BY row_count DESC, p.goal_id
LIMIT 20;


-- name: cli_truncate_tables
-- kind: write
-- params:
-- doc: Empties the progress, initialization and grant tables; the schema, migrations and default goal sets stay
--      (`loadtest run --reset`).
TRUNCATE user_goal_progress, user_initializations, reward_grants;


-- name: cli_server_version
-- kind: read
-- params:
-- doc: The server's version string (`version`, `doctor`'s postgres check).
SELECT current_setting('server_version') AS server_version;


-- name: cli_ping
-- kind: read
-- params:
-- doc: One round trip that reads nothing (`doctor`'s postgres check times three of them).
SELECT 1 AS one;


-- name: cli_server_info
-- kind: read
-- params:
-- doc: Server settings, database size and block hits (`db tables`, `top`); the connection limits are
--      `cli_connection_limits`.
SELECT current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       current_setting('shared_buffers') AS shared_buffers,
       current_setting('work_mem') AS work_mem,
       (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries') AS shared_preload_libraries,
       current_setting('TimeZone') AS timezone,
       current_database() AS database,
       pg_database_size(current_database()) AS database_size_bytes,
       coalesce(d.blks_hit, 0) AS blks_hit,
       coalesce(d.blks_read, 0) AS blks_read,
       d.stats_reset
FROM (SELECT 1) AS one
LEFT JOIN pg_stat_database d ON d.datname = current_database();


-- name: cli_connection_limits
-- kind: read
-- params:
-- doc: The connection limits and the client sessions of the whole server (every database): the inputs of
--      the usable and free connection figures (`db activity`, `db tables`, `pool`, `top`, `doctor`, load-test
--      snapshots). reserved_connections exists from PostgreSQL 16 (0 before).
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       coalesce(nullif(current_setting('reserved_connections', true), ''), '0')::int AS reserved_connections,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS client_sessions;


-- name: cli_connections_by_state
-- kind: read
-- params: unknown_state text, include_self boolean
-- doc: Client sessions of the current database (this one only with `include_self`), by state and
--      application_name: how many wait on the client, and how many on locks or I/O (`db activity`, `pool`,
--      `top`, load-test snapshots). A state PostgreSQL hides (no pg_read_all_stats) is `unknown_state`.
SELECT coalesce(state, %(unknown_state)s) AS state,
       coalesce(application_name, '') AS application_name,
       count(*)::int AS connections,
       (count(*) FILTER (WHERE wait_event_type = 'Client'))::int AS waiting_on_client,
       (count(*) FILTER (WHERE wait_event_type IN ('Lock', 'LWLock', 'IO', 'BufferPin')))::int AS waiting_on_server
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND (%(include_self)s OR pid <> pg_backend_pid())
GROUP BY 1, 2
ORDER BY 3 DESC, 1, 2;


-- name: cli_service_sessions
-- kind: read
-- params:
-- doc: The service's own sessions (its pools name them challengectl-<role>) running a statement, and how
--      many of those wait on locks or I/O: the PostgreSQL side of the bottleneck rule (`pool`, `doctor`).
SELECT (count(*) FILTER (WHERE state = 'active'))::int AS active,
       (count(*) FILTER (WHERE state = 'active' AND wait_event_type IN ('Lock', 'LWLock', 'IO', 'BufferPin')))::int
         AS waiting
  FROM pg_stat_activity
 WHERE datname = current_database()
   AND application_name LIKE 'challengectl-%%'
   AND application_name NOT IN ('challengectl-cli', 'challengectl-loadtest');


-- name: cli_sessions
-- kind: read
-- params: pid int, state text, min_duration_ms float8
-- doc: With `pid`: that backend, in any database (`db cancel`, `db terminate`). Without (NULL): the client
--      sessions of the current database other than this one, running at least `min_duration_ms`, longest
--      first: the non-idle ones, or those in `state` when it is not NULL (`db activity`, `top`). The duration
--      runs from query_start, or xact_start when idle in a transaction; the query is cut to 200 characters.
SELECT * FROM (
  SELECT pid, usename::text AS usename, application_name, host(client_addr) AS client_addr, state,
         wait_event_type, wait_event,
         (1000 * extract(epoch FROM now() - CASE WHEN state LIKE 'idle in transaction%%' THEN xact_start
                                                 ELSE query_start END))::float8 AS duration_ms,
         left(query, 200) AS query
  FROM pg_stat_activity
  WHERE CASE WHEN %(pid)s::int IS NOT NULL THEN pid = %(pid)s
             ELSE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
                  AND CASE WHEN %(state)s::text IS NULL THEN state IS DISTINCT FROM 'idle' ELSE state = %(state)s END
        END
) AS sessions
WHERE %(pid)s::int IS NOT NULL OR coalesce(duration_ms, 0) >= %(min_duration_ms)s
ORDER BY duration_ms DESC NULLS LAST, pid;


-- name: cli_blocked_sessions
-- kind: read
-- params:
-- doc: Every backend of the current database waiting for a lock: the ungranted lock and its wait so far
--      (pg_locks.waitstart from PostgreSQL 14, read through to_jsonb so that older servers fall back to the
--      state change), the table, and the pids pg_blocking_pids names (`db activity --blocking`, `top`).
SELECT a.pid, a.usename::text AS usename, a.application_name, a.state, a.wait_event_type, a.wait_event,
       (1000 * extract(epoch FROM now() - a.query_start))::float8 AS query_ms,
       (1000 * extract(epoch FROM now() - coalesce(waiting.waitstart, a.state_change)))::float8 AS lock_wait_ms,
       waiting.mode AS lock_mode, waiting.locktype AS lock_type,
       coalesce(waiting.relation, tuple_lock.relation)::regclass::text AS relation,
       left(a.query, 200) AS query,
       pg_blocking_pids(a.pid) AS blocker_pids
FROM pg_stat_activity a
LEFT JOIN LATERAL (
  SELECT l.mode, l.locktype, l.relation, (to_jsonb(l) ->> 'waitstart')::timestamptz AS waitstart
  FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted LIMIT 1
) AS waiting ON true
-- A row-lock wait is on the holder's transaction id; the tuple lock names the table.
LEFT JOIN LATERAL (
  SELECT l.relation FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'tuple' LIMIT 1
) AS tuple_lock ON true
WHERE a.datname = current_database() AND cardinality(pg_blocking_pids(a.pid)) > 0
ORDER BY lock_wait_ms DESC NULLS LAST, a.pid;


-- name: cli_blockers
-- kind: read
-- params: pids int[]
-- doc: The backends `pids` that block others: transaction age, query (200 characters) and whom they wait
--      for themselves (`db activity --blocking`, `top`).
SELECT pid, usename::text AS usename, application_name, state,
       (1000 * extract(epoch FROM now() - xact_start))::float8 AS xact_age_ms,
       left(query, 200) AS query,
       pg_blocking_pids(pid) AS blocked_by
FROM pg_stat_activity
WHERE pid = ANY(%(pids)s)
ORDER BY pid;


-- name: cli_cancel_backend
-- kind: write
-- params: pid int
-- doc: Destructive: cancels the statement of backend `pid`; false when no signal was sent (`db cancel`).
SELECT pg_cancel_backend(%(pid)s) AS signalled;


-- name: cli_terminate_backend
-- kind: write
-- params: pid int
-- doc: Destructive: ends backend `pid`; false when no signal was sent (`db terminate`).
SELECT pg_terminate_backend(%(pid)s) AS signalled;


-- name: cli_statement_stats_extension
-- kind: read
-- params:
-- doc: The schema and version of the pg_stat_statements extension of this database, if created (`db queries`).
SELECT n.nspname AS schema, e.extversion AS version
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'pg_stat_statements';


-- name: cli_statement_stats_columns
-- kind: read
-- params: schema text
-- doc: The column names of the pg_stat_statements view in `schema`, which differ across versions (`db queries`).
SELECT a.attname::text AS name FROM pg_attribute a
WHERE a.attrelid = to_regclass(format('%%I.pg_stat_statements', %(schema)s::text)) AND a.attnum > 0
  AND NOT a.attisdropped;


-- name: cli_statement_stats_status
-- kind: read
-- params:
-- doc: shared_preload_libraries and the version of the created pg_stat_statements extension, if any
--      (`doctor`'s pg-stat-statements check).
SELECT current_setting('shared_preload_libraries') AS preload_libraries,
       (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements') AS version;


-- name: cli_project_indexes
-- kind: read
-- params: tables text[]
-- doc: Every index of the tables named (through the search_path): definition parts for comparisons,
--      validity, usage and size (`db indexes`, `doctor`'s indexes check).
SELECT t.relname::text AS table_name, ic.relname::text AS index_name,
       ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true) FROM generate_series(1, i.indnkeyatts) k) AS columns,
       ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)
             FROM generate_series(i.indnkeyatts + 1, i.indnatts) k) AS include_columns,
       ARRAY(SELECT i.indclass[k]::int8 FROM generate_series(0, i.indnkeyatts - 1) k) AS opclasses,
       ARRAY(SELECT i.indcollation[k]::int8 FROM generate_series(0, i.indnkeyatts - 1) k) AS collations,
       am.amname::text AS access_method,
       pg_get_expr(i.indpred, i.indrelid, true) AS predicate,
       pg_get_expr(i.indexprs, i.indrelid, true) AS expressions,
       i.indisprimary AS is_primary, i.indisunique AS is_unique, i.indisvalid AS is_valid,
       (SELECT c.conname::text FROM pg_constraint c
        WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
        LIMIT 1) AS constraint_name,
       coalesce(s.idx_scan, 0) AS idx_scan, coalesce(s.idx_tup_read, 0) AS idx_tup_read,
       coalesce(s.idx_tup_fetch, 0) AS idx_tup_fetch,
       pg_relation_size(i.indexrelid) AS size_bytes,
       pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_am am ON am.oid = ic.relam
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
WHERE i.indrelid IN (SELECT to_regclass(name) FROM unnest(%(tables)s::text[]) AS name)
ORDER BY t.relname, ic.relname;


-- name: cli_stats_age
-- kind: read
-- params:
-- doc: How long the usage counters of the current database have been accumulating: since stats_reset, or
--      since the server started when they were never reset (`db indexes`).
SELECT d.stats_reset, coalesce(d.stats_reset, pg_postmaster_start_time()) AS since,
       extract(epoch FROM now() - coalesce(d.stats_reset, pg_postmaster_start_time()))::float8 AS age_s
FROM (SELECT 1) AS one LEFT JOIN pg_stat_database d ON d.datname = current_database();


-- name: cli_existing_tables
-- kind: read
-- params: tables text[]
-- doc: Those of the tables named that exist, through the search_path (`db tables`, `doctor`).
SELECT name FROM unnest(%(tables)s::text[]) AS name WHERE to_regclass(name) IS NOT NULL;


-- name: cli_table_stats
-- kind: read
-- params: tables text[]
-- doc: Sizes, row estimates, scans, writes, vacuum/analyze history and block hits of the tables named that
--      exist (`db tables`, load-test snapshots).
SELECT c.relname::text AS table_name,
       pg_total_relation_size(c.oid) AS total_bytes, pg_table_size(c.oid) AS table_bytes,
       pg_indexes_size(c.oid) AS indexes_bytes,
       CASE WHEN c.reltoastrelid = 0 THEN 0 ELSE pg_total_relation_size(c.reltoastrelid) END AS toast_bytes,
       -- reltuples is -1 before the first VACUUM/ANALYZE (PostgreSQL 14+): no estimate yet.
       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::int8 END AS estimated_rows,
       coalesce(s.n_live_tup, 0) AS live_rows, coalesce(s.n_dead_tup, 0) AS dead_rows,
       round(100.0 * s.n_dead_tup / nullif(s.n_live_tup + s.n_dead_tup, 0), 2)::float8 AS dead_pct,
       coalesce(s.seq_scan, 0) AS seq_scan, coalesce(s.seq_tup_read, 0) AS seq_tup_read,
       coalesce(s.idx_scan, 0) AS idx_scan, coalesce(s.idx_tup_fetch, 0) AS idx_tup_fetch,
       coalesce(s.n_tup_ins, 0) AS n_tup_ins, coalesce(s.n_tup_upd, 0) AS n_tup_upd,
       coalesce(s.n_tup_hot_upd, 0) AS n_tup_hot_upd,
       round(100.0 * s.n_tup_hot_upd / nullif(s.n_tup_upd, 0), 2)::float8 AS hot_update_pct,
       coalesce(s.n_tup_del, 0) AS n_tup_del, coalesce(s.n_mod_since_analyze, 0) AS n_mod_since_analyze,
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
       coalesce(s.vacuum_count, 0) AS vacuum_count, coalesce(s.autovacuum_count, 0) AS autovacuum_count,
       coalesce(s.analyze_count, 0) AS analyze_count, coalesce(s.autoanalyze_count, 0) AS autoanalyze_count,
       coalesce(io.heap_blks_hit, 0) AS heap_blks_hit, coalesce(io.heap_blks_read, 0) AS heap_blks_read,
       coalesce(io.idx_blks_hit, 0) AS idx_blks_hit, coalesce(io.idx_blks_read, 0) AS idx_blks_read
FROM pg_class c
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
LEFT JOIN pg_statio_user_tables io ON io.relid = c.oid
WHERE c.oid IN (SELECT to_regclass(name) FROM unnest(%(tables)s::text[]) AS name)
ORDER BY c.relname;


-- name: cli_clock
-- kind: read
-- params:
-- doc: The session's TimeZone and the server's clock (`doctor`'s time check).
SELECT current_setting('TimeZone') AS timezone, clock_timestamp() AS server_now;


-- name: cli_explain_timeouts
-- kind: read
-- params: statement_timeout text, lock_timeout text
-- doc: Sets the statement and lock timeouts for the current transaction only (`explain`).
SELECT set_config('statement_timeout', %(statement_timeout)s, true) AS statement_timeout,
       set_config('lock_timeout', %(lock_timeout)s, true) AS lock_timeout;


-- name: cli_progress_has_rows
-- kind: read
-- params:
-- doc: Whether user_goal_progress has any row, or a player is initialized (its default goals implied,
--      docs/data-model.md#implied-default-goals; `explain`'s user sampling).
SELECT EXISTS (SELECT 1 FROM user_goal_progress) OR EXISTS (SELECT 1 FROM user_initializations) AS has_rows;


-- name: cli_progress_reltuples
-- kind: read
-- params:
-- doc: The planner's row estimate of user_goal_progress, to size the sample (`explain`).
SELECT reltuples::float8 AS reltuples FROM pg_class WHERE oid = 'user_goal_progress'::regclass;


-- name: cli_sample_user_ids
-- kind: read
-- params: percent float8, rows int
-- doc: The user ids of up to `rows` rows of user_goal_progress and of user_initializations drawn from `percent` % of
--      their pages (TABLESAMPLE SYSTEM; `explain`'s user sampling).
SELECT user_id
  FROM (SELECT user_id FROM user_goal_progress TABLESAMPLE SYSTEM (%(percent)s)
        UNION ALL
        SELECT user_id FROM user_initializations TABLESAMPLE SYSTEM (%(percent)s)) AS sampled
 LIMIT %(rows)s;


-- name: cli_heaviest_user
-- kind: read
-- params: user_ids text[]
-- doc: Of the users given, the one with the most rows (`explain --sample heavy`).
SELECT user_id FROM goal_progress WHERE user_id = ANY (%(user_ids)s::text[])
GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1;


-- name: cli_user_rows
-- kind: read
-- params: user_id text
-- expect-index: user_goal_progress_pkey
-- doc: The rows of one user that `explain` derives parameters from, real or implied, by goal_id.
SELECT goal_id, challenge_id, namespace, progress, status, is_active FROM goal_progress
WHERE user_id = %(user_id)s::text ORDER BY goal_id;


-- name: cli_plan_tables
-- kind: read
-- params: schemas text[], names text[]
-- doc: Oid, row estimate and whether statistics exist, of the (schema, table) pairs a plan touches; their
--      indexes are `cli_project_indexes` (`explain`).
SELECT c.oid::int8 AS oid, n.nspname::text AS schema, c.relname::text AS relname, c.reltuples::float8 AS reltuples,
       EXISTS (SELECT 1 FROM pg_stats AS s WHERE s.schemaname = n.nspname AND s.tablename = c.relname) AS has_statistics
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[]));

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
-- doc: One page of the users with an active row, after `after` (keyset pagination, `cache warm --all-active`).
SELECT DISTINCT user_id
  FROM user_goal_progress
 WHERE is_active AND user_id > %(after)s
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
-- doc: Empties the progress and grant tables; the schema and migrations stay (`loadtest run --reset`).
TRUNCATE user_goal_progress, reward_grants;

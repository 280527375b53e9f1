-- The named-query registry (docs/data-model.md#named-queries): every statement the service runs, each under a name.
--
-- Entry format: a header of `-- key: value` lines, then exactly one statement ending with `;`.
--   -- name:          unique name; `challengectl explain NAME` accepts `-` for `_`
--   -- kind:          read | write | lock
--   -- params:        `name type` pairs, comma-separated, in binding order of docs/data-model.md#named-queries
--   -- expect-index:  (optional) the index the planner is expected to use
--   -- doc:           one sentence; indented `--   ` lines continue it
-- Placeholders are psycopg named placeholders; a literal percent sign must be doubled.
-- Every timestamp written comes from the `now` parameter, never from the server clock.
-- Rows are returned with the columns of user_goal_progress in table order.


-- name: active_goals
-- kind: read
-- params: user_id text
-- expect-index: idx_ugp_user_active
-- doc: Active rows of one user, by goal_id (initialize, active_only listing, cache fill).
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       created_at, updated_at, is_active, assigned_at, expires_at, baseline_value
  FROM goal_progress
 WHERE user_id = %(user_id)s::text
   AND is_active
 ORDER BY goal_id;


-- name: user_goal_count
-- kind: read
-- params: user_id text
-- expect-index: user_goal_progress_pkey
-- doc: Number of rows of one user, active or not (users show, loadtest preflight).
SELECT count(*) AS goal_count
  FROM goal_progress
 WHERE user_id = %(user_id)s::text;


-- name: user_progress
-- kind: read
-- params: user_id text
-- expect-index: user_goal_progress_pkey
-- doc: All rows of one user, by goal_id (GET /v1/challenges without active_only).
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       created_at, updated_at, is_active, assigned_at, expires_at, baseline_value
  FROM goal_progress
 WHERE user_id = %(user_id)s::text
 ORDER BY goal_id;


-- name: challenge_progress
-- kind: read
-- params: user_id text, challenge_id text
-- expect-index: user_goal_progress_pkey
-- doc: Rows of one user in one challenge, by goal_id (single-challenge GET, batch and random select).
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       created_at, updated_at, is_active, assigned_at, expires_at, baseline_value
  FROM goal_progress
 WHERE user_id = %(user_id)s::text
   AND challenge_id = %(challenge_id)s::text
 ORDER BY goal_id;


-- name: goals_by_ids
-- kind: read
-- params: user_id text, goal_ids text[]
-- expect-index: user_goal_progress_pkey
-- doc: Rows of one user for the listed goals, by goal_id (prerequisite lookups); callers skip it for an empty list.
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       created_at, updated_at, is_active, assigned_at, expires_at, baseline_value
  FROM goal_progress
 WHERE user_id = %(user_id)s::text
   AND goal_id = ANY (%(goal_ids)s::text[])
 ORDER BY goal_id;


-- name: active_view
-- kind: read
-- params: user_id text, prereq_goal_ids text[]
-- expect-index: idx_ugp_user_active
-- doc: Active rows of one user plus its rows of the listed prerequisite goals, each row once, by goal_id.
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       created_at, updated_at, is_active, assigned_at, expires_at, baseline_value
  FROM goal_progress
 WHERE user_id = %(user_id)s::text
   AND is_active
UNION ALL
-- The second branch takes only inactive rows, so no row comes twice and no de-duplication is needed.
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       created_at, updated_at, is_active, assigned_at, expires_at, baseline_value
  FROM goal_progress
 WHERE user_id = %(user_id)s::text
   AND goal_id = ANY (%(prereq_goal_ids)s::text[])
   AND NOT is_active
 ORDER BY goal_id;


-- name: player_rows
-- kind: read
-- params: user_id text, prereq_goal_ids text[], every_row boolean
-- expect-index: user_initializations_pkey
-- doc: The player's initialization (default set and instant, NULL when not initialized) and real rows, without the
--      implied ones, which the service builds from the catalog (docs/data-model.md#implied-default-goals): every row
--      with every_row, otherwise the active rows, the rows of the listed prerequisite goals and the set's other
--      (inactive) rows. `in_view`: the row is active or a listed prerequisite. At least one row, by goal_id.
SELECT i.default_set_id, i.initialized_at, i.namespace AS initialized_namespace, r.in_view,
       r.user_id, r.goal_id, r.challenge_id, r.namespace, r.progress, r.status, r.completed_at, r.claimed_at,
       r.created_at, r.updated_at, r.is_active, r.assigned_at, r.expires_at, r.baseline_value
  FROM (SELECT 1) AS one
  LEFT JOIN user_initializations AS i ON i.user_id = %(user_id)s::text
  LEFT JOIN LATERAL (
       SELECT u.user_id, u.goal_id, u.challenge_id, u.namespace, u.progress, u.status, u.completed_at, u.claimed_at,
              u.created_at, u.updated_at, u.is_active, u.assigned_at, u.expires_at, u.baseline_value,
              (u.is_active OR u.goal_id = ANY (%(prereq_goal_ids)s::text[])) AS in_view
         FROM user_goal_progress AS u
        WHERE u.user_id = %(user_id)s::text
          AND (%(every_row)s::boolean OR u.is_active OR u.goal_id = ANY (%(prereq_goal_ids)s::text[])
               OR EXISTS (SELECT 1 FROM default_goal_sets AS d
                           WHERE d.set_id = i.default_set_id AND d.goal_id = u.goal_id))
  ) AS r ON true
 ORDER BY r.goal_id;


-- name: register_default_goal_set
-- kind: write
-- params: default_set_id text, goal_ids text[], challenge_ids text[], schedules text[]
-- expect-index: default_goal_sets_pkey
-- doc: Records the members of one default goal set (docs/data-model.md#implied-default-goals) unless already recorded; run
--      once per process before its first initialize.
INSERT INTO default_goal_sets (set_id, goal_id, challenge_id, schedule)
SELECT %(default_set_id)s::text, d.goal_id, d.challenge_id, d.schedule
  FROM unnest(%(goal_ids)s::text[], %(challenge_ids)s::text[], %(schedules)s::text[]) AS d (goal_id, challenge_id, schedule)
    ON CONFLICT (set_id, goal_id) DO NOTHING;


-- name: initialize_view
-- kind: write
-- params: user_id text, namespace text, default_set_id text, now timestamptz, prereq_goal_ids text[]
-- expect-index: user_initializations_pkey
-- doc: Initialize in one round trip (docs/rules.md#initialize): records the player's default set at now (one row, however
--      many defaults) unless the same set is recorded; when another set was recorded, its implied rows become real rows
--      first. Returns the instant and namespace the set in force applies from (`initialized_at` NULL: a concurrent
--      first initialize committed after the snapshot, the caller then reads player_rows in a new statement),
--      `inserted` (true: this call recorded the set) and the real rows as player_rows returns them (the implied rows of the set
--      in force are the service's to build), by goal_id; at least one row.
WITH previous AS (
    SELECT default_set_id, initialized_at, namespace FROM user_initializations WHERE user_id = %(user_id)s::text
),
kept AS (
    -- A changed default set: the old set's implied rows stay as they were, as real rows (goal_id order).
    INSERT INTO user_goal_progress
           (user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
            created_at, updated_at, is_active, assigned_at, expires_at, baseline_value, value_event_at)
    SELECT p.user_id, p.goal_id, p.challenge_id, p.namespace, p.progress, p.status, p.completed_at, p.claimed_at,
           p.created_at, p.updated_at, p.is_active, p.assigned_at, p.expires_at, p.baseline_value, p.value_event_at
      FROM implied_goal_progress AS p
     WHERE p.user_id = %(user_id)s::text
       AND EXISTS (SELECT 1 FROM previous WHERE previous.default_set_id <> %(default_set_id)s::text)
     ORDER BY p.goal_id
        ON CONFLICT (user_id, goal_id) DO NOTHING
    RETURNING user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
              created_at, updated_at, is_active, assigned_at, expires_at, baseline_value
),
recorded AS (
    INSERT INTO user_initializations AS i (user_id, namespace, default_set_id, initialized_at)
    VALUES (%(user_id)s::text, %(namespace)s::text, %(default_set_id)s::text, %(now)s::timestamptz)
        ON CONFLICT (user_id) DO UPDATE
       SET namespace = excluded.namespace, default_set_id = excluded.default_set_id,
           initialized_at = excluded.initialized_at
     WHERE i.default_set_id <> excluded.default_set_id
    RETURNING initialized_at, namespace
),
applied AS (
    -- The instant the set in force applies from: assigned by this call, or unchanged from the snapshot.
    SELECT initialized_at, namespace, true AS inserted FROM recorded
    UNION ALL
    SELECT initialized_at, namespace, false FROM previous WHERE default_set_id = %(default_set_id)s::text
),
real_rows AS (
    SELECT u.user_id, u.goal_id, u.challenge_id, u.namespace, u.progress, u.status, u.completed_at, u.claimed_at,
           u.created_at, u.updated_at, u.is_active, u.assigned_at, u.expires_at, u.baseline_value,
           (u.is_active OR u.goal_id = ANY (%(prereq_goal_ids)s::text[])) AS in_view
      FROM user_goal_progress AS u
     WHERE u.user_id = %(user_id)s::text
       AND (u.is_active OR u.goal_id = ANY (%(prereq_goal_ids)s::text[])
            OR EXISTS (SELECT 1 FROM default_goal_sets AS d
                        WHERE d.set_id = %(default_set_id)s::text AND d.goal_id = u.goal_id))
    UNION ALL
    SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
           created_at, updated_at, is_active, assigned_at, expires_at, baseline_value, true
      FROM kept
)
SELECT a.initialized_at, a.namespace AS initialized_namespace, a.inserted, r.in_view,
       r.user_id, r.goal_id, r.challenge_id, r.namespace, r.progress, r.status, r.completed_at, r.claimed_at,
       r.created_at, r.updated_at, r.is_active, r.assigned_at, r.expires_at, r.baseline_value
  FROM (SELECT 1) AS one
  LEFT JOIN applied AS a ON true
  LEFT JOIN real_rows AS r ON true
 ORDER BY r.goal_id;


-- name: materialize_implied_goals
-- kind: write
-- params: user_id text, goal_ids text[]
-- expect-index: user_initializations_pkey
-- doc: Turns the player's implied rows of the listed goals into real rows with the same values (docs/data-model.md#implied-default-goals),
--      in goal_id order, before a write that updates them; invisible to readers; returns the goal_ids made real.
INSERT INTO user_goal_progress
       (user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
        created_at, updated_at, is_active, assigned_at, expires_at, baseline_value, value_event_at)
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       created_at, updated_at, is_active, assigned_at, expires_at, baseline_value, value_event_at
  FROM implied_goal_progress
 WHERE user_id = %(user_id)s::text
   AND goal_id = ANY (%(goal_ids)s::text[])
 ORDER BY goal_id
    ON CONFLICT (user_id, goal_id) DO NOTHING
RETURNING goal_id;


-- name: set_goal_active
-- kind: write
-- params: user_id text, goal_id text, challenge_id text, namespace text, is_active boolean, expires_at timestamptz, now timestamptz
-- expect-index: user_goal_progress_pkey
-- doc: Upsert of one row (docs/rules.md#set-active); expires_at is N(t) for a rotating goal, NULL otherwise; returns the row.
--      Activation sets expires_at, and assigned_at only when the row was inactive; deactivation flips is_active only;
--      updated_at of an existing row never changes. An implied default row (docs/data-model.md#implied-default-goals)
--      counts as the existing active row: the inserted row keeps its values.
INSERT INTO user_goal_progress AS u
       (user_id, goal_id, challenge_id, namespace, progress, status, is_active,
        assigned_at, expires_at, created_at, updated_at)
SELECT %(user_id)s::text, %(goal_id)s::text, COALESCE(i.challenge_id, %(challenge_id)s::text),
       COALESCE(i.namespace, %(namespace)s::text), 0, 'not_started',
       %(is_active)s::boolean,
       CASE WHEN i.goal_id IS NOT NULL THEN i.assigned_at WHEN %(is_active)s::boolean THEN %(now)s::timestamptz END,
       CASE WHEN %(is_active)s::boolean THEN %(expires_at)s::timestamptz ELSE i.expires_at END,
       COALESCE(i.created_at, %(now)s::timestamptz), COALESCE(i.updated_at, %(now)s::timestamptz)
  FROM (VALUES (1)) AS one (x)
  LEFT JOIN implied_goal_progress AS i ON i.user_id = %(user_id)s::text AND i.goal_id = %(goal_id)s::text
    ON CONFLICT (user_id, goal_id) DO UPDATE
   SET is_active   = excluded.is_active,
       -- Only an inactive → active transition is a new assignment; re-activating keeps the original.
       assigned_at = CASE WHEN excluded.is_active AND NOT u.is_active THEN %(now)s::timestamptz
                          ELSE u.assigned_at END,
       -- Every activation records the current next boundary (NULL for a goal that no longer rotates).
       expires_at  = CASE WHEN excluded.is_active THEN excluded.expires_at
                          ELSE u.expires_at END
RETURNING user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
          created_at, updated_at, is_active, assigned_at, expires_at, baseline_value;


-- name: batch_set_goal_active
-- kind: write
-- params: user_id text, namespace text, goal_ids text[], challenge_ids text[], expires_at timestamptz[], now timestamptz
-- expect-index: user_goal_progress_pkey
-- doc: Activates (inserting when missing) every listed goal by the set-active rules, in ascending goal_id order;
--      a listed goal_id counts once; returns the rows.
INSERT INTO user_goal_progress AS u
       (user_id, goal_id, challenge_id, namespace, progress, status, is_active,
        assigned_at, expires_at, created_at, updated_at)
SELECT DISTINCT ON (d.goal_id)
       %(user_id)s::text, d.goal_id, d.challenge_id, %(namespace)s::text, 0, 'not_started', true,
       %(now)s::timestamptz, d.expires_at, %(now)s::timestamptz, %(now)s::timestamptz
  FROM unnest(%(goal_ids)s::text[], %(challenge_ids)s::text[], %(expires_at)s::timestamptz[])
       AS d (goal_id, challenge_id, expires_at)
 -- Ascending goal_id is the lock order of every multi-row player write (docs/rules.md#batch-select).
 ORDER BY d.goal_id
    ON CONFLICT (user_id, goal_id) DO UPDATE
   SET is_active   = true,
       assigned_at = CASE WHEN u.is_active THEN u.assigned_at ELSE excluded.assigned_at END,
       expires_at  = excluded.expires_at
RETURNING user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
          created_at, updated_at, is_active, assigned_at, expires_at, baseline_value;


-- name: deactivate_challenge_goals
-- kind: write
-- params: user_id text, challenge_id text, keep_goal_ids text[]
-- expect-index: idx_ugp_user_active
-- doc: Deactivates the user's active rows of the challenge whose goal is not kept, locked in ascending goal_id order;
--      returns their goal_ids.
WITH target AS (
    SELECT goal_id
      FROM user_goal_progress
     WHERE user_id = %(user_id)s::text
       AND is_active
       AND challenge_id = %(challenge_id)s::text
       AND goal_id <> ALL (COALESCE(%(keep_goal_ids)s::text[], '{}'))
     ORDER BY goal_id
       FOR UPDATE
)
UPDATE user_goal_progress AS u
   SET is_active = false
  FROM target
 WHERE u.user_id = %(user_id)s::text
   AND u.goal_id = target.goal_id
RETURNING u.goal_id;


-- name: rotation_catch_up
-- kind: write
-- params: user_id text, goal_ids text[], boundaries timestamptz[], next_boundaries timestamptz[], reset_flags boolean[], now timestamptz
-- expect-index: user_goal_progress_pkey
-- doc: Initialize catch-up (docs/rules.md#staleness-and-the-view) of the listed active, not claimed rows whose updated_at is before their
--      goal's boundary (re-checked under the row lock, locked in goal_id order): reset or carry over, expires_at = next
--      boundary, updated_at = now; arrays are per goal; returns the changed rows.
WITH period AS (
    SELECT p.goal_id, p.boundary, p.next_boundary, p.reset_progress
      FROM unnest(%(goal_ids)s::text[], %(boundaries)s::timestamptz[],
                  %(next_boundaries)s::timestamptz[], %(reset_flags)s::boolean[])
           AS p (goal_id, boundary, next_boundary, reset_progress)
),
target AS (
    -- FOR UPDATE re-evaluates these conditions on the latest row version, so a row that a flush or a
    -- claim moved into the new period while we waited for its lock drops out here.
    SELECT u.goal_id, period.next_boundary, period.reset_progress
      FROM user_goal_progress AS u
      JOIN period ON period.goal_id = u.goal_id
     WHERE u.user_id = %(user_id)s::text
       AND u.is_active
       AND u.status <> 'claimed'
       AND u.updated_at < period.boundary
     ORDER BY u.goal_id
       FOR UPDATE OF u
)
UPDATE user_goal_progress AS u
   SET baseline_value = CASE WHEN target.reset_progress THEN NULL          ELSE u.baseline_value END,
       status         = CASE WHEN target.reset_progress THEN 'not_started' ELSE u.status END,
       completed_at   = CASE WHEN target.reset_progress THEN NULL          ELSE u.completed_at END,
       expires_at     = target.next_boundary,
       updated_at     = %(now)s::timestamptz
  FROM target
 WHERE u.user_id = %(user_id)s::text
   AND u.goal_id = target.goal_id
RETURNING u.user_id, u.goal_id, u.challenge_id, u.namespace, u.progress, u.status, u.completed_at, u.claimed_at,
          u.created_at, u.updated_at, u.is_active, u.assigned_at, u.expires_at, u.baseline_value;


-- name: progress_for_update
-- kind: lock
-- params: user_id text, goal_id text
-- expect-index: user_goal_progress_pkey
-- doc: One row of the user, locked FOR UPDATE for the claim transaction.
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       created_at, updated_at, is_active, assigned_at, expires_at, baseline_value
  FROM user_goal_progress
 WHERE user_id = %(user_id)s::text
   AND goal_id = %(goal_id)s::text
   FOR UPDATE;


-- name: next_claim_generation
-- kind: read
-- params: namespace text, user_id text, goal_id text
-- expect-index: reward_grants_pkey
-- doc: The generation of the next claim of one goal: 1 + the highest recorded generation (1 when none).
SELECT COALESCE(max(generation), 0) + 1 AS generation
  FROM reward_grants
 WHERE namespace = %(namespace)s::text
   AND user_id = %(user_id)s::text
   AND goal_id = %(goal_id)s::text;


-- name: record_claim
-- kind: write
-- params: user_id text, goal_id text, now timestamptz, namespace text, generation integer, challenge_id text, idempotency_key text, reward_type text, reward_id text, quantity integer, mode text, attempts integer
-- expect-index: user_goal_progress_pkey
-- doc: Marks a completed, unclaimed row claimed at now and records its granted reward (the audit trail and the source of
--      claim generations; granted_at is now) for that row only, in one statement; returns claimed_at, or no row and no
--      grant when the guard fails.
WITH marked AS (
    UPDATE user_goal_progress
       SET status     = 'claimed',
           claimed_at = %(now)s::timestamptz,
           updated_at = %(now)s::timestamptz
     WHERE user_id = %(user_id)s::text
       AND goal_id = %(goal_id)s::text
       AND status = 'completed'
       AND claimed_at IS NULL
    RETURNING claimed_at
), granted AS (
    INSERT INTO reward_grants
           (namespace, user_id, goal_id, generation, challenge_id, idempotency_key,
            reward_type, reward_id, quantity, mode, attempts, granted_at)
    SELECT %(namespace)s::text, %(user_id)s::text, %(goal_id)s::text, %(generation)s::integer,
           %(challenge_id)s::text, %(idempotency_key)s::text, %(reward_type)s::text, %(reward_id)s::text,
           %(quantity)s::integer, %(mode)s::text, %(attempts)s::integer, marked.claimed_at
      FROM marked
)
SELECT claimed_at FROM marked;


-- name: apply_event_updates
-- kind: write
-- params: entry_user_ids text[], entry_sources text[], entry_values bigint[], entry_incs bigint[], entry_event_ats timestamptz[], goal_ids text[], goal_sources text[], goal_progress_modes text[], goal_targets bigint[], goal_boundaries timestamptz[], goal_next_boundaries timestamptz[], goal_reset_flags boolean[], goal_reselect_flags boolean[], now timestamptz
-- expect-index: user_goal_progress_pkey
-- doc: The flush (docs/events.md#flush): applies every buffered entry to the rows of the goals its source feeds, in one
--      statement: an UPDATE of the existing rows, skipping rows locked by others, and an INSERT of the implied default
--      rows (docs/data-model.md#implied-default-goals) with the entry already applied. An implied row another
--      transaction inserted meanwhile fails the statement with unique_violation (retry it: the row is real then). Entries: parallel arrays, one element per (user, source), unique;
--      entry_values is NULL for a login entry; entry_event_ats is the event time of a stat entry's value (NULL when
--      unknown, and for logins): a value older than the row's value_event_at is late and keeps the stored value. Goals: parallel arrays, one element per goal_id, unique; boundaries and
--      next_boundaries (B, N) are NULL for a goal that does not rotate; progress_modes are 'absolute' or 'relative'.
--      Returns exactly one row per entry, ordered by entry_index (1-based position in the entry arrays): entry_index,
--      user_id, source, outcome, goal_ids. outcome 'applied': at least one row was written, goal_ids lists them;
--      'deferred': a candidate row was locked by another transaction, so none of the entry's rows changed (retry it);
--      'no_row': nothing to write (no row, or only inactive or frozen claimed rows); goal_ids is empty unless applied.
WITH entry AS (
    SELECT e.entry_index, e.user_id, e.source, e.value, e.inc, e.event_at
      FROM unnest(%(entry_user_ids)s::text[], %(entry_sources)s::text[],
                  %(entry_values)s::bigint[], %(entry_incs)s::bigint[], %(entry_event_ats)s::timestamptz[])
           WITH ORDINALITY AS e (user_id, source, value, inc, event_at, entry_index)
),
goal AS (
    SELECT g.goal_id, g.source, g.progress_mode, g.target, g.boundary, g.next_boundary,
           g.reset_progress, g.allow_reselection
      FROM unnest(%(goal_ids)s::text[], %(goal_sources)s::text[], %(goal_progress_modes)s::text[],
                  %(goal_targets)s::bigint[], %(goal_boundaries)s::timestamptz[],
                  %(goal_next_boundaries)s::timestamptz[], %(goal_reset_flags)s::boolean[],
                  %(goal_reselect_flags)s::boolean[])
           AS g (goal_id, source, progress_mode, target, boundary, next_boundary, reset_progress, allow_reselection)
),
routed AS (
    -- Every (entry, goal) pair: the goals fed by the entry's source.
    SELECT entry.entry_index, entry.user_id, entry.value, entry.inc, entry.event_at, goal.goal_id, goal.progress_mode,
           goal.target, goal.boundary, goal.next_boundary, goal.reset_progress, goal.allow_reselection
      FROM entry
      JOIN goal ON goal.source = entry.source
),
candidate AS (
    -- Per entry, the existing rows it would touch as of the statement snapshot, without locking.
    SELECT routed.entry_index, count(*) AS row_count
      FROM routed
      JOIN user_goal_progress AS u ON u.user_id = routed.user_id AND u.goal_id = routed.goal_id
     GROUP BY routed.entry_index
),
locked AS (
    -- The candidate rows this flush could lock. A row held by another transaction (a claim waiting on
    -- its reward call) is skipped rather than waited for; locked rows come back in their latest version.
    SELECT routed.*, u.progress, u.status, u.completed_at, u.claimed_at, u.updated_at, u.is_active,
           u.expires_at, u.baseline_value, u.value_event_at, false AS implied,
           NULL::text AS challenge_id, NULL::text AS namespace, NULL::timestamptz AS created_at,
           NULL::timestamptz AS assigned_at
      FROM routed
      JOIN user_goal_progress AS u ON u.user_id = routed.user_id AND u.goal_id = routed.goal_id
       FOR UPDATE OF u SKIP LOCKED
),
implied AS (
    -- The implied default rows the entries feed, with the values they read as; inserted below with the entry
    -- applied (one heap tuple per row instead of an insert and an update of it).
    SELECT routed.*, p.progress, p.status, p.completed_at, p.claimed_at, p.updated_at, p.is_active,
           p.expires_at, p.baseline_value, p.value_event_at, true AS implied,
           p.challenge_id::text, p.namespace::text, p.created_at, p.assigned_at
      FROM routed
      JOIN implied_goal_progress AS p ON p.user_id = routed.user_id AND p.goal_id = routed.goal_id
),
deferred AS (
    -- An entry with any candidate row left unlocked is deferred as a whole, so it applies exactly once.
    SELECT candidate.entry_index
      FROM candidate
      LEFT JOIN (SELECT entry_index, count(*) AS row_count FROM locked GROUP BY entry_index) AS got
             ON got.entry_index = candidate.entry_index
     WHERE COALESCE(got.row_count, 0) < candidate.row_count
),
new_row AS (
    -- The per-row rule of docs/events.md#flush, in 64-bit arithmetic; only eligible rows of entries not deferred.
    SELECT l.user_id, l.goal_id, l.entry_index, l.implied, l.challenge_id, l.namespace, l.created_at, l.assigned_at,
           LEAST(GREATEST(val.v, 0), 2147483647)::integer AS progress,
           CASE WHEN l.progress_mode = 'relative'
                THEN LEAST(GREATEST(base.baseline, -2147483648), 2147483647)::integer
                ELSE l.baseline_value END AS baseline_value,
           CASE WHEN pre.status0 = 'completed' THEN 'completed'
                WHEN rule.d >= l.target        THEN 'completed'
                WHEN rot.reopen                THEN 'not_started'
                ELSE 'in_progress' END AS status,
           CASE WHEN pre.status0 = 'completed' THEN pre.completed0
                WHEN rule.d >= l.target        THEN %(now)s::timestamptz
           END AS completed_at,
           CASE WHEN rot.reopen THEN NULL ELSE l.claimed_at END AS claimed_at,
           CASE WHEN l.boundary IS NOT NULL AND (rot.stale OR l.expires_at IS NULL) THEN l.next_boundary
                ELSE l.expires_at END AS expires_at,
           GREATEST(l.value_event_at, l.event_at) AS value_event_at
      FROM (SELECT * FROM locked UNION ALL SELECT * FROM implied) AS l
     CROSS JOIN LATERAL (
           -- stale: a rotating goal whose row was last written before the current period began.
           SELECT l.boundary IS NOT NULL AND l.updated_at < l.boundary AS stale) AS period
     CROSS JOIN LATERAL (
           SELECT period.stale,
                  period.stale AND l.status = 'claimed' AND l.allow_reselection AS reopen,
                  period.stale AND l.status <> 'claimed' AND l.reset_progress   AS reset) AS rot
     CROSS JOIN LATERAL (
           -- A reopened or reset row starts its new window from scratch.
           SELECT CASE WHEN rot.reopen OR rot.reset THEN 'not_started' ELSE l.status END AS status0,
                  CASE WHEN rot.reopen OR rot.reset THEN NULL ELSE l.baseline_value END AS base0,
                  CASE WHEN rot.reopen OR rot.reset THEN NULL ELSE l.completed_at END AS completed0) AS pre
     CROSS JOIN LATERAL (
           -- v: the new raw value (a login adds to the stored raw progress, even of a row being reset); a
           -- stat value older than the stored one (by event time) is late and keeps the stored value.
           SELECT CASE WHEN l.event_at < l.value_event_at THEN l.progress::bigint
                       ELSE COALESCE(l.value, l.progress::bigint + l.inc) END AS v) AS val
     CROSS JOIN LATERAL (
           -- A relative goal's window starts at its first event: baseline = v - inc.
           SELECT COALESCE(pre.base0::bigint, val.v - l.inc) AS baseline) AS base
     CROSS JOIN LATERAL (
           -- d uses the unclamped baseline, so a first event completes exactly when inc >= target.
           SELECT CASE WHEN l.progress_mode = 'relative' THEN val.v - base.baseline
                       ELSE val.v END AS d) AS rule
     WHERE l.is_active
       AND (l.status <> 'claimed' OR rot.reopen)
       AND NOT EXISTS (SELECT 1 FROM deferred WHERE deferred.entry_index = l.entry_index)
),
updated AS (
    UPDATE user_goal_progress AS u
       SET progress       = new_row.progress,
           baseline_value = new_row.baseline_value,
           status         = new_row.status,
           completed_at   = new_row.completed_at,
           claimed_at     = new_row.claimed_at,
           expires_at     = new_row.expires_at,
           value_event_at = new_row.value_event_at,
           updated_at     = %(now)s::timestamptz
      FROM new_row
     WHERE NOT new_row.implied
       AND u.user_id = new_row.user_id
       AND u.goal_id = new_row.goal_id
 RETURNING new_row.entry_index, u.goal_id
),
inserted AS (
    -- No ON CONFLICT: a row inserted by another transaction since the snapshot fails the whole statement.
    INSERT INTO user_goal_progress
           (user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
            created_at, updated_at, is_active, assigned_at, expires_at, baseline_value, value_event_at)
    SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
           created_at, %(now)s::timestamptz, true, assigned_at, expires_at, baseline_value, value_event_at
      FROM new_row
     WHERE new_row.implied
     ORDER BY user_id, goal_id
 RETURNING user_id, goal_id
),
applied AS (
    SELECT entry_index, goal_id FROM updated
     UNION ALL
    SELECT new_row.entry_index, inserted.goal_id
      FROM inserted
      JOIN new_row ON new_row.implied AND new_row.user_id = inserted.user_id AND new_row.goal_id = inserted.goal_id
)
SELECT entry.entry_index::integer AS entry_index,
       entry.user_id,
       entry.source,
       CASE WHEN deferred.entry_index IS NOT NULL THEN 'deferred'
            WHEN written.goal_ids IS NOT NULL     THEN 'applied'
            ELSE 'no_row' END AS outcome,
       COALESCE(written.goal_ids, '{}') AS goal_ids
  FROM entry
  LEFT JOIN deferred ON deferred.entry_index = entry.entry_index
  LEFT JOIN (SELECT entry_index, array_agg(goal_id::text ORDER BY goal_id) AS goal_ids
               FROM applied
              GROUP BY entry_index) AS written
         ON written.entry_index = entry.entry_index
 ORDER BY entry.entry_index;


-- name: delete_user_data
-- kind: write
-- params: namespace text, user_id text
-- expect-index: user_goal_progress_pkey
-- doc: Deletes all progress rows of one user in the namespace and its initialization record (reward grants stay as the
--      audit record); returns the goal_ids of the rows, real or implied (docs/data-model.md#implied-default-goals).
WITH implied AS (
    SELECT goal_id FROM implied_goal_progress WHERE user_id = %(user_id)s::text AND namespace = %(namespace)s::text
),
forgotten AS (
    DELETE FROM user_initializations WHERE user_id = %(user_id)s::text AND namespace = %(namespace)s::text
),
deleted AS (
    DELETE FROM user_goal_progress
     WHERE user_id = %(user_id)s::text
       AND namespace = %(namespace)s::text
    RETURNING goal_id
)
SELECT goal_id FROM deleted
UNION ALL
SELECT goal_id FROM implied;


-- name: backdate_user_goals
-- kind: write
-- params: user_id text, goal_ids text[], seconds bigint
-- expect-index: user_goal_progress_pkey
-- doc: Moves updated_at of the user's listed rows (all rows when goal_ids is NULL) back by seconds, to trigger a
--      rotation while debugging; implied rows become real rows with the moved updated_at; returns goal_id and the
--      new updated_at.
WITH implied AS (
    INSERT INTO user_goal_progress
           (user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
            created_at, updated_at, is_active, assigned_at, expires_at, baseline_value, value_event_at)
    SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
           created_at, updated_at - %(seconds)s::bigint * interval '1 second', is_active, assigned_at, expires_at,
           baseline_value, value_event_at
      FROM implied_goal_progress
     WHERE user_id = %(user_id)s::text
       AND (%(goal_ids)s::text[] IS NULL OR goal_id = ANY (%(goal_ids)s::text[]))
     ORDER BY goal_id
        ON CONFLICT (user_id, goal_id) DO NOTHING
    RETURNING goal_id, updated_at
),
moved AS (
    UPDATE user_goal_progress
       SET updated_at = updated_at - %(seconds)s::bigint * interval '1 second'
     WHERE user_id = %(user_id)s::text
       AND (%(goal_ids)s::text[] IS NULL OR goal_id = ANY (%(goal_ids)s::text[]))
    RETURNING goal_id, updated_at
)
SELECT goal_id, updated_at FROM moved
UNION ALL
SELECT goal_id, updated_at FROM implied;

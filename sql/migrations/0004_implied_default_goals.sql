-- Default goals implied by the catalog (docs/data-model.md#implied-default-goals): initialize records a player once
-- instead of inserting one user_goal_progress row per default goal; readers see the implied rows through the
-- goal_progress view, and writers materialize the rows they touch first (materialize_implied_goals).

-- One row per goal of a default set; set_id is a hash of the set's (goal_id, challenge_id, schedule) triples, so
-- a set is written once (by the first service process that uses it) and shared by every player initialized with it.
CREATE TABLE IF NOT EXISTS default_goal_sets (
  set_id       VARCHAR(32)  NOT NULL,
  goal_id      VARCHAR(100) NOT NULL,
  challenge_id VARCHAR(100) NOT NULL,
  schedule     VARCHAR(10)  NULL CHECK (schedule IN ('daily','weekly','monthly')),
  CONSTRAINT default_goal_sets_pkey PRIMARY KEY (set_id, goal_id)
);

-- One row per initialized player: the default set that applied and when. No foreign key to default_goal_sets:
-- an empty default set has no member rows.
CREATE TABLE IF NOT EXISTS user_initializations (
  user_id        VARCHAR(100) NOT NULL,
  namespace      VARCHAR(100) NOT NULL,
  default_set_id VARCHAR(32)  NOT NULL,
  initialized_at TIMESTAMPTZ  NOT NULL,
  CONSTRAINT user_initializations_pkey PRIMARY KEY (user_id)
);

-- The rows the old initialize would have inserted and that do not exist: active, not_started, progress 0, assigned,
-- created and updated at initialized_at, expires_at the rotation boundary after it (docs/rules.md#rotation-periods).
CREATE OR REPLACE VIEW implied_goal_progress AS
SELECT i.user_id, d.goal_id, d.challenge_id, i.namespace,
       0 AS progress, 'not_started'::varchar(20) AS status,
       NULL::timestamptz AS completed_at, NULL::timestamptz AS claimed_at,
       i.initialized_at AS created_at, i.initialized_at AS updated_at, true AS is_active,
       i.initialized_at AS assigned_at,
       CASE d.schedule
            WHEN 'daily'   THEN (date_trunc('day', i.initialized_at AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC'
            WHEN 'weekly'  THEN (date_trunc('week', i.initialized_at AT TIME ZONE 'UTC') + interval '7 days') AT TIME ZONE 'UTC'
            WHEN 'monthly' THEN (date_trunc('month', i.initialized_at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'
       END AS expires_at,
       NULL::integer AS baseline_value, NULL::timestamptz AS value_event_at
  FROM user_initializations AS i
  JOIN default_goal_sets AS d ON d.set_id = i.default_set_id
 WHERE NOT EXISTS (SELECT 1 FROM user_goal_progress AS u WHERE u.user_id = i.user_id AND u.goal_id = d.goal_id);

-- Every goal row of every player, real or implied: what readers read.
CREATE OR REPLACE VIEW goal_progress AS
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       created_at, updated_at, is_active, assigned_at, expires_at, baseline_value, value_event_at
  FROM user_goal_progress
UNION ALL
SELECT user_id, goal_id, challenge_id, namespace, progress, status, completed_at, claimed_at,
       created_at, updated_at, is_active, assigned_at, expires_at, baseline_value, value_event_at
  FROM implied_goal_progress;

-- user_goal_progress: one row per (player, goal), the source of truth for progress (docs/data-model.md#table-user_goal_progress, docs/data-model.md#indexes).
-- fillfactor 90 leaves room on each page for HOT updates: the event path rewrites progress, status and
-- updated_at constantly, and none of those columns is indexed.
CREATE TABLE IF NOT EXISTS user_goal_progress (
  user_id        VARCHAR(100) NOT NULL,
  goal_id        VARCHAR(100) NOT NULL,
  challenge_id   VARCHAR(100) NOT NULL,
  namespace      VARCHAR(100) NOT NULL,
  progress       INTEGER      NOT NULL DEFAULT 0,
  status         VARCHAR(20)  NOT NULL DEFAULT 'not_started',
  completed_at   TIMESTAMPTZ  NULL,
  claimed_at     TIMESTAMPTZ  NULL,
  created_at     TIMESTAMPTZ  NOT NULL DEFAULT now(),
  updated_at     TIMESTAMPTZ  NOT NULL DEFAULT now(),
  is_active      BOOLEAN      NOT NULL DEFAULT true,
  assigned_at    TIMESTAMPTZ  NULL,
  expires_at     TIMESTAMPTZ  NULL,
  baseline_value INTEGER      NULL,
  CONSTRAINT user_goal_progress_pkey PRIMARY KEY (user_id, goal_id),
  CONSTRAINT check_status CHECK (status IN ('not_started','in_progress','completed','claimed')),
  CONSTRAINT check_progress_non_negative CHECK (progress >= 0),
  CONSTRAINT check_claimed_implies_completed CHECK (claimed_at IS NULL OR completed_at IS NOT NULL)
) WITH (fillfactor = 90);

-- The only secondary index: the active rows of one player (initialize, active_only listing, cache fill).
-- Every other per-user statement uses the primary key, so no index may duplicate it (docs/data-model.md#indexes).
CREATE INDEX IF NOT EXISTS idx_ugp_user_active ON user_goal_progress (user_id) WHERE is_active;

-- value_event_at: the event time of the statistic value held in `progress` (docs/events.md#flush). A stat event
-- older than it is late (a sender's retry, reordering in flight) and must not move the value backwards.
-- NULL until an event with a timestamp writes the row. Nullable without a default: no table rewrite.
ALTER TABLE user_goal_progress ADD COLUMN IF NOT EXISTS value_event_at TIMESTAMPTZ NULL;

-- reward_grants: every granted reward; provides the claim generation, the idempotency key and the
-- audit trail (docs/data-model.md#table-reward_grants). idempotency_key is a function of the primary key, so it has no index.
CREATE TABLE IF NOT EXISTS reward_grants (
  namespace       VARCHAR(100) NOT NULL,
  user_id         VARCHAR(100) NOT NULL,
  goal_id         VARCHAR(100) NOT NULL,
  generation      INTEGER      NOT NULL CHECK (generation >= 1),
  challenge_id    VARCHAR(100) NOT NULL,
  idempotency_key VARCHAR(420) NOT NULL,
  reward_type     VARCHAR(10)  NOT NULL CHECK (reward_type IN ('ITEM','WALLET')),
  reward_id       VARCHAR(100) NOT NULL,
  quantity        INTEGER      NOT NULL CHECK (quantity > 0),
  mode            VARCHAR(10)  NOT NULL CHECK (mode IN ('log','webhook')),
  attempts        INTEGER      NOT NULL DEFAULT 1,
  granted_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
  CONSTRAINT reward_grants_pkey PRIMARY KEY (namespace, user_id, goal_id, generation)
);

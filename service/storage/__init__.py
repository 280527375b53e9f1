"""Storage adapters: PostgreSQL (pool, named queries, migrations) and Redis (cache, event de-duplication)."""

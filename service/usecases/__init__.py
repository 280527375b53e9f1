"""Use cases: the player operations, event ingestion and flushing, and reward granting."""

"""The domain: the catalog model and the pure rules of progress, rotation, routing and event merging. No I/O."""

"""Transports: the player HTTP API, gRPC ingestion, the admin app, OpenAPI, request and response shapes, auth."""

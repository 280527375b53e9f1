"""The challenge service core: player HTTP API, gRPC event ingestion, flusher, cache, admin."""

__version__ = "0.1.0"

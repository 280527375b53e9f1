"""Runtime: wiring and lifecycle of the service process, HTTP worker processes, embedded servers."""

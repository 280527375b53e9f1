"""Garbage-collector policy of the serving processes.

Everything allocated during startup (modules, catalog, registry, pools, routes) lives until the process
exits, yet every full (generation 2) collection traverses it again: measured on the player API, each
one stalled the event loop for ~70 ms and set the p99 latency (bench/README.md). Freezing those
objects once startup is done moves them out of the collector's reach, so later collections only
traverse objects allocated while serving.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect startup garbage, then move every surviving object to the permanent generation."""
    gc.collect()
    gc.freeze()

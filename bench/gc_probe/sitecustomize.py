"""Loaded by `bench/gc_pauses.py` into the service it starts: records every garbage collection.

Each collection is appended to $GC_PROBE_OUT at exit as JSON lines {"gen", "at", "ms"}. With
GC_PROBE_NO_FREEZE=1, `gc.freeze` becomes a no-op, so the service runs as it did before it froze its
startup objects.
"""

import atexit
import gc
import json
import os
import time

_OUT = os.environ.get("GC_PROBE_OUT")
if _OUT:
    _started = [0.0]
    _collections: list[dict] = []

    def _record(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
        else:
            _collections.append(
                {"gen": info["generation"], "at": time.time(), "ms": (time.perf_counter() - _started[0]) * 1000}
            )

    def _dump() -> None:
        with open(_OUT, "w") as out:
            out.writelines(json.dumps(c) + "\n" for c in _collections)

    gc.callbacks.append(_record)
    atexit.register(_dump)
    if os.environ.get("GC_PROBE_NO_FREEZE") == "1":
        gc.freeze = lambda: None

"""glibc malloc policy of the serving processes.

glibc gives every thread that allocates concurrently its own malloc arena (up to 8 per core) and keeps
each arena's freed memory mapped for reuse by that arena. gRPC's threads in the main process allocated in
four such arenas; under the seed-m3 load each held 5-9 MB, mostly free, and the process's RSS floor kept
creeping up (bench/README.md "Memory"). With two arenas those threads reuse one another's free memory.
A value the operator set (`MALLOC_ARENA_MAX`, or `arena_max` in `GLIBC_TUNABLES`) is left alone; other C
libraries are left alone too.
"""

from __future__ import annotations

import ctypes
import os
import sys

ARENA_MAX = 2
_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def limit_malloc_arenas(arena_max: int = ARENA_MAX) -> bool:
    """Cap glibc's malloc arenas for threads that start from now on; True when the cap was set."""
    if not is_glibc() or "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arena_max))


def is_glibc() -> bool:
    """Only glibc has this mallopt parameter (musl's mallopt, for one, ignores every parameter)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False

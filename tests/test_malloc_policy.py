"""The serving processes' glibc malloc policy: at most two malloc arenas, unless the operator chose."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from service.runtime.malloc_policy import is_glibc

pytestmark = pytest.mark.skipif(not is_glibc(), reason="a glibc malloc policy")

# Eight threads allocate at once, as gRPC's threads do; malloc_info then lists one <heap> per arena.
ARENAS_AFTER_THREADS = textwrap.dedent(
    """
    import ctypes, sys, tempfile, threading
    from service.runtime.malloc_policy import limit_malloc_arenas
    print(limit_malloc_arenas())
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    barrier = threading.Barrier(8)
    def allocate():
        barrier.wait()
        blocks = [libc.malloc(4096) for _ in range(2000)]
        barrier.wait()
        for block in blocks:
            libc.free(block)
    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for thread in threads: thread.start()
    for thread in threads: thread.join()
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile() as out:
        stream = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        print(open(out.name).read().count("<heap nr="))
    """
)


def arenas_used(env: dict[str, str]) -> tuple[str, int]:
    """(what limit_malloc_arenas returned, malloc arenas in use) in a fresh interpreter after 8 threads allocated."""
    completed = subprocess.run(
        [sys.executable, "-c", ARENAS_AFTER_THREADS], env=env, capture_output=True, text=True, check=True
    )
    returned, heaps = completed.stdout.split()
    return returned, int(heaps)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}


def test_threads_share_two_arenas() -> None:
    assert arenas_used(clean_env()) == ("True", 2)


def test_an_operators_choice_is_kept() -> None:
    assert arenas_used({**clean_env(), "MALLOC_ARENA_MAX": "4"}) == ("False", 4)
    assert arenas_used({**clean_env(), "GLIBC_TUNABLES": "glibc.malloc.arena_max=3"}) == ("False", 3)


def test_without_the_cap_each_thread_gets_its_own_arena() -> None:
    """The baseline the cap changes (so the first test can fail): glibc's default is 8 arenas per core."""
    returned, heaps = arenas_used({**clean_env(), "MALLOC_ARENA_MAX": "64"})
    assert returned == "False" and heaps > 2

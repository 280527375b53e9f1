"""Garbage-collection pauses of the service under load, with and without the startup `gc.freeze`.

Starts `challengectl serve` twice (embedded PostgreSQL/Redis, cache on) with bench/gc_probe on its
PYTHONPATH, which records every collection; the first run turns `gc.freeze` into a no-op (the service
before service/gc_policy.py). Each run initializes USERS players and drives the cached
`GET /v1/challenges?active_only=true` with wrk; the table shows wrk's latency and the collections that
happened during the wrk run.

    python bench/gc_pauses.py [--users 200] [--duration 12] [--connections 32]

Needs `wrk`. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import player_api

from service.transport.auth import mint_token

PROBE_DIR = Path(__file__).resolve().parent / "gc_probe"
PATH = "/challenge/v1/challenges?active_only=true"


def measure(freeze: bool, args: argparse.Namespace) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="challengectl-gc-"))
    probe_out = base / "collections.jsonl"
    extra_env = {
        "PYTHONPATH": f"{PROBE_DIR}{os.pathsep}{player_api.REPO_ROOT}",
        "GC_PROBE_OUT": str(probe_out),
        "GC_PROBE_NO_FREEZE": "0" if freeze else "1",
    }
    process = player_api.start_service(base / "data", False, 1, extra_env)
    try:
        tokens = [mint_token(player_api.SECRET.encode(), f"bench-{i}", ttl_s=3600) for i in range(args.users)]
        player_api.initialize(tokens)
        window_start = time.time()
        latency = player_api.run_wrk(tokens, "GET", PATH, args.duration, args.connections)
        window_end = time.time()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    collections = [json.loads(line) for line in probe_out.read_text().splitlines()]
    shutil.rmtree(base, ignore_errors=True)
    full = sorted(c["ms"] for c in collections if c["gen"] == 2 and window_start <= c["at"] <= window_end)
    young = [c["ms"] for c in collections if c["gen"] < 2 and window_start <= c["at"] <= window_end]
    return {
        **latency,
        "gen2": len(full),
        "gen2_p50": full[len(full) // 2] if full else 0.0,
        "gen2_max": full[-1] if full else 0.0,
        "gen2_total": sum(full),
        "young_total": sum(young),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--duration", type=int, default=12)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    results = {"no freeze (before)": measure(False, args), "gc.freeze after startup": measure(True, args)}
    print(
        f"GET {PATH}, cache on, users={args.users} connections={args.connections} duration={args.duration}s, "
        f"1 service process, {os.cpu_count()} cores shared with wrk and the databases"
    )
    print(
        "| variant | req/s | p50 ms | p99 ms | gen2 collections | gen2 pause p50 ms | gen2 max ms "
        "| gen2 total ms | gen0+1 total ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['gen2']:.0f} | "
            f"{r['gen2_p50']:.1f} | {r['gen2_max']:.1f} | {r['gen2_total']:.0f} | {r['young_total']:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())

"""Issue 10 row "per-core throughput on 500-goal bodies: GET >= 500 req/s, returning initialize >= 800 req/s"
(the reference's Go service: ~350-380 req/s of that GET per core before its cliff).

Starts a default `challengectl serve` (the player API in its own process) on the all-active-500 catalog
(embedded PostgreSQL/Redis in a temporary directory), initializes PLAYERS players through the API, then
drives `GET /v1/challenges` (500 goals in every body) and the returning players' `POST
/v1/challenges/initialize` in a closed loop with wrk (CONNECTIONS connections, DURATION seconds each, every
request with the next player's token). For each it prints req/s, wrk's latency, the CPU share of the API
process and of the whole service (psutil CPU seconds / wall seconds: 1.0 = one core busy) and req/s per core
used by the API process, the figure the target is about.

    python bench/per_core_throughput.py [--players 1000] [--duration 15] [--connections 8]

Needs `wrk`. Prints a Markdown table and the verdict.
"""

from __future__ import annotations

import argparse
import shutil
import time

import player_api
import psutil
import target_rows as rows

from challengectl.loadtest.profiles import user_id_of
from service.transport.auth import mint_token

TARGETS = {"GET /v1/challenges": 500.0, "POST /v1/challenges/initialize (returning)": 800.0}


def cpu_seconds(processes: list[psutil.Process]) -> list[float]:
    return [sum(process.cpu_times()[:2]) for process in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--players", type=int, default=1000, help="players initialized first (500 rows each)")
    parser.add_argument("--duration", type=int, default=15, help="seconds of wrk per endpoint")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (requests in flight)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    stamp = rows.Stamp()
    results = []
    with rows.serve_profile("all-active-500") as service:
        setup = service.initialize_players(args.players, rows.SETUP_CONCURRENCY)
        player_api.PORT = service.http_port
        tokens = [mint_token(rows.SECRET.encode(), user_id_of(i), ttl_s=3600) for i in range(1, args.players + 1)]
        api, main_process = service.api_process(), psutil.Process(service.process.pid)
        for name, target in TARGETS.items():
            method, path = player_api.SCENARIOS[name]
            before, started = cpu_seconds([api, main_process]), time.monotonic()
            measured = player_api.run_wrk(tokens, method, path, args.duration, args.connections)
            wall = time.monotonic() - started
            api_s, main_s = (after - was for after, was in zip(cpu_seconds([api, main_process]), before, strict=True))
            per_core = measured["rps"] / (api_s / wall)
            results.append(
                (
                    name,
                    f"{measured['rps']:.0f}",
                    f"{measured['p50']:.1f} / {measured['p99']:.1f}",
                    f"{api_s / wall:.2f}",
                    f"{(api_s + main_s) / wall:.2f}",
                    f"{per_core:.0f}",
                    f">= {target:g}: {'met' if per_core >= target else '**missed**'}",
                )
            )
    print(
        stamp.header(
            f"all-active-500 (500 goals per body), default serve, wrk -c{args.connections} -d{args.duration}s "
            "closed loop on the same machine"
        )
    )
    print(setup.line())
    print()
    print(
        rows.table(
            ("endpoint", "req/s", "wrk p50 / p99 ms", "API process cores", "service cores", "req/s per API core",
             "target"),
            results,
        )
    )  # fmt: skip
    met = all("missed" not in row[-1] for row in results)
    print()
    print(f"Row verdict (issue 10, per-core throughput on 500-goal bodies): {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()

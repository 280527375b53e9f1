"""Service CPU per request on the player API, this checkout against another tree (before/after), measured
in one run with wrk.

For each tree, a fresh `challengectl serve` (one process, default settings; the tree's `service/` and
`challengectl/` come first on PYTHONPATH), USERS players initialized, then wrk with a few connections
(a moderate, steady load) on each endpoint. CPU per request is the service process's user+system CPU
time during the wrk run divided by the requests wrk completed. The trees are measured in turns
(before, after, before, after, ...) so that background load on a shared machine hits both alike.

    python bench/http_transport.py --before-tree /tmp/before [--rounds 2] [--duration 8] [--connections 4]

Needs `wrk`. Uses DATABASE_URL / REDIS_URL when set (embedded servers otherwise). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
from pathlib import Path

import player_api

from bench.serve_process import api_cpu_s

SCENARIOS = {
    "GET /healthz": ("GET", "/healthz"),
    "GET /v1/challenges?active_only=true": ("GET", "/challenge/v1/challenges?active_only=true"),
    "POST /v1/challenges/initialize (returning)": ("POST", "/challenge/v1/challenges/initialize"),
    "GET /v1/challenges": ("GET", "/challenge/v1/challenges"),
}


def measure_tree(tree: Path, args: argparse.Namespace, round_index: int) -> dict[str, dict[str, float]]:
    prefix = {"CHALLENGE_REDIS_KEY_PREFIX": f"bench-transport-{os.getpid()}-{round_index}"}
    with player_api.service_of_tree(tree, prefix) as service:
        tokens = [
            player_api.mint_token(player_api.SECRET.encode(), f"bench-{i}", ttl_s=3600) for i in range(args.users)
        ]
        player_api.initialize(tokens)
        results = {}
        for name, (method, path) in SCENARIOS.items():
            before = api_cpu_s(service)
            result = player_api.run_wrk(tokens, method, path, args.duration, args.connections)
            cpu_s = api_cpu_s(service) - before
            requests = result["rps"] * args.duration
            results[name] = {**result, "cpu_us": cpu_s / requests * 1e6, "core": cpu_s / args.duration}
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-tree", required=True, help="a checkout of the 'before' commit")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each tree, taken in turns")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--port", type=int, default=None, help="player API port (default: a free one)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    if args.port is not None:
        player_api.PORT, player_api.GRPC_PORT, player_api.ADMIN_PORT = args.port, args.port + 1, args.port + 2
    trees = {"before": Path(args.before_tree).resolve(), "after": player_api.REPO_ROOT}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {label: [] for label in trees}
    load_start = os.getloadavg()[0]
    for round_index in range(args.rounds):
        for label, tree in trees.items():
            runs[label].append(measure_tree(tree, args, round_index))
    load_end = os.getloadavg()[0]

    def median(label: str, name: str, key: str) -> float:
        return statistics.median(run[name][key] for run in runs[label])

    print(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average "
        f"{load_start:.1f} -> {load_end:.1f}; before = {trees['before']}, after = this checkout; "
        f"wrk -c{args.connections} -d{args.duration}s per endpoint, {args.users} players, 1 service process, "
        f"median of {args.rounds} rounds taken in turns"
    )
    print(
        "| endpoint | before: req/s | p99 ms | CPU us/req | after: req/s | p99 ms | CPU us/req | CPU per request after/before |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in SCENARIOS:
        before = {key: median("before", name, key) for key in ("rps", "p99", "cpu_us")}
        after = {key: median("after", name, key) for key in ("rps", "p99", "cpu_us")}
        print(
            f"| {name} | {before['rps']:.0f} | {before['p99']:.2f} | {before['cpu_us']:.0f} | {after['rps']:.0f} | "
            f"{after['p99']:.2f} | {after['cpu_us']:.0f} | {after['cpu_us'] / before['cpu_us']:.2f} |"
        )


if __name__ == "__main__":
    main()

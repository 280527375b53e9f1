"""`challengectl loadtest run --profile seed-m3` against a fresh service, for before/after comparisons
of the service code (README "Load tests").

Writes the seed-m3 catalog, starts `challengectl serve` from SERVICE_TREE (default: this checkout; pass
a tree with an older commit's service/ and sql/, e.g. from `git archive <commit> service sql`, to
measure "before") with embedded PostgreSQL/Redis in a temporary data dir,
runs the load test with this checkout's CLI, and prints p95/p99 per phase and endpoint plus the
service's DB pool peaks from the JSON report.

    python bench/seed_loadtest.py [--scale 0.35] [--init 20s] [--duration 40s] [--service-tree DIR]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import player_api

PYTHON = sys.executable


def run(args: argparse.Namespace) -> dict:
    base = Path(tempfile.mkdtemp(prefix="challengectl-seed-"))
    catalog = base / "seed-m3.json"
    cli_env = {**os.environ, "PYTHONPATH": str(player_api.REPO_ROOT)}
    subprocess.run(
        [PYTHON, "-m", "challengectl", "loadtest", "run", "--profile", "seed-m3", "--write-catalog", str(catalog)],
        env=cli_env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # The tree's service/ shadows this checkout's; the CLI that `serve` goes through comes from this checkout.
    service_path = f"{Path(args.service_tree).resolve()}{os.pathsep}{player_api.REPO_ROOT}"
    service_env = {"PYTHONPATH": service_path, "CHALLENGE_CATALOG_PATH": str(catalog)}
    process = player_api.start_service(base / "data", False, args.workers, service_env)
    try:
        run_env = {k: v for k, v in cli_env.items() if not k.startswith("CHALLENGE_")}
        run_env.update(
            CHALLENGE_DATA_DIR=str(base / "data"),
            CHALLENGE_JWT_SECRET=player_api.SECRET,
            CHALLENGE_HTTP_PORT=str(player_api.PORT),
            CHALLENGE_GRPC_PORT=str(player_api.GRPC_PORT),
            CHALLENGE_ADMIN_PORT=str(player_api.ADMIN_PORT),
            CHALLENGE_CATALOG_PATH=str(catalog),
            CHALLENGE_GRPC_ADDR=f"127.0.0.1:{player_api.GRPC_PORT}",
            CHALLENGE_ADMIN_URL=f"http://127.0.0.1:{player_api.ADMIN_PORT}",
        )
        out = base / "run.json"
        # Exit 99 (a target missed) is a result, not a failure of the benchmark.
        completed = subprocess.run(
            [
                PYTHON,
                "-m",
                "challengectl",
                "--quiet",
                "loadtest",
                "run",
                "--profile",
                "seed-m3",
                "--reset",
                "--yes",
                "--phase",
                f"init={args.init}",
                "--duration",
                args.duration,
                "--scale",
                str(args.scale),
                "--out",
                str(out),
            ],
            env=run_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if completed.returncode not in (0, 99):
            raise SystemExit(f"loadtest failed ({completed.returncode}):\n{completed.stderr}")
        return json.loads(out.read_text())
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.35)
    parser.add_argument("--init", default="20s", help="length of the initialize phase")
    parser.add_argument("--duration", default="40s", help="length of the gameplay phase")
    parser.add_argument(
        "--service-tree",
        default=str(player_api.REPO_ROOT),
        help="source tree whose service/ is started (default: this checkout)",
    )
    parser.add_argument("--json", help="also save the loadtest's JSON report here")
    parser.add_argument(
        "--workers", type=int, default=1, help="serve --workers: player API processes (0: one process for everything)"
    )
    args = parser.parse_args()
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report))
    options = report["run"]["options"]
    pool = report["resources"]["summary"]
    print(
        f"seed-m3 scale={options['scale']} users={options['users']} service tree {args.service_tree}, "
        f"serve --workers {args.workers}, "
        f"verdict {report['verdict']}; DB pool peak in use {pool['db_pool_peak_in_use']['max']:.0f}/"
        f"{report['resources']['capacity']['db_pool_max']}, max waiting {pool['db_pool_waiting']['max']:.0f}, "
        f"acquire timeouts {pool['db_pool_acquire_timeouts']['max']:.0f}"
    )
    print("| phase | endpoint | count | success % | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for phase in report["phases"]:
        for name, entry in phase["endpoints"].items():
            latency = entry["latency_ms"]
            print(
                f"| {phase['name']} | {name} | {entry['count']} | {entry['success_pct']:.2f} | "
                f"{latency['p50']:.1f} | {latency['p95']:.1f} | {latency['p99']:.1f} |"
            )


if __name__ == "__main__":
    main()

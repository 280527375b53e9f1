"""`challengectl loadtest run --profile seed-m3` against a fresh service, for issue 10's row "seed-m3 scale
1.0" and for before/after comparisons of the service code (README "Load tests").

Starts a default `challengectl serve` from SERVICE_TREE (default: this checkout; pass a tree with an older
commit's service/ and sql/, e.g. from `git archive <commit> service sql`, to measure "before") on the seed-m3
catalog with embedded PostgreSQL/Redis in a temporary data dir, runs the load test with this checkout's CLI,
and prints p50/p95/p99 per phase and endpoint, the service's DB pool peaks, and the verdict against the
issue's row: p95 initialize new <= 10 ms, returning <= 5 ms, challenges (both) <= 10 ms, set-active <= 10 ms,
claim <= 20 ms, event ack (commit) <= 100 ms, 0 failed.

    python bench/seed_loadtest.py [--scale 1.0] [--init 20s] [--duration 60s] [--service-tree DIR] [--workers 1]

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import target_rows as rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--init", default="20s", help="length of the initialize phase")
    parser.add_argument("--duration", default="60s", help="length of the gameplay phase")
    parser.add_argument(
        "--service-tree",
        default=str(rows.REPO_ROOT),
        help="source tree whose service/ is started (default: this checkout)",
    )
    parser.add_argument("--json", help="also save the loadtest's JSON report here")
    parser.add_argument(
        "--workers", type=int, default=1, help="serve --workers: player API processes (0: one process for everything)"
    )
    args = parser.parse_args()
    stamp = rows.Stamp()
    with rows.serve_profile("seed-m3", workers=args.workers, tree=Path(args.service_tree)) as service:
        report = service.seed_m3(args.init, args.duration, args.scale)
    if args.json:
        Path(args.json).write_text(json.dumps(report))
    options = report["run"]["options"]
    pool = report["resources"]["summary"]
    print(
        stamp.header(
            f"seed-m3 scale={options['scale']} users={options['users']}, init {args.init} + gameplay "
            f"{args.duration}, service tree {args.service_tree}, serve --workers {args.workers}"
        )
    )
    print(
        f"seed targets: verdict {report['verdict']}; {rows.failures_line(report)}; DB pool peak in use "
        f"{pool['db_pool_peak_in_use']['max']:.0f}/{report['resources']['capacity']['db_pool_max']}, max waiting "
        f"{pool['db_pool_waiting']['max']:.0f}, acquire timeouts {pool['db_pool_acquire_timeouts']['max']:.0f}"
    )
    print()
    print(rows.endpoint_table(report))
    print()
    results = rows.target_results(report, rows.SEED_M3_ROW)
    print(rows.targets_table(results))
    print()
    print(f"Row verdict (issue 10, seed-m3 scale {args.scale:g}): {'MET' if rows.all_met(results) else 'NOT MET'}")


if __name__ == "__main__":
    main()

"""Issue 10 row "capacity: the highest seed-m3 scale meeting every seed target, >= 2.0".

Runs `challengectl loadtest run --profile seed-m3` at ascending scales, each on a fresh default
`challengectl serve` (embedded PostgreSQL/Redis in a temporary directory) with a short initialize phase and
gameplay phase, judges every run against the seed report's targets (the load test's default gates: p95 per
endpoint and > 99.95 % success), and stops after STOP_AFTER failing scales in a row. The capacity is the
highest scale that passed with every lower scale passing too.

    python bench/capacity.py [--scales 1.0,1.4,1.7,2.0,2.3,2.6,3.0] [--init 20s] [--duration 60s] [--stop-after 1]

Prints a Markdown table (one row per scale) and the verdict against >= 2.0.
"""

from __future__ import annotations

import argparse
from typing import Any

import target_rows as rows

from challengectl.loadtest.profiles import ENDPOINT_LABELS

TARGET_SCALE = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1.0,1.4,1.7,2.0,2.3,2.6,3.0", help="comma-separated, run ascending")
    parser.add_argument("--init", default="20s", help="length of the initialize phase")
    parser.add_argument("--duration", default="60s", help="length of the gameplay phase")
    parser.add_argument("--stop-after", type=int, default=1, help="stop after this many failing scales in a row")
    args = parser.parse_args()
    stamp = rows.Stamp()
    reports: dict[float, dict[str, Any]] = {}

    def passes(scale: float) -> bool:
        with rows.serve_profile("seed-m3") as service:
            report = service.seed_m3(args.init, args.duration, scale)
        reports[scale] = report
        return rows.all_met(rows.target_results(report, rows.SEED_TARGETS))

    results, capacity = rows.capacity_search([float(s) for s in args.scales.split(",")], passes, args.stop_after)
    print(
        stamp.header(f"seed-m3, init {args.init} + gameplay {args.duration} per scale, default serve, fresh per scale")
    )
    print()
    print(
        rows.table(
            (
                "scale",
                "seed targets",
                "initialize_new p95",
                "returning p95",
                "challenges / active p95",
                "set_active p95",
                "claim p95",
                "event p95",
                "success %",
                "failures, generator",
            ),
            (scale_row(scale, passed, reports[scale]) for scale, passed in results),
        )
    )
    print()
    verdict = "MET" if capacity is not None and capacity >= TARGET_SCALE else "NOT MET"
    shown = "none (the first scale failed)" if capacity is None else f"{capacity:g}"
    print(f"Capacity: {shown}; target >= {TARGET_SCALE:g}: {verdict}")


def scale_row(scale: float, passed: bool, report: dict[str, Any]) -> tuple[str, ...]:
    missed = [r["expr"] for r in rows.target_results(report, rows.SEED_TARGETS) if r["pass"] is not True]
    p95 = {label: rows.ms(rows.p95(report, label)) for label in ENDPOINT_LABELS}
    return (
        f"{scale:g}",
        "PASS" if passed else "FAIL: " + ", ".join(f"`{expr}`" for expr in missed),
        p95["initialize_new"],
        p95["initialize_returning"],
        f"{p95['challenges']} / {p95['challenges_active']}",
        p95["set_active"],
        p95["claim"],
        p95["event"],
        f"{report['overall']['all']['success_pct']:.3f}",
        rows.failure_classes(report),
    )


if __name__ == "__main__":
    main()

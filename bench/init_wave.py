"""The new-player wave of seed-m3 (600 new players/s from empty tables, issue 10 row "seed-m3 scale 1.0"), for two
service trees in turns: where in the wave the slow requests and the 503s fall.

Each run is a fresh `serve` (as `seed_loadtest.py` starts it) and `loadtest run --profile seed-m3` with the init
phase and a short gameplay phase; the runs alternate between this checkout and `--before-tree`, so background load
hits both alike. Per run: `initialize_new` of the init phase (p50/p95/p99, 503s), the same for its first two
seconds (the pool grows from `db_pool_min` there) and for the rest, the service's DB pool peak, and the load
generator's send lag (above ~10 ms the generator itself was short of CPU: latencies then include its lag).

    python bench/init_wave.py --before-tree DIR [--rounds 3] [--init 20s] [--duration 10s] [--ports 21600-21699]
        [--env NAME=VALUE ...] [--before-env NAME=VALUE ...]

Prints a Markdown table (one row per run) and the medians per tree.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import target_rows as rows

# The first seconds of the wave: where the pool grows from db_pool_min to its working size.
START_S = 2


def _settings(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def wave_figures(report: dict[str, Any], start_s: int = START_S) -> dict[str, Any]:
    """initialize_new of the init phase: the phase's percentiles, 503s in the first `start_s` seconds and after,
    the worst per-second p95 of those two parts, and the DB pool peak."""
    init = next(phase for phase in report["phases"] if phase["name"] == "init")
    entry = init["endpoints"]["initialize_new"]
    series = report["timeseries"]["endpoints"]["initialize_new"]
    seconds = round(init["duration_s"])
    errors, p95s = series["errors"][:seconds], series["p95_ms"][:seconds]
    summary = report["resources"]["summary"]
    return {
        "p50": entry["latency_ms"]["p50"],
        "p95": entry["latency_ms"]["p95"],
        "p99": entry["latency_ms"]["p99"],
        "refused": sum(errors),
        "refused_start": sum(errors[:start_s]),
        "p95_start": max((value for value in p95s[:start_s] if value is not None), default=None),
        "p95_rest": max((value for value in p95s[start_s:] if value is not None), default=None),
        "pool_peak": summary["db_pool_peak_in_use"]["max"],
        "pool_waiting": summary["db_pool_waiting"]["max"],
        "send_lag_p99": report["generator"]["lag_ms"]["p99"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-tree", required=True, help="tree whose service/ is the 'before'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--init", default="20s")
    parser.add_argument("--duration", default="10s", help="gameplay phase after the wave")
    parser.add_argument(
        "--ports", default=f"{rows.PORT_RANGE[0]}-{rows.PORT_RANGE[1]}", help="port range for the services"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for this checkout's service")
    parser.add_argument("--before-env", action="append", default=[], help="NAME=VALUE for the before service")
    args = parser.parse_args()
    low, high = (int(port) for port in args.ports.split("-"))
    rows.PORT_RANGE = (low, high)
    trees = (
        ("before", Path(args.before_tree), _settings(args.before_env)),
        ("after", rows.REPO_ROOT, _settings(args.env)),
    )
    stamp = rows.Stamp()
    results: list[tuple[str, int, float, dict[str, Any]]] = []
    for round_number in range(1, args.rounds + 1):
        for name, tree, env in trees:
            load = rows.load_average()
            with rows.serve_profile("seed-m3", tree=tree, env=env) as service:
                report = service.seed_m3(args.init, args.duration, 1.0)
            results.append((name, round_number, load, wave_figures(report)))
    print(stamp.header(f"seed-m3 new-player wave, init {args.init} + gameplay {args.duration}, {args.rounds} rounds"))
    print()
    print(
        rows.table(
            (
                "tree",
                "round",
                "load",
                "p50",
                "p95",
                "p99",
                "503s",
                f"503s first {START_S} s",
                "worst 1-s p95 first / rest",
                "pool peak / waiting",
                "generator send lag p99",
            ),
            (
                (
                    name,
                    number,
                    f"{load:.1f}",
                    rows.ms(run["p50"]),
                    rows.ms(run["p95"]),
                    rows.ms(run["p99"]),
                    run["refused"],
                    run["refused_start"],
                    f"{rows.ms(run['p95_start'])} / {rows.ms(run['p95_rest'])}",
                    f"{run['pool_peak']:.0f} / {run['pool_waiting']:.0f}",
                    rows.ms(run["send_lag_p99"]),
                )
                for name, number, load, run in results
            ),
        )
    )
    print()
    for name, _, _ in trees:
        runs = [run for tree, _, _, run in results if tree == name]
        medians = {
            key: statistics.median(run[key] for run in runs if run[key] is not None)
            for key in ("p95", "p99", "refused", "refused_start")
        }
        print(
            f"{name}: median p95 {medians['p95']:.1f} ms, p99 {medians['p99']:.1f} ms, 503s {medians['refused']:.0f} "
            f"({medians['refused_start']:.0f} in the first {START_S} s)"
        )


if __name__ == "__main__":
    main()

"""CLI startup: wall time, CPU time and peak memory of `challengectl --help` and of each command's `--help`
(which imports the command's module and parses its options: the overhead a command has before its first
I/O), against `python -c pass`. With `--baseline DIR` the same commands also run from another checkout
(e.g. `git worktree add /tmp/before <commit>`), interleaved with this one, so both see the same machine load.

    python bench/cli_startup.py [--runs 15] [--baseline DIR]

Prints a Markdown table with the date and the CPU count. Wall times on a shared machine are noisy; the CPU
column (user + system time of the process) is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

COMMANDS: tuple[tuple[str, ...], ...] = (
    ("--help",),
    ("serve", "--help"),
    ("doctor", "--help"),
    ("version", "--help"),
    ("config", "show", "--help"),
    ("token", "mint", "--help"),
    ("users", "init", "--help"),
    ("challenges", "list", "--help"),
    ("goals", "claim", "--help"),
    ("events", "send", "stat", "--help"),
    ("watch", "--help"),
    ("explain", "--help"),
    ("pool", "--help"),
    ("cache", "stats", "--help"),
    ("db", "queries", "--help"),
    ("loadtest", "run", "--help"),
)


@dataclass
class Samples:
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def run_once(argv: list[str], tree: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of one run of `argv` with `tree` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "120"}
    started = datetime.now(UTC)
    process = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = (datetime.now(UTC) - started).total_seconds()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} (from {tree}) exited {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def measure(trees: dict[str, Path], runs: int) -> dict[tuple[str, str], Samples]:
    """Samples by (tree label, command label); trees and commands interleave within each round."""
    cases = {"python -c pass": [sys.executable, "-c", "pass"]}
    cases |= {"challengectl " + " ".join(args): [sys.executable, "-m", "challengectl", *args] for args in COMMANDS}
    results: dict[tuple[str, str], Samples] = {}
    for _ in range(runs):
        for label, argv in cases.items():
            for tree_label, tree in trees.items():
                wall, cpu, rss = run_once(argv, tree)
                sample = results.setdefault((tree_label, label), Samples())
                sample.wall_s.append(wall)
                sample.cpu_s.append(cpu)
                sample.rss_mb.append(rss)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default 15)")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with (before)")
    args = parser.parse_args()
    trees = {"this": REPO}
    if args.baseline:
        trees = {"before": args.baseline.resolve(), "this": REPO}
    load = os.getloadavg()[0]
    results = measure(trees, args.runs)
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average {load:.1f} at start, "
        f"{args.runs} runs per command, medians"
    )
    print()
    labels = list(dict.fromkeys(label for _, label in results))
    if len(trees) == 1:
        print("| command | wall ms | CPU ms | peak RSS MB |")
        print("|---|---:|---:|---:|")
        for label in labels:
            s = results[("this", label)]
            print(
                f"| `{label}` | {statistics.median(s.wall_s) * 1000:.0f} | {statistics.median(s.cpu_s) * 1000:.0f} "
                f"| {statistics.median(s.rss_mb):.0f} |"
            )
        return
    print(
        "| command | wall ms before | wall ms after | CPU ms before | CPU ms after | CPU ratio | RSS MB before/after |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label in labels:
        before, after = results[("before", label)], results[("this", label)]
        cpu_before, cpu_after = statistics.median(before.cpu_s), statistics.median(after.cpu_s)
        print(
            f"| `{label}` | {statistics.median(before.wall_s) * 1000:.0f} | {statistics.median(after.wall_s) * 1000:.0f} "
            f"| {cpu_before * 1000:.0f} | {cpu_after * 1000:.0f} | {cpu_before / max(cpu_after, 1e-9):.1f}x "
            f"| {statistics.median(before.rss_mb):.0f}/{statistics.median(after.rss_mb):.0f} |"
        )


if __name__ == "__main__":
    main()

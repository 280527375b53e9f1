"""The harness of the in-process bench scripts that run one worker per service tree, interleaved, each run on a
fresh database (`player_usecases.py`, `publish_floor.py`): the hidden worker options, the worker's start, the
trees to compare, a run's database and Redis keys, and the worker's subprocess."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def add_tree_options(parser: argparse.ArgumentParser) -> None:
    """`--baseline-tree`, and the hidden options a worker subprocess is started with."""
    parser.add_argument("--baseline-tree", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)


def ran_as_worker(args: argparse.Namespace, worker: Callable[[argparse.Namespace], Coroutine[Any, Any, Any]]) -> bool:
    """In a worker subprocess: run `worker` on the service's event loop, print its result as JSON, return True."""
    if not args.worker:
        return False
    from service.runtime.event_loop import run

    print(json.dumps(run(worker(args))))
    return True


def admin_database_url(parser: argparse.ArgumentParser) -> str:
    """DATABASE_URL (a server where the runs may create databases); REDIS_URL must be set too."""
    admin_url = os.environ.get("DATABASE_URL")
    if not admin_url or not os.environ.get("REDIS_URL"):
        parser.error("set DATABASE_URL and REDIS_URL")
    return admin_url


def trees(args: argparse.Namespace) -> dict[str, Path]:
    """This checkout, and the baseline tree when one was given."""
    found = {"this tree": REPO_ROOT}
    if args.baseline_tree:
        found["baseline"] = args.baseline_tree.resolve()
    return found


@contextmanager
def fresh_database(admin_url: str, name: str, prefix: str) -> Iterator[str]:
    """A new database `name` with the migrations applied; dropped afterwards, with the Redis keys under `prefix`."""
    sys.path.insert(0, str(REPO_ROOT))
    from player_data_path import create_database, drop_database, remove_keys

    from service.storage.migrations import apply_migrations

    db = create_database(admin_url, name)
    try:
        apply_migrations(db)
        yield db
    finally:
        drop_database(admin_url, name)
        remove_keys(prefix)


def run_worker(script: str, tree: Path, db: str, prefix: str, options: list[str]) -> Any:
    """`script --worker` with `tree`'s service first on the path; the JSON it printed last."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{REPO_ROOT}"}
    command = [sys.executable, script, "--worker", "--db", db, "--prefix", prefix, "--tree", str(tree), *options]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"worker for {tree} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def heading(load: str, what: str) -> str:
    """The first line of a result: date (UTC), CPUs, `load` (the load average), then `what` was run."""
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({platform.machine()}), load average {load}; {what}"

"""Player API throughput and latency, with the Redis cache on and off, measured with wrk.

Starts `challengectl serve` (embedded PostgreSQL/Redis in a temporary data dir unless DATABASE_URL /
REDIS_URL are set), initializes USERS players, then runs wrk against each hot endpoint with every
request carrying one of those players' tokens. The same run is repeated with REDIS_URL=disabled, so the
two columns compare the cache against PostgreSQL-only reads on the same machine in the same run.

    python bench/player_api.py [--users 200] [--duration 10] [--connections 32] [--workers 1]

`--workers N` runs the service with N HTTP worker processes (`serve --workers N`, docs/http-api.md#general-rules); run it
with 1 and with 2 to compare.

Needs `wrk` (Debian package `wrk`). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.serve_process import free_port, start_serve
from service.config.resources import example_catalog_path
from service.transport.auth import mint_token

SECRET = "bench-secret-" + "x" * 32


PORT, GRPC_PORT, ADMIN_PORT = free_port(), free_port(), free_port()
SCENARIOS = {
    "GET /v1/challenges?active_only=true": ("GET", "/challenge/v1/challenges?active_only=true"),
    "GET /v1/challenges": ("GET", "/challenge/v1/challenges"),
    "POST /v1/challenges/initialize (returning)": ("POST", "/challenge/v1/challenges/initialize"),
}
WRK_SCRIPT = """
tokens = {%s}
method = "%s"
path = "%s"
counter = 0
request = function()
  counter = counter + 1
  local token = tokens[(counter %% #tokens) + 1]
  return wrk.format(method, path, {["Authorization"] = "Bearer " .. token, ["Content-Length"] = "0"})
end
"""


def start_service(
    data_dir: Path, redis_disabled: bool, workers: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    settings = {
        "CHALLENGE_DATA_DIR": str(data_dir),
        "CHALLENGE_JWT_SECRET": SECRET,
        "CHALLENGE_HTTP_PORT": str(PORT),
        "CHALLENGE_GRPC_PORT": str(GRPC_PORT),
        "CHALLENGE_ADMIN_PORT": str(ADMIN_PORT),
        "CHALLENGE_WORKERS": str(workers),
        "CHALLENGE_CATALOG_PATH": str(example_catalog_path()),
        **({"REDIS_URL": "disabled"} if redis_disabled else {}),
        **(extra_env or {}),
    }
    return start_serve(settings, timeout_s=60)


@contextlib.contextmanager
def service_of_tree(tree: Path, extra_env: dict[str, str]) -> Iterator[psutil.Process]:
    """A fresh `serve` (one process) running `tree`'s code, in a temporary data dir; stopped and removed
    afterwards."""
    base = Path(tempfile.mkdtemp(prefix="challengectl-bench-"))
    process = start_service(base / "data", False, 1, {"PYTHONPATH": f"{tree}{os.pathsep}{REPO_ROOT}", **extra_env})
    try:
        yield psutil.Process(process.pid)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def initialize(tokens: list[str]) -> None:
    for token in tokens:
        request = urllib.request.Request(
            f"http://127.0.0.1:{PORT}/challenge/v1/challenges/initialize",
            method="POST",
            data=b"",
            headers={"Authorization": f"Bearer {token}"},
        )
        urllib.request.urlopen(request, timeout=10).read()


def run_wrk(tokens: list[str], method: str, path: str, duration: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (", ".join(json.dumps(t) for t in tokens), method, path))
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            script.name,
            f"http://127.0.0.1:{PORT}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    if "Non-2xx" in output:
        raise SystemExit(f"non-2xx answers during the run:\n{output}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        **{f"p{p}": _ms(re.search(rf"^\s+{p}%\s+(\S+)", output, re.MULTILINE).group(1)) for p in (50, 90, 99)},
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(redis_disabled: bool, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    base = Path(tempfile.mkdtemp(prefix="challengectl-bench-"))
    process = start_service(base / "data", redis_disabled, args.workers)
    try:
        tokens = [mint_token(SECRET.encode(), f"bench-{i}", ttl_s=3600) for i in range(args.users)]
        initialize(tokens)
        return {
            name: run_wrk(tokens, method, path, args.duration, args.connections)
            for name, (method, path) in SCENARIOS.items()
        }
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="HTTP worker processes of the service")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    cached = measure(False, args)
    uncached = measure(True, args)
    processes = "1 service process" if args.workers == 1 else f"{args.workers} HTTP workers + the main process"
    print(
        f"users={args.users} connections={args.connections} duration={args.duration}s, {processes}, "
        f"{os.cpu_count()} cores shared with wrk and the databases"
    )
    print("| endpoint | cache on: req/s | p50 ms | p99 ms | cache off: req/s | p50 ms | p99 ms | throughput ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name in SCENARIOS:
        on, off = cached[name], uncached[name]
        print(
            f"| {name} | {on['rps']:.0f} | {on['p50']:.2f} | {on['p99']:.2f} | {off['rps']:.0f} | "
            f"{off['p50']:.2f} | {off['p99']:.2f} | {on['rps'] / off['rps']:.2f}x |"
        )


if __name__ == "__main__":
    main()

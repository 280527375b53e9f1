"""CPU per request of the player API's transport alone (no sockets, no database), this checkout against
another tree, in two ways:

- ASGI: the app `create_http_app` builds, called in-process with the ASGI messages uvicorn would pass;
- protocol + ASGI: the raw request fed to the service's HTTP protocol (`limited_protocol`, uvicorn's
  httptools protocol) on a uvloop loop, with a transport that only collects the bytes written: what the
  socket costs is left out, but parsing, the scope, the task, the deadlines and the response writing are in.

Both around a stand-in for the use cases that answers at once from the example catalog. What is left is
what the transport costs per request: parsing, routing, authentication (a cached token), the error shape,
headers, metrics and the response writer.

Each tree runs in its own interpreter (its `service/` first on sys.path); trees take turns, and each
figure is the best of `--rounds` (the least disturbed by other work on a shared machine).

    python bench/http_layers.py --before-tree DIR [--requests 20000] [--rounds 5]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Runs inside each tree's interpreter; prints {scenario: microseconds per request}.
MEASURE = r"""
import asyncio, json, sys, time
from datetime import UTC, datetime

import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.config.resources import example_catalog_path
from service.domain.catalog import load_catalog
from service.transport.auth import AuthConfig, Authenticator, mint_token
from service.transport.health import Readiness
from service.transport.http_api import create_http_app, player_routes
from service.transport.http_protocol import HttpLimits, limited_protocol
from service.usecases.players import ChallengeState, InitializeResult, ListResult

SECRET = b"k" * 32
NOW = datetime(2030, 5, 17, 12, tzinfo=UTC)
catalog = load_catalog(example_catalog_path())
listing = ListResult(tuple(ChallengeState(c, ()) for c in catalog.challenges), NOW)


class Players:  # answers at once: only the transport is measured
    async def list_challenges(self, user_id, active_only):
        return listing

    async def initialize(self, user_id):
        return InitializeResult((), 0, NOW)


async def ok() -> None:
    return None


async def version() -> int:
    return 1


readiness = Readiness(ping_database=ok, read_schema_version=version, expected_schema_version=1, ping_redis=None,
                      redis_required=False)
routes = player_routes(Players(), Authenticator(AuthConfig(mode="jwt", hs256_key=SECRET)), catalog, "/challenge", 65536)
app = create_http_app(readiness, "/challenge", catalog.fingerprint, routes)
token = mint_token(SECRET, "bench-player").encode()
SCENARIOS = {
    "GET /healthz": ("GET", "/healthz", b"", []),
    "GET /v1/challenges?active_only=true": ("GET", "/challenge/v1/challenges", b"active_only=true",
                                            [(b"authorization", b"Bearer " + token)]),
    "POST /v1/challenges/initialize": ("POST", "/challenge/v1/challenges/initialize", b"",
                                       [(b"authorization", b"Bearer " + token), (b"content-length", b"0")]),
    "GET unknown route (404)": ("GET", "/challenge/v1/nothing", b"", [(b"authorization", b"Bearer " + token)]),
    "GET with a bad token (401)": ("GET", "/challenge/v1/challenges", b"", [(b"authorization", b"Bearer x.y.z")]),
}


async def run(method, path, query, headers, count):
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        return None

    base = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http", "root_path": "",
            "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
            "headers": [(b"host", b"bench"), *headers]}
    for _ in range(200):
        await app(dict(base, state={}), receive, send)
    started = time.process_time()
    for _ in range(count):
        await app(dict(base, state={}), receive, send)
    return (time.process_time() - started) / count * 1e6


class Transport:  # keeps nothing: the socket's cost is not measured
    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data):
        pass

    def writelines(self, data):
        pass

    def is_closing(self):
        return False

    def close(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


async def run_protocol(method, path, query, headers, count):
    config = Config(app, lifespan="off", http=limited_protocol(HttpLimits()), ws="none", log_config=None,
                    access_log=False, server_header=False, date_header=False)
    config.load()
    state = ServerState()
    protocol = config.http_protocol_class(config=config, server_state=state, app_state={},
                                          _loop=asyncio.get_running_loop())
    protocol.connection_made(Transport())
    target = path + ("?" + query.decode() if query else "")
    raw = f"{method} {target} HTTP/1.1\r\n".encode() + b"".join(n + b": " + v + b"\r\n" for n, v in
                                                               [(b"host", b"bench"), *headers]) + b"\r\n"

    async def one():
        protocol.data_received(raw)
        while state.tasks:
            await asyncio.sleep(0)

    for _ in range(200):
        await one()
    started = time.process_time()
    for _ in range(count):
        await one()
    return (time.process_time() - started) / count * 1e6


count = int(sys.argv[1])
results = {name: asyncio.run(run(*spec, count)) for name, spec in SCENARIOS.items()}
results.update({"protocol: " + name: uvloop.run(run_protocol(*spec, count)) for name, spec in SCENARIOS.items()})
print(json.dumps(results))
"""


def measure(tree: Path, count: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # Started outside any checkout: the working directory would otherwise come first on sys.path.
    output = subprocess.run(
        [sys.executable, "-c", MEASURE, str(count)],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-tree", required=True, help="a checkout of the 'before' commit")
    parser.add_argument("--requests", type=int, default=20000, help="requests per scenario and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trees = {"before": Path(args.before_tree).resolve(), "after": REPO_ROOT}
    best: dict[str, dict[str, float]] = {label: {} for label in trees}
    load_start = os.getloadavg()[0]
    for _ in range(args.rounds):
        for label, tree in trees.items():
            for name, micros in measure(tree, args.requests).items():
                best[label][name] = min(micros, best[label].get(name, float("inf")))
    load_end = os.getloadavg()[0]
    print(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average "
        f"{load_start:.1f} -> {load_end:.1f}; before = {trees['before']}, after = this checkout; in-process calls "
        f"(ASGI, or `protocol:` raw bytes through the HTTP protocol on uvloop), {args.requests} per scenario, best of {args.rounds} rounds taken in turns; process CPU time"
    )
    print("| request | before: CPU us/req | after: CPU us/req | after/before |")
    print("|---|---|---|---|")
    for name in best["before"]:
        before, after = best["before"][name], best["after"][name]
        print(f"| {name} | {before:.1f} | {after:.1f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()

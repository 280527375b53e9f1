"""`challengectl serve` for the bench scripts: one way to start it on chosen settings and wait until it is
ready (the scripts measure a running service; they do not each write their own starter)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent


def port_is_free(port: int) -> bool:
    """Whether a loopback socket can bind `port` now (nothing listens on it)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(
    settings: dict[str, str],
    *,
    pythonpath: str = str(REPO_ROOT),
    log_path: Path | None = None,
    timeout_s: float = 90,
) -> subprocess.Popen:
    """Start `python -m challengectl serve` with this environment's non-CHALLENGE_ variables, log level
    warning and `settings` (which name CHALLENGE_HTTP_PORT); return once /readyz answers 200. Output goes
    to `log_path` (or nowhere); a service that exits or stays unready ends the script with its log tail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHALLENGE_")}
    env.update(PYTHONPATH=pythonpath, CHALLENGE_LOG_LEVEL="warning")
    env.update(settings)
    readyz = f"http://127.0.0.1:{settings['CHALLENGE_HTTP_PORT']}/readyz"
    output = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
    try:
        # `python -m` puts the working directory first on sys.path: started from the repository root, this
        # checkout's service/ would shadow the tree that PYTHONPATH names first (a before/after would
        # compare the checkout with itself). Run in that first entry instead.
        process = subprocess.Popen(
            [sys.executable, "-m", "challengectl", "serve"],
            env=env,
            cwd=env["PYTHONPATH"].split(os.pathsep)[0],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log_path is not None:
            output.close()  # the child has its own descriptor
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited with status {process.returncode}{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(readyz, timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"the service did not become ready within {timeout_s:.0f} s{_log_tail(log_path)}")


def api_cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of the player API processes of `serve`: the processes below it (the HTTP
    workers of the default `workers` = 1, and the negligible multiprocessing resource tracker), or `serve`
    itself with `workers` = 0. The `serve` process alone would miss every request under the default."""
    members = process.children(recursive=True) or [process]
    total = 0.0
    for member in members:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _log_tail(log_path: Path | None, lines: int = 20) -> str:
    if log_path is None:
        return ""
    return ":\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])

"""`challengectl serve` as a subprocess for end-to-end tests: start on free ports, wait until ready, call
its APIs, stop it cleanly (tests/test_serve.py and every CLI test against a running service)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from service.config.resources import example_catalog_path
from service.proto.challengectl.v1 import ingest_pb2, ingest_pb2_grpc
from service.runtime.app import AFTER_DRAIN_LIMIT_S
from tests.servers import free_port
from tests.support.scratch import scratch_dir

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
STARTUP_TIMEOUT_S = 60
SHUTDOWN_LIMIT_S = 10


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a GET; error statuses are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), dict(error.headers)


@dataclass
class ServeProcess:
    """A `challengectl serve` subprocess on free ports."""

    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        env = {
            **self.env,
            "PYTHONPATH": str(REPO_ROOT),
            "CHALLENGE_LOG_FORMAT": "json",
            "CHALLENGE_HTTP_PORT": str(self.http_port),
            "CHALLENGE_GRPC_PORT": str(self.grpc_port),
            "CHALLENGE_ADMIN_PORT": str(self.admin_port),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "challengectl", "serve", *self.args],
            env=env,
            cwd=tempfile.gettempdir(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}: {self.process.stderr.read()}")
            try:
                http_get(self.api("/healthz"))
                return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("serve did not answer /healthz in time")

    def api(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def wait_ready(self, expect: int = 200, timeout_s: float = 15) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            status, body, _ = http_get(self.api("/readyz"))
            if status == expect or time.monotonic() > deadline:
                assert status == expect, body
                return body
            time.sleep(0.2)

    def stop(self, signum: int = signal.SIGINT) -> tuple[int, float, str]:
        """Send the signal; return (exit code, seconds to exit, stderr)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            # Longer than the service's exit watchdog (AFTER_DRAIN_LIMIT_S), so that a stuck shutdown ends
            # with its thread stacks in `stderr` rather than in this timeout.
            _, stderr = self.process.communicate(timeout=AFTER_DRAIN_LIMIT_S + 10)
        finally:
            self.kill()
        return self.process.returncode, time.monotonic() - started, stderr

    def __enter__(self) -> ServeProcess:
        """Started and ready; leaving the block stops it and requires a clean exit (status 0)."""
        self.start().wait_ready()
        return self

    def __exit__(self, *exc_info: object) -> None:
        code, _, stderr = self.stop()
        assert code == 0, stderr

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without the service's own settings, plus `extra`.
    With a DATABASE_URL (not embedded) the catalog must be named: the bundled example is used."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CHALLENGE_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["XDG_CONFIG_HOME"] = str(scratch_dir("cfg-"))
    if "DATABASE_URL" in extra:
        env["CHALLENGE_CATALOG_PATH"] = str(example_catalog_path())
    env.update(extra)
    return env


def service_env(pg_url: str, redis_url: str, redis_prefix: str, secret: str, **extra: str) -> dict[str, str]:
    """`base_env` for a service on the test database and Redis key prefix, accepting tokens signed with
    `secret`, plus `extra`."""
    return base_env(
        DATABASE_URL=pg_url,
        REDIS_URL=redis_url,
        CHALLENGE_JWT_SECRET=secret,
        CHALLENGE_REDIS_KEY_PREFIX=redis_prefix,
        **extra,
    )


def processes_using(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        text = " ".join(process.info.get("cmdline") or []) + " " + (process.info.get("cwd") or "")
        if str(data_dir) in text and process.status() != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def grpc_health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def player_call(serve: ServeProcess, token: str, method: str, path: str) -> dict:
    request = urllib.request.Request(
        serve.api(f"/challenge{path}"),
        method=method,
        data=b"" if method == "POST" else None,
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def publish_logins(serve: ServeProcess, user: str, count: int) -> ingest_pb2.PublishResult:
    events = [
        ingest_pb2.Event(id=str(uuid.uuid4()), user_id=user, kind=ingest_pb2.EVENT_KIND_LOGIN) for _ in range(count)
    ]
    with grpc.insecure_channel(f"127.0.0.1:{serve.grpc_port}") as channel:
        stub = ingest_pb2_grpc.EventIngestStub(channel)
        return stub.Publish(ingest_pb2.EventBatch(batch_id="b", events=events), timeout=10)


def welcome_progress(goals: list[dict]) -> int:
    return next(goal["progress"] for goal in goals if goal["goalId"] == "s1-welcome")


def metric_total(serve: ServeProcess, name: str, **labels: str) -> float:
    """The sum of the samples `name` on the service's admin `/metrics` whose labels include `labels`."""
    with urllib.request.urlopen(serve.admin("/metrics"), timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )

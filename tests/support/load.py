"""HTTP load against a `serve` subprocess, for the tests that watch the pools while requests run
(`pool`, `top`), and waiting until the pool's size holds still."""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp

from service.transport.auth import mint_token
from tests.support.serve import ServeProcess, http_get

LOAD_SECRET = "cli-pool-secret-0123456789abcdef01234"


class HttpLoad:
    """Players listing all their challenges (one PostgreSQL read each, no cache) from a thread with its
    own event loop, `concurrency` requests in flight, until stopped. The service must accept tokens
    signed with `LOAD_SECRET`."""

    def __init__(self, serve: ServeProcess, concurrency: int) -> None:
        self.url = serve.api("/challenge/v1/challenges")
        self.concurrency = concurrency
        self.completed = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="http-load")

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        headers = {"Authorization": f"Bearer {mint_token(LOAD_SECRET.encode(), f'pool-load-{index}')}"}
        while not self._stop.is_set():
            async with session.get(self.url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}")
            self.completed += 1

    async def _run(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency)) as session:
            await asyncio.gather(*(self._client(session, index) for index in range(self.concurrency)))

    def __enter__(self) -> HttpLoad:
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.completed < 100 and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        assert self.completed >= 100, f"the load did not get going: {self.failures[:3]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def wait_for_a_steady_pool_size(serve: ServeProcess, timeout_s: float = 15) -> None:
    """While the pool grows, a connection can open between the two reads of one sample; compare once
    the size has held still for a second."""
    deadline = time.monotonic() + timeout_s
    size = http_get(serve.admin("/admin/pool"))[1]["db"]["size"]
    while time.monotonic() < deadline:
        time.sleep(1)
        size, previous = http_get(serve.admin("/admin/pool"))[1]["db"]["size"], size
        if size == previous:
            return
    raise AssertionError(f"the service's pool kept changing size (now {size})")

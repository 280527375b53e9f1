"""A tiny fake player API for load-generator tests: it answers the calls the generator makes, counts
them per user, and can stall its own event loop (run in a thread) like a frozen server would."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from tests.servers import free_port

STALL_S = 2.0


@dataclass
class FakePlayerApi:
    """Answers the player routes the init phase and the probe use. `stall_after_s`: the first request
    that arrives this long after the first initialize freezes the server for `stall_s`."""

    fingerprint: str = "0000000000000000"
    stall_after_s: float | None = None
    stall_s: float = STALL_S
    refuse_auth: bool = False
    port: int = field(default_factory=free_port)
    initialize_calls: int = 0
    users_seen: Counter[str] = field(default_factory=Counter)
    stalled_at: float | None = None
    _first: float | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/challenge"

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"}, headers={"X-Catalog-Fingerprint": self.fingerprint})

    async def _probe(self, request: web.Request) -> web.Response:
        if self.refuse_auth:
            return web.json_response({"errorCode": "UNAUTHORIZED", "message": "invalid token"}, status=401)
        return web.json_response({"challengeId": request.match_info["challenge_id"], "goals": []})

    async def _initialize(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        self._first = self._first or now
        self.initialize_calls += 1
        self.users_seen[request.headers.get("X-Mock-User-Id", "")] += 1
        if self.stall_after_s is not None and self.stalled_at is None and now - self._first >= self.stall_after_s:
            self.stalled_at = now
            time.sleep(self.stall_s)  # blocks this server's loop: every request waits, as with a frozen service
        return web.Response(
            body=json.dumps({"assignedGoals": [], "newAssignments": 10, "totalActive": 10}).encode(),
            content_type="application/json",
        )

    def start(self) -> FakePlayerApi:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            application = web.Application()
            application.router.add_get("/challenge/readyz", self._readyz)
            application.router.add_get("/challenge/v1/challenges/{challenge_id}", self._probe)
            application.router.add_post("/challenge/v1/challenges/initialize", self._initialize)
            runner = web.AppRunner(application)
            self._loop.run_until_complete(runner.setup())
            self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, name="fake-player-api", daemon=True).start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

"""The player HTTP app in-process for tests: `RecordingPlayers` (the `Players` methods the routes call,
recording each call and answering from the catalog), an always-ready `Readiness`, and `serve`, which runs
an ASGI app with uvicorn on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import uvicorn

from service.domain.catalog import Catalog
from service.domain.errors import NotFound
from service.transport.health import Readiness
from service.usecases.players import (
    ChallengeState,
    ClaimResult,
    InitializeResult,
    ListResult,
    RotationStatus,
    SelectResult,
    SetActiveResult,
)

BASE = "/challenge"
MAX_BODY = 8192
SECRET = b"k" * 32
NOW = datetime(2030, 5, 17, 12, 0, 0, tzinfo=UTC)
LEAKY_MESSAGE = "SELECT * FROM user_goal_progress -- password=hunter2"


class RecordingPlayers:
    """Implements the `Players` methods the routes call; records (method, args) and answers from the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _challenge(self, challenge_id: str):  # type: ignore[no-untyped-def]
        challenge = self.catalog.challenges_by_id.get(challenge_id)
        if challenge is None:
            raise NotFound("CHALLENGE_NOT_FOUND", f"challenge '{challenge_id}' not found")
        return challenge

    async def list_challenges(self, user_id: str, active_only: bool) -> ListResult:
        self.calls.append(("list_challenges", (user_id, active_only)))
        return ListResult(tuple(ChallengeState(c, ()) for c in self.catalog.challenges), NOW)

    async def get_challenge(self, user_id: str, challenge_id: str, active_only: bool) -> ChallengeState:
        self.calls.append(("get_challenge", (user_id, challenge_id, active_only)))
        return ChallengeState(self._challenge(challenge_id), ())

    async def initialize(self, user_id: str) -> InitializeResult:
        self.calls.append(("initialize", (user_id,)))
        return InitializeResult((), 0, NOW)

    async def set_active(self, user_id: str, challenge_id: str, goal_id: str, is_active: bool) -> SetActiveResult:
        self.calls.append(("set_active", (user_id, challenge_id, goal_id, is_active)))
        return SetActiveResult(challenge_id, goal_id, is_active, NOW)

    async def batch_select(
        self, user_id: str, challenge_id: str, goal_ids: Sequence[str], replace_existing: bool
    ) -> SelectResult:
        self.calls.append(("batch_select", (user_id, challenge_id, tuple(goal_ids), replace_existing)))
        return SelectResult(challenge_id, (), 0, (), NOW)

    async def random_select(
        self, user_id: str, challenge_id: str, count: int, replace_existing: bool, exclude_active: bool
    ) -> SelectResult:
        self.calls.append(("random_select", (user_id, challenge_id, count, replace_existing, exclude_active)))
        return SelectResult(challenge_id, (), 0, (), NOW)

    async def claim(self, user_id: str, challenge_id: str, goal_id: str) -> ClaimResult:
        self.calls.append(("claim", (user_id, challenge_id, goal_id)))
        if goal_id == "explode":
            raise RuntimeError(LEAKY_MESSAGE)
        return ClaimResult(goal_id, self.catalog.goals[0].reward, NOW)

    def rotation_status(self, challenge_id: str) -> RotationStatus:
        self.calls.append(("rotation_status", (challenge_id,)))
        return RotationStatus(self._challenge(challenge_id).challenge_id, None, None, None)


def stub_readiness() -> Readiness:
    """Readiness that always passes (the health routes are not under test here)."""

    async def ping() -> None:
        return None

    async def schema_version() -> int:
        return 1

    return Readiness(
        ping_database=ping,
        read_schema_version=schema_version,
        expected_schema_version=1,
        ping_redis=None,
        redis_required=False,
    )


@contextlib.asynccontextmanager
async def serve(app: Any, **config: Any) -> AsyncIterator[str]:
    """Run `app` with uvicorn (and `config`) on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off", **config))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()

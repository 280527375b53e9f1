"""The operations the generator sends (docs/loadtest.md#profiles): initialize, list challenges, set-active, claim
(lookup then claim), and calls of events over AGS OnMessage or Publish batches (challengectl/eventload.py). Each one records its outcome
through a `Recorder` with the endpoint label and failure class of docs/loadtest.md#measurement-model.

Connections are long-lived: one keep-alive aiohttp pool and one gRPC channel per generator process.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, fields
from typing import Any, Protocol

import aiohttp
import grpc

from challengectl.eventload import RPC_AGS, Call, EventSender
from challengectl.loadtest.profiles import DEFAULT_USERS, EXTRA_SUCCESS, user_id_of
from service.proto.challengectl.v1 import ingest_pb2
from service.transport.auth import mint_token

_ERROR_CODE = re.compile(rb'"errorCode"\s*:\s*"([^"]{1,80})"')
_NEW_ASSIGNMENTS = re.compile(rb'"newAssignments"\s*:\s*(\d+)')
_JSON_HEADERS = {"Content-Type": "application/json"}
TIMEOUT = "timeout"
CONNECT_ERROR = "connect_error"
REJECTED = "grpc_REJECTED"


@dataclass(frozen=True, kw_only=True)
class GeneratorOptions:
    """What the load generator sends and where (docs/loadtest.md#loadtest-run options): shared by the
    `loadtest run` request and the generator's configuration."""

    api_url: str
    grpc_addr: str
    users: int = DEFAULT_USERS
    auth: str = "jwt"
    jwt_key: bytes | None = None
    namespace: str = "accelbyte"
    grpc_token: str | None = None
    event_rpc: str = RPC_AGS
    event_batch: int = 50
    max_inflight: int = 4000
    seed: int = 7
    timeout_s: float = 30.0

    def generator_options(self) -> dict[str, Any]:
        """These options as keyword arguments, to build another kind of options from them."""
        return {option.name: getattr(self, option.name) for option in fields(GeneratorOptions)}


class Recorder(Protocol):
    """Where an operation's outcome goes: `at` is the scheduled time, `sent` the actual send time and
    `done` the completion time (all `time.perf_counter()` seconds); `failure` is None on success."""

    def record(self, label: str, at: float, sent: float, done: float, failure: str | None) -> None: ...


def http_failure_class(status: int, body: bytes) -> str:
    """`http_<status>:<errorCode>`, or `http_<status>` when the body carries no errorCode."""
    match = _ERROR_CODE.search(body[:2048])
    return f"http_{status}:{match.group(1).decode()}" if match else f"http_{status}"


def exception_failure_class(error: BaseException) -> str:
    """`timeout` or `connect_error` for a request that got no HTTP response."""
    if isinstance(error, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return TIMEOUT
    return CONNECT_ERROR


def is_success(label: str, status: int, body: bytes) -> bool:
    if status == 200:
        return True
    extra = EXTRA_SUCCESS.get(label)
    if not extra:
        return False
    match = _ERROR_CODE.search(body[:2048])
    return match is not None and (status, match.group(1).decode()) in extra


def first_completed_goal(body: bytes) -> tuple[str, str] | None:
    """(challenge_id, goal_id) of the first goal with status `completed` in a challenges listing."""
    if b'"completed"' not in body:
        return None
    for challenge in json.loads(body).get("challenges", []):
        for goal in challenge.get("goals", []):
            if goal.get("status") == "completed":
                return challenge["challengeId"], goal["goalId"]
    return None


def new_assignments(body: bytes) -> int | None:
    match = _NEW_ASSIGNMENTS.search(body)
    return int(match.group(1)) if match else None


class Operations:
    """The requests of one generator process. Every request carries its own user's credentials: a
    token minted from the HS256 key (cached per user) or `X-Mock-User-Id` with auth `none`."""

    def __init__(
        self, options: GeneratorOptions, *, token_ttl_s: int, http_connections: int, recorder: Recorder
    ) -> None:
        self._options = options
        self._api_url = options.api_url.rstrip("/")
        self._token_ttl_s = token_ttl_s
        self._metadata = (("authorization", f"Bearer {options.grpc_token}"),) if options.grpc_token else ()
        self._http_connections = http_connections
        self._recorder = recorder
        self._headers: dict[int, dict[str, str]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._channel: grpc.aio.Channel | None = None
        self.sender: EventSender | None = None
        self.claim_skipped = 0

    async def start(self, with_grpc: bool) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._http_connections, keepalive_timeout=120, use_dns_cache=True, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._options.timeout_s),
            skip_auto_headers=("User-Agent",),
        )
        if with_grpc:
            options = self._options
            self._channel = grpc.aio.insecure_channel(options.grpc_addr)
            self.sender = EventSender(
                self._channel, options.event_rpc, deadline_s=options.timeout_s, metadata=self._metadata
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._channel is not None:
            await self._channel.close()

    def warm_credentials(self, users: int) -> None:
        """Mint every user's token up front, so minting never delays a scheduled request."""
        for user_number in range(1, users + 1):
            self._user_headers(user_number)

    def _user_headers(self, user_number: int) -> dict[str, str]:
        headers = self._headers.get(user_number)
        if headers is None:
            user_id = user_id_of(user_number)
            jwt_key = self._options.jwt_key
            if self._options.auth == "none":
                headers = {"X-Mock-User-Id": user_id}
            else:
                assert jwt_key is not None
                headers = {"Authorization": f"Bearer {mint_token(jwt_key, user_id, self._token_ttl_s)}"}
            self._headers[user_number] = headers
        return headers

    async def _http(
        self, label: str, at: float, method: str, path: str, user_number: int, body: bytes | None = None
    ) -> tuple[int, bytes, float] | None:
        """Send one request and record it; return (status, body, completion time), or None when no
        response came back."""
        assert self._session is not None
        headers = self._user_headers(user_number)
        if body is not None:
            headers = {**headers, **_JSON_HEADERS}
        sent = time.perf_counter()
        try:
            async with self._session.request(method, self._api_url + path, data=body, headers=headers) as response:
                payload = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            self._recorder.record(label, at, sent, time.perf_counter(), exception_failure_class(error))
            return None
        done = time.perf_counter()
        self._recorder.record(
            label, at, sent, done, None if is_success(label, status, payload) else http_failure_class(status, payload)
        )
        return status, payload, done

    async def initialize(self, at: float, user_number: int, expect_new: bool) -> None:
        """POST initialize; labelled by the response's `newAssignments` (failures by `expect_new`)."""
        assert self._session is not None
        headers = self._user_headers(user_number)
        sent = time.perf_counter()
        expected = "initialize_new" if expect_new else "initialize_returning"
        try:
            async with self._session.post(self._api_url + "/v1/challenges/initialize", headers=headers) as response:
                payload = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            self._recorder.record(expected, at, sent, time.perf_counter(), exception_failure_class(error))
            return
        done = time.perf_counter()
        if status != 200:
            self._recorder.record(expected, at, sent, done, http_failure_class(status, payload))
            return
        inserted = new_assignments(payload)
        label = expected if inserted is None else ("initialize_new" if inserted > 0 else "initialize_returning")
        self._recorder.record(label, at, sent, done, None)

    async def challenges(self, at: float, user_number: int, active_only: bool) -> None:
        if active_only:
            await self._http("challenges_active", at, "GET", "/v1/challenges?active_only=true", user_number)
        else:
            await self._http("challenges", at, "GET", "/v1/challenges", user_number)

    async def set_active(self, at: float, user_number: int, challenge_id: str, goal_id: str, active: bool) -> None:
        body = b'{"is_active":true}' if active else b'{"is_active":false}'
        await self._http(
            "set_active", at, "PUT", f"/v1/challenges/{challenge_id}/goals/{goal_id}/active", user_number, body
        )

    async def claim(self, at: float, user_number: int) -> None:
        """Lookup (`claim_lookup`), then claim the first completed goal, scheduled when the lookup ends."""
        result = await self._http("claim_lookup", at, "GET", "/v1/challenges?active_only=true", user_number)
        if result is None or result[0] != 200:
            return
        target = first_completed_goal(result[1])
        if target is None:
            self.claim_skipped += 1
            return
        await self._http("claim", result[2], "POST", f"/v1/challenges/{target[0]}/goals/{target[1]}/claim", user_number)

    async def send_events(self, at: float, call: Call) -> None:
        """One call of events (eventload); each event is recorded under its own label (`event_login` /
        `event_stat`) with the call's latency, so counts stay in events and rates in events per second."""
        assert self.sender is not None
        outcome = await self.sender.send(call, at)
        rejected = {rejection.index for rejection in outcome.rejections}
        failure = None if outcome.failure is None else f"grpc_{outcome.failure}"
        for index, event in enumerate(call.events):
            label = event_label(event)
            self._recorder.record(label, at, outcome.sent, outcome.done, REJECTED if index in rejected else failure)


def event_label(event: ingest_pb2.Event) -> str:
    return "event_login" if event.kind == ingest_pb2.EVENT_KIND_LOGIN else "event_stat"

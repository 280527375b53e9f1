"""The operations the generator sends (docs/loadtest.md#profiles): initialize, list challenges, set-active, claim
(lookup then claim), and events over AGS OnMessage or Publish batches. Each one records its outcome
through a `Recorder` with the endpoint label and failure class of docs/loadtest.md#measurement-model.

Connections are long-lived: one keep-alive aiohttp pool and one gRPC channel per generator process.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
import grpc

from challengectl.loadtest.profiles import EXTRA_SUCCESS, user_id_of
from service.proto.accelbyte.iam.account.v1 import account_pb2, account_pb2_grpc
from service.proto.accelbyte.social.statistic.v1 import statistic_pb2, statistic_pb2_grpc
from service.proto.challengectl.v1 import ingest_pb2, ingest_pb2_grpc
from service.transport.auth import mint_token

_ERROR_CODE = re.compile(rb'"errorCode"\s*:\s*"([^"]{1,80})"')
_NEW_ASSIGNMENTS = re.compile(rb'"newAssignments"\s*:\s*(\d+)')
_JSON_HEADERS = {"Content-Type": "application/json"}
TIMEOUT = "timeout"
CONNECT_ERROR = "connect_error"


class Recorder(Protocol):
    """Where an operation's outcome goes: `at` is the scheduled time, `sent` the actual send time and
    `done` the completion time (all `time.perf_counter()` seconds); `failure` is None on success."""

    def record(self, label: str, at: float, sent: float, done: float, failure: str | None) -> None: ...


@dataclass(frozen=True)
class Event:
    """One generated event: `kind` is `login` or `stat`."""

    event_id: str
    user_number: int
    kind: str
    stat_code: str = ""
    latest_value: float = 0.0
    inc: float = 0.0

    @property
    def label(self) -> str:
        return "event_login" if self.kind == "login" else "event_stat"


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
        self,
        *,
        api_url: str,
        grpc_addr: str,
        auth: str,
        jwt_key: bytes | None,
        token_ttl_s: int,
        namespace: str,
        grpc_token: str | None,
        timeout_s: float,
        http_connections: int,
        recorder: Recorder,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._grpc_addr = grpc_addr
        self._auth = auth
        self._jwt_key = jwt_key
        self._token_ttl_s = token_ttl_s
        self._namespace = namespace
        self._metadata = (("authorization", f"Bearer {grpc_token}"),) if grpc_token else None
        self._timeout_s = timeout_s
        self._http_connections = http_connections
        self._recorder = recorder
        self._headers: dict[int, dict[str, str]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._channel: grpc.aio.Channel | None = None
        self.claim_skipped = 0

    async def start(self, with_grpc: bool) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._http_connections, keepalive_timeout=120, use_dns_cache=True, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout_s), skip_auto_headers=("User-Agent",)
        )
        if with_grpc:
            self._channel = grpc.aio.insecure_channel(self._grpc_addr)
            self._login = account_pb2_grpc.UserAuthenticationUserLoggedInServiceStub(self._channel).OnMessage
            self._stat = statistic_pb2_grpc.StatisticStatItemUpdatedServiceStub(self._channel).OnMessage
            self._publish = ingest_pb2_grpc.EventIngestStub(self._channel).Publish

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
            if self._auth == "none":
                headers = {"X-Mock-User-Id": user_id}
            else:
                assert self._jwt_key is not None
                headers = {"Authorization": f"Bearer {mint_token(self._jwt_key, user_id, self._token_ttl_s)}"}
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

    async def event(self, at: float, event: Event) -> None:
        """One AGS OnMessage call (`event_login` / `event_stat`)."""
        label = event.label
        timestamp = _rfc3339_now()
        user_id = user_id_of(event.user_number)
        sent = time.perf_counter()
        try:
            if event.kind == "login":
                await self._login(
                    account_pb2.UserLoggedIn(
                        id=event.event_id, user_id=user_id, namespace=self._namespace, timestamp=timestamp
                    ),
                    timeout=self._timeout_s,
                    metadata=self._metadata,
                )
            else:
                payload = statistic_pb2.StatItem(
                    stat_code=event.stat_code,
                    user_id=user_id,
                    namespace=self._namespace,
                    latest_value=event.latest_value,
                    inc=event.inc,
                )
                await self._stat(
                    statistic_pb2.StatItemUpdated(
                        id=event.event_id,
                        user_id=user_id,
                        namespace=self._namespace,
                        timestamp=timestamp,
                        payload=payload,
                    ),
                    timeout=self._timeout_s,
                    metadata=self._metadata,
                )
        except grpc.aio.AioRpcError as error:
            self._recorder.record(label, at, sent, time.perf_counter(), grpc_failure_class(error.code()))
            return
        self._recorder.record(label, at, sent, time.perf_counter(), None)

    async def publish(self, at: float, batch_id: str, events: Sequence[Event]) -> None:
        """One Publish call; each event of the batch is recorded under its own label with the batch's
        latency, so counts stay in events and rates in events per second."""
        kinds = {"login": ingest_pb2.EVENT_KIND_LOGIN, "stat": ingest_pb2.EVENT_KIND_STAT}
        batch = ingest_pb2.EventBatch(
            batch_id=batch_id,
            events=[
                ingest_pb2.Event(
                    id=e.event_id,
                    user_id=user_id_of(e.user_number),
                    namespace=self._namespace,
                    kind=kinds[e.kind],
                    stat_code=e.stat_code,
                    latest_value=e.latest_value,
                    inc=e.inc,
                )
                for e in events
            ],
        )
        sent = time.perf_counter()
        failure: str | None = None
        try:
            result = await self._publish(batch, timeout=self._timeout_s, metadata=self._metadata)
            rejected = {rejection.index for rejection in result.rejected}
        except grpc.aio.AioRpcError as error:
            failure, rejected = grpc_failure_class(error.code()), set()
        done = time.perf_counter()
        for index, event in enumerate(events):
            self._recorder.record(event.label, at, sent, done, "grpc_REJECTED" if index in rejected else failure)


def grpc_failure_class(code: grpc.StatusCode) -> str:
    return f"grpc_{code.name}"


def _rfc3339_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

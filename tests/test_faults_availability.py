"""How soon a waiting flush retry resumes after PostgreSQL answers again (issue 11; docs/http-api.md#health-and-readiness):
`Availability.wait_until_up` ends with the probe that finds the server answering, whether the outage was
known or only suspected after a lost connection, instead of sleeping out a backoff grown meanwhile."""

from __future__ import annotations

import asyncio

from service.storage.availability import Availability

HOUR_S = 3600.0


class Server:
    """A probe target that refuses until `answer` is set."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.probes = 0

    async def probe(self) -> None:
        self.probes += 1
        if not self.answer.is_set():
            raise ConnectionRefusedError("Connection refused")


def _availability(server: Server) -> Availability:
    return Availability(server.probe, lambda error: str(error), lambda: True, interval_s=0.01)


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


async def test_a_retry_waiting_on_a_known_outage_resumes_when_the_probe_connects() -> None:
    server = Server()
    availability = _availability(server)
    availability.suspect()
    await asyncio.wait_for(_until(lambda: availability.is_down), 30)
    waiting = asyncio.create_task(availability.wait_until_up(HOUR_S))
    await asyncio.wait_for(_until(lambda: server.probes >= 3), 30)
    assert not waiting.done()
    server.answer.set()
    await asyncio.wait_for(waiting, 30)  # long before the hour
    assert not availability.is_down
    await availability.close()


async def test_a_retry_after_a_lost_connection_resumes_when_the_probe_finds_the_server_answering() -> None:
    server = Server()
    server.answer.set()
    gate = asyncio.Event()
    checked: list[bool] = []

    async def slow_check() -> None:  # the pool replacing its broken connections
        await gate.wait()
        checked.append(True)

    availability = _availability(server)
    availability.on_recovery(slow_check)
    availability.suspect(connection_lost=True)
    waiting = asyncio.create_task(availability.wait_until_up(HOUR_S))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the probe (with its recovery hooks) is still running
    gate.set()
    await asyncio.wait_for(waiting, 30)  # long before the hour
    assert checked == [True] and not availability.is_down
    await availability.close()

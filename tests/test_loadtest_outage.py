"""`loadtest run` keeps measuring through a PostgreSQL outage of its target and still writes its report
(issue 11 item 9): the resource sampler's statistics connection survives a PostgreSQL restart."""

from __future__ import annotations

import psycopg

from challengectl.loadtest.snapshots import ResourceSampler
from tests.servers import PrivatePostgres, free_port


async def test_the_sampler_reconnects_after_a_postgres_restart_and_reports() -> None:
    postgres = PrivatePostgres()
    url = postgres.start()
    closed_admin = f"http://127.0.0.1:{free_port()}"  # no service: the admin numbers are noted as missing
    sampler = ResourceSampler(closed_admin, None, url, None, interval_s=60)
    try:
        # The sampler leaves its own session out of the counts: one more session stands for the service's.
        service_session = psycopg.connect(url)
        await sampler.open()
        assert sampler.series[-1]["pg_connections_total"] >= 1
        service_session.close()
        postgres.stop()
        during = await sampler.sample()
        assert "pg_error" in during and "pg_connections_total" not in during
        assert "pg_error" in await sampler.sample()  # still down: noted, not raised
        postgres.start()
        service_session = psycopg.connect(url)
        after = await sampler.sample()
        service_session.close()
        assert after["pg_connections_total"] >= 1, after
        await sampler.close()
        report = await sampler.database_report()
        assert "note" not in report and "after" in report["table_stats"]
        assert any(note.startswith("PostgreSQL statistics interrupted") for note in sampler.notes)
    finally:
        postgres.remove()

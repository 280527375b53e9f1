"""PostgreSQL backend CPU of a new pooled connection on the seed-m3 schema: its startup, the first executions of
`initialize_view` (a new player's initialize) on a cold backend, and the same on a backend that
`service.storage.store.warm_connection` has warmed with the player statements first (what the player API's pool
does to a new connection while no request waits for it).

CPU is the backend process's own run time (`/proc/<pid>/schedstat`, ns; Linux), so background load changes
little; cold and warmed connections alternate. A fresh `serve` on embedded PostgreSQL/Redis provides the schema
and the default goal set.

    python bench/new_connection_cost.py [--connections 30] [--executions 8] [--ports 21600-21699]

Prints a Markdown table: mean ms of backend CPU per connection for each step.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import target_rows as rows

from service.storage.registry import load_registry
from service.storage.store import session_options, warm_connection
from service.usecases.players import PLAYER_STATEMENTS


def backend_cpu_ms(pid: int) -> float:
    """Time the process has run on a CPU, in ms."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6


async def one_connection(url: str, set_id: str, warm: bool, executions: int) -> list[float]:
    """Backend CPU ms of: startup, warm-up (0 when cold), then each `initialize_view` of a new player."""
    registry = load_registry()
    sql = registry.get("initialize_view").sql
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, options=session_options(url, 5000))
    try:
        pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone() or (0,))[0]
        steps = [backend_cpu_ms(pid)]
        before = backend_cpu_ms(pid)
        if warm:
            await warm_connection(conn, [registry.get(name) for name in PLAYER_STATEMENTS])
        steps.append(backend_cpu_ms(pid) - before)
        for _ in range(executions):
            params = {
                "user_id": f"conn-cost-{uuid.uuid4().hex[:12]}",
                "namespace": "accelbyte",
                "default_set_id": set_id,
                "now": datetime.now(UTC),
                "prereq_goal_ids": [],
            }
            before = backend_cpu_ms(pid)
            await (await conn.execute(sql, params)).fetchall()
            steps.append(backend_cpu_ms(pid) - before)
        return steps
    finally:
        await conn.close()


async def measure(url: str, set_id: str, connections: int, executions: int) -> dict[bool, list[float]]:
    totals = {False: [0.0] * (executions + 2), True: [0.0] * (executions + 2)}
    for _ in range(connections):
        for warm in (False, True):
            steps = await one_connection(url, set_id, warm, executions)
            totals[warm] = [total + step for total, step in zip(totals[warm], steps, strict=True)]
    return {warm: [total / connections for total in steps] for warm, steps in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=30, help="connections of each kind")
    parser.add_argument("--executions", type=int, default=8, help="initialize_view calls per connection")
    parser.add_argument("--ports", default=f"{rows.PORT_RANGE[0]}-{rows.PORT_RANGE[1]}")
    args = parser.parse_args()
    low, high = (int(port) for port in args.ports.split("-"))
    rows.PORT_RANGE = (low, high)
    stamp = rows.Stamp()
    with rows.serve_profile("seed-m3") as service:
        service.initialize_players(1, 1)  # records the default goal set
        url = rows.discover(service.base / "data")["database_url"]
        with psycopg.connect(url, autocommit=True) as conn:
            set_id = (conn.execute("SELECT set_id FROM default_goal_sets LIMIT 1").fetchone() or ("",))[0]
        means = asyncio.run(measure(url, set_id, args.connections, args.executions))
    print(stamp.header(f"backend CPU of a new connection, {args.connections} cold and {args.connections} warmed"))
    print()
    headers = ["connection", "startup", "warm-up"] + [f"exec {n}" for n in range(1, args.executions + 1)]
    print(
        rows.table(
            headers,
            ((("warmed" if warm else "cold"), *(f"{value:.2f}" for value in steps)) for warm, steps in means.items()),
        )
    )


if __name__ == "__main__":
    main()

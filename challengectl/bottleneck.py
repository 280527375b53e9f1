"""The bottleneck rule that the load-test findings, `pool` and `doctor` share (docs/loadtest.md#markdown-report).

Causes are ordered by evidence: CPU saturation of the service process or of the machine; pool waits while
PostgreSQL runs far fewer sessions than the pool has checked out (the service holds connections it cannot
drive); PostgreSQL-side waits and locks; the load generator itself. Raising `db_pool_max` is advised only
when PostgreSQL is busy with the pool's sessions, none of the causes before it applies, and the server has
connections to spare. Pure: callers gather the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CPU_SATURATED_PCT = 90.0
POOL_PRESSURE_PCT = 80.0
# PostgreSQL running fewer than this share of the checked-out connections means the pool's sessions sit idle.
BUSY_SESSIONS_SHARE = 0.5
# Raising the pool needs at least this many free server connections per connection added.
HEADROOM_SHARE = 0.25


@dataclass(frozen=True)
class Evidence:
    """What was observed, each figure its peak (None: not observed).

    `service_cpu_pct` is % of one core, with `service_cores` available to the service's processes;
    `machine_cpu_pct` is % of the whole machine; `pool_*` are the service's PostgreSQL pool; `pg_active`
    counts PostgreSQL sessions running a statement, `pg_waiting` those of them waiting on locks or I/O;
    `pg_free_connections` is what max_connections leaves after reserved and open sessions (its minimum)."""

    service_cpu_pct: float | None = None
    service_cores: int = 1
    machine_cpu_pct: float | None = None
    pool_max: float | None = None
    pool_in_use: float | None = None
    pool_waiting: float | None = None
    pool_timeouts: float = 0.0
    pg_active: float | None = None
    pg_waiting: float | None = None
    pg_free_connections: float | None = None
    generator_limited: bool = False
    generator_reasons: list[str] = field(default_factory=list)

    @property
    def pool_pressure(self) -> bool:
        """Requests waited for a connection, timed out, or the pool was nearly all checked out."""
        if (self.pool_waiting or 0) > 0 or self.pool_timeouts > 0:
            return True
        return bool(
            self.pool_max
            and self.pool_in_use is not None
            and self.pool_in_use >= self.pool_max * POOL_PRESSURE_PCT / 100
        )


@dataclass(frozen=True)
class ServiceSessions:
    """The service's own sessions (its pools name them challengectl-<role>) running a statement, and how
    many of those wait on locks or I/O: the PostgreSQL side of the rule for `pool` and `doctor`
    (`cli_service_sessions` of sql/cli_queries.sql)."""

    active: int
    waiting: int


def pool_snapshot_evidence(pool: dict[str, object], active: int, waiting: int, free: int | None) -> Evidence:
    """Evidence from one moment: the service's `/admin/pool` `db` section and its sessions in PostgreSQL
    (no CPU figure: one snapshot has no interval to measure it over)."""

    def number(name: str) -> float | None:
        value = pool.get(name)
        return float(value) if isinstance(value, (int, float)) else None

    return Evidence(
        pool_max=number("max_size"),
        pool_in_use=number("in_use"),
        pool_waiting=number("waiting"),
        pg_active=active,
        pg_waiting=waiting,
        pg_free_connections=free,
    )


@dataclass(frozen=True)
class Verdict:
    """One cause: `id`, what was seen (`finding`) and what to do (`advice`)."""

    id: str
    finding: str
    advice: str


def diagnose(evidence: Evidence) -> list[Verdict]:
    """The causes the evidence supports, strongest first (empty: no bottleneck in sight)."""
    verdicts = [verdict for verdict in (_cpu(evidence),) if verdict is not None]
    if evidence.pool_pressure:
        verdicts.append(_pool(evidence, cpu_bound=bool(verdicts)))
    if evidence.generator_limited:
        verdicts.append(
            Verdict(
                "generator_limited",
                "; ".join(evidence.generator_reasons) or "the load generator fell behind its schedule",
                "results are limited by the generator: rerun with more `--procs` or on a separate host",
            )
        )
    return verdicts


def _cpu(evidence: Evidence) -> Verdict | None:
    cores = max(1, evidence.service_cores)
    service = evidence.service_cpu_pct
    if service is not None and service >= CPU_SATURATED_PCT * cores:
        return Verdict(
            "cpu_bound",
            f"service CPU peaked at {service:.0f} % with {cores} core(s) available to its processes",
            "CPU-bound: fewer CPU-µs per request (profile the hot endpoint) or more processes and cores "
            "(`--workers`, more instances); more database connections would not help",
        )
    machine = evidence.machine_cpu_pct
    if machine is not None and machine >= CPU_SATURATED_PCT:
        return Verdict(
            "machine_cpu_bound",
            f"the machine's CPU peaked at {machine:.0f} % (service, PostgreSQL, Redis and the generator share it)",
            "the machine is out of CPU: run the generator or PostgreSQL elsewhere, or add cores; "
            "more database connections would not help",
        )
    return None


def _pool(evidence: Evidence, *, cpu_bound: bool) -> Verdict:
    pressure = _pool_text(evidence)
    in_use, active = evidence.pool_in_use, evidence.pg_active
    if active is None:
        return Verdict(
            "pool_saturated",
            pressure + "; PostgreSQL's active sessions were not observed",
            "check whether PostgreSQL is busy with the pool's sessions (`challengectl pool`) before raising db_pool_max",
        )
    if in_use and active < in_use * BUSY_SESSIONS_SHARE:
        reason = "the service is CPU-bound (see above)" if cpu_bound else "the service is busy between statements"
        return Verdict(
            "pool_held_idle",
            f"{pressure}, while PostgreSQL ran at most {active:.0f} active session(s) of {in_use:.0f} checked out: "
            "the service holds connections it cannot drive",
            f"do not raise db_pool_max: {reason}; fewer CPU-µs per request or more processes would help",
        )
    if evidence.pg_waiting and evidence.pg_waiting >= active * BUSY_SESSIONS_SHARE:
        return Verdict(
            "pg_waits",
            f"{pressure}; {evidence.pg_waiting:.0f} of {active:.0f} active PostgreSQL sessions waited on locks or I/O",
            "PostgreSQL-side waits: find the blocking or slow statements (`challengectl db activity`, `db queries`); "
            "more connections would add waiters",
        )
    free = evidence.pg_free_connections
    needed = (evidence.pool_max or in_use or 0) * HEADROOM_SHARE
    if free is not None and free >= max(needed, 1):
        return Verdict(
            "pool_saturated",
            f"{pressure}; PostgreSQL was busy with the pool's sessions ({active:.0f} active) and had "
            f"{free:.0f} connections free",
            "raise db_pool_max (check the headroom per instance with `challengectl pool`)",
        )
    return Verdict(
        "pg_busy",
        f"{pressure}; PostgreSQL was busy with the pool's sessions ({active:.0f} active)"
        + ("" if free is None else f" and had only {free:.0f} connections free"),
        "speed up the hot statements (`challengectl db queries`, `challengectl explain`) or add database capacity; "
        + ("raising db_pool_max needs connection headroom first" if free is not None else "check `challengectl pool`"),
    )


def _pool_text(evidence: Evidence) -> str:
    parts = []
    if evidence.pool_in_use is not None:
        capacity = f" of {evidence.pool_max:.0f}" if evidence.pool_max else ""
        parts.append(f"DB pool peaked at {evidence.pool_in_use:.0f}{capacity} checked out")
    if evidence.pool_waiting:
        parts.append(f"{evidence.pool_waiting:.0f} waiting")
    if evidence.pool_timeouts:
        parts.append(f"{evidence.pool_timeouts:.0f} acquire timeouts")
    return ", ".join(parts) or "DB pool under pressure"

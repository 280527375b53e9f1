"""`challengectl events`: send login and stat events to the gRPC ingestion service, from flags or a
JSON-lines file, and replay a file with its original ids to check de-duplication (docs/cli.md#commands, docs/events.md#onmessage-services, docs/events.md#de-duplication,
X12). `trigger-event login|stat-update` is the hidden alias of the reference demo CLI.

- `--event-rpc ags` sends one event per call to the AGS OnMessage services (which answer Empty, so only
  OK or an error is known); `publish` sends `EventBatch`es to EventIngest.Publish and reports
  accepted/duplicates/skipped/rejected and `committed` per call.
- Without `--rate` the calls go one after another. With `--rate R`, call i is scheduled at
  t0 + (events before it) / R whatever earlier calls do (open model), and ack latency is measured from
  the scheduled time, so a slow service shows as latency rather than as a lower rate (docs/loadtest.md#measurement-model).
- Event ids are UUIDv7 unless given (`--id`, or the file's `id`).
- `--wait` polls the player's challenges until a goal routed from the sent events (docs/events.md#routing) changes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import typer
from rich.console import Group
from rich.text import Text

from challengectl.context import CliContext, command_group, examples, get_cli, parse_duration
from challengectl.errors import EXIT_AUTH, EXIT_FAILED, EXIT_USAGE, CliError
from challengectl.eventload import RPC_AGS, RPC_PUBLISH, EventSender, OpenModel, Outcome, Tally, paced
from challengectl.goal_snapshots import GoalKey, GoalSnapshot, fetch_goals, goal_changes
from challengectl.output import Column, Output, ProgressHandle
from challengectl.uuid7 import uuid7_str
from service.config.resources import example_catalog_path
from service.domain.catalog import Catalog, CatalogError, load_catalog
from service.proto.challengectl.v1 import ingest_pb2

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from challengectl.client import Clients

RPCS = (RPC_AGS, RPC_PUBLISH)
KINDS = {"login": ingest_pb2.EVENT_KIND_LOGIN, "stat": ingest_pb2.EVENT_KIND_STAT}
FILE_FIELDS = ("id", "user_id", "namespace", "kind", "stat_code", "latest_value", "inc", "timestamp")

MAX_INFLIGHT = 256  # open-model calls outstanding at once; more wait (and show as latency)
TABLE_MAX_CALLS = 20  # in a table, longer runs show the summary only (with --verbose too)
STAT_BATCH = 100  # events per Publish call when `events send stat` sends more than one event
WAIT_POLL_S = 0.2
HISTOGRAM_MAX_S = 60.0
REJECTION_HINT = (
    "the service rejects empty or over-long user ids and ids, a stat without stat_code, and "
    "values that are NaN, infinite or outside the int32 range after truncation (docs/events.md#validation)"
)

SEND_EXAMPLES = examples(
    "challengectl events send login --user alice --wait",
    "challengectl events send stat --user alice --stat-code matches_played --value 12 --event-rpc publish | jq '.accepted'",
    "challengectl events send --file events.jsonl --rate 500 --batch 100 | jq '.accepted, .duplicates'",
)

LOGIN_EXAMPLES = examples(
    "challengectl events send login --user alice",
    "challengectl events send login --user alice --count 200 --rate 100 | jq -c 'select(.summary) | .summary'",
    "challengectl events send login --users-prefix load- --users 50 --count 1000 --rate 200 --event-rpc publish",
)

STAT_EXAMPLES = examples(
    "challengectl events send stat --user alice --stat-code matches_played --value 3 --wait",
    "challengectl events send stat --user alice --stat-code headshots --value 40 --inc 5 --event-rpc publish | jq .committed",
    "challengectl events send stat --user alice --stat-code matches_won --value 1 --count 10 --rate 5",
)

REPLAY_EXAMPLES = examples(
    "challengectl events replay events.jsonl",
    "challengectl events replay events.jsonl --rate 200 | jq '.duplicates == .sent'",
    "challengectl events replay events.jsonl --loop --count 5000 --batch 50",
)

app = command_group("Send events to the gRPC ingestion service and check de-duplication.")
send_app = command_group("Send login or stat events, or a JSON-lines file of events.", invoke_without_command=True)
trigger_app = command_group("Alias of 'events send' (reference demo CLI).")


# --- events ----------------------------------------------------------------------------------------


def now_timestamp() -> Timestamp:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def login_event(user_id: str, event_id: str) -> ingest_pb2.Event:
    """A login event for `user_id`."""
    return ingest_pb2.Event(id=event_id, user_id=user_id, kind=ingest_pb2.EVENT_KIND_LOGIN, timestamp=now_timestamp())


def stat_event(user_id: str, event_id: str, stat_code: str, latest_value: float, inc: float) -> ingest_pb2.Event:
    """A stat event: the stat's new value and the increment that produced it."""
    return ingest_pb2.Event(
        id=event_id,
        user_id=user_id,
        kind=ingest_pb2.EVENT_KIND_STAT,
        stat_code=stat_code,
        latest_value=latest_value,
        inc=inc,
        timestamp=now_timestamp(),
    )


def event_source(event: ingest_pb2.Event) -> str:
    """The buffer source an event feeds (docs/events.md#buffer-and-merge): `login` or `stat:<stat_code>`."""
    return "login" if event.kind == ingest_pb2.EVENT_KIND_LOGIN else f"stat:{event.stat_code}"


def synthetic_events(
    users: Sequence[str], count: int, event_id: str | None, make: Callable[[str, str, int], ingest_pb2.Event]
) -> list[ingest_pb2.Event]:
    """`count` events spread round-robin over `users`; `make(user, id, n)` builds the n-th event of a
    user. Every event carries `event_id` when given, else a fresh UUIDv7."""
    sent_per_user: dict[str, int] = {}
    events = []
    for position in range(count):
        user = users[position % len(users)]
        nth = sent_per_user.get(user, 0)
        sent_per_user[user] = nth + 1
        events.append(make(user, event_id or uuid7_str(), nth))
    return events


def load_event_file(path: str, *, generate_ids: bool) -> list[ingest_pb2.Event]:
    """The events of a JSON-lines file (`-` = stdin): one object per line with the Event proto fields in
    snake_case and `kind` = `login` or `stat`. Missing ids are generated (UUIDv7) when `generate_ids`,
    otherwise they are an error. Any malformed line is a usage error naming the file and line."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", "check the path", EXIT_USAGE) from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text", "events files are JSON lines", EXIT_USAGE) from None
    events = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            events.append(_parse_event_line(line, f"{path}:{number}", generate_ids))
    if not events:
        raise CliError(
            f"{path} holds no events",
            'write one JSON object per line, e.g. {"user_id": "alice", "kind": "login"}',
            EXIT_USAGE,
        )
    return events


def _parse_event_line(line: str, where: str, generate_ids: bool) -> ingest_pb2.Event:
    example = 'e.g. {"user_id": "alice", "kind": "stat", "stat_code": "matches_played", "latest_value": 3, "inc": 1}'
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CliError(f"{where}: not JSON ({exc.msg})", example, EXIT_USAGE) from None
    if not isinstance(raw, dict):
        raise CliError(f"{where}: expected a JSON object", example, EXIT_USAGE)
    unknown = sorted(set(raw) - set(FILE_FIELDS))
    if unknown:
        raise CliError(
            f"{where}: unknown field(s) {', '.join(unknown)}", f"fields: {', '.join(FILE_FIELDS)}", EXIT_USAGE
        )
    kind = raw.get("kind")
    if kind not in KINDS:
        raise CliError(f"{where}: kind must be 'login' or 'stat', got {json.dumps(kind)}", example, EXIT_USAGE)
    for name in ("id", "user_id", "namespace", "stat_code", "timestamp"):
        if name in raw and not isinstance(raw[name], str):
            raise CliError(f"{where}: {name} must be a string", example, EXIT_USAGE)
    for name in ("latest_value", "inc"):
        if name in raw and (isinstance(raw[name], bool) or not isinstance(raw[name], (int, float))):
            raise CliError(f"{where}: {name} must be a number", example, EXIT_USAGE)
    event_id = raw.get("id") or ""
    if not event_id:
        if not generate_ids:
            raise CliError(
                f"{where}: no id; a replay resends the original ids",
                "give every line an id, or send the file with 'events send --file'",
                EXIT_USAGE,
            )
        event_id = uuid7_str()
    event = ingest_pb2.Event(
        id=event_id,
        user_id=raw.get("user_id", ""),
        namespace=raw.get("namespace", ""),
        kind=KINDS[kind],
        stat_code=raw.get("stat_code", ""),
        latest_value=float(raw.get("latest_value", 0)),
        inc=float(raw.get("inc", 0)),
    )
    if raw.get("timestamp"):
        try:
            event.timestamp.FromJsonString(raw["timestamp"])
        except ValueError:
            raise CliError(f"{where}: timestamp is not RFC 3339", "e.g. 2024-05-01T12:00:00Z", EXIT_USAGE) from None
    return event


def batched(events: Sequence[ingest_pb2.Event], size: int) -> list[list[ingest_pb2.Event]]:
    """`events` cut into calls of at most `size` events."""
    return [list(events[start : start + size]) for start in range(0, len(events), size)]


# --- calls -----------------------------------------------------------------------------------------


def call_json(outcome: Outcome, rpc: str) -> dict[str, Any]:
    """One call's record: what it carried, what the service answered (null where the RPC does not say)
    and its duration (actual send to ack)."""
    answer = outcome.answer
    body: dict[str, Any] = {
        "call": outcome.call.index,
        "rpc": rpc,
        "event_ids": [event.id for event in outcome.call.events],
        "accepted": answer.accepted if answer is not None else None,
        "duplicates": answer.duplicates if answer is not None else None,
        "skipped": answer.skipped if answer is not None else None,
        "rejected": len(outcome.rejections),
        "rejections": [asdict(rejection) for rejection in outcome.rejections],
        "committed": answer.committed if answer is not None else None,
        "duration_ms": round(outcome.duration_s * 1000, 3),
    }
    error = outcome.error
    if isinstance(error, CliError):
        body["error"] = {"code": error.code, "message": error.message, "exit_code": error.exit_code}
    return body


async def dispatch(
    sender: EventSender,
    calls: Iterable[list[ingest_pb2.Event]],
    on_result: Callable[[Outcome], None],
    *,
    rate: float | None,
    stop: Callable[[], bool],
) -> None:
    """Send `calls` one after another (`rate` None), or on an open-model schedule of `rate` events per
    second with at most MAX_INFLIGHT outstanding (docs/loadtest.md#measurement-model). Scheduling ends
    early once `stop()` is true."""
    schedule: OpenModel[tuple[int, Sequence[ingest_pb2.Event]]] = OpenModel(
        1 if rate is None else MAX_INFLIGHT, stop=stop
    )

    async def one(key: tuple[int, Sequence[ingest_pb2.Event]], due: float) -> None:
        index, events = key
        on_result(await sender.send(sender.prepare(index, events, f"cli-{index}"), due))

    try:
        await schedule.drive(paced(calls, rate, time.perf_counter()), one)
        await schedule.drain()
    finally:
        schedule.cancel()


class SendStats(Tally):
    """Running totals of a send (eventload.Tally) and the CLI's view of its failures."""

    def __init__(self, rpc: str) -> None:
        super().__init__(HISTOGRAM_MAX_S)
        self.rpc = rpc
        self.first_failure: CliError | None = None
        self.auth_failed = False
        self.started = time.perf_counter()
        self.finished: float | None = None

    def record(self, outcome: Outcome) -> None:
        super().record(outcome)
        if isinstance(outcome.error, CliError):
            self.first_failure = self.first_failure or outcome.error
            self.auth_failed = self.auth_failed or outcome.error.exit_code == EXIT_AUTH

    def finish(self) -> None:
        self.finished = time.perf_counter()

    @property
    def duration_ms(self) -> float:
        return ((self.finished or time.perf_counter()) - self.started) * 1000

    def summary(self) -> dict[str, Any]:
        """The closing summary (counts the RPC does not report are null)."""
        reports_counts = self.rpc == RPC_PUBLISH
        seconds = self.duration_ms / 1000
        succeeded = self.calls - self.failed_calls

        def percentile(p: float) -> float | None:
            value = self.percentile_ms(p)
            return None if value is None else round(value, 3)

        return {
            "rpc": self.rpc,
            "calls": self.calls,
            "sent": self.sent,
            "acked": self.acked,
            "accepted": self.accepted if reports_counts else None,
            "duplicates": self.duplicates if reports_counts else None,
            "skipped": self.skipped if reports_counts else None,
            "rejected": self.rejected,
            "failed": self.failed_events,
            "committed": (succeeded > 0 and self.committed_calls == succeeded) if reports_counts else None,
            "duration_ms": round(self.duration_ms, 3),
            "events_per_s": round(self.sent / seconds, 1) if seconds > 0 else None,
            "ack_latency_ms": {
                "p50": percentile(50),
                "p95": percentile(95),
                "p99": percentile(99),
                "max": round(self.latency_us.get_max_value() / 1000, 3) if self.latency_us.get_total_count() else None,
            },
        }

    def outcome_error(self) -> CliError | None:
        """The error the command ends with: the first failed call (its exit code), else the first
        rejection (exit 1); None when every event was acknowledged."""
        if self.first_failure is not None:
            first = self.first_failure
            if self.calls == 1:
                return first
            return CliError(
                f"{self.failed_calls} of {self.calls} calls failed; first: {first.message}",
                first.hint,
                first.exit_code,
                code=first.code,
            )
        if self.first_rejection is not None:
            rejection = self.first_rejection
            return CliError(
                f"{self.rejected} of {self.sent} event(s) rejected by the service; first: event "
                f"{rejection.event_id or '(no id)'}: {rejection.reason}",
                REJECTION_HINT,
                EXIT_FAILED,
                code="INVALID_ARGUMENT",
            )
        return None


def stop_when_hopeless(stats: SendStats, sequential: bool) -> Callable[[], bool]:
    """When to stop scheduling: sequential sends stop at the first failed call; open-model sends keep
    their schedule through outages (failures are data) but stop when authentication fails."""

    def stop() -> bool:
        return stats.failed_calls > 0 if sequential else stats.auth_failed

    return stop


# --- what the service says about itself ------------------------------------------------------------


async def service_config(clients: Clients) -> dict[str, Any]:
    """The service's `/admin/config` body, or {} when the admin port does not answer (it is optional
    for sending events: callers fall back to the CLI's own settings)."""
    try:
        config = await clients.admin.get("/admin/config")
    except CliError:
        return {}
    return config if isinstance(config, dict) else {}


def config_value(config: dict[str, Any], name: str) -> Any:
    """A value of an `/admin/config` body (settings are `{"value", "source"}` entries, facts plain values)."""
    entry = config.get(name)
    return entry.get("value") if isinstance(entry, dict) else entry


async def with_ags_namespace(clients: Clients, events: Sequence[ingest_pb2.Event]) -> None:
    """Give events without a namespace the service's namespace: an OnMessage event with another (or an
    empty) namespace is skipped without a word (docs/events.md#validation), unlike Publish, where empty means the
    service's namespace."""
    if all(event.namespace for event in events):
        return
    namespace = config_value(await service_config(clients), "namespace") or clients.settings.namespace
    for event in events:
        if not event.namespace:
            event.namespace = namespace


# --- --wait ----------------------------------------------------------------------------------------


async def routing_catalog(clients: Clients, fingerprint: str | None) -> Catalog | None:
    """The catalog the service runs, found locally by its fingerprint: the service's own `catalog_path`
    (from /admin/config, when readable here), the configured catalog, or the bundled example."""
    if not fingerprint:
        return None
    candidates: list[Path] = []
    service_catalog = config_value(await service_config(clients), "catalog_path")
    if isinstance(service_catalog, str):
        candidates.append(Path(service_catalog))
    candidates += [Path(clients.settings.catalog_path).expanduser(), example_catalog_path()]
    for path in dict.fromkeys(candidates):
        try:
            catalog = load_catalog(path) if path.is_file() else None
        except (CatalogError, OSError):
            catalog = None
        if catalog is not None and catalog.fingerprint == fingerprint:
            return catalog
    return None


def routed_goal_keys(snapshot: GoalSnapshot, sources: set[str], catalog: Catalog | None) -> list[GoalKey]:
    """The player's active goals fed by `sources` (docs/events.md#routing: login → goals with eventSource login;
    stat S → statistic goals with statCode S). Without the service's catalog the API's goals carry no
    event source: stat events then match by statCode and a login may feed any goal."""
    keys = []
    for key, state in snapshot.goals.items():
        if not state.is_active:
            continue  # only active rows are written by a flush (docs/events.md#flush)
        goal = catalog.goals_by_id.get(state.goal_id) if catalog is not None else None
        if goal is not None:
            fed = ("login" if goal.event_source == "login" else f"stat:{goal.requirement.stat_code}") in sources
        else:
            fed = "login" in sources or f"stat:{state.stat_code}" in sources
        if fed:
            keys.append(key)
    return keys


async def wait_for_goals(
    clients: Clients, output: Output, user: str, before: GoalSnapshot, sources: set[str], timeout_s: float
) -> dict[str, Any]:
    """Poll `user`'s challenges until a goal routed from `sources` differs from `before`, or until
    `timeout_s`. Reaching the timeout is reported on stderr; it is not an error."""
    catalog = await routing_catalog(clients, before.fingerprint)
    if catalog is None:
        output.info(
            f"wait: the service's catalog ({before.fingerprint or 'unknown fingerprint'}) is not readable "
            "here; stat events match goals by stat code, logins any goal"
        )
    keys = routed_goal_keys(before, sources, catalog)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "user_id": user,
        "goals": [key[1] for key in keys],
        "changed": False,
        "timed_out": False,
        "waited_ms": 0.0,
        "changes": [],
    }
    if not keys:
        output.info(f"wait: none of {user}'s active goals is routed from these events; nothing to wait for")
        return report
    watched_before = {key: before.goals[key] for key in keys}
    while True:
        after = await fetch_goals(clients.api, user)
        changes = goal_changes(watched_before, {key: after.goals[key] for key in keys if key in after.goals})
        report["waited_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if changes:
            report.update(changed=True, changes=changes)
            output.info(f"wait: {len(changes)} goal(s) of {user} changed after {report['waited_ms']:.0f} ms")
            return report
        if time.perf_counter() - started >= timeout_s:
            report["timed_out"] = True
            output.warn(
                f"wait: no change of {', '.join(report['goals'])} for {user} within {timeout_s:g}s "
                "(the events may be buffered, skipped, or leave the progress unchanged)"
            )
            return report
        await asyncio.sleep(WAIT_POLL_S)


# --- rendering -------------------------------------------------------------------------------------

CALL_COLUMNS = [
    Column("call", "CALL", "right"),
    Column("event_ids", "EVENT IDS", render=lambda ids: Text(_ids_cell(ids))),
    Column("accepted", "ACCEPTED", "right"),
    Column("duplicates", "DUPLICATES", "right"),
    Column("skipped", "SKIPPED", "right"),
    Column("rejected", "REJECTED", "right"),
    Column("committed", "COMMITTED"),
    Column("duration_ms", "DURATION MS", "right"),
]
CHANGE_COLUMNS = ["challenge_id", "goal_id", "old_progress", "new_progress", "old_status", "new_status"]


def _ids_cell(ids: Sequence[str]) -> str:
    return ids[0] + (f" (+{len(ids) - 1})" if len(ids) > 1 else "") if ids else "-"


class SendReport:
    """Prints a send: a progress bar on stderr on a TTY; on stdout the summary of a multi-call send (and the
    wait result), in the chosen format (NDJSON lines with -o json). The per-call records appear for a
    one-call send, and for every call with `per_call` (--verbose)."""

    def __init__(self, output: Output, total_events: int, rpc: str, *, per_call: bool) -> None:
        self.output = output
        self.stats = SendStats(rpc)
        self.results: list[dict[str, Any]] = []
        self.total_events = total_events
        self.per_call = per_call
        # A bar for one call would only flicker.
        self.progress = (
            output.progress("sending events", total_events) if total_events > 1 else ProgressHandle(None, "", None)
        )

    def __enter__(self) -> Self:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)
        self.stats.finish()

    def record(self, outcome: Outcome) -> None:
        self.stats.record(outcome)
        self.progress.advance(len(outcome.call.events))
        if self.per_call and self.output.streams_ndjson:
            self.output.ndjson(call_json(outcome, self.stats.rpc))
        elif self.per_call:
            self.results.append(call_json(outcome, self.stats.rpc))
        if isinstance(outcome.error, CliError) and not self.output.streams_ndjson:
            self.output.warn(f"call {outcome.call.index}: {outcome.error.message}")

    def finish(self, wait: dict[str, Any] | None) -> None:
        multi = self.stats.calls > 1
        summary = self.stats.summary()
        out = self.output
        if out.streams_ndjson:
            if multi:
                out.ndjson({"summary": summary})
            if wait is not None:
                out.ndjson({"wait": wait})
            return
        document: dict[str, Any] = {"items": self.results, "total": len(self.results)} if self.per_call else {}
        if multi:
            document["summary"] = summary
        if wait is not None:
            document["wait"] = wait
        rows = self.results if self.per_call else [summary]
        out.emit(
            document,
            rows=rows,
            columns=CALL_COLUMNS if self.per_call else None,
            table=lambda: self._table(summary, wait),
        )

    def _table(self, summary: dict[str, Any], wait: dict[str, Any] | None) -> Group:
        out = self.output
        parts: list[Any] = []
        if self.per_call and len(self.results) <= TABLE_MAX_CALLS:
            parts.append(out.table(self.results, CALL_COLUMNS))
        if self.stats.calls > 1:
            flat = {key: value for key, value in summary.items() if key != "ack_latency_ms"}
            flat.update({f"ack_{name}_ms": value for name, value in summary["ack_latency_ms"].items()})
            parts.append(out.key_value_table(flat, title="summary"))
        if wait is not None and wait["changes"]:
            parts.append(out.table(wait["changes"], CHANGE_COLUMNS, title=f"changed after {wait['waited_ms']:.0f} ms"))
        return Group(*parts)


# --- commands --------------------------------------------------------------------------------------


def _check_rpc(rpc: str) -> str:
    if rpc not in RPCS:
        raise CliError(f"invalid --event-rpc '{rpc}'", "use --event-rpc ags or --event-rpc publish", EXIT_USAGE)
    return rpc


def _check_rate(rate: float | None) -> float | None:
    if rate is not None and rate <= 0:
        raise CliError(
            f"invalid --rate {rate:g}: must be above zero", "e.g. --rate 100 (events per second)", EXIT_USAGE
        )
    return rate


def _players(cli: CliContext, user: str | None, users_prefix: str | None, users: int | None) -> list[str]:
    if users_prefix is not None or users is not None:
        if users_prefix is None or users is None:
            raise CliError("--users-prefix and --users go together", "e.g. --users-prefix load- --users 50", EXIT_USAGE)
        return [f"{users_prefix}{n}" for n in range(1, users + 1)]  # the ids `users init --count N --prefix P` makes
    return [cli.require_user(alternatives=", or --users-prefix P --users N", user=user)]


def send_events(
    cli: CliContext,
    events: list[ingest_pb2.Event],
    *,
    rpc: str,
    batch: int,
    rate: float | None,
    wait_user: str | None = None,
    wait_timeout_s: float = 10.0,
    verbose: bool = False,
) -> None:
    """Send `events` in calls of `batch`, print the summary (and per call with `verbose`), optionally
    `--wait` for `wait_user`'s routed goals; end with the exit code of the first failure or rejection."""
    output = cli.output
    calls = [[event] for event in events] if rpc == RPC_AGS else batched(events, batch)

    async def main(clients: Clients) -> None:
        before = await fetch_goals(clients.api, wait_user) if wait_user is not None else None
        if rpc == RPC_AGS:
            await with_ags_namespace(clients, events)
        with SendReport(output, len(events), rpc, per_call=verbose or len(calls) == 1) as report:
            await dispatch(
                EventSender(clients.ingest.channel, rpc, invoke=clients.ingest.call),
                calls,
                report.record,
                rate=rate,
                stop=stop_when_hopeless(report.stats, sequential=rate is None),
            )
        wait = None
        if before is not None and wait_user is not None and report.stats.acked:
            wait = await wait_for_goals(
                clients, output, wait_user, before, {event_source(e) for e in events}, wait_timeout_s
            )
        report.finish(wait)
        error = report.stats.outcome_error()
        if error is not None:
            raise error

    cli.run(main)


@dataclass(frozen=True)
class SyntheticOptions:
    """The options `events send login` and `events send stat` share."""

    user: str | None
    users_prefix: str | None
    users: int | None
    count: int
    event_id: str | None
    event_rpc: str | None
    batch: int | None
    rate: float | None
    wait: bool
    wait_timeout: str
    verbose: bool

    @classmethod
    def pick(cls, arguments: dict[str, Any]) -> SyntheticOptions:
        """The shared options out of a command's arguments (its `locals()`)."""
        return cls(**{option.name: arguments[option.name] for option in fields(cls)})


def _send_synthetic(
    ctx: typer.Context,
    make: Callable[[str, str, int], ingest_pb2.Event],
    options: SyntheticOptions,
    default_batch: int = 1,
) -> None:
    cli = get_cli(ctx)
    players = _players(cli, options.user, options.users_prefix, options.users)
    # Several events go in Publish batches of `default_batch` unless an RPC is named; one event takes the
    # reference AGS path.
    batching = options.event_rpc is None and default_batch > 1 and len(players) * options.count > 1
    rpc = RPC_PUBLISH if batching else _check_rpc(options.event_rpc or RPC_AGS)
    batch = options.batch or (default_batch if rpc == RPC_PUBLISH else 1)
    if rpc == RPC_AGS and batch != 1:
        raise CliError(
            "the AGS OnMessage services carry one event per call",
            "drop --batch, or use --event-rpc publish",
            EXIT_USAGE,
        )
    if options.wait and len(players) > 1:
        raise CliError("--wait follows one player", "use --user with --wait, or drop --wait", EXIT_USAGE)
    wait_timeout_s = parse_duration(options.wait_timeout, "--wait-timeout")
    events = synthetic_events(players, options.count, options.event_id, make)
    send_events(
        cli,
        events,
        rpc=rpc,
        batch=batch,
        rate=_check_rate(options.rate),
        wait_user=players[0] if options.wait else None,
        wait_timeout_s=wait_timeout_s,
        verbose=options.verbose,
    )


USER_HELP = "the player [env: CHALLENGE_USER]"
USERS_PREFIX_HELP = "synthetic players <prefix>1 … <prefix>N, with --users N (events go round-robin)"
COUNT_HELP = "number of events"
ID_HELP = "event id (default: a fresh UUIDv7 per event); with --count every event carries it, to test de-duplication"
RPC_HELP = "ags: AGS OnMessage, one event per call, reports OK only; publish: EventIngest.Publish with counts"
STAT_RPC_HELP = RPC_HELP + f" (default: ags for one event, publish in batches of {STAT_BATCH} for more)"
BATCH_HELP = "events per Publish call"
VERBOSE_HELP = "print every call's result, not only the summary"
RATE_HELP = "events per second on an open-model schedule (default: one call after another)"
WAIT_HELP = "poll the player's challenges until a goal routed from the events changes"
WAIT_TIMEOUT_HELP = "how long --wait polls <n>[ms|s|m]; reaching it is reported, not an error"


def send_login(
    ctx: typer.Context,
    user: str | None = typer.Option(None, "--user", help=USER_HELP),
    users_prefix: str | None = typer.Option(None, "--users-prefix", help=USERS_PREFIX_HELP),
    users: int | None = typer.Option(None, "--users", min=1, help="number of synthetic players"),
    count: int = typer.Option(1, "--count", min=1, help=COUNT_HELP),
    event_id: str | None = typer.Option(None, "--id", help=ID_HELP),
    event_rpc: str = typer.Option(RPC_AGS, "--event-rpc", help=RPC_HELP),
    batch: int = typer.Option(1, "--batch", min=1, help=BATCH_HELP),
    rate: float | None = typer.Option(None, "--rate", help=RATE_HELP),
    wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
    wait_timeout: str = typer.Option("10s", "--wait-timeout", help=WAIT_TIMEOUT_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
) -> None:
    """Send login events; a summary of accepted/duplicates/skipped/rejected and ack latency (--verbose: every call)."""
    _send_synthetic(ctx, lambda player, eid, _: login_event(player, eid), SyntheticOptions.pick(locals()))


def send_stat(
    ctx: typer.Context,
    stat_code: str = typer.Option(..., "--stat-code", help="the statistic code, e.g. matches_played"),
    value: float = typer.Option(..., "--value", help="the stat's new value (latest_value)"),
    inc: float = typer.Option(
        1.0,
        "--inc",
        help="the increment that produced the value; with --count each further event of a player adds it to the value",
    ),
    user: str | None = typer.Option(None, "--user", help=USER_HELP),
    users_prefix: str | None = typer.Option(None, "--users-prefix", help=USERS_PREFIX_HELP),
    users: int | None = typer.Option(None, "--users", min=1, help="number of synthetic players"),
    count: int = typer.Option(1, "--count", min=1, help=COUNT_HELP),
    event_id: str | None = typer.Option(None, "--id", help=ID_HELP),
    event_rpc: str | None = typer.Option(None, "--event-rpc", help=STAT_RPC_HELP, show_default=False),
    batch: int | None = typer.Option(None, "--batch", min=1, help=f"{BATCH_HELP} (default {STAT_BATCH})"),
    rate: float | None = typer.Option(None, "--rate", help=RATE_HELP),
    wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
    wait_timeout: str = typer.Option("10s", "--wait-timeout", help=WAIT_TIMEOUT_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
) -> None:
    """Send stat events; a summary of accepted/duplicates/skipped/rejected and ack latency (--verbose: every call)."""
    options = SyntheticOptions.pick(locals())

    def make(player: str, eid: str, nth: int) -> ingest_pb2.Event:
        return stat_event(player, eid, stat_code, value + nth * inc, inc)

    _send_synthetic(ctx, make, options, default_batch=STAT_BATCH)


def send_file(
    cli: CliContext,
    path: str,
    *,
    rpc: str,
    batch: int,
    rate: float | None,
    replay: bool = False,
    count: int | None = None,
    loop: bool = False,
) -> None:
    """Send (or replay) a JSON-lines file: NDJSON progress per call on stderr (a bar on a TTY), totals
    on stdout; the exit code of the first failure or rejection."""
    events = load_event_file(path, generate_ids=not replay)
    if loop and count is None:
        stream: Iterable[ingest_pb2.Event] = _cycle(events)
        total = None
    else:
        limit = count if count is not None else len(events)
        stream = _take(_cycle(events) if loop else iter(events), limit)
        total = limit if loop else min(limit, len(events))
    output = cli.output

    async def main(clients: Clients) -> None:
        if rpc == RPC_AGS:
            await with_ags_namespace(clients, events)
        stats = SendStats(rpc)
        with output.progress("replaying" if replay else "sending", total) as bar:

            def record(outcome: Outcome) -> None:
                stats.record(outcome)
                bar.advance(len(outcome.call.events))
                if not output.shows_progress and not output.quiet:
                    print(
                        json.dumps(
                            {
                                "progress": {
                                    "call": outcome.call.index,
                                    "sent": stats.sent,
                                    "acked": stats.acked,
                                    "rejected": stats.rejected,
                                    "failed": stats.failed_events,
                                }
                            }
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
                if isinstance(outcome.error, CliError):
                    output.warn(f"call {outcome.call.index}: {outcome.error.message}")

            calls = _chunks(stream, 1 if rpc == RPC_AGS else batch)
            try:
                await dispatch(
                    EventSender(clients.ingest.channel, rpc, invoke=clients.ingest.call),
                    calls,
                    record,
                    rate=rate,
                    stop=stop_when_hopeless(stats, sequential=rate is None),
                )
            finally:
                stats.finish()
        totals = {"file": path, **stats.summary()}
        if replay:
            totals["expected_duplicates"] = stats.acked
            new = stats.accepted
            if new:
                output.warn(
                    f"{new} replayed event(s) were accepted as new: their ids were not seen within the "
                    "service's dedup_ttl_s, or their markers were lost"
                )
        output.emit_object(totals)
        error = stats.outcome_error()
        if error is not None:
            raise error

    cli.run(main)


def _cycle(events: Sequence[ingest_pb2.Event]) -> Iterator[ingest_pb2.Event]:
    while True:
        yield from events


def _take(events: Iterator[ingest_pb2.Event], limit: int) -> Iterator[ingest_pb2.Event]:
    for _, event in zip(range(limit), events, strict=False):
        yield event


def _chunks(events: Iterable[ingest_pb2.Event], size: int) -> Iterator[list[ingest_pb2.Event]]:
    chunk: list[ingest_pb2.Event] = []
    for event in events:
        chunk.append(event)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@send_app.callback(epilog=SEND_EXAMPLES)
def send(
    ctx: typer.Context,
    file: str | None = typer.Option(
        None,
        "--file",
        help="JSON-lines events (Event proto fields, snake_case, "
        "kind login|stat; '-' reads stdin); missing ids are generated",
    ),
    rate: float | None = typer.Option(None, "--rate", help="with --file: " + RATE_HELP),
    batch: int = typer.Option(100, "--batch", min=1, help="with --file: " + BATCH_HELP),
    event_rpc: str = typer.Option(RPC_PUBLISH, "--event-rpc", help="with --file: " + RPC_HELP),
) -> None:
    """Send login or stat events, or a JSON-lines file of events."""
    if ctx.invoked_subcommand is not None:
        if file is not None or rate is not None:
            raise CliError(
                "--file and --rate before 'login'/'stat' belong to 'events send --file'",
                f"put the options after '{ctx.invoked_subcommand}'",
                EXIT_USAGE,
            )
        return
    if file is None:
        raise CliError(
            "events send needs 'login', 'stat' or --file", "see 'challengectl events send --help'", EXIT_USAGE
        )
    send_file(get_cli(ctx), file, rpc=_check_rpc(event_rpc), batch=batch, rate=_check_rate(rate))


def replay(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="JSON-lines events with ids ('-' reads stdin)"),
    rate: float | None = typer.Option(None, "--rate", help=RATE_HELP),
    count: int | None = typer.Option(
        None, "--count", min=1, help="send this many events (with --loop: cycling through the file)"
    ),
    loop: bool = typer.Option(False, "--loop", help="cycle through the file (until --count, or Ctrl-C)"),
    batch: int = typer.Option(100, "--batch", min=1, help=BATCH_HELP),
) -> None:
    """Resend a file with its original ids to check de-duplication: totals, where duplicates are expected."""
    send_file(
        get_cli(ctx), file, rpc=RPC_PUBLISH, batch=batch, rate=_check_rate(rate), replay=True, count=count, loop=loop
    )


def register(root: typer.Typer) -> None:
    """Add `events send login|stat|--file`, `events replay` and the hidden `trigger-event` alias."""
    send_app.command("login", epilog=LOGIN_EXAMPLES)(send_login)
    send_app.command("stat", epilog=STAT_EXAMPLES)(send_stat)
    app.add_typer(send_app, name="send")
    app.command("replay", epilog=REPLAY_EXAMPLES)(replay)
    root.add_typer(app, name="events")
    trigger_app.command("login", epilog=LOGIN_EXAMPLES)(send_login)
    trigger_app.command("stat-update", epilog=STAT_EXAMPLES)(send_stat)
    root.add_typer(trigger_app, name="trigger-event", hidden=True)

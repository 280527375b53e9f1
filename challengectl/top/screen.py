"""How `top` draws a view: a full-screen rich Layout of panels (routes; events, buffer, pool; cache,
Redis, PostgreSQL sessions; longest query and blocking chains), a header with the target and the
refresh state, and a footer with the keys. A panel whose source is down says so in its place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from challengectl.humanize import human_bytes, human_ms, one_line

KEYS_LINE = "q quit  p pause  s sort  r reset peaks  ? help"
HELP = """\
q  quit
p  pause / resume the refresh (the screen keeps the last numbers)
s  cycle the sort of the routes: requests/s, p95, errors/s, route
r  reset the peaks: top's own and the service's (POST /admin/reset-peaks)
?  show / hide this help

Rates and percentiles are over the last refresh window, from /metrics deltas.
Errors/s counts 5xx answers, 4xx/s client errors."""


@dataclass
class ScreenState:
    """What the keys change, and what the header and footer say."""

    target: str
    interval_s: float
    sort: str = "rps"
    paused: bool = False
    help: bool = False
    quit: bool = False
    message: str = ""
    peaks: dict[str, float] = field(default_factory=dict)


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _grid(rows: list[tuple[str, str]]) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True, overflow="ellipsis")
    grid.add_column(justify="right", no_wrap=True)
    for name, value in rows:
        grid.add_row(name, value)
    return grid


def _panel(title: str, panel: dict[str, Any], body: RenderableType) -> Panel:
    if panel.get("error"):
        body = Text(f"unavailable: {panel['error']}", style="red")
    return Panel(body, title=title, title_align="left")


def _figures(title: str, panel: dict[str, Any], rows: list[tuple[str, str]]) -> Panel:
    """A panel of label/value rows."""
    return _panel(title, panel, _grid(rows))


def _slash(section: dict[str, Any], *keys: str, digits: int = 1) -> str:
    """Several figures of one section as `a / b / c`."""
    return " / ".join(_num(section.get(key), digits) for key in keys)


def routes_panel(view: dict[str, Any], state: ScreenState) -> Panel:
    title = f"HTTP routes (sorted by {state.sort}, over {_num(view.get('window_s'), 2)} s)"
    if view.get("routes_error"):
        return Panel(Text(f"service unavailable: {view['routes_error']}", style="red"), title=title, title_align="left")
    table = Table(box=None, pad_edge=False, header_style="bold", expand=True)
    table.add_column("ROUTE", ratio=1, no_wrap=True, overflow="ellipsis")
    for name in ("REQ/S", "P50 MS", "P95 MS", "ERR/S", "4XX/S", "TOTAL"):
        table.add_column(name, justify="right")
    for row in view["routes"]:
        table.add_row(
            row["route"],
            _num(row.get("rps")),
            _num(row.get("p50_ms"), 2),
            _num(row.get("p95_ms"), 2),
            _num(row.get("errors_per_s")),
            _num(row.get("client_errors_per_s")),
            _num(row.get("requests_total")),
        )
    if not view["routes"]:
        table.add_row("(no HTTP requests yet)", *[""] * 6)
    return Panel(table, title=title, title_align="left")


def events_panel(view: dict[str, Any]) -> Panel:
    events = view["events"]
    rows = [
        ("events/s", _num(events.get("events_per_s"))),
        ("accepted/s", _num(events.get("accepted_per_s"))),
        ("duplicates/s", _num(events.get("duplicates_per_s"))),
        ("refused/s", _num(events.get("refused_per_s"))),
        ("calls/s", _num(events.get("grpc_calls_per_s"))),
        ("ack p50/p95 ms", _slash(events, "ack_p50_ms", "ack_p95_ms", digits=2)),
    ]
    return _figures("Events (gRPC)", events, rows)


def buffer_panel(view: dict[str, Any]) -> Panel:
    buffer = view["buffer"]
    deferred = f"{_num(buffer.get('deferred_per_s'))} (total {_num(buffer.get('deferred_total'))})"
    rows = [
        ("entries", _slash(buffer, "entries", "capacity")),
        ("peak entries", _num(buffer.get("peak_entries"))),
        ("oldest entry", human_ms(buffer.get("oldest_entry_age_ms"))),
        ("flushes/s", _num(buffer.get("flushes_per_s"))),
        ("flush p50/p95 ms", _slash(buffer, "flush_ms_p50", "flush_ms_p95", digits=2)),
        ("deferred rows/s", deferred),
    ]
    return _figures("Buffer and flushes", buffer, rows)


def pool_panel(view: dict[str, Any]) -> Panel:
    pool = view["pool"]
    rows = [
        ("in use/size/max", _slash(pool, "in_use", "size", "max")),
        ("waiting", _num(pool.get("waiting"))),
        ("peak in use", _num(pool.get("peak_in_use"))),
        ("acquire wait p95", human_ms(pool.get("acquire_wait_ms_p95"))),
        ("acquire timeouts", _num(pool.get("acquire_timeouts"))),
        ("server / max_connections", _slash(pool, "server_sessions", "max_connections")),
    ]
    return _figures("DB pool", pool, rows)


def cache_panel(view: dict[str, Any]) -> Panel:
    cache = view["cache"]
    rows = [
        ("lookups/s", _num(cache.get("ops_per_s"))),
        ("hit ratio (window)", f"{_num(cache.get('hit_ratio_pct'))} %"),
        ("hit ratio (since start)", f"{_num(cache.get('hit_ratio_total_pct'))} %"),
        ("bypassed", _num(cache.get("bypassed"))),
        ("errors", _num(cache.get("errors"))),
        ("journal pending", _num(cache.get("journal_pending"))),
    ]
    return _figures("Cache", cache, rows)


def redis_panel(view: dict[str, Any]) -> Panel:
    redis = view["redis"]
    maxmemory = redis.get("maxmemory_bytes")
    rows = [
        ("memory", human_bytes(redis.get("used_memory_bytes"))),
        ("maxmemory", human_bytes(maxmemory) if maxmemory else "unlimited"),
        ("ops/s", _num(redis.get("ops_per_sec"))),
        ("clients", _num(redis.get("connected_clients"))),
        ("keyspace hit ratio", f"{_num(redis.get('hit_ratio_pct'))} %"),
        ("evicted keys", _num(redis.get("evicted_keys"))),
    ]
    return _figures("Redis", redis, rows)


def sessions_panel(view: dict[str, Any]) -> Panel:
    pg = view["postgres"]
    if pg.get("error"):
        return _panel("PostgreSQL sessions", pg, Text(""))
    rows = [(f"state {state}", _num(count)) for state, count in pg["by_state"].items()]
    rows += [(f"app {app}", _num(count)) for app, count in list(pg["by_application"].items())[:4]]
    rows.append(("this database / server", _slash(pg, "in_database", "on_server")))
    return _figures("PostgreSQL sessions", pg, rows)


def activity_panel(view: dict[str, Any]) -> Panel:
    pg = view["postgres"]
    if pg.get("error"):
        return _panel("Longest query and blocking chains", pg, Text(""))
    lines: list[RenderableType] = []
    longest = pg.get("longest")
    if longest is None:
        lines.append(Text("longest query: none running"))
    else:
        lines.append(
            Text(
                f"longest query: pid {longest['pid']} {longest['application_name'] or ''} {longest['state']} "
                f"{human_ms(longest['duration_ms'])}  {one_line(longest['query'], 100)}"
            )
        )
    if not pg["blocking"]:
        lines.append(Text("blocking chains: none"))
    for chain in pg["blocking"]:
        blockers = ", ".join(str(pid) for pid in chain["blocked_by"])
        lines.append(
            Text(
                f"pid {chain['pid']} waits {human_ms(chain['lock_wait_ms'])} for {chain['lock_mode'] or 'a lock'} "
                f"on {chain['relation'] or '?'}, blocked by {blockers}: {one_line(chain['query'], 80)}",
                style="yellow",
            )
        )
    return _panel("Longest query and blocking chains", pg, Group(*lines))


def header(state: ScreenState) -> Text:
    status = "PAUSED" if state.paused else f"every {state.interval_s:g} s"
    peaks = state.peaks
    text = Text.assemble(
        ("challengectl top ", "bold"),
        f"{state.target}  refresh {status}  ",
        (
            f"peaks: {_num(peaks.get('rps'))} req/s, {_num(peaks.get('events_per_s'))} events/s, "
            f"pool {_num(peaks.get('pool_in_use'), 0)} used/{_num(peaks.get('pool_waiting'), 0)} waiting, "
            f"buffer {_num(peaks.get('buffer_entries'), 0)}"
        ),
    )
    if state.paused:
        text.stylize("reverse", 0, len("challengectl top "))
    return text


def render(view: dict[str, Any] | None, state: ScreenState) -> Layout:
    """The whole screen for `view` (None before the first reading)."""
    layout = Layout()
    layout.split_column(
        Layout(header(state), name="header", size=1),
        Layout(name="routes", ratio=1, minimum_size=5),
        Layout(name="middle", size=8),
        Layout(name="lower", size=9),
        Layout(name="activity", size=5),
        Layout(Text(state.message or KEYS_LINE, style="dim"), name="footer", size=1),
    )
    if state.help:
        layout["routes"].update(Panel(Text(HELP), title="Help (? to close)", title_align="left"))
    elif view is None:
        layout["routes"].update(Panel(Text("collecting…"), title="HTTP routes", title_align="left"))
    else:
        layout["routes"].update(routes_panel(view, state))
    if view is None:
        for name in ("middle", "lower", "activity"):
            layout[name].update(Text(""))
        return layout
    layout["middle"].split_row(Layout(events_panel(view)), Layout(buffer_panel(view)), Layout(pool_panel(view)))
    layout["lower"].split_row(Layout(cache_panel(view)), Layout(redis_panel(view)), Layout(sessions_panel(view)))
    layout["activity"].update(activity_panel(view))
    return layout


def static(view: dict[str, Any], state: ScreenState) -> RenderableType:
    """The panels one under the other, for `top --once` on a terminal."""
    return Group(
        header(state),
        routes_panel(view, state),
        events_panel(view),
        buffer_panel(view),
        pool_panel(view),
        cache_panel(view),
        redis_panel(view),
        sessions_panel(view),
        activity_panel(view),
    )

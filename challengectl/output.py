"""Rendering for every command (docs/cli.md#output-conventions): format resolution, rich tables on a TTY, JSON, YAML,
CSV, plain text, NDJSON streams, colour rules, the stderr console for hints/warnings/progress, and the
confirmation rule for destructive actions (docs/cli.md#destructive-actions).

Typical use inside a command (`out = ctx.obj.output`):

    out.emit_list(rows, ["user_id", Column("total_active", "ACTIVE", justify="right")])
    out.emit_object({"service_version": "1.0", "schema_version": 2})
    out.emit(payload, rows=payload["data"], columns=[...])       # API payload printed unchanged in JSON
    out.warn("config file is readable by others")               # `Warning: ...` on stderr
    if out.streams_ndjson: out.ndjson({"ts": ..., "changes": [...]})
    if confirm("flush 12 keys", yes, dry_run): ...

Rules: stdout carries data only; JSON built by the CLI uses snake_case and wraps lists as
`{"items": [...], "total": N}`; payloads straight from the service API are printed unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TextIO

import typer
import yaml
from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from challengectl.errors import EXIT_USAGE, CliError

FORMATS = ("table", "json", "yaml", "csv", "text")
PIPED_WIDTH = 200

# Meaning is never carried by colour alone (docs/cli.md#output-conventions): the marker and the word are always printed.
MARKERS = {"pass": "✓", "warn": "!", "fail": "✗"}
STATUS_WORDS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
STATUS_STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red"}

# Environment variables rich would read on its own; colour is decided here, once, for both streams.
_COLOR_ENV = ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def resolve_format(requested: str | None, stdout_is_tty: bool) -> str:
    """`requested` when given (validated), else `table` on a TTY and `json` when piped.
    An unknown format is a usage error (exit 2)."""
    if requested is None or requested == "":
        return "table" if stdout_is_tty else "json"
    fmt = requested.strip().lower()
    if fmt not in FORMATS:
        raise CliError(f"unknown output format '{requested}'", f"use -o {'|'.join(FORMATS)}", EXIT_USAGE)
    return fmt


def color_enabled(is_tty: bool, flag: bool | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to colour a stream (docs/cli.md#output-conventions): `--color/--no-color` override everything; a non-empty
    `NO_COLOR` disables (it wins over FORCE_COLOR: the user's opt-out is the stronger wish); a non-empty
    `FORCE_COLOR` or `CLICOLOR_FORCE` forces; `TERM=dumb` disables; otherwise colour only on a TTY."""
    if flag is not None:
        return flag
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR", ""):
        return False
    if env.get("FORCE_COLOR", "") or env.get("CLICOLOR_FORCE", ""):
        return True
    if env.get("TERM", "") == "dumb":
        return False
    return is_tty


def make_console(stream: TextIO, color: bool, is_tty: bool) -> Console:
    """A rich Console on `stream` whose colour follows `color` exactly, whatever rich would detect."""
    environ = {k: v for k, v in os.environ.items() if k not in _COLOR_ENV}
    # Off a terminal (a pipe, a file) rich would wrap tables at 80 columns; keep rows on one line.
    width = None if is_tty or environ.get("COLUMNS") else PIPED_WIDTH
    colour: dict[str, Any] = {"force_terminal": is_tty, "no_color": True, "color_system": None}
    if color:
        # TERM=dumb makes rich drop colour even when forced; name a colour system explicitly then.
        dumb = environ.get("TERM", "") in ("dumb", "unknown")
        colour = {"force_terminal": True, "color_system": "standard" if dumb else "auto"}
    return Console(file=stream, highlight=False, _environ=environ, width=width, **colour)


@dataclass(frozen=True)
class Column:
    """A table/CSV column: `key` in each row, `header` shown (default: KEY upper-cased),
    `justify` for tables, `render` turns a value into a cell (default: `format_cell`)."""

    key: str
    header: str | None = None
    justify: str = "left"
    render: Callable[[Any], RenderableType] | None = None

    @property
    def title(self) -> str:
        return self.header if self.header is not None else self.key.upper()


def as_columns(columns: Sequence[Column | str] | None, rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    """Columns given as names or Column objects; None means every key of the first row."""
    if columns is None:
        columns = list(rows[0].keys()) if rows else []
    return [c if isinstance(c, Column) else Column(c) for c in columns]


def listing(items: Sequence[Any]) -> dict[str, Any]:
    """The JSON shape of a CLI-built list: `{"items": [...], "total": N}`."""
    return {"items": list(items), "total": len(items)}


def rfc3339(moment: datetime) -> str:
    """A timestamp as RFC 3339 UTC (`2024-05-01T12:00:00Z`), the CLI's JSON convention."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def to_json(data: Any, pretty: bool = True) -> str:
    """JSON text with datetimes as RFC 3339 UTC; non-ASCII kept as is."""
    return json.dumps(
        data,
        default=_json_default,
        ensure_ascii=False,
        indent=2 if pretty else None,
        separators=None if pretty else (",", ":"),
    )


def format_cell(value: Any) -> str:
    """A plain-text cell: `-` for None/empty, compact JSON for nested values, RFC 3339 for datetimes."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, (dict, list, tuple)):
        return to_json(value, pretty=False)
    return str(value)


def status_text(status: str, detail: str = "") -> Text:
    """`✓ PASS`, `! WARN` or `✗ FAIL` (plus detail), coloured when the console colours: the marker and
    the word carry the meaning, the colour only repeats it."""
    key = status.lower()
    label = f"{MARKERS[key]} {STATUS_WORDS[key]}" + (f" {detail}" if detail else "")
    return Text(label, style=STATUS_STYLES[key])


class Output:
    """Where and how a command prints. Built once per invocation by the root callback (`ctx.obj.output`).

    Attributes: `format` (resolved), `explicit` (the format was asked for), `no_headers`, `quiet`, `console` (stdout, data only),
    `err` (stderr console for hints, warnings, progress and live status), `stdout_is_tty`,
    `stderr_is_tty`, `color` (stdout colour decision).
    """

    def __init__(
        self,
        fmt: str | None = None,
        *,
        no_headers: bool = False,
        quiet: bool = False,
        color: bool | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.stdout_is_tty = _isatty(self.stdout)
        self.stderr_is_tty = _isatty(self.stderr)
        self.format = resolve_format(fmt, self.stdout_is_tty)
        self.explicit = bool(fmt)  # -o / CHALLENGE_OUTPUT given, rather than chosen by TTY detection
        self.no_headers = no_headers
        self.quiet = quiet
        self.color = color_enabled(self.stdout_is_tty, color)
        self.console = make_console(self.stdout, self.color, self.stdout_is_tty)
        self.err = make_console(self.stderr, color_enabled(self.stderr_is_tty, color), self.stderr_is_tty)

    # --- data on stdout -------------------------------------------------------------------------

    def emit(
        self,
        data: Any,
        *,
        rows: Sequence[Mapping[str, Any]] | None = None,
        columns: Sequence[Column | str] | None = None,
        title: str | None = None,
        table: Callable[[], RenderableType] | None = None,
        text: Callable[[], str] | None = None,
    ) -> None:
        """Print `data` in the resolved format (a payload straight from the service API is passed unchanged: its
        JSON/YAML stays camelCase; `rows`, e.g. the payload's list, make it CSV-able and are the default table).

        - json/yaml: `data` exactly as given (wrap CLI lists with `listing()` or use `emit_list`).
        - csv: `rows` with `columns`; without `rows` the output is not list-shaped → usage error (exit 2).
        - table: `table()` when given, else `rows` as a table, else `data` as a key/value table.
        - text: `text()` when given, else rows as tab-separated lines, else `key: value` lines.
        """
        if self.format == "json":
            self.write(to_json(data))
        elif self.format == "yaml":
            self.write(yaml.safe_dump(json.loads(to_json(data)), sort_keys=False, allow_unicode=True).rstrip("\n"))
        elif self.format == "csv":
            if rows is None:
                raise CliError(
                    "-o csv needs list-shaped output, and this command prints one object",
                    "use -o json, -o yaml or -o table",
                    EXIT_USAGE,
                )
            self._write_csv(rows, as_columns(columns, rows))
        elif self.format == "text":
            self.write(text() if text else self._plain_text(data, rows, columns))
        elif table is not None:
            self.console.print(table(), markup=False, highlight=False)
        elif rows is not None:
            self.console.print(self.table(rows, columns, title=title))
        else:
            self.console.print(self.key_value_table(data, title=title))

    def emit_list(
        self,
        items: Sequence[Mapping[str, Any]],
        columns: Sequence[Column | str] | None = None,
        *,
        title: str | None = None,
        table: Callable[[], RenderableType] | None = None,
    ) -> None:
        """A CLI-built list: JSON/YAML `{"items": [...], "total": N}`, CSV rows, or a table."""
        self.emit(listing(items), rows=items, columns=columns, title=title, table=table)

    def emit_object(
        self,
        obj: Mapping[str, Any],
        *,
        title: str | None = None,
        table: Callable[[], RenderableType] | None = None,
        text: Callable[[], str] | None = None,
    ) -> None:
        """A CLI-built object (snake_case keys): JSON/YAML as is, a key/value table, no CSV."""
        self.emit(obj, title=title, table=table, text=text)

    def write(self, text: str) -> None:
        """One block of text on stdout, newline-terminated, flushed."""
        self.stdout.write(text + "\n")
        self.stdout.flush()

    @property
    def streams_ndjson(self) -> bool:
        """Streaming commands (watch, --watch, events send --verbose) emit one JSON object per line when
        the format is json (asked for, or the default off a terminal)."""
        return self.format == "json"

    @property
    def streams_live(self) -> bool:
        """A stream is a rich Live display only as a table on a terminal; other formats print each update
        as a block of its own (YAML documents, tables, text)."""
        return self.stdout_is_tty and self.format == "table"

    def emit_update(self, data: Any, renderable: Callable[[], RenderableType]) -> None:
        """One update of a stream that is neither NDJSON nor Live: a YAML document, a table, or the
        format's rendering of `data`."""
        if self.format == "yaml":
            self.write(
                "---\n" + yaml.safe_dump(json.loads(to_json(data)), sort_keys=False, allow_unicode=True).rstrip("\n")
            )
        elif self.format == "table":
            self.console.print(renderable(), markup=False, highlight=False)
        else:
            self.emit(data)

    def ndjson(self, obj: Any) -> None:
        """One compact JSON object per line, flushed at once so `| jq` sees it live."""
        self.write(to_json(obj, pretty=False))

    def live(self, renderable: RenderableType, refresh_per_second: float = 4) -> Live:
        """A rich Live display of data on stdout (use when not `streams_ndjson`):
        `with out.live(table) as live: live.update(new_table)`."""
        return Live(renderable, console=self.console, refresh_per_second=refresh_per_second, auto_refresh=False)

    def table(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[Column | str] | None = None,
        *,
        title: str | None = None,
    ) -> Table:
        """A rich table of `rows`; honours `--no-headers`."""
        cols = as_columns(columns, rows)
        table = Table(title=title, show_header=not self.no_headers, header_style="bold", box=None, pad_edge=False)
        for col in cols:
            table.add_column(col.title, justify=col.justify)  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*(self._cell(col, row.get(col.key)) for col in cols))
        return table

    def key_value_table(self, data: Any, *, title: str | None = None) -> RenderableType:
        """An object as a two-column table (nested values as compact JSON)."""
        if not isinstance(data, Mapping):
            return Text(format_cell(data))
        rows = [{"key": key, "value": value} for key, value in data.items()]
        return self.table(rows, [Column("key"), Column("value")], title=title)

    # --- stderr ---------------------------------------------------------------------------------

    def hint(self, text: str) -> None:
        """`Hint: <text>` on stderr."""
        self.err.print(f"Hint: {text}", markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        """`Warning: <text>` on stderr (shown even with -q: warnings are not progress)."""
        self.err.print(Text(f"Warning: {text}", style="yellow"), soft_wrap=True)

    def info(self, text: str) -> None:
        """A progress/status note on stderr, suppressed by -q."""
        if not self.quiet:
            self.err.print(text, markup=False, highlight=False, soft_wrap=True)

    @property
    def shows_progress(self) -> bool:
        """Progress bars and live status appear only when stderr is a TTY and -q is not given."""
        return self.stderr_is_tty and not self.quiet

    def progress(self, description: str, total: int | None) -> ProgressHandle:
        """A transient progress bar on stderr (a no-op off a TTY or with -q):
        `with out.progress("warming", total=n) as bar: bar.advance()`."""
        return ProgressHandle(self if self.shows_progress else None, description, total)

    def status_live(self, renderable: RenderableType) -> Live | nullcontext[None]:
        """A transient Live status display on stderr, or a null context off a TTY or with -q."""
        if not self.shows_progress:
            return nullcontext()
        return Live(renderable, console=self.err, transient=True, refresh_per_second=4)

    # --- internals ------------------------------------------------------------------------------

    def _cell(self, col: Column, value: Any) -> RenderableType:
        if col.render is not None:
            return col.render(value)
        return Text(format_cell(value))

    def _write_csv(self, rows: Sequence[Mapping[str, Any]], cols: list[Column]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if not self.no_headers:
            writer.writerow([col.key for col in cols])
        for row in rows:
            writer.writerow(["" if row.get(c.key) in (None, "") else format_cell(row.get(c.key)) for c in cols])
        self.stdout.write(buffer.getvalue())
        self.stdout.flush()

    def _plain_text(
        self, data: Any, rows: Sequence[Mapping[str, Any]] | None, columns: Sequence[Column | str] | None
    ) -> str:
        if rows is not None:
            cols = as_columns(columns, rows)
            lines = [] if self.no_headers else ["\t".join(col.title for col in cols)]
            lines += ["\t".join(format_cell(row.get(col.key)) for col in cols) for row in rows]
            return "\n".join(lines)
        if isinstance(data, Mapping):
            return "\n".join(f"{key}: {format_cell(value)}" for key, value in data.items())
        return format_cell(data)


class ProgressHandle:
    """A progress bar that is real on a TTY and silent elsewhere; `advance(n)` and `update(**kw)`."""

    def __init__(self, output: Output | None, description: str, total: int | None) -> None:
        self._progress = None
        if output is not None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=output.err,
                transient=True,
            )
            self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> ProgressHandle:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, amount: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)

    def update(self, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)


def confirm(action: str, yes: bool, dry_run: bool = False) -> bool:
    """The confirmation rule for destructive actions (docs/cli.md#destructive-actions). Returns True when the action may
    proceed, False for `--dry-run` (the caller has printed what would be done and changes nothing).

    - `--dry-run`: prints `dry run: would <action>; nothing changed` on stderr, returns False;
    - `--yes`: returns True;
    - stdin is a TTY: asks `<action>? [y/N]` on stderr (default No); No → CliError exit 2;
    - otherwise: CliError exit 2 `refusing to <action> without confirmation` with `Hint: add --yes`.
    """
    if dry_run:
        print(f"dry run: would {action}; nothing changed", file=sys.stderr)
        return False
    if yes:
        return True
    if not _isatty(sys.stdin):
        raise CliError(f"refusing to {action} without confirmation (not a terminal)", "add --yes", EXIT_USAGE)
    if not typer.confirm(f"{action[:1].upper()}{action[1:]}?", default=False, err=True):
        raise CliError(f"not confirmed: did not {action}", "answer y, or add --yes", EXIT_USAGE)
    return True


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

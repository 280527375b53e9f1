"""Progress while a load test runs (docs/loadtest.md#loadtest-run): on a TTY a rich live panel on stderr (phase, elapsed and
remaining time, per endpoint the rate, rolling p95, errors, plus lag, dropped and in-flight); otherwise
one NDJSON progress line on stderr every 10 s. Fed by the generator processes' interval snapshots."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from challengectl.loadtest.profiles import ENDPOINT_LABELS
from challengectl.loadtest.schedule import PhasePlan, format_duration
from challengectl.loadtest.stats import decode, new_histogram

WINDOW_S = 10.0
NDJSON_EVERY_S = 10.0


class LiveProgress:
    """Aggregates worker snapshots into rolling 10-second windows and renders them."""

    def __init__(
        self,
        profile: str,
        plans: list[PhasePlan],
        stream: TextIO | None = None,
        tty: bool | None = None,
        quiet: bool = False,
    ) -> None:
        self.profile = profile
        self.plans = plans
        self.total_s = max(p.offset_s + p.duration_s for p in plans)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self.window: deque[tuple[float, dict[str, Any]]] = deque()
        self.errors: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.dropped: dict[int, int] = {}
        self.inflight: dict[int, int] = {}
        self.lag_max_ms = 0.0
        self._sample_lag_ms = 0.0
        self.elapsed_s = 0.0
        self._live: Live | None = None
        self._last_line = time.monotonic()

    def __enter__(self) -> LiveProgress:
        if self.tty and not self.quiet:
            self._live = Live(self.render(), console=Console(file=self.stream), refresh_per_second=2, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, snapshot: dict[str, Any]) -> None:
        """Take one worker's interval snapshot."""
        now = time.monotonic()
        self.window.append((now, snapshot))
        while self.window and now - self.window[0][0] > WINDOW_S:
            self.window.popleft()
        for label, entry in snapshot.get("labels", {}).items():
            self.counts[label] = self.counts.get(label, 0) + entry["count"]
            self.errors[label] = self.errors.get(label, 0) + entry["errors"]
        worker = snapshot.get("worker", 0)
        self.dropped[worker] = snapshot.get("dropped", 0)
        self.inflight[worker] = snapshot.get("inflight", 0)
        self.lag_max_ms = max(self.lag_max_ms, snapshot.get("lag_max_ms", 0.0))
        self._sample_lag_ms = max(self._sample_lag_ms, snapshot.get("lag_max_ms", 0.0))
        self.elapsed_s = max(self.elapsed_s, snapshot.get("elapsed_s", 0.0))
        if self._live is not None:
            self._live.update(self.render())
        elif not self.quiet and now - self._last_line >= NDJSON_EVERY_S:
            self._last_line = now
            self.stream.write(json.dumps(self.progress_line()) + "\n")
            self.stream.flush()

    def take_sample(self) -> dict[str, Any]:
        """The generator's numbers for one resource snapshot: max send lag since the previous sample,
        dropped so far and operations in flight."""
        sample = {
            "generator_lag_max_ms": self._sample_lag_ms,
            "generator_dropped": sum(self.dropped.values()),
            "generator_inflight": sum(self.inflight.values()),
        }
        self._sample_lag_ms = 0.0
        return sample

    def current_phase(self) -> str:
        for plan in self.plans:
            if plan.offset_s <= self.elapsed_s < plan.offset_s + plan.duration_s:
                return plan.name
        return "draining" if self.elapsed_s >= self.total_s else self.plans[0].name

    def rolling(self) -> dict[str, dict[str, float]]:
        """Per label over the window: rate (/s), p95 (ms) and errors."""
        if not self.window:
            return {}
        span = max(1.0, min(WINDOW_S, self.window[-1][0] - self.window[0][0] + 1.0))
        merged: dict[str, list[Any]] = {}
        for _, snapshot in self.window:
            for label, entry in snapshot.get("labels", {}).items():
                slot = merged.setdefault(label, [0, 0, new_histogram()])
                slot[0] += entry["count"]
                slot[1] += entry["errors"]
                slot[2].add(decode(entry["hdr"]))
        # Every worker reports once per second, so counts summed over all workers divided by the window
        # span give the total rate.
        return {
            label: {
                "rate": round(count / span, 1),
                "p95_ms": round(hist.get_value_at_percentile(95) / 1000, 2) if hist.get_total_count() else 0.0,
                "errors": errors,
            }
            for label, (count, errors, hist) in merged.items()
        }

    def progress_line(self) -> dict[str, Any]:
        return {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "phase": self.current_phase(),
            "elapsed_s": round(self.elapsed_s, 1),
            "remaining_s": round(max(0.0, self.total_s - self.elapsed_s), 1),
            "dropped": sum(self.dropped.values()),
            "inflight": sum(self.inflight.values()),
            "lag_max_ms": self.lag_max_ms,
            "endpoints": {
                label: {"rate": v["rate"], "p95_ms": v["p95_ms"], "errors": self.errors.get(label, 0)}
                for label, v in self.rolling().items()
            },
        }

    def render(self) -> Group:
        header = Text(
            f"{self.profile} · phase {self.current_phase()} · {format_duration(round(self.elapsed_s))} elapsed, "
            f"{format_duration(round(max(0.0, self.total_s - self.elapsed_s)))} left · in flight "
            f"{sum(self.inflight.values())} · dropped {sum(self.dropped.values())} · "
            f"max send lag {self.lag_max_ms:.1f} ms"
        )
        table = Table(box=None, pad_edge=False)
        for column in ("endpoint", "rate/s", "p95 (10 s)", "total", "errors"):
            table.add_column(column, justify="left" if column == "endpoint" else "right")
        rolling = self.rolling()
        for label in ENDPOINT_LABELS:
            if label not in self.counts:
                continue
            entry = rolling.get(label, {"rate": 0.0, "p95_ms": 0.0})
            errors = self.errors.get(label, 0)
            table.add_row(
                label,
                f"{entry['rate']:.1f}",
                f"{entry['p95_ms']:.1f} ms",
                f"{self.counts[label]:,}",
                Text(f"{errors:,}", style="red" if errors else ""),
            )
        return Group(header, table)

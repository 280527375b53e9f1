"""Sizes, durations and statement texts as the CLI shows them to people (tables, text reports, advice)."""

from __future__ import annotations

from typing import Any


def human_bytes(value: Any) -> str:
    """`8192` → `8.0 kB` (1024-based, as PostgreSQL's pg_size_pretty)."""
    if value is None:
        return "-"
    size = float(value)
    if abs(size) < 1024:
        return f"{int(size)} B"
    for unit in ("kB", "MB", "GB"):
        size /= 1024
        if abs(size) < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TB"


def human_ms(value: Any) -> str:
    """Milliseconds as `850 ms`, `12.3 s`, `4.1 min`."""
    if value is None:
        return "-"
    ms = float(value)
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 or ms == 0 else f"{ms:.2f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def one_line(text: Any, width: int = 80) -> str:
    """Statement text on one line, cut to `width` characters for tables."""
    if text is None:
        return "-"
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"

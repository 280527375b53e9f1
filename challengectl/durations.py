"""Durations as the CLI accepts them, one set of rules for every option: a bare number of seconds, or one
or more `<n><unit>` parts with units ms, s, m, h and d (`250ms`, `10s`, `1m30s`, `2d`)."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_BARE = re.compile(r"\d+(?:\.\d+)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

EXAMPLES = "500ms, 10s, 1m30s, 2h, 2d"


def duration_seconds(text: str) -> float:
    """The seconds `text` stands for; ValueError when it is not a duration."""
    cleaned = str(text).strip().lower()
    if _BARE.fullmatch(cleaned):
        return float(cleaned)
    position, total = 0, 0.0
    while position < len(cleaned):
        match = _PART.match(cleaned, position)
        if match is None:
            raise ValueError(f"invalid duration '{text}' (examples: {EXAMPLES})")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not cleaned:
        raise ValueError("empty duration")
    return total

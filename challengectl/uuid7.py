"""UUIDv7 event ids (RFC 9562 §5.7): a 48-bit Unix millisecond timestamp, then random bits.

The Python 3.11 standard library has no UUIDv7. Ids from one process are strictly increasing: within
one millisecond the 12-bit `rand_a` field is a counter started at a random value (RFC 9562 §6.2,
method 1), and when it overflows the timestamp field moves one millisecond ahead.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime

_COUNTER_BITS = 12
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
# The counter starts in the lower half of its range so that one millisecond has room for many ids.
_COUNTER_SEED_MAX = _COUNTER_MAX >> 1

_lock = threading.Lock()
_last_ms = -1
_counter = 0


def _next_timestamp_and_counter() -> tuple[int, int]:
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = int.from_bytes(os.urandom(2), "big") & _COUNTER_SEED_MAX
        elif _counter < _COUNTER_MAX:
            _counter += 1
        else:  # 2048+ ids in one millisecond, or the clock went back: borrow the next millisecond
            _last_ms += 1
            _counter = int.from_bytes(os.urandom(2), "big") & _COUNTER_SEED_MAX
        return _last_ms, _counter


def uuid7() -> uuid.UUID:
    """A new UUIDv7, greater than every earlier one from this process."""
    timestamp_ms, counter = _next_timestamp_and_counter()
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = ((timestamp_ms & ((1 << 48) - 1)) << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def uuid7_str() -> str:
    """A new UUIDv7 in its canonical 36-character text form (the event id format)."""
    return str(uuid7())


def uuid7_time(value: uuid.UUID | str) -> datetime:
    """The creation time (UTC, millisecond precision) recorded in a UUIDv7."""
    parsed = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    if parsed.version != 7:
        raise ValueError(f"{parsed} is a version {parsed.version} UUID, not a UUIDv7")
    return datetime.fromtimestamp((parsed.int >> 80) / 1000, tz=UTC)

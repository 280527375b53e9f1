"""The event buffer (docs/events.md#buffer-and-merge): one entry per (user, source), the merge rules, partitions and capacity.

An entry accumulates the effect of every accepted event of one user and one event source until a flush
commits it: `value` is the newest stat value (None for login), `value_at` that value's event time (None
when unknown), `inc` the sum of the increments (the number of logins for login). Entries also carry the de-duplication keys of their events and the waiters
of commit-mode calls, which are settled once the entry is committed (or found no row).

Everything here is synchronous and runs on the event loop, so admission, snapshots and merge-backs never
interleave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from functools import lru_cache
from itertools import islice

SOURCE_LOGIN = "login"
STAT_SOURCE_PREFIX = "stat:"

_FNV_OFFSET_BASIS = 0x811C9DC5
_FNV_PRIME = 0x01000193
_UINT32 = 0xFFFFFFFF

EntryKey = tuple[str, str]  # (user_id, source)
EventKey = tuple[str, str]  # (user_id, event id)


def stat_source(stat_code: str) -> str:
    """The buffer source of a stat event: `stat:<stat_code>` (the same string the flush statement uses)."""
    return STAT_SOURCE_PREFIX + stat_code


def fnv1a_32(text: str) -> int:
    """FNV-1a 32-bit hash of the UTF-8 bytes of `text`."""
    value = _FNV_OFFSET_BASIS
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * _FNV_PRIME) & _UINT32
    return value


# A user's events keep arriving, so the partition of the same id is needed again and again: cached as a whole,
# a call is one C-level lookup (caching only the hash left a Python call per event).
@lru_cache(maxsize=1 << 16)
def partition_of(user_id: str, partitions: int) -> int:
    """The partition of a user (docs/events.md#buffer-and-merge): FNV-1a 32-bit of the UTF-8 user id modulo `partitions`."""
    return fnv1a_32(user_id) % partitions


class Waiter:
    """One commit-mode call waiting for the entries that hold its events; done when all are settled.

    The future's result is True when every entry was committed, False when shutdown gave up on them.
    """

    __slots__ = ("future", "remaining")

    def __init__(self, remaining: int, future: asyncio.Future[bool]) -> None:
        self.remaining = remaining
        self.future = future

    def entry_settled(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0 and not self.future.done():
            self.future.set_result(True)

    def abandon(self) -> None:
        if not self.future.done():
            self.future.set_result(False)


class Entry:
    """The merged, not yet committed effect of one user's events of one source."""

    __slots__ = ("event_keys", "events", "first_accepted", "inc", "source", "user_id", "value", "value_at", "waiters")

    def __init__(self, user_id: str, source: str, first_accepted: float) -> None:
        self.user_id = user_id
        self.source = source
        self.value: int | None = None
        self.value_at: float | None = None
        self.inc = 0
        self.first_accepted = first_accepted
        self.events = 0
        self.event_keys: list[EventKey] = []
        self.waiters: list[Waiter] = []

    @property
    def key(self) -> EntryKey:
        return (self.user_id, self.source)

    def add_login(self) -> None:
        """A login counts one, whatever increment it carried."""
        self.inc += 1
        self.events += 1

    def add_stat(self, value: int, inc: int, at: float | None = None) -> None:
        """The newest value wins: by event time `at` when both it and the held value's time are known, else
        by arrival. The increments always add up, so a merged entry yields the same baseline."""
        if self.value is None or not _older(at, self.value_at):
            self.value = value
            self.value_at = at if at is not None else self.value_at
        self.inc += inc
        self.events += 1

    def absorb_older(self, older: Entry) -> None:
        """Merge `older` (a snapshot coming back) into this newer entry by the rules of docs/events.md#buffer-and-merge, docs/events.md#flush-failure-and-retry."""
        if self.value is None or _older(self.value_at, older.value_at):
            self.value, self.value_at = older.value, older.value_at
        elif self.value_at is None:
            self.value_at = older.value_at
        self.inc += older.inc
        self.first_accepted = min(self.first_accepted, older.first_accepted)
        self.events += older.events
        self.event_keys[:0] = older.event_keys
        self.waiters.extend(older.waiters)

    def settle(self) -> None:
        """The entry's effect is committed (or touched no row): release its waiters."""
        for waiter in self.waiters:
            waiter.entry_settled()
        self.waiters.clear()


def _older(at: float | None, than: float | None) -> bool:
    """Whether event time `at` is known to be older than `than` (unknown times never are)."""
    return at is not None and than is not None and at < than


class Partition:
    """One partition's buffer: entries in insertion order (oldest first) and its share of the capacity."""

    __slots__ = ("capacity", "entries", "index")

    def __init__(self, index: int, capacity: int) -> None:
        self.index = index
        self.capacity = capacity
        self.entries: dict[EntryKey, Entry] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def has_room_for(self, new_keys: int) -> bool:
        return len(self.entries) + new_keys <= self.capacity

    def oldest_accepted(self) -> float | None:
        """Acceptance time of the oldest entry (entries are kept oldest first)."""
        for entry in self.entries.values():
            return entry.first_accepted
        return None

    def take_snapshot(self, limit: int, weight: Callable[[Entry], int] | None = None, budget: int = 0) -> list[Entry]:
        """Remove and return up to `limit` entries, oldest first; with `weight`, only as many as fit in
        `budget` (at least one)."""
        if weight is not None:
            total, count = 0, 0
            for entry in islice(self.entries.values(), limit):
                total += weight(entry)
                if total > budget and count:
                    break
                count += 1
            limit = count
        if len(self.entries) <= limit:
            snapshot = list(self.entries.values())
            self.entries = {}
            return snapshot
        snapshot = list(islice(self.entries.values(), limit))
        for entry in snapshot:
            del self.entries[entry.key]
        return snapshot

    def merge_back(self, returning: Iterable[Entry]) -> list[tuple[Entry, Entry]]:
        """Put entries of a failed or partly deferred flush back, ahead of the newer ones (docs/events.md#flush-failure-and-retry).

        An entry whose key received newer events meanwhile is merged into that newer entry as the older
        one. Always succeeds, even above capacity. Returns the (absorbed, into) pairs, so that the caller
        can re-point its event index.
        """
        absorbed: list[tuple[Entry, Entry]] = []
        restored: dict[EntryKey, Entry] = {}
        for older in returning:
            key = older.key
            newer = self.entries.pop(key, None)
            if newer is None:
                restored[key] = older
            else:
                newer.absorb_older(older)
                restored[key] = newer
                absorbed.append((older, newer))
        restored.update(self.entries)
        self.entries = restored
        return absorbed

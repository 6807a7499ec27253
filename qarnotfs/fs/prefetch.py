"""The first bytes of objects fetched by lookups, kept for the open that follows.

Owns: :class:`FirstBytes`. A lookup the caches cannot answer GETs the first
:data:`FIRST_BYTES` of the object instead of HEADing it (the same round trip: the answer's
headers tell the size, ETag and metadata a HEAD would), and keeps those bytes here, keyed
by path and ETag, so that the open which usually follows (``cat`` looks a name up, then
opens it) has them: a cold small file costs that one GET. Bounded in bytes (least recently
kept first out); an entry is taken once.

Lock order: ``FirstBytes._lock`` is a leaf (never held while calling out).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache

FIRST_BYTES = 64 * 1024
"""What a lookup fetches of an object: all of a small file, little of a large one."""
KEPT_BYTES = 16 * 1024 * 1024
"""The most bytes kept for opens to come (256 lookups' worth)."""
FRESH_SECONDS = 1.0
"""How long kept bytes stand for the object without asking again: the kernel trusts a
lookup as long (its default entry and attribute timeouts), and an open follows its path's
lookup within the same system call."""


@dataclass(frozen=True)
class Kept:
    """Bytes a lookup fetched, and whether they are recent enough to open without asking."""

    data: bytes
    fresh: bool


class FirstBytes:
    """The first bytes of recently looked-up objects, by path and ETag."""

    def __init__(self, capacity: int = KEPT_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._kept: LRUCache[str, tuple[str, bytes, float]] = LRUCache(
            maxsize=capacity, getsizeof=lambda entry: len(entry[1]) + 1)

    def keep(self, path: str, etag: str, data: bytes) -> None:
        if not etag or len(data) + 1 > self._kept.maxsize:
            return
        with self._lock:
            self._kept[path] = (etag, data, self._clock())

    def take(self, path: str, etag: str) -> Kept | None:
        """The bytes kept for ``path`` if they are of ``etag`` (forgotten either way)."""
        with self._lock:
            entry = self._kept.pop(path, None)
        if entry is None or entry[0] != etag:
            return None
        return Kept(entry[1], self._clock() - entry[2] <= FRESH_SECONDS)

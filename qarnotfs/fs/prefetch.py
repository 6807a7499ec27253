"""What lookups fetched, kept for what follows them: an object's first bytes for its open,
a folder's first page of keys for its listing.

Owns: :class:`FirstBytes` and :class:`FirstPages`. A lookup the caches cannot answer GETs the first
:data:`FIRST_BYTES` of the object instead of HEADing it (the same round trip: the answer's
headers tell the size, ETag and metadata a HEAD would), and keeps those bytes here, keyed
by path and ETag, so that the open which usually follows (``cat`` looks a name up, then
opens it) has them: a cold small file costs that one GET. Bounded in bytes (least recently
kept first out); an entry is taken once.

A lookup of a folder by name (its key missing) LISTs the first page of the keys under it
(up to 1,000, every level) rather than one key: the same request, which also makes the
folder's listing when its readdir follows within :data:`FRESH_SECONDS` (``ls -l dir``
looks ``dir`` up, then lists it: one LIST instead of two). The page is never an answer to
lookups of the names in it (a lookup by name shows the object's stored attributes), only
to the listing of that folder, and only if the mount changed nothing in it since.

Lock order: ``FirstBytes._lock`` and ``FirstPages._lock`` are leaves (never held while
calling out).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache

from ..objects import ObjectInfo

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


FOLDER_PAGES = 16
"""Folders whose first page a lookup keeps for their listing to come."""


@dataclass(frozen=True)
class Page:
    """The first page of keys under a folder: as ``list_page`` gave it, and the metadata
    cache's generation before it was asked."""

    objects: list[ObjectInfo]
    truncated: bool
    since: int


class FirstPages:
    """The first page of keys under recently looked-up folders, taken by their listing."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._kept: LRUCache[str, tuple[Page, float]] = LRUCache(maxsize=FOLDER_PAGES)

    def keep(self, folder: str, page: Page) -> None:
        with self._lock:
            self._kept[folder] = (page, self._clock())

    def take(self, folder: str) -> Page | None:
        """The page kept for ``folder`` if it came less than a second ago (forgotten
        either way)."""
        with self._lock:
            entry = self._kept.pop(folder, None)
        if entry is None or self._clock() - entry[1] > FRESH_SECONDS:
            return None
        return entry[0]

"""Reads of objects that are not staged: ranged GETs with a simple read-ahead window.

Owns: :class:`Reader`, one per open handle. Sequential reads grow the window (doubling up
to 8 MiB) so a large file is fetched in few requests; a jump resets it. The buffer holds
one window of one key, so memory per handle is bounded.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..bucket import Bucket

KIB = 1024
INITIAL_WINDOW = 256 * KIB
MAXIMUM_WINDOW = 8 * KIB * KIB


class Reader:
    """Serves reads of one handle from a read-ahead buffer filled by ranged GETs."""

    def __init__(self, bucket: Bucket) -> None:
        self._bucket = bucket
        self._lock = threading.Lock()
        self._key = ""
        self._start = 0
        self._data = b""
        self._window = INITIAL_WINDOW

    def read(self, key: str, size: int, offset: int, file_size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of ``key``, an object of ``file_size`` bytes."""
        if size <= 0 or offset >= file_size:
            return b""
        size = min(size, file_size - offset)
        with self._lock:
            if key == self._key and self._start <= offset \
                    and offset + size <= self._start + len(self._data):
                begin = offset - self._start
                return self._data[begin:begin + size]
            sequential = key == self._key and offset == self._start + len(self._data)
            self._window = min(self._window * 2, MAXIMUM_WINDOW) if sequential \
                else INITIAL_WINDOW
            length = min(max(size, self._window), file_size - offset)
            data = self._bucket.read(key, offset, length)
            self._key, self._start, self._data = key, offset, data
            return data[:size]

    def forget(self) -> None:
        """Drop the buffer (the object changed)."""
        with self._lock:
            self._key, self._data = "", b""

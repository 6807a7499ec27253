"""Reading ahead across files: the next small files of a folder read in name order.

Owns: :class:`SiblingReadAhead`. A program that reads the files of a folder one after the
other (a data loader, ``cat *``, ``cp -r``, ``tar``) costs a GET per cold small file, each
waiting for the one before. When two opens in a row are of consecutive files of a folder
(in name order, which is also the order of the bucket's keys and of a listing), the next
small files are looked up ahead, in parallel, as a lookup by name would (a GET of their
first bytes: prefetch.py keeps them, the metadata cache learns the exact attributes): their
lookup and open then send nothing. The window starts at :data:`FIRST_WINDOW` files and
doubles with each open that keeps the order, up to :data:`MAXIMUM_WINDOW`; an open out of
order stops it. The folder's names come from its cached listing, else from one LIST (the
first page of its keys), asked once the second file of the folder is opened, and again
when they are older than :data:`NAMES_TTL`.

What a reader sees is what a lookup by name gives: the bytes fetched ahead stand for the
object for :data:`~.prefetch.FRESH_SECONDS` after they were fetched (an open later checks
them with a conditional GET), and whatever the mount changes meanwhile wins over them (the
metadata cache's generations; a file the mount is writing is its own truth). Bounded: at
most :data:`MAXIMUM_WINDOW` files ahead per folder, only files of at most
:data:`~.prefetch.FIRST_BYTES`, :data:`FOLDERS` folders followed.

Lock order: ``SiblingReadAhead._lock`` is a leaf (never held while calling out; the
fetches run on the executor).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from cachetools import LRUCache

from .keys import join, name_of, parent_of

log = logging.getLogger(__name__)

FIRST_WINDOW = 2
MAXIMUM_WINDOW = 8
"""Files fetched ahead of the reader in one folder, at most."""
FOLDERS = 64
"""Folders whose reading order is followed at once (least recently opened forgotten)."""
NAMES_TTL = 60.0
"""Seconds a folder's names serve before they are listed again (files come and go)."""

FileSizes = dict[str, int]
"""The files of a folder: name -> size."""


@dataclass
class _Folder:
    last: str = ""
    """The file of this folder opened last."""
    names: list[str] | None = None
    """The folder's files in name order, once known."""
    sizes: FileSizes | None = None
    asked: bool = False
    """Its names are being (or were) listed."""
    learned: float = 0.0
    window: int = 0
    sent: int = 0
    """Index in ``names`` below which fetches ahead were sent."""


class SiblingReadAhead:
    """Follows the order in which files are opened, per folder, and fetches ahead."""

    def __init__(self, pool: Executor, small: int,
                 list_files: Callable[[str], FileSizes | None],
                 fetch: Callable[[str], object],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``list_files(folder)`` gives a folder's files (None if it cannot tell);
        ``fetch(path)`` looks a file up as a lookup by name does, keeping its first bytes;
        only files of at most ``small`` bytes are fetched ahead."""
        self._pool = pool
        self._small = small
        self._list_files = list_files
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._folders: LRUCache[str, _Folder] = LRUCache(maxsize=FOLDERS)
        self._in_flight: dict[str, Future[None]] = {}

    def opened(self, path: str) -> None:
        """A program opened the file at ``path`` to read it."""
        folder, name = parent_of(path), name_of(path)
        learn: _Folder | None = None
        ahead: list[str] = []
        with self._lock:
            state = self._folders.get(folder)
            if state is None:
                self._folders[folder] = _Folder(last=name)
                return
            if name == state.last:
                return  # opened again: no step forward
            previous, state.last = state.last, name
            if state.names is not None and self._clock() - state.learned > NAMES_TTL:
                state.names, state.sizes, state.asked = None, None, False
            if state.names is not None:
                ahead = self._ahead(state, previous, name)
            elif not state.asked:
                state.asked, learn = True, state
        if learn is not None:
            try:
                self._pool.submit(self._learn, folder, learn)
            except RuntimeError:  # the pool is shut down: the mount is going away
                return
        for sibling in ahead:
            self._send(join(folder, sibling))

    def _send(self, path: str) -> None:
        with self._lock:
            if path in self._in_flight:
                return
            future: Future[None] = Future()
            self._in_flight[path] = future
        try:
            self._pool.submit(self._fetch_quietly, path).add_done_callback(
                lambda _: self._done(path, future))
        except RuntimeError:  # the pool is shut down: the mount is going away
            self._done(path, future)

    def _done(self, path: str, future: Future[None]) -> None:
        with self._lock:
            if self._in_flight.get(path) is future:
                del self._in_flight[path]
        future.set_result(None)

    def wait_for(self, path: str) -> bool:
        """Wait until the fetch ahead of ``path``, if one is under way, is over (a lookup
        of it then finds what it learned instead of sending the same GET); False if there
        was none."""
        with self._lock:
            future = self._in_flight.get(path)
        if future is None:
            return False
        future.result()
        return True

    def settle(self) -> None:
        """Wait until no fetch ahead is under way."""
        with self._lock:
            waiting = list(self._in_flight.values())
        for future in waiting:
            future.result()

    def _ahead(self, state: _Folder, previous: str, name: str) -> list[str]:
        """The names to fetch now that ``name`` was opened after ``previous``."""
        assert state.names is not None and state.sizes is not None
        index = bisect.bisect_left(state.names, name)
        if index == len(state.names) or state.names[index] != name \
                or index == 0 or state.names[index - 1] != previous:
            state.window = 0  # out of order: stop
            state.sent = 0
            return []
        state.window = min(max(FIRST_WINDOW, 2 * state.window), MAXIMUM_WINDOW)
        start = max(index + 1, state.sent)
        stop = min(index + 1 + state.window, len(state.names))
        state.sent = max(state.sent, stop)
        return [n for n in state.names[start:stop] if state.sizes[n] <= self._small]

    def _learn(self, folder: str, state: _Folder) -> None:
        try:
            files = self._list_files(folder)
        except Exception as error:  # only a read-ahead lost
            log.debug("read-ahead in %s: listing failed (%s)", folder, error)
            return
        if files is None:
            return
        with self._lock:
            state.sizes = files
            state.names = sorted(files)
            state.learned = self._clock()

    def _fetch_quietly(self, path: str) -> None:
        """Look ``path`` up (what fails is the program's own lookup's business)."""
        try:
            self._fetch(path)
        except Exception as error:  # only a read-ahead lost
            log.debug("read-ahead of %s failed (%s)", path, error)

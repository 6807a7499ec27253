"""Reads of objects that are not staged: ranged GETs with a parallel read-ahead window.

Owns: :class:`Reader`, one per open handle. The object is fetched in *pieces* (ranged
GETs, each conditional on the ETag the open saw: bytes of a replacement are never mixed
with the object's, PreconditionFailedException instead). The open's own GET gives the
first piece (:meth:`Reader.prime`: one GET for a small file); a read that finds no piece
fetches one at once (256 KiB, or the rest of the file). While reads stay sequential each
piece is four times as big as the last (up to 8 MiB: few requests per file, as boto3's
download makes), and once 256 KiB were read in a row, pieces ahead of the reader are
fetched in parallel on a shared pool: one more per 256 KiB read, up to 3. A seek drops the
pieces and starts again with a small piece. Pieces behind the reader are dropped, so a
handle holds at most 5 pieces (the one being read, one kept for late reads, 3 ahead: about
40 MiB): memory per open file is bounded, whatever the file's size.

Memory per mount. The Readers of one mount share a :class:`ReadBudget` of bytes held in
pieces: a piece ahead is fetched only when the budget has room for it, and a piece a read
needs now is always fetched, but at its smallest size (256 KiB, or what the read asks)
when the budget is spent. So 32 threads reading at random hold little more than the
budget, however many handles they use.

A piece is held as consecutive *chunks*, cut at the object's multiples of 1 MiB
(:func:`~qarnotfs.objects.chunk_bounds`), never as one buffer: buffers of a MiB are memory
the process reuses from one piece to the next (see :mod:`.allocator`), where a buffer of
8 MiB would be fresh memory each time, a page fault per 4 KiB read. Pieces end on those
multiples too once they are big enough (or at the end of the object). The kernel reads a
big file in aligned requests of 1 MiB (:mod:`.readahead`), so such a read is answered with
a chunk itself, not a copy; other reads with a slice of one, or the slices joined.

The read cache (:mod:`.readcache`), when the mount has one and the open told the object's
ETag: pieces are then whole aligned blocks (its block size, also the chunk size; the last
block may be shorter). A piece whose blocks are all cached is served from them, without a
GET; the blocks of a piece fetched from the bucket go to the cache's writer thread.

Lock order: ``Reader._lock`` (one per handle) before ``ReadBudget._lock`` (a leaf).
``Reader._lock`` is held only to choose pieces: it is never held across a GET nor a use of
the read cache (a read fetches the pieces it needs now after letting it go, and parallel
reads needing the same piece wait for its future), so parallel reads of one handle at
different places proceed in parallel.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from ..objects import split_chunks

if TYPE_CHECKING:
    from .readcache import ReadCache
    from .storage import Storage

KIB = 1024
MIB = KIB * KIB
CHUNK = 1 * MIB
"""The alignment and size of the buffers a piece is held in, without a read cache (with
one: its block)."""
INITIAL_PIECE = 256 * KIB
MAXIMUM_PIECE = 8 * MIB
GROWTH = 4
"""Each piece of a sequential read is this many times the last (up to the maximum)."""
MAXIMUM_AHEAD = 3
"""Pieces fetched in parallel ahead of a sequential reader (one more per 256 KiB read).
More would not read faster from a local server, and would cost 8 MiB each per open file."""
LATE_READS = 1 * MIB
"""Pieces ending less than this before a read are kept for reads arriving late."""
DEFAULT_BUDGET = 64 * MIB
"""Bytes of pieces the Readers of one mount hold before pieces ahead wait: enough for
eight sequential readers at full speed, and a bound on memory when there are more."""


class ReadBudget:
    """Bytes held in pieces by the Readers of one mount (a leaf lock)."""

    def __init__(self, limit: int = DEFAULT_BUDGET) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, size: int, must: bool) -> bool:
        """Count ``size`` bytes if the budget has room for them, or anyway if ``must``."""
        with self._lock:
            if not must and self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.used -= size


Chunks = list[bytes]
"""The bytes of a piece, in consecutive chunks of the Reader's chunk size."""


@dataclass(eq=False)
class _Piece:
    start: int
    end: int
    data: Future[Chunks]


class Reader:
    """Serves reads of one handle from pieces of the object fetched ahead of it."""

    def __init__(self, bucket: Storage, pool: Executor | None = None,
                 budget: ReadBudget | None = None, cache: ReadCache | None = None,
                 chunk_size: int = CHUNK) -> None:
        self._bucket = bucket
        self._pool = pool
        self._budget = budget if budget is not None else ReadBudget()
        self._cache = cache
        self._lock = threading.Lock()
        self._key = ""
        self._etag = ""
        self._pieces: list[_Piece] = []
        self._next = 0
        """Where a sequential read would start."""
        self._streak = 0
        """Bytes read sequentially until now."""
        self._piece_size = INITIAL_PIECE
        self._chunk = cache.block_size if cache is not None else chunk_size

    @property
    def _block(self) -> int:
        """The alignment of the start of pieces: the cache's block when it is used, else
        none (see :meth:`_piece_end` for their end)."""
        return self._cache.block_size if self._cache is not None and self._etag else 1

    def read(self, key: str, etag: str, size: int, offset: int, file_size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of ``key``, an object of ``file_size`` bytes
        whose ETag is ``etag`` as the open found it ("" if unknown: no cache is used)."""
        if size <= 0 or offset >= file_size:
            return b""
        size = min(size, file_size - offset)
        with self._lock:
            self._switch(key, etag)
            # The kernel sends read-ahead requests in parallel, so they may arrive a
            # little out of order: a read inside the pieces still counts as sequential.
            if offset == self._next or any(p.start <= offset < p.end for p in self._pieces):
                self._streak += size
            else:
                self._streak = size
                self._piece_size = INITIAL_PIECE
                self._drop(self._pieces)
            self._next = offset + size
            self._drop([p for p in self._pieces if p.end <= offset - LATE_READS])
            wanted, mine = self._covering(offset, offset + size, file_size)
            self._ahead(offset + size, min(self._streak // INITIAL_PIECE, MAXIMUM_AHEAD),
                        file_size)
        try:
            # Outside the lock: parallel reads of this handle elsewhere in the file proceed.
            self._fill(mine, key, etag, file_size)
            chunks = [self._result(piece, key, etag, file_size) for piece in wanted]
        except BaseException:
            with self._lock:  # a failed GET is not kept: the next read tries again
                self._drop([p for p in self._pieces if p in wanted])
            raise
        # Only the bytes asked for are copied, even across pieces (each from where the
        # one before it ended: pieces may overlap).
        parts: list[bytes] = []
        position = offset
        for piece, held in zip(wanted, chunks, strict=True):
            parts += self._slices(piece.start, held, position, min(offset + size, piece.end))
            position = piece.end
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _slices(self, piece_start: int, chunks: Chunks, start: int, end: int) -> list[bytes]:
        """Bytes [start, end) of the object, from the chunks of a piece that starts at
        ``piece_start`` (a whole chunk is not copied: slicing all of a bytes is free)."""
        first = piece_start // self._chunk
        parts = []
        for number in range(start // self._chunk, (end - 1) // self._chunk + 1):
            chunk_start = max(number * self._chunk, piece_start)
            parts.append(chunks[number - first][max(start - chunk_start, 0):end - chunk_start])
        return parts

    def prime(self, key: str, etag: str, data: bytes, file_size: int,
              keep: bool = True) -> None:
        """Hold ``data``, the first bytes of ``key`` at ``etag``, that the open's GET
        brought (so a small file costs that one request), and put them in the read cache
        unless ``keep`` is False (they came from it). Bytes that end inside a cache block
        are not held (the pieces that follow must start on a block), but the first piece
        is then as big as the one that would have followed them: one GET less for a
        file read from its start."""
        with self._lock:
            self._switch(key, etag)
            self._piece_size = min(GROWTH * max(len(data), INITIAL_PIECE), MAXIMUM_PIECE)
            if len(data) < file_size and len(data) % self._block:
                return
            self._budget.take(len(data), must=True)
            chunks = split_chunks(data, 0, self._chunk)
            done: Future[Chunks] = Future()
            done.set_result(chunks)
            self._pieces.append(_Piece(0, len(data), done))
        if keep:
            self._keep(key, etag, 0, chunks, file_size)

    def _switch(self, key: str, etag: str) -> None:
        """Start afresh if the object read is no longer the one the pieces come from."""
        if (key, etag) != (self._key, self._etag):
            self._drop(self._pieces)
            self._key, self._etag, self._next, self._streak = key, etag, 0, 0
            self._piece_size = INITIAL_PIECE

    def _get(self, key: str, etag: str, start: int, end: int) -> Chunks:
        """One GET, conditional on ``etag``: never bytes of a replacement."""
        return self._bucket.read_chunks(key, start, end - start, only_etag=etag,
                                        chunk_size=self._chunk)

    def _fill(self, pieces: list[_Piece], key: str, etag: str, file_size: int) -> None:
        """Fetch the pieces a read needs now; their futures tell the reads waiting for
        them (all of them, even when one fails: no read waits forever)."""
        for number, piece in enumerate(pieces):
            try:
                data = self._load(key, etag, piece.start, piece.end, file_size)
            except BaseException as error:
                for failed in pieces[number:]:
                    failed.data.set_exception(error)
                raise
            piece.data.set_result(data)

    def _result(self, piece: _Piece, key: str, etag: str, file_size: int) -> Chunks:
        try:
            return piece.data.result()
        except CancelledError:  # dropped by a seek of a parallel read: fetch it here
            return self._load(key, etag, piece.start, piece.end, file_size)

    def _covering(self, start: int, end: int, file_size: int) \
            -> tuple[list[_Piece], list[_Piece]]:
        """The pieces holding [start, end), and those of them the caller must fetch now
        (the parts no piece held)."""
        wanted: list[_Piece] = []
        mine: list[_Piece] = []
        position = start
        while position < end:
            piece = next((p for p in self._pieces if p.start <= position < p.end), None)
            if piece is None:
                following = min((p.start for p in self._pieces if p.start > position),
                                default=file_size)
                first = position - position % self._block
                size = self._piece_size
                taken = size if self._budget.take(size, must=False) else 0
                if not taken:
                    size = INITIAL_PIECE  # the budget is spent: the least this read needs
                stop = min(self._piece_end(position, max(position + size, end), end),
                           following, file_size)
                piece = self._fetch(first, stop, file_size, now=True, taken=taken)
                mine.append(piece)
            wanted.append(piece)
            position = piece.end
        return wanted, mine

    def _piece_end(self, start: int, stop: int, needed: int) -> int:
        """Where a piece from ``start`` meant to reach ``stop`` ends: on the last end of a
        chunk before ``stop`` if that still reaches ``needed``, else on the next one when
        pieces must be whole blocks (the read cache's), else at ``stop``. So the pieces
        of a sequential read soon line up with chunks, without making a small piece big."""
        down = stop - stop % self._chunk
        if down > start and down >= needed:
            return down
        if self._block > 1 and down != stop:
            return down + self._chunk
        return stop

    def _ahead(self, after: int, count: int, file_size: int) -> None:
        """Have ``count`` pieces beyond ``after`` fetched or being fetched (in parallel),
        as far as the mount's budget allows."""
        if self._pool is None or not self._pieces:
            return
        waiting = sum(1 for p in self._pieces if p.start >= after)
        position = max(p.end for p in self._pieces)
        while waiting < count and position < file_size:
            stop = min(self._piece_end(position, position + self._piece_size, position + 1),
                       file_size)
            if not self._budget.take(stop - position, must=False):
                return
            self._fetch(position, stop, file_size, now=False, taken=stop - position)
            position = stop
            waiting += 1

    def _fetch(self, start: int, end: int, file_size: int, now: bool, taken: int) -> _Piece:
        """A new piece [start, end), ``taken`` bytes of the budget already counted for it."""
        if taken > end - start:
            self._budget.give_back(taken - (end - start))
        else:
            self._budget.take(end - start - taken, must=True)
        key, etag = self._key, self._etag
        future: Future[Chunks]
        if now or self._pool is None:
            future = Future()  # filled by the read that needs it, outside the lock
            future.set_running_or_notify_cancel()  # so a parallel seek cannot cancel it
        else:
            future = self._pool.submit(self._load, key, etag, start, end, file_size)
        piece = _Piece(start, end, future)
        self._pieces.append(piece)
        # Growing pieces: few requests for big files, little waste for small reads.
        self._piece_size = min(GROWTH * self._piece_size, MAXIMUM_PIECE)
        return piece

    def _load(self, key: str, etag: str, start: int, end: int, file_size: int) -> Chunks:
        """Bytes [start, end) of the object: from the cache when it holds all of them,
        else one GET (whose whole blocks then go to the cache)."""
        cache = self._cache if etag else None
        if cache is None:
            return self._get(key, etag, start, end)
        # Pieces of a cached object start on a block and end on one or at the end of the
        # object, so their chunks are the cache's blocks.
        block = cache.block_size
        blocks: Chunks = []
        for first in range(start, end, block):
            data = cache.get(key, etag, first // block, min(block, file_size - first))
            if data is None:
                break
            blocks.append(data)
        else:
            return blocks
        chunks = self._get(key, etag, start, end)
        self._keep(key, etag, start, chunks, file_size)
        return chunks

    def _keep(self, key: str, etag: str, start: int, chunks: Chunks, file_size: int) -> None:
        """Put the chunks that are whole blocks (those of a piece from ``start``) in the
        cache."""
        cache = self._cache if etag else None
        if cache is None:
            return
        block = cache.block_size
        first = start
        for chunk in chunks:
            if first % block == 0 and len(chunk) == min(block, file_size - first):
                cache.put_soon(key, etag, first // block, chunk)
            first += len(chunk)

    def _drop(self, pieces: list[_Piece]) -> None:
        """Forget ``pieces``, cancelling their GETs not started yet; their bytes leave the
        budget when their GET is over."""
        for piece in pieces:
            piece.data.cancel()
            size = piece.end - piece.start
            piece.data.add_done_callback(partial(self._returned, size))
        self._pieces = [p for p in self._pieces if p not in pieces]

    def _returned(self, size: int, _: Future[Chunks]) -> None:
        self._budget.give_back(size)

    def forget(self) -> None:
        """Drop the pieces (the object changed, or the handle is closed)."""
        with self._lock:
            self._drop(self._pieces)
            self._key = self._etag = ""

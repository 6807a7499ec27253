"""Reads of objects that are not staged: ranged GETs with a parallel read-ahead window.

Owns: :class:`Reader`, one per open handle. The object is fetched in *pieces* (ranged
GETs). A read that finds no piece fetches one at once (256 KiB, or the rest of a small
file: one GET for a small file). While reads stay sequential each piece is four times as
big as the last (up to 8 MiB: few requests per file, as boto3's download makes), and once
256 KiB were read in a row, pieces ahead of the reader are fetched in parallel on a
shared pool: one more per 256 KiB read, up to 3. A seek drops the pieces and starts again
with a small piece. Pieces behind the reader are dropped, so a handle holds at most 5
pieces (the one being read, one kept for late reads, 3 ahead: about 40 MiB): memory per
open file is bounded, whatever the file's size.

Lock order: ``Reader._lock`` is a leaf, one per handle: it is held across the GET of a
piece a read needs at once (pieces ahead go to the pool), so only parallel reads of that
same handle can wait for it, never another file's operation.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .storage import Storage

KIB = 1024
MIB = KIB * KIB
INITIAL_PIECE = 256 * KIB
MAXIMUM_PIECE = 8 * MIB
GROWTH = 4
"""Each piece of a sequential read is this many times the last (up to the maximum)."""
MAXIMUM_AHEAD = 3
"""Pieces fetched in parallel ahead of a sequential reader (one more per 256 KiB read).
More would not read faster from a local server, and would cost 8 MiB each per open file."""
LATE_READS = 1 * MIB
"""Pieces ending less than this before a read are kept for reads arriving late."""


@dataclass
class _Piece:
    start: int
    end: int
    data: Future[bytes]


class Reader:
    """Serves reads of one handle from pieces of the object fetched ahead of it."""

    def __init__(self, bucket: Storage, pool: Executor | None = None) -> None:
        self._bucket = bucket
        self._pool = pool
        self._lock = threading.Lock()
        self._key = ""
        self._etag = ""
        self._pieces: list[_Piece] = []
        self._next = 0
        """Where a sequential read would start."""
        self._streak = 0
        """Bytes read sequentially until now."""
        self._piece_size = INITIAL_PIECE

    def read(self, key: str, etag: str, size: int, offset: int, file_size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of ``key``, an object of ``file_size`` bytes
        whose ETag is ``etag`` ('' if not known). Every GET is conditional on that ETag:
        bytes of a replacement are never mixed with those of the object opened
        (:class:`~qarnotfs.exceptions.PreconditionFailedException` instead)."""
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
                self._drop()
            self._next = offset + size
            self._pieces = [p for p in self._pieces if p.end > offset - LATE_READS]
            wanted = self._covering(offset, offset + size, file_size)
            self._ahead(offset + size, min(self._streak // INITIAL_PIECE, MAXIMUM_AHEAD),
                        file_size)
        try:
            chunks = [self._result(key, piece) for piece in wanted]
        except BaseException:
            with self._lock:  # a failed GET is not kept: the next read tries again
                self._pieces = [p for p in self._pieces if p not in wanted]
            raise
        # Only the bytes asked for are copied, even across pieces.
        parts = [chunk[max(offset - piece.start, 0):offset + size - piece.start]
                 for piece, chunk in zip(wanted, chunks, strict=True)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def prime(self, key: str, etag: str, data: bytes) -> None:
        """Keep ``data``, the first bytes of ``key`` at ``etag``, that the open's GET
        brought (so a small file costs that one request)."""
        with self._lock:
            self._switch(key, etag)
            done: Future[bytes] = Future()
            done.set_result(data)
            self._pieces.append(_Piece(0, len(data), done))
            self._piece_size = min(GROWTH * max(len(data), INITIAL_PIECE), MAXIMUM_PIECE)

    def _switch(self, key: str, etag: str) -> None:
        """Start afresh if the object read is no longer the one the pieces come from."""
        if (key, etag) != (self._key, self._etag):
            self._drop()
            self._key, self._etag, self._next, self._streak = key, etag, 0, 0
            self._piece_size = INITIAL_PIECE

    def _get(self, key: str, etag: str, start: int, end: int) -> bytes:
        answer = self._bucket.get(key, start, end - start, only_etag=etag)
        assert answer is not None, "a GET without If-None-Match always answers"
        return answer.data

    def _result(self, key: str, piece: _Piece) -> bytes:
        try:
            return piece.data.result()
        except CancelledError:  # dropped by a seek of a parallel read: fetch it here
            return self._get(key, self._etag, piece.start, piece.end)

    def _covering(self, start: int, end: int, file_size: int) -> list[_Piece]:
        """The pieces holding [start, end), fetching (now) the parts no piece holds."""
        wanted: list[_Piece] = []
        position = start
        while position < end:
            piece = next((p for p in self._pieces if p.start <= position < p.end), None)
            if piece is None:
                following = min((p.start for p in self._pieces if p.start > position),
                                default=file_size)
                stop = min(position + max(self._piece_size, end - position), following,
                           file_size)
                piece = self._fetch(position, stop, now=True)
            wanted.append(piece)
            position = piece.end
        return wanted

    def _ahead(self, after: int, count: int, file_size: int) -> None:
        """Have ``count`` pieces beyond ``after`` fetched or being fetched (in parallel)."""
        if self._pool is None or not self._pieces:
            return
        waiting = sum(1 for p in self._pieces if p.start >= after)
        position = max(p.end for p in self._pieces)
        while waiting < count and position < file_size:
            stop = min(position + self._piece_size, file_size)
            self._fetch(position, stop, now=False)
            position = stop
            waiting += 1

    def _fetch(self, start: int, end: int, now: bool) -> _Piece:
        key, etag = self._key, self._etag
        future: Future[bytes]
        if now or self._pool is None:
            future = Future()
            future.set_result(self._get(key, etag, start, end))
        else:
            future = self._pool.submit(self._get, key, etag, start, end)
        piece = _Piece(start, end, future)
        self._pieces.append(piece)
        # Growing pieces: few requests for big files, little waste for small reads.
        self._piece_size = min(GROWTH * self._piece_size, MAXIMUM_PIECE)
        return piece

    def _drop(self) -> None:
        """Forget the pieces, cancelling the GETs not started yet."""
        for piece in self._pieces:
            piece.data.cancel()
        self._pieces = []


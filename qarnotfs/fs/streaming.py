"""Early parts: a large file's multipart upload sent while the file is still being written.

Owns: :class:`PartStream`, the multipart upload of one staged file while a writer fills
it. Writes that each start where the previous one ended form a *run*; once a run covers a
whole part and the writer is past its end, that part is read back from the staged copy
and sent in the background, on the uploader's shared pool, so that ``close`` only waits
for the tail. A write elsewhere starts a new run, so random writers send nothing early,
and a writer that goes back to patch a header costs one part sent again. Each part
number has a version, bumped by every write or truncate that touches its bytes: a part
whose version changed while it was in flight, or after it was sent, does not count and
is sent again at close. A failed request stops the early sending: ``close`` then sends
the rest itself and reports any error.

The upload is created with the file's attributes at the time, without its times: those
change with every write until the end, and S3 fixes metadata at creation, so the object's
LastModified (the time the upload completed) stands for them. Attributes set explicitly
while the file is written (chmod, chown, and times set by ``utimens``, as ``cp -p`` does
before it closes) make the stream's metadata stale: the uploader then writes the object's
metadata again after completion (a server-side copy onto itself).

It sends through a :class:`PartSender` (the uploader, which knows nothing of streams but
their results): this module depends on that small interface, not on uploader.py.

Lock order: writeback's ``Item.lock`` -> ``PartStream._creating`` -> ``PartStream._lock``.
Sends hold ``_lock`` only briefly and never across a request, so a writer never waits for
the network; ``_creating`` is held across CreateMultipartUpload only by the part that
creates the upload, and by :meth:`PartStream.finish` and :meth:`PartStream.cancel`
(close, unlink and rename wait for that one request).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Protocol

from ..exceptions import QarnotException
from .storage import MAX_PARTS

log = logging.getLogger(__name__)

EARLY_WINDOW = 8
"""Parts of one file in flight early, each read whole into memory first (the file may
change under a part being sent): 64 MiB at most. With 4, big-write on moto went from
1.07 to 1.31 times boto3's time; with 10, a 512 MiB copy peaked at 192 MiB of RSS."""


class PartSender(Protocol):
    """What a stream needs to send parts (uploader.py's :class:`~.uploader.Uploader`)."""

    part_size: int
    workers: int

    @property
    def pool(self) -> Executor: ...

    def create(self, entry_id: int, key: str, metadata: dict[str, str]) -> str: ...

    def send_part(self, key: str, path: Path, upload_id: str, number: int,
                  snapshot: bool = False) -> tuple[str, int]: ...

    def record_part(self, entry_id: int, number: int, etag: str, size: int) -> None: ...

    def give_up(self, entry_id: int, key: str, upload_id: str | None) -> None: ...


class _Finished(Exception):
    """A part left queued when the file was closed before the upload was created."""


class PartStream:
    """The early parts of one file's upload to ``key``."""

    def __init__(self, uploader: PartSender, entry_id: int, key: str, path: Path,
                 metadata: dict[str, str]) -> None:
        self.key = key
        self.metadata = metadata
        """What the upload is created with (no times)."""
        self.metadata_stale = False
        """Attributes were set since: the object's metadata must be written again."""
        self._uploader = uploader
        self._entry_id = entry_id
        self._path = path
        self._part_size = uploader.part_size
        self._window = min(uploader.workers, EARLY_WINDOW)
        self._lock = threading.Lock()
        self._creating = threading.Lock()
        self._upload_id: str | None = None
        self._versions: dict[int, int] = {}
        self._sent: dict[int, tuple[str, int, int]] = {}
        """Part number -> (ETag, size, the version its bytes had when read)."""
        self._in_flight: dict[int, Future[None]] = {}
        self._next_part = 1
        """The first part of the run not queued yet."""
        self._run_start = 0
        self._write_end = -1
        self._sending = True
        self._cancelled = False
        self._finished = False
        """Closed before any part created the upload: none is created any more."""

    def wrote(self, offset: int, length: int) -> None:
        """``length`` bytes were written at ``offset``: send the parts now complete."""
        if length <= 0:
            return
        with self._lock:
            self._changed(offset, offset + length)
            if offset != self._write_end:
                self._run_start = offset
                self._next_part = -(-offset // self._part_size) + 1  # the first whole one
            self._write_end = offset + length
            self._pump()

    def truncated(self, length: int) -> None:
        with self._lock:
            first_cut = length // self._part_size + 1
            for number in set(self._sent) | set(self._in_flight):
                if number >= first_cut:
                    self._versions[number] = self._versions.get(number, 0) + 1
            if self._write_end > length:
                self._write_end = length
                self._run_start = min(self._run_start, length)
                self._next_part = min(self._next_part, first_cut)

    def cancel(self) -> None:
        """The file is gone or renamed: send and record nothing more (the uploader's
        journal gives the upload up, and it is aborted).

        Waits for a creation of the upload under way (one request): a creation that
        finished after the caller gave the entry's upload up would record its id in the
        entry again, over the upload the next close starts, and have that one aborted."""
        with self._creating, self._lock:
            self._cancelled = True
            self._sending = False

    def finish(self, key: str, size: int) -> str | None:
        """Stop sending; the upload id if the upload can be completed as ``key`` with
        ``size`` bytes (then :meth:`in_flight` and :meth:`parts` tell what it holds),
        else None (an upload already created is given up, to be aborted)."""
        with self._lock:
            self._sending = False
        with self._creating:  # waits for a creation under way; none starts after this
            self._finished = True
            upload_id = self._upload_id
        # A file that outgrew 10,000 parts is sent again at close, with larger parts.
        if upload_id is not None and (key != self.key or size <= self._part_size
                                      or size > self._part_size * MAX_PARTS):
            self.cancel()
            self._uploader.give_up(self._entry_id, self.key, upload_id)
            return None
        return upload_id

    def started(self) -> bool:
        """Parts went (or are going) early."""
        with self._lock:
            return bool(self._in_flight or self._sent)

    def in_flight(self) -> list[Future[None]]:
        with self._lock:
            return list(self._in_flight.values())

    def in_flight_parts(self) -> set[int]:
        with self._lock:
            return set(self._in_flight)

    def parts(self) -> dict[int, tuple[str, int]]:
        """The parts sent that still hold the file's bytes: {number: (ETag, size)}."""
        with self._lock:
            return {number: sent[:2] for number, sent in self._sent.items()
                    if self._holds(number)}

    # -- in the background -----------------------------------------------------------------

    def _holds(self, number: int) -> bool:
        """Part ``number`` was sent with the bytes the file has now."""
        sent = self._sent.get(number)
        return sent is not None and sent[2] == self._versions.get(number, 0)

    def _changed(self, start: int, end: int) -> None:
        for number in range(start // self._part_size + 1, (end - 1) // self._part_size + 2):
            self._versions[number] = self._versions.get(number, 0) + 1

    def _pump(self) -> None:
        """Queue the run's complete parts not sent yet, up to the window (``_lock`` held).

        A part is complete when the writer is past its end: the writer at its very end
        may be about to close a file of exactly that size, which is one PUT.
        """
        if not self._sending:
            return
        last_complete = min((self._write_end - 1) // self._part_size, MAX_PARTS)
        while self._next_part <= last_complete and len(self._in_flight) < self._window:
            number = self._next_part
            self._next_part += 1
            if number in self._in_flight or self._holds(number):
                continue
            version = self._versions.get(number, 0)
            self._in_flight[number] = self._uploader.pool.submit(self._send, number, version)

    def _send(self, number: int, version: int) -> None:
        sent: tuple[str, int] | None = None
        try:
            sent = self._send_now(number)
        finally:  # whatever happened, the part is no longer in flight
            with self._lock:
                self._in_flight.pop(number, None)
                if sent is None:
                    self._sending = False
                elif not self._cancelled:
                    etag, length = sent
                    if self._versions.get(number, 0) == version and length == self._part_size:
                        self._sent[number] = (etag, length, version)
                        self._uploader.record_part(self._entry_id, number, etag, length)
                    self._pump()

    def _send_now(self, number: int) -> tuple[str, int] | None:
        """Send one part: (ETag, size), or None if it was not sent (logged)."""
        with self._lock:
            if self._cancelled:  # queued before the file went away
                return None
        try:
            upload_id = self._ensure_upload()
            return self._uploader.send_part(self.key, self._path, upload_id, number,
                                            snapshot=True)
        except _Finished:
            return None
        except (QarnotException, OSError) as error:
            log.info("part %d of %r could not be sent early (close sends it): %s", number,
                     self.key, error)
            return None

    def _ensure_upload(self) -> str:
        with self._creating:
            if self._upload_id is None:
                if self._finished or self._cancelled:  # set under _creating: no race
                    raise _Finished
                self._upload_id = self._uploader.create(self._entry_id, self.key,
                                                        self.metadata)
            return self._upload_id

"""Uploading staged copies: resumable multipart uploads, and background retries.

Owns: :class:`Uploader`, which sends one staged copy to its key and journals each step
(a file up to one part in one request; a bigger one as a multipart upload whose id and
acknowledged parts are recorded as they happen, so an upload interrupted by a crash or
a failure resumes with only the missing parts: ListParts on the recorded id, re-send
what the storage lacks or what changed locally, complete; parts a
:class:`~.streaming.PartStream` sent while the file was written count too), and
:class:`RetryQueue`, the background thread that retries failed uploads with exponential
backoff until they succeed or are cancelled.

Lock order: ``RetryQueue._condition`` is a leaf: held to schedule and pick items, never
while an attempt runs (attempts take an item's lock: writeback.py).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import heapq
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, TYPE_CHECKING, Generic, TypeVar, cast

from s3transfer.utils import ReadFileChunk

from ..checksums import normalize_etag
from ..exceptions import InvalidPartException, MissingUploadException, QarnotException
from .storage import part_size_for
from .streaming import PartStream

if TYPE_CHECKING:
    from .journal import BestEffortJournal
    from .storage import Storage

log = logging.getLogger(__name__)


T = TypeVar("T")


VOLATILE_METADATA = frozenset({"atime", "ctime"})
"""Metadata that may differ between an upload and its resumption without mattering."""
TIMES = frozenset({"mtime", "atime", "ctime"})


def without(names: frozenset[str], metadata: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in metadata.items() if name not in names}


def metadata_digest(metadata: dict[str, str]) -> str:
    """What a multipart upload's metadata is recorded as (it is fixed at its creation)."""
    kept = without(VOLATILE_METADATA, metadata)
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 gives the object assembled from these parts (MD5 of their MD5s)."""
    digests = b"".join(bytes.fromhex(normalize_etag(etag)) for etag in part_etags)
    return f"{hashlib.md5(digests).hexdigest()}-{len(part_etags)}"


class Uploader:
    """Sends staged copies to the bucket, journaling every step.

    Parts go through one pool shared by every upload, early parts included, so the memory
    they take is bounded by its size (``workers`` parts of ``part_size`` bytes).
    """

    def __init__(self, bucket: Storage, journal: BestEffortJournal, part_size: int,
                 workers: int) -> None:
        self.bucket = bucket
        self.journal = journal
        self.part_size = part_size
        self.workers = max(1, workers)
        self.pool = ThreadPoolExecutor(max_workers=self.workers,
                                       thread_name_prefix="qarnotfs-part")
        self._aborts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qarnotfs-abort")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self._aborts.shutdown(wait=True)

    def record_part(self, entry_id: int, number: int, etag: str, size: int) -> None:
        self.journal.add_part(entry_id, number, etag, size)

    def give_up(self, entry_id: int, key: str, upload_id: str | None) -> None:
        """The upload of ``key`` (``upload_id`` if known) will not be completed: it is
        recorded as abandoned and aborted at once, in the background."""
        entry = self.journal.get(entry_id)
        if entry is not None and entry.upload_id is not None and \
                (upload_id is None or entry.upload_id == upload_id):
            self.journal.forget_upload(entry_id)
        elif upload_id is not None:
            self.journal.abandon(key, upload_id)
        self.abort_soon()

    def abort_soon(self) -> None:
        """Abort, in the background, every upload the journal gave up."""
        with contextlib.suppress(RuntimeError):  # shut down: the next mount aborts them
            self._aborts.submit(self.abort_abandoned)

    def stream(self, entry_id: int, key: str, path: Path, metadata: dict[str, str]) \
            -> PartStream:
        """Early parts for a file being written to ``key``: its object will carry
        ``metadata`` but the times (fixed before the writer is done: the object's
        LastModified stands for them)."""
        return PartStream(self, entry_id, key, path, without(TIMES, metadata))

    def upload(self, entry_id: int, key: str, path: Path, metadata: dict[str, str],
               stream: PartStream | None = None) -> None:
        """Upload the staged copy at ``path`` to ``key`` (QarnotException on failure),
        completing the upload ``stream`` started if it can be."""
        size = os.stat(path).st_size
        part_size = part_size_for(size, self.part_size)
        if stream is not None:
            upload_id = stream.finish(key, size)
            if upload_id is not None:
                try:
                    self._send_and_complete(entry_id, key, path, size, upload_id, {}, stream)
                except (MissingUploadException, InvalidPartException):
                    self._send_afresh(entry_id, key, path, size, metadata, part_size)
                    return
                if stream.metadata_stale or without(TIMES, metadata) != stream.metadata:
                    self.bucket.copy(key, key, metadata, size=size)
                return
        if size <= self.part_size:
            entry = self.journal.get(entry_id)
            if entry is not None and entry.upload_id is not None:
                self.give_up(entry_id, key, None)  # the file shrank: one PUT now
            self.bucket.upload(key, path, metadata)
            return
        recorded, done = self._resumable(entry_id, key, path, metadata, part_size)
        if recorded is None:
            self._send_afresh(entry_id, key, path, size, metadata, part_size)
            return
        if done:
            log.info("resuming the upload of %r: %d of %d parts already sent", key, len(done),
                     -(-size // part_size))
        try:
            self._send_and_complete(entry_id, key, path, size, recorded, done,
                                    part_size=part_size)
        except (MissingUploadException, InvalidPartException):
            self._send_afresh(entry_id, key, path, size, metadata, part_size)

    def _send_afresh(self, entry_id: int, key: str, path: Path, size: int,
                     metadata: dict[str, str], part_size: int) -> None:
        """The whole file as a new multipart upload.

        Also what follows when an upload that already held parts cannot be completed: the
        storage lost it (S3 forgets old uploads), or it holds a part the completion does not
        name (a file that shrank after parts went): Ceph RGW then refuses the completion
        with InvalidPart, where S3 and moto accept it. The refused upload is aborted.
        """
        upload_id = self.create(entry_id, key, metadata, part_size)
        self._send_and_complete(entry_id, key, path, size, upload_id, {}, part_size=part_size)

    def create(self, entry_id: int, key: str, metadata: dict[str, str],
               part_size: int | None = None) -> str:
        """Start a multipart upload of ``key`` for the journal entry; its upload id."""
        intent = self.journal.intend_upload(key)
        try:
            upload_id = self.bucket.create_multipart(key, metadata)
            self.journal.start_upload(entry_id, upload_id, key, part_size or self.part_size,
                                      metadata_digest(metadata))
        finally:
            self.journal.intent_done(intent)
        self.abort_soon()  # the upload it replaced, if any, was given up
        return upload_id

    def send_part(self, key: str, path: Path, upload_id: str, number: int,
                  snapshot: bool = False, part_size: int | None = None) -> tuple[str, int]:
        """Send part ``number`` of the staged copy: (ETag, size).

        Read in small pieces as it goes (to sign it, then to send it), never held whole:
        with ``workers`` parts in flight, 8 MiB each would be most of the mount's memory.
        That needs a copy nobody writes meanwhile (the request would go out shorter than
        announced if it shrank); ``snapshot`` reads the part into memory first instead,
        for a file still being written.
        """
        part_size = part_size or self.part_size
        offset = (number - 1) * part_size
        with open(path, "rb") as source:
            size = min(part_size, os.fstat(source.fileno()).st_size - offset)
            if size <= 0:  # truncated since the part was queued
                raise OSError(errno.ESPIPE, f"part {number} is past the end of {path}")
            source.seek(offset)
            if snapshot:
                data = source.read(size)
                return self.bucket.upload_part(key, upload_id, number, data), len(data)
            part = ReadFileChunk(source, size, offset + size, enable_callbacks=False)
            return self.bucket.upload_part(key, upload_id, number, cast(IO[bytes], part)), size

    def _send_and_complete(self, entry_id: int, key: str, path: Path, size: int,
                           upload_id: str, done: dict[int, tuple[str, int]],
                           early: PartStream | None = None, part_size: int | None = None) \
            -> None:
        """Send the parts the upload lacks (``done``: those it has; ``early``: the stream
        that sent some while the file was written), then complete it."""
        part_size = part_size or self.part_size
        count = max(1, -(-size // part_size))
        expected = {n: min(part_size, size - (n - 1) * part_size)
                    for n in range(1, count + 1)}
        etags: dict[int, str] = {}

        def take(parts: dict[int, tuple[str, int]]) -> None:
            etags.update((n, etag) for n, (etag, length) in parts.items()
                         if expected.get(n) == length and n not in etags)

        def send(number: int) -> None:
            etag, length = self.send_part(key, path, upload_id, number, part_size=part_size)
            self.journal.add_part(entry_id, number, etag, length)
            etags[number] = etag

        take(done)
        flying: set[int] = set()
        if early is not None:
            flying = early.in_flight_parts()
            take(early.parts())
        sending = [self.pool.submit(send, n) for n in expected
                   if n not in etags and n not in flying]
        if early is not None:  # then what was in flight and came back stale or failed
            wait(early.in_flight())
            take(early.parts())
            sending += [self.pool.submit(send, n) for n in flying
                        if n in expected and n not in etags]
        wait(sending)
        for future in sending:
            future.result()  # the first failure, if any
        try:
            self.bucket.complete_multipart(key, upload_id, sorted(etags.items()))
        except (MissingUploadException, InvalidPartException):
            self.journal.forget_upload(entry_id)  # the storage lost it: afresh next time
            raise

    def _resumable(self, entry_id: int, key: str, path: Path, metadata: dict[str, str],
                   part_size: int) -> tuple[str | None, dict[int, tuple[str, int]]]:
        """The recorded upload and the parts of it the storage holds with the staged
        copy's content now, if it can be completed; else (None, {}), the recorded upload
        (if any) being given up and aborted.

        An upload is reused if it was started for this key with this metadata (times left
        out if it was started early, while the file was written); a part, if its ETag is
        the MD5 of the same bytes of the copy.
        """
        entry = self.journal.get(entry_id)
        if entry is None or entry.upload_id is None:
            return None, {}
        usable = {metadata_digest(metadata), metadata_digest(without(TIMES, metadata))}
        if (entry.upload_key == key and entry.signature in usable
                and entry.part_size == part_size):
            held = self.bucket.list_parts(key, entry.upload_id)
            if held is not None:
                recorded = self.journal.parts(entry_id) or {}
                done = {n: part for n, part in recorded.items()
                        if n in held and normalize_etag(held[n][0]) == normalize_etag(part[0])
                        and held[n][1] == part[1]
                        and self._holds(path, n, part[0], part_size)}
                return entry.upload_id, done
        self.journal.forget_upload(entry_id)
        self.abort_soon()
        return None, {}

    def _holds(self, path: Path, number: int, etag: str, part_size: int) -> bool:
        """Part ``number`` of the staged copy has this ETag (the MD5 of its bytes)."""
        with open(path, "rb") as source:
            source.seek((number - 1) * part_size)
            return hashlib.md5(source.read(part_size)).hexdigest() == normalize_etag(etag)

    def abort_abandoned(self) -> None:
        """Abort the multipart uploads this journal gave up (best effort, logged)."""
        for key, upload_id in self.journal.abandoned():
            try:
                self.bucket.abort_multipart(key, upload_id)
            except QarnotException as error:
                log.warning("could not abort the unfinished upload of %r (retried at the "
                            "next mount): %s", key, error)
                continue
            self.journal.aborted(upload_id)

    def clean_orphans(self, prefix: str) -> None:
        """Abort the unfinished multipart uploads under ``prefix`` that this journal gave
        up, or that a crash left before their id was journaled; log the others (not
        started by this staging folder: left alone)."""
        self.abort_abandoned()
        ours = self.journal.upload_ids()
        unknown = [(key, upload_id, initiated) for key, upload_id, initiated
                   in self.bucket.list_multipart_uploads(prefix) if upload_id not in ours]
        others = self._abort_unrecorded(unknown)
        if others:
            log.info("%d unfinished multipart upload(s) under %r were not started by this "
                     "staging folder and are left alone (first: %r)", len(others), prefix,
                     others[0])


    def _abort_unrecorded(self, unknown: list[tuple[str, str, float]]) -> list[str]:
        """Abort the uploads an intent left by a crash claims; return the other keys.

        An intent says "an upload of this key was being created when the process died";
        an unknown unfinished upload of that very key is taken for it. (The storage's
        ``Initiated`` time cannot narrow this down: clocks differ, and some servers do not
        keep it.) Intents are dropped afterwards: each is settled once.
        """
        claimed = {key for _id, key, _since in self.journal.intents()}
        others = []
        for key, upload_id, _initiated in unknown:
            if key in claimed:
                log.warning("aborting the multipart upload of %r left by a crash before "
                            "it was journaled", key)
                try:
                    self.bucket.abort_multipart(key, upload_id)
                except QarnotException as error:
                    log.warning("could not abort it: %s", error)
            else:
                others.append(key)
        for intent_id, _key, _since in self.journal.intents():
            self.journal.intent_done(intent_id)
        return others


class RetryQueue(Generic[T]):
    """Calls ``attempt(item)`` in a background thread when each scheduled item is due.

    An item scheduled again before its turn keeps its earlier time; its delay doubles
    with each failure (from ``first_delay`` up to ``max_delay``) until :meth:`forget`.
    """

    def __init__(self, attempt: Callable[[T], None], first_delay: float = 0.5,
                 max_delay: float = 30.0) -> None:
        self._attempt = attempt
        self._first = first_delay
        self._max = max_delay
        self._heap: list[tuple[float, int, T]] = []
        self._due: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="qarnotfs-retry", daemon=True)
        self._thread.start()

    def schedule(self, item: T, now: bool = False) -> float:
        """Retry ``item`` later (``now``: as soon as possible); returns the delay."""
        with self._condition:
            failures = self._failures.get(id(item), 0) + (0 if now else 1)
            self._failures[id(item)] = failures
            delay = 0.0 if now else min(self._max, self._first * 2 ** (failures - 1))
            due = time.monotonic() + delay
            if id(item) in self._due and self._due[id(item)] <= due:
                return max(0.0, self._due[id(item)] - time.monotonic())  # already due
            self._due[id(item)] = due
            heapq.heappush(self._heap, (due, next(self._order), item))
            self._condition.notify()
            return delay

    def forget(self, item: T) -> None:
        """No more retries for ``item`` (uploaded, or deleted)."""
        with self._condition:
            self._due.pop(id(item), None)
            self._failures.pop(id(item), None)

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join()

    def _next(self) -> T | None:
        with self._condition:
            while not self._stopping:
                if self._heap:
                    due, _, item = self._heap[0]
                    if self._due.get(id(item)) != due:
                        heapq.heappop(self._heap)  # superseded or forgotten
                        continue
                    wait = due - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self._heap)
                        del self._due[id(item)]
                        return item
                    self._condition.wait(wait)
                else:
                    self._condition.wait()
            return None

    def _run(self) -> None:
        while (item := self._next()) is not None:
            try:
                self._attempt(item)
            except Exception:  # a retry must never kill the thread that runs them all
                log.exception("a background upload retry failed unexpectedly")

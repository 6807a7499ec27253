"""Uploading staged copies: resumable multipart uploads, and background retries.

Owns: :class:`Uploader`, which sends one staged copy to its key and journals each step
(a file up to one part in one request; a bigger one as a multipart upload whose id and
acknowledged parts are recorded as they happen, so an upload interrupted by a crash or
a failure resumes with only the missing parts: ListParts on the recorded id, re-send
what the storage lacks, complete), and :class:`RetryQueue`, the background thread that
retries failed uploads with exponential backoff until they succeed or are cancelled.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from ..checksums import normalize_etag
from ..exceptions import QarnotException

if TYPE_CHECKING:
    from ..bucket import Bucket
    from .journal import Journal

log = logging.getLogger(__name__)


T = TypeVar("T")


VOLATILE_METADATA = frozenset({"atime", "ctime"})
"""Metadata that may differ between an upload and its resumption without mattering."""


def signature(path: Path, metadata: dict[str, str]) -> str:
    """What an upload's parts depend on: the staged copy's size and mtime, the metadata
    (but access and change times: a recovered file's are not the original ones)."""
    info = os.stat(path)
    kept = {k: v for k, v in metadata.items() if k not in VOLATILE_METADATA}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
    return f"{info.st_size}:{info.st_mtime_ns}:{digest}"


def multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 gives the object assembled from these parts (MD5 of their MD5s)."""
    digests = b"".join(bytes.fromhex(normalize_etag(etag)) for etag in part_etags)
    return f"{hashlib.md5(digests).hexdigest()}-{len(part_etags)}"


class Uploader:
    """Sends staged copies to the bucket, journaling every step."""

    def __init__(self, bucket: Bucket, journal: Journal, part_size: int, workers: int) -> None:
        self.bucket = bucket
        self.journal = journal
        self.part_size = part_size
        self.workers = max(1, workers)

    def upload(self, entry_id: int, key: str, path: Path, metadata: dict[str, str]) -> None:
        """Upload the staged copy at ``path`` to ``key`` (QarnotException on failure)."""
        size = os.stat(path).st_size
        if size <= self.part_size:
            self.bucket.upload(key, path, metadata)
            return
        self._multipart(entry_id, key, path, metadata, size)

    def _multipart(self, entry_id: int, key: str, path: Path, metadata: dict[str, str],
                   size: int) -> None:
        current = signature(path, metadata)
        upload_id, done = self._resumable(entry_id, key, current)
        if upload_id is None:
            intent = self.journal.intend_upload(key)
            try:
                upload_id = self.bucket.create_multipart(key, metadata)
                self.journal.start_upload(entry_id, upload_id, key, self.part_size, current)
            finally:
                self.journal.intent_done(intent)
        count = max(1, -(-size // self.part_size))
        missing = [n for n in range(1, count + 1) if n not in done]
        if done:
            log.info("resuming the upload of %r: %d of %d parts already sent", key,
                     len(done), count)

        def send(number: int) -> tuple[int, str]:
            offset = (number - 1) * self.part_size
            with open(path, "rb") as source:
                source.seek(offset)
                data = source.read(self.part_size)
            etag = self.bucket.upload_part(key, upload_id, number, data)
            self.journal.add_part(entry_id, number, etag, len(data))
            return number, etag

        with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(missing))),
                                thread_name_prefix="qarnotfs-part") as pool:
            sent = dict(pool.map(send, missing))
        etags = [(n, sent[n] if n in sent else done[n][0]) for n in range(1, count + 1)]
        try:
            self.bucket.complete_multipart(key, upload_id, etags)
        except QarnotException as error:
            if "InvalidPart" in str(error) or "NoSuchUpload" in str(error):
                self.journal.forget_upload(entry_id)  # start afresh at the next try
            raise

    def _resumable(self, entry_id: int, key: str, current: str) \
            -> tuple[str | None, dict[int, tuple[str, int]]]:
        """The recorded upload and the parts the storage still has, if they can be reused;
        else (None, {}), the recorded upload (if any) being given up and aborted."""
        entry = self.journal.get(entry_id)
        if entry is None or entry.upload_id is None:
            return None, {}
        if (entry.upload_key == key and entry.signature == current
                and entry.part_size == self.part_size):
            held = self.bucket.list_parts(key, entry.upload_id)
            if held is not None:
                recorded = self.journal.parts(entry_id) or {}
                done = {n: part for n, part in recorded.items()
                        if n in held and normalize_etag(held[n][0]) == normalize_etag(part[0])
                        and held[n][1] == part[1]}
                return entry.upload_id, done
        self.journal.forget_upload(entry_id)
        self.abort_abandoned()
        return None, {}

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
                return self._due[id(item)] - time.monotonic()
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

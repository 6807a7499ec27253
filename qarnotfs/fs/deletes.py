"""Deletes of files, batched: ``rm -r`` of N files costs about N/1000 DeleteObjects.

Owns: :class:`OrderedStorage`, the storage as the core sees it. ``delete(key)`` (what
``unlink`` sends) only queues the key and returns; a background thread sends the queued
keys as one DeleteObjects request once ``delay`` seconds have passed since the first was
queued (at once when 1,000 are waiting). Every other call on the storage (any listing, HEAD,
GET, PUT, upload, copy...) first sends what is queued and waits for it, so the requests of
the mount reach the storage in the order the mount made them: a listing never shows a
key the mount has deleted, and a key written again after an unlink is never deleted by
the late batch. :meth:`OrderedStorage.delete_now` (rmdir) deletes at once.

What it changes for others: a file unlinked through the mount disappears for other
machines up to ``delay`` seconds (plus the request) after ``unlink`` returned. A batch
that fails is logged as an error naming its keys; those files stay in the bucket (nothing
is lost, but the unlink did not happen) and the mount shows them again after its
negative cache expires. A program that must know calls ``fsync`` on the folder
(``fsyncdir``), which sends the queued deletes and returns their error; ``delay`` 0 makes
every unlink delete before it returns.

Thread safety. Lock order (never take an earlier lock while holding a later one):

1. ``OrderedStorage._sending`` (Lock): held while a batch is sent, so a request that must
   follow the batch waits for the one in flight too. It is the ordering barrier, and so,
   by design, the one lock here held across a storage request (the DeleteObjects);
2. ``OrderedStorage._queue`` (Condition): guards the queued keys; a leaf, never held
   across a request or while waiting for ``_sending``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING

from ..exceptions import QarnotException
from .storage import DELETE_BATCH

if TYPE_CHECKING:
    from ..objects import Listing, ObjectInfo, ObjectRead
    from ..progress import ProgressArg
    from .storage import LocalPath, Storage, StorageLimits

log = logging.getLogger(__name__)

DEFAULT_DELAY = 0.05
"""Seconds a queued delete waits for others to join its batch."""


class OrderedStorage:
    """A :class:`~qarnotfs.fs.storage.Storage` whose single-key deletes are sent in batches,
    and whose every other call is sent after the deletes queued before it."""

    def __init__(self, storage: Storage, delay: float = DEFAULT_DELAY) -> None:
        self._storage = storage
        self._delay = delay
        self._queued: dict[str, None] = {}
        self._queue = threading.Condition()
        self._sending = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="qarnotfs-deletes",
                                        daemon=True)
        self._thread.start()

    # == the batching ====================================================================

    def delete(self, key: str) -> None:
        """Queue the delete of ``key`` (sent at once when ``delay`` is 0)."""
        if self._delay <= 0:
            self.delete_now(key)
            return
        with self._queue:
            self._queued[key] = None
            self._queue.notify()

    def delete_now(self, key: str) -> None:
        """Send the queued deletes, then delete ``key`` before returning."""
        self.flush()
        self._storage.delete(key)

    def flush(self, raise_errors: bool = False) -> None:
        """Send every queued delete and return once it is done.

        A refusal is logged; it is raised only with ``raise_errors`` (``fsyncdir``, which
        asks for exactly that). Other callers go on: the failure belongs to earlier
        unlinks, not to the call that happens to flush.
        """
        with self._sending:
            with self._queue:
                keys, self._queued = list(self._queued), {}
            if not keys:
                return
            try:
                self._storage.delete_many(keys)
            except QarnotException as error:
                shown = ", ".join(repr(key) for key in keys[:10])
                more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
                log.error("deleting %d unlinked file(s) failed, they stay in the bucket "
                          "(%s%s): %s", len(keys), shown, more, error)
                if raise_errors:
                    raise

    def close(self) -> None:
        """Send what is queued and stop the background thread."""
        with self._queue:
            self._closed = True
            self._queue.notify()
        self._thread.join()
        self.flush()

    def _run(self) -> None:
        while True:
            with self._queue:
                while not self._queued and not self._closed:
                    self._queue.wait()
                if self._closed:
                    return
                # The batching window: later unlinks join this batch.
                self._queue.wait_for(
                    lambda: self._closed or len(self._queued) >= DELETE_BATCH, self._delay)
            self.flush()

    # == every other call: after the queued deletes ======================================

    @property
    def name(self) -> str:
        return self._storage.name

    @property
    def connection(self) -> StorageLimits:
        return self._storage.connection

    def stat(self, key: str) -> ObjectInfo | None:
        self.flush()
        return self._storage.stat(key)

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.flush()
        return self._storage.read(key, offset, length)

    def get(self, key: str, offset: int = 0, length: int | None = None, *,
            unless_etag: str = "", only_etag: str = "") -> ObjectRead | None:
        self.flush()
        return self._storage.get(key, offset, length, unless_etag=unless_etag,
                                 only_etag=only_etag)

    def read_chunks(self, key: str, offset: int, length: int, *, only_etag: str = "",
                    chunk_size: int = 1 << 20) -> list[bytes]:
        self.flush()
        return self._storage.read_chunks(key, offset, length, only_etag=only_etag,
                                         chunk_size=chunk_size)

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        self.flush()
        return self._storage.put(key, data, metadata)

    def put_marked(self, key: str, data: bytes,
                   metadata: dict[str, str] | None = None) -> None:
        self.flush()
        self._storage.put_marked(key, data, metadata)

    def upload(self, key: str, source: LocalPath | IO[bytes],
               metadata: dict[str, str] | None = None, progress: ProgressArg = None) -> None:
        self.flush()
        self._storage.upload(key, source, metadata, progress)

    def download(self, key: str, target: LocalPath, progress: ProgressArg = None,
                 size: int | None = None) -> None:
        self.flush()
        self._storage.download(key, target, progress, size)

    def copy(self, source: str, destination: str, metadata: dict[str, str] | None = None,
             size: int | None = None, content_type: str | None = None) -> None:
        self.flush()
        self._storage.copy(source, destination, metadata, size, content_type)

    def delete_many(self, keys: Iterable[str]) -> None:
        self.flush()
        self._storage.delete_many(keys)

    def first_keys(self, prefix: str, count: int) -> list[str]:
        self.flush()
        return self._storage.first_keys(prefix, count)

    def has_objects_under(self, prefix: str) -> bool:
        self.flush()
        return self._storage.has_objects_under(prefix)

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.flush()
        return self._storage.iter_objects(prefix)

    def list_folder(self, prefix: str = "", start_after: str = "") -> Listing:
        self.flush()
        return self._storage.list_folder(prefix, start_after)

    def list_page(self, prefix: str) -> tuple[list[ObjectInfo], bool]:
        self.flush()
        return self._storage.list_page(prefix)

    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        self.flush()
        return self._storage.create_multipart(key, metadata)

    def upload_part(self, key: str, upload_id: str, number: int,
                    data: bytes | IO[bytes]) -> str:
        self.flush()
        return self._storage.upload_part(key, upload_id, number, data)

    def list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        self.flush()
        return self._storage.list_parts(key, upload_id)

    def complete_multipart(self, key: str, upload_id: str,
                           etags: list[tuple[int, str]]) -> str:
        self.flush()
        return self._storage.complete_multipart(key, upload_id, etags)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.flush()
        self._storage.abort_multipart(key, upload_id)

    def list_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str, float]]:
        self.flush()
        return self._storage.list_multipart_uploads(prefix)

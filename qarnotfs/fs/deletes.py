"""Deletes of files, batched: ``rm -r`` of N files costs about N/1000 DeleteObjects.

Owns: :class:`DeferredDeletes`, the bucket as the core sees it. ``delete(key)`` (what
``unlink`` sends) only queues the key and returns; a background thread sends the queued
keys as one DeleteObjects request once ``delay`` seconds have passed since the first was
queued (at once when 1,000 are waiting). Every other call on the bucket (any listing, HEAD,
GET, PUT, upload, copy...) first sends what is queued and waits for it, so the requests of
the mount reach the storage in the order the mount made them: a listing never shows a
key the mount has deleted, and a key written again after an unlink is never deleted by
the late batch. :meth:`DeferredDeletes.delete_now` (rmdir) deletes at once.

What it changes for others: a file unlinked through the mount disappears for other
machines up to ``delay`` seconds (plus the request) after ``unlink`` returned. A batch
that fails is logged as an error naming its keys; those files stay in the bucket (nothing
is lost, but the unlink did not happen) and the mount shows them again after its
negative cache expires. A program that must know calls ``fsync`` on the folder
(``fsyncdir``), which sends the queued deletes and returns their error; ``delay`` 0 makes
every unlink delete before it returns.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ..bucket import DELETE_BATCH
from ..exceptions import QarnotException

if TYPE_CHECKING:
    from ..bucket import Bucket

log = logging.getLogger(__name__)

DEFAULT_DELAY = 0.05
"""Seconds a queued delete waits for others to join its batch."""


class DeferredDeletes:
    """A :class:`~qarnotfs.bucket.Bucket` whose single-key deletes are sent in batches."""

    def __init__(self, bucket: Bucket, delay: float = DEFAULT_DELAY) -> None:
        self._bucket = bucket
        self._delay = delay
        self._queued: dict[str, None] = {}
        self._lock = threading.Condition()
        self._sending = threading.Lock()
        """Held while a batch is sent: a flush waits for the batch in flight too."""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="qarnotfs-deletes",
                                        daemon=True)
        self._thread.start()

    def delete(self, key: str | None = None) -> None:
        """Queue the delete of ``key`` (without a key: the SDK's delete of the bucket)."""
        if key is None or self._delay <= 0:
            self.delete_now(key)
            return
        with self._lock:
            self._queued[key] = None
            self._lock.notify()

    def delete_now(self, key: str | None = None) -> None:
        """Send the queued deletes, then delete ``key`` before returning."""
        self.flush()
        self._bucket.delete(key)

    def flush(self, raise_errors: bool = False) -> None:
        """Send every queued delete and return once it is done.

        A refusal is logged; it is raised only with ``raise_errors`` (``fsyncdir``, which
        asks for exactly that). Other callers go on: the failure belongs to earlier
        unlinks, not to the call that happens to flush.
        """
        with self._sending:
            with self._lock:
                keys, self._queued = list(self._queued), {}
            if not keys:
                return
            try:
                self._bucket.delete_many(keys)
            except QarnotException as error:
                shown = ", ".join(repr(key) for key in keys[:10])
                more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
                log.error("deleting %d unlinked file(s) failed, they stay in the bucket "
                          "(%s%s): %s", len(keys), shown, more, error)
                if raise_errors:
                    raise

    def close(self) -> None:
        """Send what is queued and stop the background thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()
        self.flush()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queued and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                # The batching window: later unlinks join this batch.
                self._lock.wait_for(
                    lambda: self._closed or len(self._queued) >= DELETE_BATCH, self._delay)
            self.flush()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._bucket, name)
        if not callable(attribute):
            return attribute

        def after_the_deletes(*args: Any, **kwargs: Any) -> Any:
            self.flush()
            return attribute(*args, **kwargs)

        return after_the_deletes


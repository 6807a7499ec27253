"""Transfers of many files for the command line that Ctrl-C stops at once, safely.

Owns: carrying out the CLI's uploads and downloads through one s3transfer
``TransferManager`` per command (the transfer engine boto3 itself uses, so many files
and the parts of big ones share one pool), the overall progress, the ``upload:`` /
``download:`` line printed as each file completes, how many files move at once
(``--transfers``: the others wait their turn, while a big file's parts still go several at
a time) and at what rate (``--bwlimit``: s3transfer's bandwidth limiter, one budget for the
whole command), the modification time a file keeps (uploads store it as
``x-amz-meta-mtime``, downloads set it from the object), and interruption. On Ctrl-C every
transfer is cancelled: data being moved stops at its next chunk (the progress callback
raises :class:`Cancelled`, which botocore does not retry) and s3transfer aborts the
multipart uploads it started. A request still waiting for the server is not waited for
beyond :data:`CANCEL_GRACE`: the multipart uploads this command created (recorded as
they are created) are aborted directly, and :class:`Interrupted` asks the CLI to exit at
once (``abandon``). A download goes to a temporary file beside its target, renamed over
it only when whole, removed otherwise. So nothing half written is left: a single PUT is
atomic, a multipart object exists only once completed.

Lock order: ``Transfers._lock`` (counters, the created uploads), then
``TransferProgress``'s; neither is held across a request. The ``--transfers`` semaphore is
only waited on by the submitting thread, holding no lock. The threads are s3transfer's.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from .exceptions import QarnotException, storage_errors
from .outcome import EXIT_INTERRUPTED, CommandError
from .progress import TransferProgress

if TYPE_CHECKING:
    from .bucket import Bucket


CANCEL_GRACE = 1.0
"""Seconds Ctrl-C waits for transfers in flight to notice it before giving up on them."""
DEFAULT_FILES_AT_ONCE = 4
"""Files moved at once by default, as rclone's ``--transfers``."""


class Cancelled(Exception):
    """Raised inside a transfer's read once the command is interrupted (not retried)."""


class Interrupted(CommandError):
    """Ctrl-C during transfers: exit 130, saying what completed."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str, abandon: bool) -> None:
        super().__init__(message)
        self.abandon = abandon
        """Threads still wait for the server: the process must exit without them."""


@dataclass(frozen=True)
class Job:
    """One file to move: the key, the local path, its size, and the line once done; for
    an upload the object's metadata, for a download the file's modification time."""

    key: str
    path: Path
    size: int
    line: str
    metadata: dict[str, str] | None = None
    mtime_ns: int | None = None


class _Watcher(BaseSubscriber):
    """Feeds the progress, stops a cancelled transfer, reports a completed one."""

    def __init__(self, job: Job, cancelled: threading.Event, progress: TransferProgress,
                 done: Callable[[Job], None], slot: threading.Semaphore) -> None:
        self._job = job
        self._cancelled = cancelled
        self._progress = progress
        self._done = done
        self._slot = slot

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        # Known from the plan: s3transfer then sends no HEAD of its own for a download.
        future.meta.provide_transfer_size(self._job.size)

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if self._cancelled.is_set():
            raise Cancelled("interrupted")
        self._progress.advance(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        self._slot.release()
        if _succeeded(future):
            self._done(self._job)


def _succeeded(future: Any) -> bool:
    try:
        future.result()
    except BaseException:
        return False
    return True


class Transfers:
    """The uploads or downloads of one command, against one bucket."""

    def __init__(self, bucket: Bucket, show_bar: bool, say: Callable[[str], None],
                 files_at_once: int = DEFAULT_FILES_AT_ONCE,
                 bytes_per_second: int | None = None) -> None:
        self._bucket = bucket
        self._show_bar = show_bar
        self._say = say
        self._files_at_once = files_at_once
        self._bytes_per_second = bytes_per_second
        self._cancelled = threading.Event()
        self._completed = 0
        self._created: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def upload(self, jobs: Sequence[Job]) -> None:
        """Upload every job's file to its key, with the job's metadata."""
        self._run(jobs, "upload", lambda manager, job, subscribers: manager.upload(
            str(job.path), self._bucket.name, job.key,
            extra_args={"Metadata": job.metadata} if job.metadata else None,
            subscribers=subscribers))

    def download(self, jobs: Sequence[Job]) -> None:
        """Download every job's key to its path (folders created, targets replaced whole,
        with the job's modification time)."""
        with _temporary_files(jobs) as temporary:
            self._run(jobs, "download", lambda manager, job, subscribers: manager.download(
                self._bucket.name, job.key, temporary[job.key], subscribers=subscribers))
            for job in jobs:
                temporary[job.key].flush()
                if job.mtime_ns is not None:
                    os.utime(temporary[job.key].fileno(), ns=(job.mtime_ns, job.mtime_ns))
                os.replace(temporary[job.key].name, job.path)

    def _run(self, jobs: Sequence[Job], verb: str,
             submit: Callable[[TransferManager, Job, list[BaseSubscriber]], Any]) -> None:
        if not jobs:
            return
        connection = self._bucket.connection
        progress = TransferProgress(sum(job.size for job in jobs), len(jobs), verb,
                                    enabled=self._show_bar, name=jobs[0].key)
        config = copy.copy(connection.transfer_config)
        if self._bytes_per_second is not None:
            config.max_bandwidth = self._bytes_per_second
        manager = TransferManager(connection.s3, config)
        slot = threading.Semaphore(self._files_at_once)
        events = connection.s3.meta.events
        events.register("after-call.s3.CreateMultipartUpload", self._record_upload)
        try:
            with progress, storage_errors(self._bucket.name):
                futures = []
                for job in jobs:
                    slot.acquire()  # released when a file is done: --transfers at a time
                    futures.append(submit(manager, job, [_Watcher(
                        job, self._cancelled, progress, self._finished(progress), slot)]))
                for future in futures:
                    future.result()
        except KeyboardInterrupt:
            abandon = self._cancel(manager)
            raise Interrupted(f"interrupted: {self._completed} of {len(jobs)} file(s) "
                              f"{verb}ed; the others were not, and nothing partial was left "
                              "(unfinished multipart uploads aborted)", abandon) from None
        except BaseException:
            self._cancel(manager)
            raise
        finally:
            events.unregister("after-call.s3.CreateMultipartUpload", self._record_upload)
        manager.shutdown()

    def _cancel(self, manager: TransferManager) -> bool:
        """Cancel everything; True if some request is still waiting for the server."""
        self._cancelled.set()
        stopper = threading.Thread(target=manager.shutdown, daemon=True,
                                   kwargs={"cancel": True, "cancel_msg": "interrupted"})
        stopper.start()
        stopper.join(CANCEL_GRACE)
        if not stopper.is_alive():
            return False
        with self._lock:
            created = list(self._created)
        for key, upload_id in created:
            with contextlib.suppress(QarnotException):
                self._bucket.abort_multipart(key, upload_id)
        return True

    def _record_upload(self, parsed: dict[str, Any], **kwargs: Any) -> None:
        """botocore hook: remember each multipart upload this command creates."""
        if parsed.get("UploadId") and parsed.get("Key"):
            with self._lock:
                self._created.append((str(parsed["Key"]), str(parsed["UploadId"])))

    def _finished(self, progress: TransferProgress) -> Callable[[Job], None]:
        def report(job: Job) -> None:
            with self._lock:
                self._completed += 1
            progress.file_done()
            progress.write(job.line, self._say)

        return report


@contextlib.contextmanager
def _temporary_files(jobs: Sequence[Job]) -> Iterator[dict[str, IO[bytes]]]:
    """An open temporary file beside each job's target (removed unless renamed)."""
    files: dict[str, IO[bytes]] = {}
    try:
        for job in jobs:
            job.path.parent.mkdir(parents=True, exist_ok=True)
            files[job.key] = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below)
                prefix=f".{job.path.name[:200]}.", suffix=".part", dir=job.path.parent,
                delete=False)
        yield files
    finally:
        for handle in files.values():
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(handle.name)

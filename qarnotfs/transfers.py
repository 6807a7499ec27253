"""Transfers of many files for the command line that Ctrl-C stops at once, safely.

Owns: carrying out the CLI's uploads and downloads through one s3transfer
``TransferManager`` per command (the transfer engine boto3 itself uses, so many files
and the parts of big ones share one pool), the overall progress, the ``upload:`` /
``download:`` line printed as each file completes, and interruption. On Ctrl-C every
transfer is cancelled: data being moved stops at its next chunk (the progress callback
raises :class:`Cancelled`, which botocore does not retry) and s3transfer aborts the
multipart uploads it started. A request still waiting for the server is not waited for
beyond :data:`CANCEL_GRACE`: the multipart uploads this command created (recorded as
they are created) are aborted directly, and :class:`Interrupted` asks the CLI to exit at
once (``abandon``). A download goes to a temporary file beside its target, renamed over
it only when whole, removed otherwise. So nothing half written is left: a single PUT is
atomic, a multipart object exists only once completed.

Lock order: ``Transfers._lock`` (counters, the created uploads), then
``TransferProgress``'s; neither is held across a request. The threads are s3transfer's.
"""

from __future__ import annotations

import contextlib
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
    """One file to move: the key, the local path, its size, and the line once done."""

    key: str
    path: Path
    size: int
    line: str


class _Watcher(BaseSubscriber):
    """Feeds the progress, stops a cancelled transfer, reports a completed one."""

    def __init__(self, job: Job, cancelled: threading.Event, progress: TransferProgress,
                 done: Callable[[Job], None]) -> None:
        self._job = job
        self._cancelled = cancelled
        self._progress = progress
        self._done = done

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if self._cancelled.is_set():
            raise Cancelled("interrupted")
        self._progress.advance(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
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

    def __init__(self, bucket: Bucket, show_bar: bool, say: Callable[[str], None]) -> None:
        self._bucket = bucket
        self._show_bar = show_bar
        self._say = say
        self._cancelled = threading.Event()
        self._completed = 0
        self._created: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def upload(self, jobs: Sequence[Job], metadata: dict[str, str] | None = None) -> None:
        """Upload every job's file to its key."""
        extra = {"Metadata": metadata} if metadata else None
        self._run(jobs, "upload", lambda manager, job, subscribers: manager.upload(
            str(job.path), self._bucket.name, job.key, extra_args=extra,
            subscribers=subscribers))

    def download(self, jobs: Sequence[Job]) -> None:
        """Download every job's key to its path (folders created, targets replaced whole)."""
        with _temporary_files(jobs) as temporary:
            self._run(jobs, "download", lambda manager, job, subscribers: manager.download(
                self._bucket.name, job.key, temporary[job.key], subscribers=subscribers))
            for job in jobs:
                temporary[job.key].flush()
                os.replace(temporary[job.key].name, job.path)

    def _run(self, jobs: Sequence[Job], verb: str,
             submit: Callable[[TransferManager, Job, list[BaseSubscriber]], Any]) -> None:
        if not jobs:
            return
        connection = self._bucket.connection
        progress = TransferProgress(sum(job.size for job in jobs), len(jobs), verb,
                                    enabled=self._show_bar, name=jobs[0].key)
        manager = TransferManager(connection.s3, connection.transfer_config)
        events = connection.s3.meta.events
        events.register("after-call.s3.CreateMultipartUpload", self._record_upload)
        try:
            with progress, storage_errors(self._bucket.name):
                futures = [submit(manager, job, [_Watcher(job, self._cancelled, progress,
                                                          self._finished(progress))])
                           for job in jobs]
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

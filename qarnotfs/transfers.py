"""Transfers of many files for the command line that Ctrl-C stops at once, safely.

Owns: carrying out the CLI's uploads and downloads through one s3transfer
``TransferManager`` per command (the transfer engine boto3 itself uses, so many files
and the parts of big ones share one pool), the overall progress, the ``upload:`` /
``download:`` line printed as each file completes, and interruption. On Ctrl-C every
transfer is cancelled: the part or object being sent stops at its next read of the
local file (the progress callback raises :class:`Cancelled`, which botocore does not
retry), s3transfer aborts the multipart uploads it started, a download's temporary file
is removed, and :class:`Interrupted` says how many files did complete. Nothing half
written is left: a single PUT is atomic, a multipart object exists only once completed,
and a download replaces its target only when whole.

The threads are s3transfer's; this module's only lock is :class:`TransferProgress`'s
(progress.py), never held across a request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from .exceptions import storage_errors
from .outcome import EXIT_INTERRUPTED, CommandError
from .progress import TransferProgress

if TYPE_CHECKING:
    from .bucket import Bucket


class Cancelled(Exception):
    """Raised inside a transfer's read once the command is interrupted (not retried)."""


class Interrupted(CommandError):
    """Ctrl-C during transfers: exit 130, saying what completed."""

    exit_code = EXIT_INTERRUPTED


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
        self._lock = threading.Lock()

    def upload(self, jobs: Sequence[Job], metadata: dict[str, str] | None = None) -> None:
        """Upload every job's file to its key."""
        extra = {"Metadata": metadata} if metadata else None
        self._run(jobs, "upload", lambda manager, job, subscribers: manager.upload(
            str(job.path), self._bucket.name, job.key, extra_args=extra,
            subscribers=subscribers))

    def download(self, jobs: Sequence[Job]) -> None:
        """Download every job's key to its path (folders created, targets replaced whole)."""
        for job in jobs:
            job.path.parent.mkdir(parents=True, exist_ok=True)
        self._run(jobs, "download", lambda manager, job, subscribers: manager.download(
            self._bucket.name, job.key, str(job.path), subscribers=subscribers))

    def _run(self, jobs: Sequence[Job], verb: str,
             submit: Callable[[TransferManager, Job, list[BaseSubscriber]], Any]) -> None:
        if not jobs:
            return
        connection = self._bucket.connection
        progress = TransferProgress(sum(job.size for job in jobs), len(jobs), verb,
                                    enabled=self._show_bar, name=jobs[0].key)
        manager = TransferManager(connection.s3, connection.transfer_config)
        try:
            with progress, storage_errors(self._bucket.name):
                futures = [submit(manager, job, [_Watcher(job, self._cancelled, progress,
                                                          self._finished(progress))])
                           for job in jobs]
                for future in futures:
                    future.result()
        except KeyboardInterrupt:
            self._cancelled.set()
            manager.shutdown(cancel=True, cancel_msg="interrupted")
            raise Interrupted(f"interrupted: {self._completed} of {len(jobs)} file(s) "
                              f"{verb}ed; the others were not, and nothing partial was left "
                              "(unfinished multipart uploads aborted)") from None
        except BaseException:
            self._cancelled.set()
            manager.shutdown(cancel=True, cancel_msg="failed")
            raise
        manager.shutdown()

    def _finished(self, progress: TransferProgress) -> Callable[[Job], None]:
        def report(job: Job) -> None:
            with self._lock:
                self._completed += 1
            progress.file_done()
            progress.write(job.line, self._say)

        return report

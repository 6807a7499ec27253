"""The staging area: private local copies of files being written, until they are uploaded.

Owns: the staging folder of one mount (mode 0700) inside the configured staging folder,
its journal (:mod:`.journal`) and the staged files in it (mode 0600, named ``*.staged``),
each an open descriptor read and written with pread/pwrite. The folder is STABLE: it is
named after the bucket and prefix, so the next mount of the same bucket and prefix finds
what a crashed mount left and uploads it. A mount holds its folder with an exclusive
``flock``; a second live mount of the same bucket and prefix takes the next free "slot"
(``<name>.1``, ``.2``...), and a mount adopts the entries of slots no live mount holds.
A staged copy is removed once its content is in the bucket; a copy whose upload failed
stays (with its journal entry), and its path is logged so nothing is lost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import FsError
from .journal import JOURNAL_NAME, Journal, is_disk_full

STAGED_SUFFIX = ".staged"
MAX_SLOTS = 100

log = logging.getLogger(__name__)

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class StagedFile:
    """One staged copy: a local file open for reading and writing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def write(self, data: bytes, offset: int) -> int:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.pwrite(self.fd, view[written:], offset + written)
        return written

    def truncate(self, length: int) -> None:
        os.ftruncate(self.fd, length)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Close and delete the staged copy."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def slot_name(bucket: str, prefix: str) -> str:
    """The stable folder name of a bucket and prefix: readable, and unique by its hash."""
    digest = hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:16]
    label = _LABEL_UNSAFE.sub("_", f"{bucket}-{prefix}".rstrip("/-"))[:60]
    return f"{label}-{digest}"


def staged_copies(base: Path) -> list[Path]:
    """Every staged copy under a staging folder (what the tests and people look for)."""
    return sorted(Path(base).rglob(f"*{STAGED_SUFFIX}"))


class StagingArea:
    """The mount's private, stable staging folder and its journal."""

    def __init__(self, base: Path, bucket: str = "", prefix: str = "") -> None:
        base = Path(base)
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.base = base
        self.prefix = prefix
        self.name = slot_name(bucket, prefix)
        self.root, self._lock_fd = self._claim()
        self.journal = Journal(self.root)

    def _slots(self) -> Iterator[Path]:
        yield self.base / self.name
        for number in range(1, MAX_SLOTS):
            yield self.base / f"{self.name}.{number}"

    def _claim(self) -> tuple[Path, int]:
        """The first slot no live mount holds, created if needed and locked."""
        for folder in self._slots():
            folder.mkdir(mode=0o700, exist_ok=True)
            fd = _try_lock(folder)
            if fd is not None:
                os.chmod(folder, 0o700)
                return folder, fd
        raise FsError(errno.EBUSY, f"{MAX_SLOTS} mounts already use {self.base}/{self.name}")

    @contextlib.contextmanager
    def orphans(self) -> Iterator[list[tuple[Path, Journal]]]:
        """The other slots of this bucket and prefix that no live mount holds (left by
        crashed mounts), locked and with their journals open for the block; each is
        removed at the end if its journal is then empty."""
        held: list[tuple[Path, int, Journal]] = []
        try:
            for folder in self._slots():
                if folder == self.root or not (folder / JOURNAL_NAME).is_file():
                    continue
                fd = _try_lock(folder)
                if fd is not None:
                    try:
                        held.append((folder, fd, Journal(folder)))
                    except Exception:
                        os.close(fd)
                        raise
            yield [(folder, journal) for folder, _, journal in held]
        finally:
            for folder, fd, journal in held:
                empty = not journal.entries()
                journal.close()
                if empty:
                    _remove_folder(folder)
                os.close(fd)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a local disk error inside the block into FsError, with one log line.

        A full staging disk is an expected condition, not a bug: it is reported as
        ENOSPC (EDQUOT...) to the caller and named in the log, without a traceback.
        """
        try:
            yield
        except OSError as error:
            code = error.errno or errno.EIO
            if code in (errno.ENOSPC, errno.EDQUOT):
                log.error("%s failed: the staging area %s is full (%s)", what, self.root,
                          error.strerror or os.strerror(code))
            else:
                log.error("staging area %s: %s failed: %s", self.root, what,
                          error.strerror or error)
            raise FsError(code, f"{what}: {error.strerror or error}") from error
        except sqlite3.Error as error:  # the journal: its disk is the staging disk
            full = is_disk_full(error, self.root)
            log.error("%s failed: the staging journal in %s: %s", what, self.root,
                      "the staging area is full" if full else error)
            raise FsError(errno.ENOSPC if full else errno.EIO, f"{what}: {error}") from error

    def new_path(self, label: str) -> Path:
        """A new empty file (0600) named after ``label`` for people reading the folder."""
        safe = _LABEL_UNSAFE.sub("_", label)[-80:] or "file"
        fd, name = tempfile.mkstemp(prefix=f"{safe}.", suffix=STAGED_SUFFIX, dir=self.root)
        os.close(fd)
        return Path(name)

    def new_file(self, label: str) -> StagedFile:
        return StagedFile(self.new_path(label))

    def make_durable(self, staged: StagedFile | None = None) -> None:
        """Make ``staged`` (its bytes and its name) and the journal survive a power cut:
        done when a copy becomes the only version of its data (its upload failed)."""
        if staged is not None:
            staged.sync()
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.journal.make_durable()

    def remove_strays(self, keep: set[str]) -> None:
        """Delete staged copies no journal entry names (clean copies of a crashed mount:
        their content is in the bucket) and unfinished downloads."""
        for path in self.root.iterdir():
            stray = path.name.endswith(STAGED_SUFFIX) and path.name not in keep
            if stray or path.name.endswith(".part"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def close(self, keep: bool) -> None:
        """Close the journal and let the folder go; it is removed unless ``keep`` (some
        copies could not be uploaded: the next mount of the same bucket and prefix with
        this staging folder uploads them)."""
        keep = keep or bool(self.journal.entries())
        self.journal.close()
        if keep:
            log.error("staged copies that could not be uploaded are kept in %s; the next "
                      "mount of this bucket with this staging folder uploads them", self.root)
        else:
            _remove_folder(self.root)
        os.close(self._lock_fd)


def _remove_folder(folder: Path) -> None:
    """Remove ``folder`` and what is in it, renaming it first: a reader of its journal
    (``qarnotfs unmount`` reads it while the mount shuts down) would otherwise recreate
    SQLite's ``-shm`` file in it as it is removed, and the folder would stay."""
    doomed = folder.with_name(f".{folder.name}.removed-{os.getpid()}")
    try:
        os.rename(folder, doomed)
    except OSError:
        doomed = folder
    shutil.rmtree(doomed, ignore_errors=True)


def _try_lock(folder: Path) -> int | None:
    """A descriptor of ``folder`` holding its exclusive lock, or None if another has it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd

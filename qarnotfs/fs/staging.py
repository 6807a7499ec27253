"""The staging area: private local copies of files being written, until they are uploaded.

Owns: one private folder per mount (mode 0700, created inside the configured staging
folder) and the staged files in it (mode 0600), each an open descriptor read and written
with pread/pwrite. A staged copy is removed once its content is in the bucket; a copy
whose upload failed stays, and its path is logged so nothing is lost.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import FsError

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


class StagingArea:
    """The mount's private staging folder."""

    def __init__(self, base: Path) -> None:
        base = Path(base)
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = Path(tempfile.mkdtemp(prefix="mount-", dir=base))
        os.chmod(self.root, 0o700)

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

    def new_path(self, label: str) -> Path:
        """A new empty file (0600) named after ``label`` for people reading the folder."""
        safe = _LABEL_UNSAFE.sub("_", label)[-80:] or "file"
        fd, name = tempfile.mkstemp(prefix=f"{safe}.", dir=self.root)
        os.close(fd)
        return Path(name)

    def new_file(self, label: str) -> StagedFile:
        return StagedFile(self.new_path(label))

    def close(self, keep: bool) -> None:
        """Remove the folder, unless ``keep`` (some copies could not be uploaded)."""
        if keep:
            log.error("staged copies that could not be uploaded are kept in %s", self.root)
            return
        shutil.rmtree(self.root, ignore_errors=True)

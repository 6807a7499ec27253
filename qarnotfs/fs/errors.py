"""Errors of the filesystem core, and the one table that turns any error into an errno.

Owns: :class:`FsError` (what the core raises when the answer is an errno) and
:func:`errno_for`, the single place where exceptions become errno values for FUSE.
"""

from __future__ import annotations

import errno as errno_codes
import logging
import os

from ..exceptions import (
    MissingBucketException,
    MissingObjectException,
    PreconditionFailedException,
    QarnotException,
    StorageTimeout,
    StorageUnreachableException,
    UnauthorizedException,
)

log = logging.getLogger(__name__)


class FsError(Exception):
    """A filesystem error with the errno the caller should see."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(errno, message or os.strerror(errno))
        self.errno = errno
        self.message = message or os.strerror(errno)

    def __str__(self) -> str:
        return f"[{errno_codes.errorcode.get(self.errno, self.errno)}] {self.message}"


def errno_for(error: BaseException) -> int:
    """The errno for ``error``: FsError's own, the storage errors' mapping, OSError's own."""
    if isinstance(error, FsError):
        return error.errno
    if isinstance(error, MissingObjectException):
        return errno_codes.ENOENT
    if isinstance(error, UnauthorizedException):
        return errno_codes.EACCES
    if isinstance(error, PreconditionFailedException):
        # Replaced by another client while open: NFS's answer to an open file whose
        # object went away (the next open reads the new one).
        log.warning("%s: replaced while open for reading; open it again", error)
        return errno_codes.ESTALE
    if isinstance(error, MissingBucketException):
        log.error("the bucket is gone: %s", error)
        return errno_codes.EIO
    if isinstance(error, StorageTimeout):
        return errno_codes.ETIMEDOUT
    if isinstance(error, StorageUnreachableException):
        return errno_codes.EIO
    if isinstance(error, QarnotException):
        return errno_codes.EIO
    if isinstance(error, OSError) and error.errno:
        return error.errno
    return errno_codes.EIO

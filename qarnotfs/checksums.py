"""Content fingerprints used to decide whether a local file and an object are the same.

Owns: SHA-1 of local files (stored by qarnotfs in object metadata), the S3 ETag a file
gets when uploaded with the SDK's 8 MiB multipart rule, and its whole MD5 (the ETag of a
single-request upload or of a server-side copy, whatever the size), all in one read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from .connection import PART_SIZE

SHA1_METADATA_KEY = "sha1"
"""Object metadata entry (``x-amz-meta-sha1``) holding the hex SHA-1 of the content."""

_READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Fingerprint:
    size: int
    sha1: str
    etag: str
    md5: str

    def matches_etag(self, etag: str) -> bool:
        """True if an object with this (unquoted) ETag and our size holds our bytes: the
        8 MiB multipart ETag, or the whole MD5 that CopyObject and PutObject give."""
        return etag in (self.etag, self.md5)


def fingerprint(path: str | os.PathLike[str], part_size: int = PART_SIZE,
                on_read: Callable[[int], object] | None = None) -> Fingerprint:
    """Size, SHA-1 and multipart-rule ETag of a local file, in a single pass (``on_read``
    is told the size of each chunk read: a progress bar)."""
    sha1 = hashlib.sha1()
    whole_md5 = hashlib.md5()
    part_digests: list[bytes] = []
    part_md5 = hashlib.md5()
    in_part = 0
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_SIZE):
            size += len(chunk)
            if on_read is not None:
                on_read(len(chunk))
            sha1.update(chunk)
            whole_md5.update(chunk)
            view = memoryview(chunk)
            while view:
                take = min(len(view), part_size - in_part)
                part_md5.update(view[:take])
                in_part += take
                view = view[take:]
                if in_part == part_size:
                    part_digests.append(part_md5.digest())
                    part_md5, in_part = hashlib.md5(), 0
    if in_part:
        part_digests.append(part_md5.digest())
    if size < part_size:
        etag = whole_md5.hexdigest()
    else:
        etag = f"{hashlib.md5(b''.join(part_digests)).hexdigest()}-{len(part_digests)}"
    return Fingerprint(size=size, sha1=sha1.hexdigest(), etag=etag, md5=whole_md5.hexdigest())


def normalize_etag(etag: str) -> str:
    """An ETag without the quotes S3 puts around it."""
    return etag.strip('"')

"""Crash recovery: turning what a dead mount left in the staging journal into pending uploads.

Owns: rebuilding an :class:`~.handles.OpenFile` from a journal :class:`~.journal.Entry`,
and the decision made before a recovered file is uploaded: the object is unchanged since
staging started (upload over it), it already holds our content (the crash came after the
upload: nothing to send), or it changed in the bucket meanwhile (a conflict: our version
goes beside it as ``<name>.qarnotfs-conflict-<UTC time>-<host>``, never over it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .attrs import Attributes
from .handles import OpenFile
from .journal import Entry
from .keys import name_of, parent_of
from .staging import StagedFile
from .uploader import multipart_etag

if TYPE_CHECKING:
    from ..bucket import Bucket

log = logging.getLogger(__name__)

CONFLICT_MARK = ".qarnotfs-conflict-"
_CHUNK = 1 << 20


def reopen(entry: Entry, staged: Path) -> OpenFile:
    """The dirty OpenFile a journal entry stands for (its staged copy at ``staged``)."""
    info = os.stat(staged)
    # A write after the entry's last update shows in the copy's mtime, not in the row.
    mtime = info.st_mtime_ns if info.st_mtime_ns > entry.updated * 1e9 else entry.mtime_ns
    attrs = Attributes(entry.mode, info.st_size, entry.uid, entry.gid, mtime, mtime, mtime)
    base = (entry.base_etag, entry.base_modified or "") if entry.base_etag else None
    return OpenFile(entry.path, entry.key, attrs, on_bucket=base is not None,
                    staged=StagedFile(staged), dirty=True, journal_id=entry.id, base=base,
                    recovered=True)


def local_etags(path: Path, part_size: int) -> set[str]:
    """The ETags the storage gives this content: one PUT, or parts of ``part_size``."""
    whole = hashlib.md5()
    parts: list[str] = []
    with open(path, "rb") as source:
        while part := source.read(part_size):
            parts.append(hashlib.md5(part).hexdigest())
            for start in range(0, len(part), _CHUNK):
                whole.update(part[start:start + _CHUNK])
    return {whole.hexdigest(), multipart_etag(parts) if parts else whole.hexdigest()}


def conflict_name(key: str, when: float | None = None, host: str | None = None) -> str:
    """``key`` with the conflict mark, the UTC time and the host name appended."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    host = (host or socket.gethostname() or "host").split(".")[0].replace("/", "_")
    return f"{key}{CONFLICT_MARK}{stamp}-{host}"


def settle(bucket: Bucket, held: OpenFile, part_size: int) -> bool:
    """Decide where a recovered file goes; False if the bucket already has its content.

    On a conflict ``held.key`` and ``held.path`` move to the conflict name (a warning says
    so); otherwise they stay.
    """
    assert held.staged is not None
    info = bucket.stat(held.key)
    if info is not None and info.etag in local_etags(held.staged.path, part_size):
        log.info("recovered %r: the bucket already has this content", held.key)
        return False
    base_etag = held.base[0] if held.base else None
    if info is None or (base_etag is not None and info.etag == base_etag):
        if info is None and base_etag is not None:
            log.warning("recovered %r: the object was deleted from the bucket meanwhile; "
                        "uploading the local version again", held.key)
        return True
    new_key = first = conflict_name(held.key)
    for number in range(2, 1000):
        if bucket.stat(new_key) is None:
            break
        new_key = f"{first}-{number}"
    log.warning("recovered %r changed in the bucket while the mount was down (ETag %s, "
                "expected %s): keeping both, the local version goes to %r", held.key,
                info.etag, base_etag or "no object", new_key)
    held.path = f"{parent_of(held.path).rstrip('/')}/{name_of(new_key)}"
    held.key = new_key
    return True

"""Crash recovery: what a dead mount left in the staging journal, and where it goes.

Owns: the decisions made about a crashed mount's entries: which staged copy stands for
which path when two mounts sharing a staging folder both left one for the same path
(:func:`arrange`: both are kept, the newer at the path, the older as a conflict copy),
and, before a recovered file is uploaded (:func:`settle`), whether the object is
unchanged since staging started (upload over it), already holds our content (the crash
came after the upload: nothing to send), or changed in the bucket meanwhile (a conflict:
our version goes beside it as ``<name>.qarnotfs-conflict-<UTC time>-<host>``, never over
it). Rebuilding the items themselves is writeback.py's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .journal import Entry
from .keys import name_of, parent_of
from .uploader import multipart_etag

if TYPE_CHECKING:
    from .storage import Storage

log = logging.getLogger(__name__)

CONFLICT_MARK = ".qarnotfs-conflict-"
_CHUNK = 1 << 20


def move_into(source: Path, folder: Path, name: str) -> None:
    """Move a staged copy of another slot into ``folder`` under ``name``."""
    os.replace(source, folder / name)


def arrange(entries: list[Entry], root: Path) \
        -> Iterator[tuple[Entry, Path | None, tuple[str, str] | None]]:
    """Each entry with its staged copy (None if missing) and, for all but the newest
    entry of a path, the (path, key) of the conflict copy it becomes."""
    present = [(entry, root / entry.staged) for entry in entries]
    newest: dict[str, tuple[float, int]] = {}
    for entry, staged in present:
        if staged.is_file():
            stamp = (os.stat(staged).st_mtime_ns, entry.id)
            newest[entry.path] = max(newest.get(entry.path, stamp), stamp)
    for entry, staged in present:
        if not staged.is_file():
            yield entry, None, None
            continue
        stamp = (os.stat(staged).st_mtime_ns, entry.id)
        if stamp == newest[entry.path]:
            yield entry, staged, None
        else:
            key = conflict_name(entry.key, tag=str(entry.id))
            yield entry, staged, (sibling_path(entry.path, key), key)


def sibling_path(path: str, key: str) -> str:
    """The path beside ``path`` whose name is the last segment of ``key``."""
    return f"{parent_of(path).rstrip('/')}/{name_of(key)}"


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


def conflict_name(key: str, when: float | None = None, host: str | None = None,
                  tag: str = "") -> str:
    """``key`` with the conflict mark, the UTC time and the host name appended."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    host = (host or socket.gethostname() or "host").split(".")[0].replace("/", "_")
    return f"{key}{CONFLICT_MARK}{stamp}-{host}" + (f"-{tag}" if tag else "")


def settle(storage: Storage, key: str, path: str, base: tuple[str, str] | None,
           staged: Path, part_size: int, owned: dict[str, str]) -> tuple[str, str] | None:
    """Where a recovered file goes, as (path, key); None if the bucket already has its
    content with the mode and owner in ``owned`` (metadata). On a conflict the answer is a
    new name beside it (a warning says so)."""
    info = storage.stat(key)
    if info is not None and info.etag in local_etags(staged, part_size):
        theirs = {name: (info.metadata or {}).get(name) for name in owned}
        if theirs == owned:
            log.info("recovered %r: the bucket already has this content", key)
            return None
        return path, key  # same bytes, other attributes (a chmod before the crash)
    base_etag = base[0] if base else None
    if info is None or (base_etag is not None and info.etag == base_etag):
        if info is None and base_etag is not None:
            log.warning("recovered %r: the object was deleted from the bucket meanwhile; "
                        "uploading the local version again", key)
        return path, key
    new_key = first = conflict_name(key)
    for number in range(2, 1000):
        if storage.stat(new_key) is None:
            break
        new_key = f"{first}-{number}"
    log.warning("recovered %r changed in the bucket while the mount was down (ETag %s, "
                "expected %s): keeping both, the local version goes to %r", key,
                info.etag, base_etag or "no object", new_key)
    return sibling_path(path, new_key), new_key

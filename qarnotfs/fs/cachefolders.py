"""The read cache's base folder: one folder per bucket, and one bound for all of them.

Owns: :func:`claim_folder` (a process using a bucket's folder says so, for as long as it
uses it) and :func:`trim_folders` (whole folders of buckets nobody uses are removed, least
recently used first, until the base folder holds at most the bound).

Why. Each bucket's folder bounds its own blocks (:mod:`.readcache`), but a machine that
mounts many buckets over time, or buckets since deleted, would otherwise keep every one's
folder: 1,033 folders and 25 GB under a 10 GiB bound were found on a test machine. So the
bound holds for the base folder: when a cache is opened, folders of buckets not in use are
removed, the least recently used first, until the total fits. Folders in use are never
removed (several buckets mounted at once may hold up to the bound each). Only folders that
are read cache folders (named as :func:`.readcache.cache_folder` names them, with an
index) are ever removed, whatever else ``--read-cache-dir`` holds.

How "in use" is known. Every process using a folder holds a shared ``flock`` on its
``in-use`` file; the trimmer takes it exclusively without waiting (in use: skipped),
renames the folder aside while holding it, then deletes it. A process claiming a folder
checks, once it holds its lock, that the ``in-use`` file is still the folder's (it was not
renamed aside meanwhile), else claims the folder anew.

Lock order: the ``flock`` of a folder's ``in-use`` file is the only lock; a process holds
at most one exclusively, never waiting for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IN_USE = "in-use"
INDEX_NAME = "index.db"
REMOVED = ".removed-"
_CACHE_FOLDER_NAME = re.compile(r".*-[0-9a-f]{16}")
"""How :func:`.readcache.cache_folder` names a bucket's folder (label, then a hash)."""
_LEFT_ASIDE = re.compile(rf"{re.escape(REMOVED)}.*-[0-9a-f]{{16}}-[0-9]+")
"""A folder renamed aside to be removed (its name, then the remover's pid)."""


def claim_folder(folder: Path) -> int:
    """Hold a shared claim on ``folder`` (made again, 0700, if a trimmer set it aside
    meanwhile): the descriptor to close to let it go. Waits only while a trimmer is
    renaming the folder aside."""
    folder.parent.mkdir(parents=True, exist_ok=True)  # the base is never set aside
    while True:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        try:
            fd = os.open(folder / IN_USE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # set aside between the two calls
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _same_file(fd, folder / IN_USE):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the folder was renamed aside to be removed: make it again


@dataclass
class _Candidate:
    folder: Path
    size: int
    last_used: float


def trim_folders(base: Path, keep: Path, bound: int) -> list[Path]:
    """Remove folders of ``base`` not in use, least recently used first, until all of
    them together hold at most ``bound`` bytes (``keep`` is never removed); returns the
    folders removed."""
    _remove_leftovers(base)
    candidates = [c for c in map(_candidate, _cache_folders(base)) if c is not None]
    total = sum(c.size for c in candidates)
    removed: list[Path] = []
    for candidate in sorted(candidates, key=lambda c: c.last_used):
        if total <= bound:
            break
        if candidate.folder == keep or not _remove_unused(candidate.folder):
            continue
        total -= candidate.size
        removed.append(candidate.folder)
    if removed:
        log.info("read cache %s: removed the blocks of %d bucket(s) not used lately, to "
                 "stay within %d bytes", base, len(removed), bound)
    return removed


def _cache_folders(base: Path) -> list[Path]:
    try:
        entries = list(os.scandir(base))
    except OSError:
        return []
    return [Path(entry.path) for entry in entries
            if entry.is_dir(follow_symlinks=False) and _CACHE_FOLDER_NAME.fullmatch(entry.name)
            and os.path.isfile(os.path.join(entry.path, INDEX_NAME))]


def _candidate(folder: Path) -> _Candidate | None:
    """The folder's size (from its index) and last use (its index's last write)."""
    index = folder / INDEX_NAME
    try:
        last_used = max(path.stat().st_mtime for path in
                        (index, index.with_name(INDEX_NAME + "-wal")) if path.exists())
        with contextlib.closing(sqlite3.connect(f"{index.as_uri()}?mode=ro", uri=True,
                                                timeout=1)) as db:
            (size,) = db.execute("SELECT bytes FROM total").fetchone()
    except (OSError, ValueError, TypeError, sqlite3.Error) as error:
        log.debug("read cache folder %s: not sized (%s)", folder, error)
        return None
    return _Candidate(folder, int(size), last_used)


def _remove_unused(folder: Path) -> bool:
    """Remove ``folder`` unless a process holds a claim on it."""
    try:
        fd = os.open(folder / IN_USE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # in use
        if not _same_file(fd, folder / IN_USE):
            return False  # another trimmer moved it meanwhile
        aside = folder.with_name(f"{REMOVED}{folder.name}-{os.getpid()}")
        os.rename(folder, aside)
    except OSError as error:
        log.debug("read cache folder %s: not removed (%s)", folder, error)
        return False
    finally:
        os.close(fd)
    shutil.rmtree(aside, ignore_errors=True)
    return True


def _remove_leftovers(base: Path) -> None:
    """Folders renamed aside by a trimmer that died before deleting them."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            if _LEFT_ASIDE.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

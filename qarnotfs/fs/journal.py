"""The staging journal: a durable record of every staged file whose content the bucket lacks.

Owns: ``journal.sqlite3`` in a mount's staging folder (0600; SQLite in WAL mode with
``synchronous=NORMAL``: each committed change survives a kill -9 of the mount, since it is
in the kernel's hands when the commit returns; :meth:`Journal.make_durable` is the point
where it also survives a power cut: see below) and the
:class:`Entry` rows in it. A row is written when a file first becomes dirty, and updated at
each step of its upload: ``dirty`` -> ``uploading`` (with the multipart upload id and every
part the storage acknowledged) -> ``committed`` (the object is in the bucket; the row and the
staged copy are then removed). Each row keeps what the next mount needs to finish the job
after a crash: the bucket, prefix, key and path, the staged attributes (extended ones
included), and the object's
ETag and LastModified when staging started (``base_etag`` None: there was no object), which
tell whether the object changed in the bucket meanwhile.

Why not ``synchronous=FULL`` (an fsync per change, three per small file)? A power cut
loses what the kernel had not written yet, journal and staged bytes alike, exactly as on
a local disk; what a program was promised is safe without it: ``close`` and ``fsync``
return success only once the bucket has the content, and when an upload fails the staged
copy and the journal are made durable (:meth:`Journal.make_durable`) before the error
is returned, since that copy then holds the only version of the data.

Reading the journal from another process (``qarnotfs status``) is safe: WAL lets readers
run while the mount writes.

A full staging disk must never leave a row behind for content the bucket has (a phantom
pending upload): SQLite needs room to record even a deletion. The journal keeps a small
``reserve`` file beside it; when a removal finds the disk full (SQLITE_FULL, by code), the
reserve is given back to the file system and the removal tried once more. The reserve is
made again at the next change that finds room for it.

Lock order: ``Journal._lock`` is a leaf: held for one SQLite statement or transaction,
never across a storage request or while taking another lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.sqlite3"
RESERVE_NAME = "journal.reserve"
RESERVE_SIZE = 1 << 20
"""Room kept for the journal's removals on a full disk (each is a few KiB of WAL)."""
DIRTY, UPLOADING = "dirty", "uploading"
SQLITE_FULL = 13

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    staged TEXT NOT NULL,
    path TEXT NOT NULL,
    key TEXT NOT NULL,
    bucket TEXT NOT NULL,
    prefix TEXT NOT NULL,
    state TEXT NOT NULL,
    base_etag TEXT,
    base_modified TEXT,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    xattr TEXT NOT NULL DEFAULT '',
    upload_id TEXT,
    upload_key TEXT,
    part_size INTEGER,
    signature TEXT,
    retries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    entry INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (entry, number)
);
CREATE TABLE IF NOT EXISTS abandoned (
    upload_id TEXT PRIMARY KEY,
    key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    since REAL NOT NULL
);
"""
_ABANDON = ("INSERT OR IGNORE INTO abandoned (upload_id, key) SELECT upload_id, upload_key "
            "FROM entries WHERE id = ? AND upload_id IS NOT NULL")


@dataclass
class Entry:
    """One staged file the bucket does not have yet."""

    id: int
    staged: str
    """The staged copy's file name, inside the staging folder."""
    path: str
    key: str
    bucket: str
    prefix: str
    state: str
    base_etag: str | None
    base_modified: str | None
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattr: str = ""
    """The extended attributes set while it was staged (``x-amz-meta-xattr``, xattrs.py)."""
    upload_id: str | None = None
    upload_key: str | None = None
    part_size: int | None = None
    signature: str | None = None
    """``size:mtime_ns`` of the staged copy when the multipart upload started: its parts
    can be reused only if the copy has not changed since."""
    retries: int = 0
    last_error: str | None = None
    updated: float = 0.0


_COLUMNS = [f.name for f in fields(Entry)]


class Journal:
    """The journal of one staging folder (thread-safe; every change is durable on return)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / JOURNAL_NAME
        # Created 0600 before SQLite opens it: its -wal and -shm files copy the mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._reserve = Path(folder) / RESERVE_NAME
        self._lock = threading.Lock()
        self._db = _connect(self.path)
        with self._lock:
            self._db.executescript(_SCHEMA)
            _add_missing_columns(self._db)
        self._keep_reserve()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def make_durable(self) -> None:
        """Make every committed change survive a power cut: a checkpoint, which fsyncs
        the write-ahead log first. (Not an fsync through a descriptor of our own:
        closing it would drop the POSIX locks SQLite holds on the file.)"""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # none open if COMMIT failed
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _settling(self, change: Callable[[sqlite3.Connection], None]) -> None:
        """Apply a change that removes state (an entry, an upload), on a full disk too:
        the reserve is given up for it if needed."""
        try:
            with self._transaction() as db:
                change(db)
        except sqlite3.Error as error:
            if not is_disk_full(error, self.path.parent) or not self._reserve.exists():
                raise
            log.warning("the staging disk is full: using the journal's reserve to record "
                        "a removal")
            self._reserve.unlink()
            with self._transaction() as db:
                change(db)
        self._keep_reserve()

    def _keep_reserve(self) -> None:
        """Make the reserve again if it is missing and there is room (best effort)."""
        if self._reserve.exists():
            return
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, RESERVE_SIZE)
        except OSError:
            os.close(fd)
            self._reserve.unlink(missing_ok=True)
            return
        os.close(fd)

    def add(self, **values: Any) -> int:
        """Record a newly dirty file; returns its entry id."""
        values = {"state": DIRTY, "updated": time.time(), **values}
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._transaction() as db:
            cursor = db.execute(f"INSERT INTO entries ({names}) VALUES ({marks})",
                                list(values.values()))
            return int(cursor.lastrowid or 0)

    def adopt(self, entry: Entry, parts: dict[int, tuple[str, int]]) -> int:
        """Copy an entry (and its acknowledged parts) from another journal; its new id."""
        values = {name: getattr(entry, name) for name in _COLUMNS if name != "id"}
        entry_id = self.add(**values)
        for number, (etag, size) in parts.items():
            self.add_part(entry_id, number, etag, size)
        return entry_id

    def update(self, entry_id: int, **values: Any) -> None:
        values["updated"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._transaction() as db:
            db.execute(f"UPDATE entries SET {assignments} WHERE id = ?",
                       [*values.values(), entry_id])

    def start_upload(self, entry_id: int, upload_id: str, key: str, part_size: int,
                     signature: str) -> None:
        """Record a new multipart upload, replacing any earlier one and its parts (the
        earlier one is remembered as abandoned, to be aborted)."""
        with self._transaction() as db:
            db.execute(_ABANDON, (entry_id,))
            db.execute("DELETE FROM parts WHERE entry = ?", (entry_id,))
            db.execute("UPDATE entries SET state = ?, upload_id = ?, upload_key = ?, "
                       "part_size = ?, signature = ?, updated = ? WHERE id = ?",
                       (UPLOADING, upload_id, key, part_size, signature, time.time(),
                        entry_id))

    def forget_upload(self, entry_id: int) -> None:
        """Drop the entry's multipart upload, remembering it as abandoned (to abort)."""
        def change(db: sqlite3.Connection) -> None:
            db.execute(_ABANDON, (entry_id,))
            db.execute("DELETE FROM parts WHERE entry = ?", (entry_id,))
            db.execute("UPDATE entries SET upload_id = NULL, upload_key = NULL, "
                       "part_size = NULL, signature = NULL WHERE id = ?", (entry_id,))

        self._settling(change)

    def add_part(self, entry_id: int, number: int, etag: str, size: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO parts (entry, number, etag, size) "
                       "VALUES (?, ?, ?, ?)", (entry_id, number, etag, size))

    def parts(self, entry_id: int) -> dict[int, tuple[str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT number, etag, size FROM parts WHERE entry = ?",
                                    (entry_id,)).fetchall()
        return {int(n): (str(e), int(s)) for n, e, s in rows}

    def failed(self, entry_id: int, error: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE entries SET retries = retries + 1, last_error = ?, "
                       "updated = ? WHERE id = ?", (error[:500], time.time(), entry_id))

    def remove(self, entry_id: int, abandon: bool = False) -> None:
        """Drop an entry: committed (its content is in the bucket), or given up
        (``abandon``: the file was deleted; its multipart upload is to be aborted)."""
        def change(db: sqlite3.Connection) -> None:
            if abandon:
                db.execute(_ABANDON, (entry_id,))
            db.execute("DELETE FROM parts WHERE entry = ?", (entry_id,))
            db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))

        self._settling(change)

    def get(self, entry_id: int) -> Entry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries WHERE id = ?",
                                   (entry_id,)).fetchone()
        return None if row is None else Entry(*row)

    def entries(self) -> list[Entry]:
        with self._lock:
            return _entries(self._db)

    def abandoned(self) -> list[tuple[str, str]]:
        """Multipart uploads given up but maybe not aborted yet, as (key, upload id)."""
        with self._lock:
            rows = self._db.execute("SELECT key, upload_id FROM abandoned").fetchall()
        return [(str(key), str(upload_id)) for key, upload_id in rows]

    def abandon(self, key: str, upload_id: str) -> None:
        """Remember an upload no entry records any more as abandoned (to abort)."""
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO abandoned (upload_id, key) VALUES (?, ?)",
                       (upload_id, key))

    def aborted(self, upload_id: str) -> None:
        def change(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM abandoned WHERE upload_id = ?", (upload_id,))

        self._settling(change)

    def intend_upload(self, key: str) -> int:
        """Record, before CreateMultipartUpload is sent, that an upload of ``key`` may
        start now: if the process dies before :meth:`start_upload` records its id, the
        next mount still knows that an upload of that key around that time is ours."""
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO intents (key, since) VALUES (?, ?)",
                                (key, time.time()))
        return int(cursor.lastrowid or 0)

    def intent_done(self, intent_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM intents WHERE id = ?", (intent_id,))

    def intents(self) -> list[tuple[int, str, float]]:
        """Uploads that may have started without their id being recorded: (id, key, since)."""
        with self._lock:
            rows = self._db.execute("SELECT id, key, since FROM intents").fetchall()
        return [(int(i), str(k), float(s)) for i, k, s in rows]

    def upload_ids(self) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT upload_id FROM entries WHERE upload_id IS NOT NULL").fetchall()
        return {str(row[0]) for row in rows}


class BestEffortJournal:
    """The journal as an upload under way writes it: a step that cannot be recorded (a
    full staging disk) is logged and the upload goes on; it only loses the ability to
    resume from that step after a crash. Reads are the journal's own."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def _try(self, step: str, change: Callable[[], Any]) -> Any:
        try:
            return change()
        except sqlite3.Error as error:
            log.warning("the staging journal %s could not record a step (%s): %s",
                        self.journal.path, step, error)
            return None

    def update(self, entry_id: int, **values: Any) -> None:
        self._try("update", lambda: self.journal.update(entry_id, **values))

    def failed(self, entry_id: int, error: str) -> None:
        self._try("failed", lambda: self.journal.failed(entry_id, error))

    def remove(self, entry_id: int, abandon: bool = False) -> None:
        self._try("remove", lambda: self.journal.remove(entry_id, abandon))

    def start_upload(self, entry_id: int, upload_id: str, key: str, part_size: int,
                     signature: str) -> None:
        self._try("start_upload", lambda: self.journal.start_upload(
            entry_id, upload_id, key, part_size, signature))

    def forget_upload(self, entry_id: int) -> None:
        self._try("forget_upload", lambda: self.journal.forget_upload(entry_id))

    def add_part(self, entry_id: int, number: int, etag: str, size: int) -> None:
        self._try("add_part", lambda: self.journal.add_part(entry_id, number, etag, size))

    def intend_upload(self, key: str) -> int | None:
        return cast("int | None", self._try("intend_upload",
                                            lambda: self.journal.intend_upload(key)))

    def intent_done(self, intent_id: int | None) -> None:
        if intent_id is not None:
            self._try("intent_done", lambda: self.journal.intent_done(intent_id))

    def abandon(self, key: str, upload_id: str) -> None:
        self._try("abandon", lambda: self.journal.abandon(key, upload_id))

    def aborted(self, upload_id: str) -> None:
        self._try("aborted", lambda: self.journal.aborted(upload_id))

    def get(self, entry_id: int) -> Entry | None:
        return self.journal.get(entry_id)

    def parts(self, entry_id: int) -> dict[int, tuple[str, int]]:
        return self.journal.parts(entry_id)

    def abandoned(self) -> list[tuple[str, str]]:
        return self.journal.abandoned()

    def intents(self) -> list[tuple[int, str, float]]:
        return self.journal.intents()

    def upload_ids(self) -> set[str]:
        return self.journal.upload_ids()


def is_disk_full(error: sqlite3.Error, folder: Path) -> bool:
    """SQLITE_FULL, by its code (Python 3.11+), else by the disk's free space (3.10 gives
    no code, and the message text is not a contract)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == SQLITE_FULL)
    try:
        figures = os.statvfs(folder)
    except OSError:
        return False
    return figures.f_bavail * figures.f_frsize < RESERVE_SIZE


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


_ADDED_COLUMNS = {"xattr": "TEXT NOT NULL DEFAULT ''"}
"""Columns later versions added: a journal a crashed older mount left gets them."""


def _columns(db: sqlite3.Connection) -> list[str]:
    return [row[1] for row in db.execute("PRAGMA table_info(entries)")]


def _add_missing_columns(db: sqlite3.Connection) -> None:
    present = set(_columns(db))
    for name, declaration in _ADDED_COLUMNS.items():
        if name not in present:
            db.execute(f"ALTER TABLE entries ADD COLUMN {name} {declaration}")


def _entries(db: sqlite3.Connection) -> list[Entry]:
    # Only the columns the journal has: ``qarnotfs status`` reads an older mount's as is.
    names = [name for name in _COLUMNS if name in set(_columns(db))]
    rows = db.execute(f"SELECT {', '.join(names)} FROM entries ORDER BY id").fetchall()
    return [Entry(**dict(zip(names, row, strict=True))) for row in rows]


def read_entries(folder: Path) -> list[Entry]:
    """The entries of the journal in ``folder`` (none if there is no journal), for
    ``qarnotfs status`` and the tests; safe while a mount process writes it."""
    path = Path(folder) / JOURNAL_NAME
    if not path.is_file():
        return []
    try:  # a clean unmount may be renaming the folder away right now
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
    except sqlite3.OperationalError:
        return []
    try:
        return _entries(db)
    except sqlite3.DatabaseError:
        return []
    finally:
        db.close()

"""The local read cache: blocks of objects' content kept on disk, shared by the mounts.

Owns: :class:`ReadCache`, one folder of blocks of one bucket (``<cache dir>/<bucket
identity>``), and :func:`cache_folder`, that folder's name. A block is the
:data:`BLOCK_SIZE` bytes of an object at an aligned offset (the object's last block may
be shorter), keyed by the object's key, its ETag and the block's number: the ETag is part
of the key, so a changed object is a different set of blocks and stale bytes are never
served (the ETag is the one the core knows for the open; blocks of ETags no longer read
age out). The cache holds at most ``capacity`` bytes of blocks; the least recently used
blocks go first, whichever mount put or read them. A process using the folder holds a
claim on it, and the same bound holds for the whole cache folder: when a mount opens its
cache, folders of buckets nobody uses go, least recently used first (:mod:`.cachefolders`).

Layout and sharing. Each block is a file ``<folder>/<2 hex>/<hash of key and ETag>-<n>``
(0600, folders 0700), written whole to a temporary file of ``<folder>/tmp`` and renamed
into place (``os.replace``), so a reader never sees half a block. The index is an SQLite
database in WAL mode, ``<folder>/index.db``, shared by every process using the folder: a
row per block (size, checksum, last use) and the total size (kept by triggers). A block's
file and its row change together inside one ``BEGIN IMMEDIATE`` transaction (SQLite's
write lock, across processes), and so does eviction, so two mounts never count a block
twice nor lose one; a file without a row (a crash between rename and commit) is never
served. A block whose file is missing, of the wrong length or of the wrong checksum is a
miss, and is forgotten. The checksum is CRC-32C (google-crc32c: the CPU's instruction, a
third of zlib's CRC-32 time, which was a tenth of a cold read's CPU), or zlib's CRC-32
where that package has no compiled code; which one is part of the blocks' names, so
processes using different ones never read each other's rows.

Blocks are written by one writer thread per process (:meth:`ReadCache.put_soon`), so
a cold read does not wait for the disk while at most :data:`BACKLOG` bytes wait. Beyond,
the reader putting a block waits for room (as the kernel throttles a writer that dirties
pages faster than the disk takes them), up to :data:`BACKLOG_WAIT`, after which the block
is not kept: a read faster than the writer would otherwise leave holes in the cache (a
cold 128 MiB read on a loopback gateway kept 96 to 128 of its blocks), and a disk so slow
that a block waits a second is not worth waiting for. Failures never reach the reader: a
full disk (ENOSPC, EDQUOT, SQLITE_FULL) stops putting blocks for :data:`FULL_PAUSE`
seconds, logged once; any other error is a miss (logged once per kind).

Two SQLite connections, so that reads never wait for a writer, this process's or another
one's: a reader uses the *read* connection, for SELECTs only (in WAL mode they never wait
for SQLite's write lock); every write to the index (a new block, a block's last use, a
damaged block forgotten, eviction) goes through the writer thread and the *write*
connection. So a mount stopped (SIGSTOP) inside its transaction on a shared cache makes
the other mounts' writers wait (up to SQLite's 30 s busy timeout, then the block is not
kept), never their reads.

Lock order: ``ReadCache._read_lock`` (it serialises this process's use of the read
connection), ``ReadCache._write_lock`` (the write connection; taken before SQLite's
write lock, which it may wait for) and ``ReadCache._backlog`` (a condition: a reader
waits on it for room in the backlog, holding no other lock; it also counts the last uses
waiting for the writer) are leaves, never held together: no other lock is taken and no
storage request is sent while one is held (only the block file's rename or unlink, and
eviction's unlinks, under the write lock). The folder's claim (a shared ``flock``,
:mod:`.cachefolders`) is held from start to close.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c

from .cachefolders import INDEX_NAME, claim_folder, trim_folders
from .journal import is_disk_full

log = logging.getLogger(__name__)

KIB = 1024
MIB = KIB * KIB
GIB = KIB * MIB
BLOCK_SIZE = 1 * MIB
DEFAULT_CAPACITY = 10 * GIB
"""The default bound, when the disk has room for it (see :func:`default_capacity`)."""
FREE_SHARE = 4
"""By default the cache takes at most a quarter of its disk's free space at mount time."""
BACKLOG = 32 * MIB
"""Bytes of blocks waiting for the writer thread; beyond, a new block waits for room (its
memory is held by nobody else once the reader's piece is dropped: this bounds it)."""
BACKLOG_WAIT = 1.0
"""Seconds a block waits for room in the backlog before it is dropped (not kept)."""
FULL_PAUSE = 60.0
"""Seconds no block is put after the disk was found full."""
TOUCH_INTERVAL = 1.0
"""A block's last use is written at most this often (fewer writes to the index)."""
PENDING_TOUCHES = 1024
"""Last uses waiting for the writer thread; beyond, new ones are not written (LRU order
is a hint: losing a few while the writer is stuck costs nothing)."""
STALE_TEMP = 3600.0
"""Temporary files older than this were left by a process that died: removed at start."""
EVICT_BATCH = 64
BUSY_TIMEOUT = 30.0
"""Seconds a write to the index waits for another process's transaction."""
WAL_RETRY_DELAY = 0.01

if google_crc32c.implementation == "c":
    CHECKSUM, checksum = "crc32c", google_crc32c.value
else:  # its pure-Python fallback is far slower than zlib's CRC-32
    CHECKSUM, checksum = "crc32", zlib.crc32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    name TEXT PRIMARY KEY, size INTEGER NOT NULL, crc INTEGER NOT NULL,
    used REAL NOT NULL);
CREATE INDEX IF NOT EXISTS blocks_by_use ON blocks(used);
CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 0),
                                  bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO total VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS blocks_added AFTER INSERT ON blocks
    BEGIN UPDATE total SET bytes = bytes + NEW.size; END;
CREATE TRIGGER IF NOT EXISTS blocks_removed AFTER DELETE ON blocks
    BEGIN UPDATE total SET bytes = bytes - OLD.size; END;
"""


def cache_folder(base: Path, endpoint: str, bucket: str) -> Path:
    """The folder of one bucket's blocks: readable, and unique by a hash of where the
    bucket is (two servers may have buckets of the same name)."""
    digest = hashlib.sha256(f"{endpoint}\0{bucket}".encode()).hexdigest()[:16]
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in bucket)[:60]
    return Path(base) / f"{label}-{digest}"


def default_capacity(folder: Path) -> int:
    """:data:`DEFAULT_CAPACITY`, or a quarter of the free space of the disk ``folder`` is
    on if that is less (a cache must not fill a small disk by default)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        figures = os.statvfs(probe)
    except OSError:
        return DEFAULT_CAPACITY
    return min(DEFAULT_CAPACITY, figures.f_bavail * figures.f_frsize // FREE_SHARE)


def _private_folder(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _use_wal(db: sqlite3.Connection) -> None:
    """Put the index in WAL mode. Unlike other statements, a change of journal mode does
    not wait for a busy database: it fails at once while another process opens the same
    new index (or a trimmer reads it), so it is retried within the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(WAL_RETRY_DELAY)


def _is_full(error: BaseException, folder: Path) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, sqlite3.Error) and is_disk_full(error, folder)


class ReadCache:
    """Blocks of one bucket's objects on local disk, under a size bound (thread-safe)."""

    def __init__(self, folder: Path, capacity: int, block_size: int = BLOCK_SIZE,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = Path(folder)
        self.capacity = capacity
        self.block_size = block_size
        self._clock = clock
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending_touches = 0
        self._paused_until = 0.0
        self._logged: set[str] = set()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qarnotfs-cache")
        self._waiting_bytes = 0
        self._stalled = False
        self._backlog = threading.Condition(threading.Lock())
        self._claim = claim_folder(self.folder)  # made first: a trimmer may set it aside
        os.chmod(self.folder, 0o700)
        self._temp = self.folder / "tmp"
        _private_folder(self._temp)
        self._remove_stale_temporaries()
        index = self.folder / INDEX_NAME
        os.close(os.open(index, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite's files copy it
        self._db = sqlite3.connect(index, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT)
        _use_wal(self._db)
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._transaction():
            for statement in filter(str.strip, _SCHEMA.split(";\n")):
                self._db.execute(statement)
        self._reads = sqlite3.connect(index, isolation_level=None, check_same_thread=False,
                                      timeout=5)

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str, etag: str, number: int, length: int) -> bytes | None:
        """Block ``number`` of ``key`` at ``etag``, if cached whole (``length`` bytes)."""
        name = self._name(key, etag, number)
        try:
            with self._read_lock:
                row = self._reads.execute("SELECT size, crc, used FROM blocks WHERE name = ?",
                                          (name,)).fetchone()
            if row is None or row[0] != length:
                return None
            data = self._read_file(name, length)
            if data is None or checksum(data) != row[1]:
                self._forget(name, "damaged or missing")
                return None
            now = self._clock()
            if now - row[2] >= TOUCH_INTERVAL:
                self._touch_soon(name, now)
            return data
        except (OSError, sqlite3.Error) as error:
            self._failed("read", error)
            return None

    def _read_file(self, name: str, length: int) -> bytes | None:
        try:
            with open(self._path(name), "rb") as source:
                data = source.read(length + 1)
        except FileNotFoundError:
            return None
        return data if len(data) == length else None

    def _touch_soon(self, name: str, now: float) -> None:
        """Write a block's last use, by the writer thread (dropped if many wait)."""
        with self._backlog:
            if self._pending_touches >= PENDING_TOUCHES:
                return
            self._pending_touches += 1
        self._writer.submit(self._touch, name, now)

    def _touch(self, name: str, now: float) -> None:
        with self._backlog:
            self._pending_touches -= 1
        try:
            with self._write_lock:
                self._db.execute("UPDATE blocks SET used = ? WHERE name = ?", (now, name))
        except sqlite3.Error as error:
            self._failed("touch", error)

    def _forget(self, name: str, why: str) -> None:
        """Drop a damaged block, by the writer thread (the reader reads the bucket)."""
        log.warning("read cache %s: block %s %s: dropped", self.folder, name, why)
        self._writer.submit(self._forget_now, name)

    def _forget_now(self, name: str) -> None:
        try:
            with self._write_lock, self._transaction():
                self._db.execute("DELETE FROM blocks WHERE name = ?", (name,))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(name))
        except (OSError, sqlite3.Error) as error:
            self._failed("removal", error)

    # -- writes --------------------------------------------------------------------------

    def put(self, key: str, etag: str, number: int, data: bytes) -> None:
        """Keep ``data`` as block ``number`` of ``key`` at ``etag`` (evicting the least
        recently used blocks beyond the bound); a failure only means it is not kept."""
        size = len(data)
        if size > self.capacity or self._clock() < self._paused_until:
            return
        name = self._name(key, etag, number)
        temporary = ""
        try:
            fd, temporary = tempfile.mkstemp(dir=self._temp)  # 0600
            with open(fd, "wb") as out:
                out.write(data)
            crc = checksum(data)
            with self._write_lock, self._transaction():
                final = self._path(name)
                if not final.parent.is_dir():
                    _private_folder(final.parent)
                os.replace(temporary, final)
                temporary = ""
                self._db.execute("DELETE FROM blocks WHERE name = ?", (name,))
                self._db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?)",
                                 (name, size, crc, self._clock()))
                self._evict()
        except (OSError, sqlite3.Error) as error:
            self._failed("write", error)
        finally:
            if temporary:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    def put_soon(self, key: str, etag: str, number: int, data: bytes) -> None:
        """:meth:`put`, by the cache's writer thread, once the backlog has room. A block
        that found none within :data:`BACKLOG_WAIT` is dropped, and so are the next ones
        that find none, without waiting, until the writer has caught up (a stuck writer
        must not slow every read by a second)."""
        size = len(data)
        with self._backlog:
            timeout = 0.0 if self._stalled else BACKLOG_WAIT
            if not self._backlog.wait_for(lambda: self._waiting_bytes + size <= BACKLOG,
                                          timeout=timeout):
                self._stalled = True
                return
            self._waiting_bytes += size
        self._writer.submit(self._put_queued, key, etag, number, data)

    def _put_queued(self, key: str, etag: str, number: int, data: bytes) -> None:
        try:
            self.put(key, etag, number, data)
        finally:
            with self._backlog:
                self._waiting_bytes -= len(data)
                if not self._waiting_bytes:
                    self._stalled = False
                self._backlog.notify_all()

    def drain(self) -> None:
        """Wait until the blocks given to :meth:`put_soon` until now are written."""
        self._writer.submit(lambda: None).result()

    def _evict(self) -> None:
        """Remove the least recently used blocks until the total is within the bound
        (inside the caller's transaction)."""
        while True:
            (total,) = self._db.execute("SELECT bytes FROM total").fetchone()
            if total <= self.capacity:
                return
            oldest = self._db.execute("SELECT name FROM blocks ORDER BY used LIMIT ?",
                                      (EVICT_BATCH,)).fetchall()
            if not oldest:
                return
            for (name,) in oldest:
                self._db.execute("DELETE FROM blocks WHERE name = ?", (name,))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(name))
                (total,) = self._db.execute("SELECT bytes FROM total").fetchone()
                if total <= self.capacity:
                    return

    # -- the rest ------------------------------------------------------------------------

    def total(self) -> int:
        """Bytes of blocks in the cache (all mounts' together)."""
        with self._read_lock:
            (total,) = self._reads.execute("SELECT bytes FROM total").fetchone()
        return int(total)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        with self._read_lock:
            self._reads.close()
        with self._write_lock:
            self._db.close()
        os.close(self._claim)

    def trim_others_soon(self) -> threading.Thread:
        """Remove, in a thread of its own, folders of other buckets that nobody uses,
        least recently used first, until the whole cache folder fits the bound
        (:mod:`.cachefolders`). Not the writer thread: gigabytes to delete must not keep
        a cold read's blocks waiting. Nobody waits for it: a process ending meanwhile
        leaves at most a folder set aside, which the next trim deletes."""
        trimmer = threading.Thread(target=self._trim_others, name="qarnotfs-cache-trim",
                                   daemon=True)
        trimmer.start()
        return trimmer

    def _trim_others(self) -> None:
        try:
            trim_folders(self.folder.parent, self.folder, self.capacity)
        except (OSError, sqlite3.Error) as error:
            log.warning("read cache %s: folders of other buckets could not be removed: %s",
                        self.folder.parent, error)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _name(self, key: str, etag: str, number: int) -> str:
        digest = hashlib.sha256(
            f"{key}\0{etag}\0{self.block_size}\0{CHECKSUM}".encode()).hexdigest()
        return f"{digest[:40]}-{number}"

    def _path(self, name: str) -> Path:
        return self.folder / name[:2] / name

    def _failed(self, what: str, error: BaseException) -> None:
        if _is_full(error, self.folder):
            if self._clock() >= self._paused_until:
                log.warning("read cache %s is full: reads are not cached for %.0f s (%s)",
                            self.folder, FULL_PAUSE, error)
            self._paused_until = self._clock() + FULL_PAUSE
            return
        kind = f"{what}:{type(error).__name__}:{getattr(error, 'errno', '')}"
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("read cache %s: a block %s failed, read from the bucket instead: %s",
                        self.folder, what, error)

    def _remove_stale_temporaries(self) -> None:
        limit = self._clock() - STALE_TEMP
        for path in self._temp.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < limit:
                    path.unlink()


def open_read_cache(base: Path, endpoint: str, bucket: str,
                    capacity: int | None) -> ReadCache | None:
    """The read cache of ``bucket`` under ``base`` (``capacity`` None: the default bound),
    or None when it is disabled (0) or cannot be used (logged: the mount reads without)."""
    folder = cache_folder(base, endpoint, bucket)
    if capacity is None:
        capacity = default_capacity(folder)
    if capacity <= 0:
        return None
    try:
        cache = ReadCache(folder, capacity)
    except (OSError, sqlite3.Error) as error:
        log.warning("read cache %s cannot be used, reads are not cached: %s", folder, error)
        return None
    cache.trim_others_soon()
    return cache

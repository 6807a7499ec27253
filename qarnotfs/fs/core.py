"""The filesystem core: POSIX-like calls on a bucket, with no FUSE types (see SEMANTICS.md).

Owns: :class:`FsOptions` and :class:`Filesystem`, the semantics of every call the FUSE
adapter forwards: which requests each call makes, when content is staged and uploaded,
what is refused with which errno. Lookups and listings are delegated to
:mod:`.namespace`, attributes to :mod:`.attrs`, local copies to :mod:`.staging` (and their
journal), uploads and their background retries to :mod:`.uploader`, what a crashed mount
left to :mod:`.recovery`.

Thread safety. Lock order (never take an earlier lock while holding a later one):

1. ``Filesystem._namespace_lock`` (RLock): held by calls that change which paths exist
   (create, open's bookkeeping, unlink, mkdir, rmdir, rename, symlink, chmod...), so
   they apply one at a time;
2. ``OpenFile.lock`` (RLock): one per open file, held while its staged copy is written,
   truncated, downloaded or uploaded;
3. ``Filesystem._handles_lock`` and the cache's internal lock: leaves, never held while
   calling out.

Reads of ``_files`` without the namespace lock are single dict lookups (atomic in
CPython); reads of staged bytes use pread on a descriptor that stays open while any handle
exists.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import platformdirs
from cachetools import LRUCache

from ..connection import PART_SIZE
from ..exceptions import QarnotException
from . import recovery
from .attrs import (
    PERMISSION_BITS,
    SYMLINK_MAX,
    Attributes,
    Defaults,
    SymlinkScan,
    dir_attributes,
    encode_metadata,
    may_be_symlink,
    now_ns,
    object_attributes,
)
from .deletes import DEFAULT_DELAY, OrderedStorage
from .errors import FsError
from .handles import Handle, OpenFile
from .journal import UPLOADING, Journal, Tolerant
from .keys import KEY_MAX, KeyMapper, is_fuse_hidden, is_within, name_of, normalize, parent_of
from .metacache import MetaCache, Node
from .namespace import Namespace
from .reader import Reader
from .staging import StagedFile, StagingArea
from .status import pending_summary
from .uploader import RetryQueue, Uploader

if TYPE_CHECKING:
    from ..bucket import Bucket
    from ..objects import ObjectInfo
    from .storage import Storage

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UNCHANGED_ID = (-1, 0xFFFFFFFF)
STATFS_BLOCK = 4096


def default_staging_dir() -> Path:
    """Where staged copies go unless configured: the user's cache folder."""
    return platformdirs.user_cache_path("qarnotfs") / "staging"


@dataclass
class FsOptions:
    """How the filesystem behaves; every field has a default."""

    prefix: str = ""
    read_only: bool = False
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    staging_dir: Path = field(default_factory=default_staging_dir)
    cache_ttl: float = 60.0
    negative_ttl: float = 5.0
    cache_size: int = 100_000
    statfs_total_bytes: int = 1 << 50
    statfs_total_inodes: int = 1 << 32
    workers: int = 16
    """Parallel requests for listings' HEADs and folder renames."""
    read_workers: int = 16
    """Parallel ranged GETs of the read-ahead, shared by all open files."""
    delete_delay: float = DEFAULT_DELAY
    """Seconds an unlink's delete waits to be batched with others (0: sent at once)."""
    symlink_scan: SymlinkScan = "marked"
    """Which listed objects are HEADed to find links: "marked" (only qarnotfs's, one
    multipart part), "small" (every object of 1 to 4095 bytes: s3fs's links too)."""
    clock: Callable[[], float] = time.monotonic
    """The caches' clock (tests inject one to expire entries without sleeping)."""
    retry_first_delay: float = 0.5
    retry_max_delay: float = 30.0
    """A failed upload is retried in the background after 0.5 s, then twice as long after
    each failure, at most every 30 s."""
    part_size: int = PART_SIZE


class Filesystem:
    """A bucket (or a prefix of it) as a tree of folders, files and symbolic links."""

    def __init__(self, storage: Storage, options: FsOptions) -> None:
        # Every part of the core uses this bucket: unlinks are batched, and any other
        # request sends the waiting deletes first (deletes.py).
        self._deletes = OrderedStorage(storage, options.delete_delay)
        bucket = self.bucket = cast("Bucket", self._deletes)
        self.options = options
        self.keys = KeyMapper(options.prefix)
        self.defaults = Defaults(options.uid, options.gid, options.umask, time_ns=now_ns(),
                                 symlink_scan=options.symlink_scan)
        self.cache = MetaCache(options.cache_ttl, options.negative_ttl, options.cache_size,
                               timer=options.clock)
        self._pool = ThreadPoolExecutor(max_workers=max(1, options.workers),
                                        thread_name_prefix="qarnotfs-fs")
        self._read_pool = ThreadPoolExecutor(max_workers=max(1, options.read_workers),
                                             thread_name_prefix="qarnotfs-read")
        self.namespace = Namespace(bucket, self.keys, self.cache, self.defaults, self._pool)
        self._staging = StagingArea(options.staging_dir, bucket.name, self.keys.prefix)
        self._namespace_lock = threading.RLock()
        self._files: dict[str, OpenFile] = {}
        self._handles: dict[int, Handle] = {}
        self._handles_lock = threading.Lock()
        # The ETag of each path at its last open, for keep_cache (bounded like the cache).
        self._opened_etags: LRUCache[str, str] = LRUCache(maxsize=max(1, options.cache_size))
        self._numbers = itertools.count(1)
        self._caller = threading.local()
        # Steps of uploads already under way are journaled when possible: a full staging
        # disk must not stop an upload (it only loses the ability to resume it).
        self._steps = cast(Journal, Tolerant(self._staging.journal))
        self._uploader = Uploader(bucket, self._steps, options.part_size,
                                  bucket.connection.max_concurrency)
        self._retries: RetryQueue[OpenFile] = RetryQueue(
            self._retry_upload, options.retry_first_delay, options.retry_max_delay)
        self._shut_down = False
        self._recover()

    @property
    def staging_root(self) -> Path:
        """This mount's staging folder (its journal is there)."""
        return self._staging.root

    # == context =========================================================================

    @contextlib.contextmanager
    def with_caller(self, uid: int, gid: int) -> Iterator[None]:
        """Within the block (this thread only), new files belong to ``uid``/``gid``."""
        previous = getattr(self._caller, "ids", None)
        self._caller.ids = (uid, gid)
        try:
            yield
        finally:
            self._caller.ids = previous

    def _owner(self) -> tuple[int, int]:
        ids = getattr(self._caller, "ids", None)
        return ids if ids is not None else (self.options.uid, self.options.gid)

    def _check_writable(self) -> None:
        if self.options.read_only:
            raise FsError(errno.EROFS, "read-only mount")

    # == lookups =========================================================================

    def _node(self, path: str) -> Node:
        """What is at ``path`` (normalized): an open file first, else the namespace."""
        held = self._files.get(path)
        if held is not None:
            return Node(held.current_attrs(), exact=True)
        return self.namespace.lookup(path)

    def _exists(self, path: str) -> bool:
        try:
            self._node(path)
        except FsError as error:
            if error.errno == errno.ENOENT:
                return False
            raise
        return True

    def _require_folder(self, path: str) -> None:
        """FsError unless the parent of ``path`` exists and is a folder."""
        parent = parent_of(path)
        if not self._node(parent).attrs.is_dir:
            raise FsError(errno.ENOTDIR, parent)

    def getattr(self, path: str, fh: int | None = None) -> Attributes:
        if fh is not None:
            return self._handle(fh).file.current_attrs()
        return self._node(normalize(path)).attrs

    def readdir(self, path: str) -> list[tuple[str, Attributes]]:
        path = normalize(path)
        node = self._node(path)
        if not node.attrs.is_dir:
            raise FsError(errno.ENOTDIR, path)
        children = self.namespace.children(path)
        for held in list(self._files.values()):
            if not held.unlinked and held.path != "/" and parent_of(held.path) == path:
                children[name_of(held.path)] = Node(held.current_attrs(), exact=True)
        entries = [(".", node.attrs), ("..", node.attrs)]
        entries.extend((name, children[name].attrs) for name in sorted(children))
        return entries

    def readlink(self, path: str) -> str:
        path = normalize(path)
        if not self._node(path).attrs.is_link:
            raise FsError(errno.EINVAL, f"{path} is not a symbolic link")
        return self.bucket.read(self.keys.file_key(path)).decode("utf-8", "surrogateescape")

    def statfs(self) -> dict[str, int]:
        blocks = self.options.statfs_total_bytes // STATFS_BLOCK
        inodes = self.options.statfs_total_inodes
        return {"f_bsize": STATFS_BLOCK, "f_frsize": STATFS_BLOCK, "f_blocks": blocks,
                "f_bfree": blocks, "f_bavail": blocks, "f_files": inodes, "f_ffree": inodes,
                "f_favail": inodes, "f_namemax": 255}

    # == handles =========================================================================

    def _handle(self, fh: int) -> Handle:
        with self._handles_lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF, f"no open file {fh}")
        return handle

    def _new_handle(self, held: OpenFile, flags: int) -> int:
        number = next(self._numbers)
        with self._handles_lock:
            self._handles[number] = Handle(number, held, flags,
                                           Reader(self.bucket, self._read_pool))
        return number

    def open(self, path: str, flags: int) -> int:
        """Open an existing file. Content is staged lazily: O_TRUNC stages an empty copy,
        else the first write or truncate downloads it (so ``touch`` or a chmod through an
        open handle never transfers the content)."""
        path = normalize(path)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writing or flags & os.O_TRUNC:
            self._check_writable()
        held = self._hold(path)
        try:
            if writing and flags & os.O_TRUNC:
                with held.lock:
                    self._stage(held, empty=True)
                    assert held.staged is not None
                    held.staged.truncate(0)
                    held.attrs.size = 0
                    self._touch(held)
        except BaseException:
            self._let_go(held)
            raise
        return self._new_handle(held, flags)

    def keep_cache(self, fh: int) -> bool:
        """True if the kernel may keep the pages it cached of this file at its last open:
        the file is not being written and its object's ETag is the one seen then."""
        held = self._handle(fh).file
        node = None if held.staged is not None or held.dirty else self.cache.get(held.path)
        etag = node.etag if node is not None else ""
        with self._handles_lock:
            previous = self._opened_etags.pop(held.path, None)
            if etag:
                self._opened_etags[held.path] = etag
        return bool(etag) and previous == etag

    def _hold(self, path: str) -> OpenFile:
        """The OpenFile of an existing file at ``path``, with one more handle counted."""
        with self._namespace_lock:
            held = self._files.get(path)
            if held is None:
                node = self.namespace.exact(path)
                if node.attrs.is_dir:
                    raise FsError(errno.EISDIR, path)
                if node.attrs.is_link:
                    raise FsError(errno.ELOOP, path)
                held = OpenFile(path, self.keys.file_key(path), node.attrs, on_bucket=True)
                self._files[path] = held
            held.handles += 1
            return held

    def _stage(self, held: OpenFile, empty: bool = False) -> None:
        """Give ``held`` a staged copy (its content downloaded unless ``empty``)."""
        if held.staged is not None:
            return
        with self._staging.guard(f"staging {held.path}"):
            if empty or not held.on_bucket:
                held.staged = self._staging.new_file(name_of(held.path))
                held.attrs.size = 0
                return
            local = self._staging.new_path(name_of(held.path))
            try:
                self.bucket.download(held.key, local, size=held.attrs.size)
            except BaseException:
                local.unlink(missing_ok=True)
                raise
            held.staged = StagedFile(local)
            held.attrs.size = held.staged.size()

    def _touch(self, held: OpenFile) -> None:
        held.dirty = True
        held.attrs.mtime_ns = held.attrs.ctime_ns = now_ns()
        self._track(held)

    def _track(self, held: OpenFile) -> int | None:
        """The journal entry of ``held`` (about to be dirty), recorded the first time
        (None for an unlinked file: it is never uploaded).

        For an existing object, its ETag then is the base a recovery compares with (one
        HEAD, unless the mount just uploaded it).
        """
        if held.journal_id is not None or held.unlinked:
            return held.journal_id
        assert held.staged is not None
        if held.on_bucket and held.base is None:
            info = self.bucket.stat(held.key)
            held.base = (info.etag, info.last_modified.isoformat()) if info else None
        attrs = held.attrs
        with self._staging.guard(f"journaling {held.path}"):
            held.journal_id = self._staging.journal.add(
                staged=held.staged.path.name, path=held.path, key=held.key,
                bucket=self.bucket.name, prefix=self.keys.prefix,
                base_etag=held.base[0] if held.base else None,
                base_modified=held.base[1] if held.base else None,
                mode=attrs.mode, uid=attrs.uid, gid=attrs.gid, mtime_ns=attrs.mtime_ns)
        return held.journal_id

    def create(self, path: str, mode: int, flags: int) -> int:
        self._check_writable()
        path = normalize(path)
        key = self.keys.file_key(path)
        with self._namespace_lock:
            if self._exists(path):
                if flags & os.O_EXCL:
                    raise FsError(errno.EEXIST, path)
                if self._node(path).attrs.is_dir:
                    raise FsError(errno.EISDIR, path)
                return self.open(path, flags)
            self._require_folder(path)
            uid, gid = self._owner()
            now = now_ns()
            attrs = Attributes(stat.S_IFREG | (mode & PERMISSION_BITS), 0, uid, gid,
                               now, now, now)
            with self._staging.guard(f"creating {path}"):
                staged = self._staging.new_file(name_of(path))
            held = OpenFile(path, key, attrs, on_bucket=False, dirty=True, handles=1,
                            staged=staged)
            try:
                self._track(held)
            except BaseException:
                staged.discard()
                raise
            self._files[path] = held
        return self._new_handle(held, flags)

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handle(fh)
        held = handle.file
        staged = held.staged
        if staged is not None:
            return staged.read(size, offset)
        return handle.reader.read(held.key, size, offset, held.attrs.size)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handle(fh)
        if not handle.writable:
            raise FsError(errno.EBADF, "not open for writing")
        held = handle.file
        with held.lock:
            self._stage(held)
            assert held.staged is not None
            if handle.appending:
                offset = held.attrs.size
            self._track(held)  # before the bytes land: a crash must find them
            try:
                with self._staging.guard(f"writing {held.path}"):
                    written = held.staged.write(data, offset)
            finally:  # a full disk may have taken part of the data
                held.attrs.size = held.staged.size()
                self._touch(held)
            self._send_early(held, offset, written)
        return written

    def _send_early(self, held: OpenFile, offset: int, written: int) -> None:
        """Let the parts of a large file go while it is written (streaming.py)."""
        if held.stream is None:
            if held.journal_id is None:
                return
            assert held.staged is not None
            held.stream = self._uploader.stream(held.journal_id, held.key, held.staged.path,
                                                encode_metadata(held.current_attrs()))
        held.stream.wrote(offset, written)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._check_writable()
        if length < 0:
            raise FsError(errno.EINVAL, "negative length")
        if fh is not None:
            held = self._handle(fh).file
        else:
            path = normalize(path)
            if self._node(path).attrs.is_dir:
                raise FsError(errno.EISDIR, path)
            held = self._hold(path)
        try:
            with held.lock:
                self._stage(held, empty=length == 0)
                assert held.staged is not None
                with self._staging.guard(f"truncating {held.path}"):
                    held.staged.truncate(length)
                if held.stream is not None:
                    held.stream.truncated(length)
                held.attrs.size = length
                self._touch(held)
            if fh is None:
                self._upload(held)
        finally:
            if fh is None:
                self._let_go(held)

    def flush(self, fh: int) -> None:
        self._upload(self._handle(fh).file)

    def fsync(self, fh: int, datasync: bool) -> None:
        self._upload(self._handle(fh).file)

    def fsyncdir(self, path: str) -> None:
        """Make the folder's unlinks durable: send queued deletes, raise if they fail."""
        self._deletes.flush(raise_errors=True)

    def release(self, fh: int) -> None:
        with self._handles_lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            raise FsError(errno.EBADF, f"no open file {fh}")
        self._let_go(handle.file)

    def _let_go(self, held: OpenFile) -> None:
        """Count one handle less; the last one uploads what is dirty and frees the copy."""
        with self._namespace_lock:
            held.handles -= 1
            if held.handles > 0:
                return
        if held.dirty and not held.unlinked:
            with contextlib.suppress(FsError):  # logged; retried in the background
                self._upload(held)
        self._release_if_idle(held)

    def _release_if_idle(self, held: OpenFile) -> None:
        """Free the staged copy of a file no handle holds once nothing is pending."""
        with self._namespace_lock, held.lock:
            if held.handles > 0:
                return
            if held.unlinked or not held.dirty:
                held.discard_staged()
                if self._files.get(held.path) is held:
                    del self._files[held.path]

    def _retry_upload(self, held: OpenFile) -> None:
        """The background retry of a failed upload (a new failure schedules the next)."""
        try:
            self._upload(held)
        except FsError:
            return
        self._release_if_idle(held)

    def _upload(self, held: OpenFile) -> None:
        """Upload the staged copy if it is newer than the object; FsError(EIO) on failure
        (the copy and its journal entry stay, and a background retry is scheduled)."""
        if held.recovered:
            self._settle(held)
        with held.lock:
            if not held.dirty or held.unlinked or held.staged is None:
                return
            attrs = held.current_attrs()
            try:
                entry_id = self._track(held)
                assert entry_id is not None  # not unlinked
                self._steps.update(
                    entry_id, state=UPLOADING, mode=attrs.mode, uid=attrs.uid, gid=attrs.gid,
                    mtime_ns=attrs.mtime_ns)
                stream, held.stream = held.stream, None
                self._uploader.upload(entry_id, held.key, held.staged.path,
                                      encode_metadata(attrs), stream)
            except (QarnotException, OSError, sqlite3.Error, FsError) as error:
                self._upload_failed(held, error)
                raise FsError(errno.EIO, f"upload of {held.key} failed: {error}") from error
            self._committed(held)
            log.info("uploaded %r (%d bytes)", held.key, attrs.size)
            self.cache.put(held.path, Node(attrs, exact=True))

    def _committed(self, held: OpenFile) -> None:
        """The bucket has the staged content: the journal entry goes, the file is clean."""
        if held.journal_id is not None:
            self._steps.remove(held.journal_id)
        held.journal_id, held.base, held.recovered = None, None, False
        self._retries.forget(held)
        held.dirty = False
        held.on_bucket = True

    def _upload_failed(self, held: OpenFile, error: BaseException) -> None:
        assert held.staged is not None
        if held.journal_id is not None:
            with contextlib.suppress(sqlite3.Error):
                self._staging.journal.failed(held.journal_id, str(error))
        try:  # the staged copy is now the only version of the data
            self._staging.make_durable(held.staged)
        except (OSError, sqlite3.Error) as sync_error:
            log.error("could not flush the staged copy %s to disk: %s", held.staged.path,
                      sync_error)
        delay = self._retries.schedule(held)
        log.error("upload of %r failed (the staged copy %s is kept and retried in the "
                  "background in %.1f s): %s", held.key, held.staged.path, delay, error)

    def _settle(self, held: OpenFile) -> None:
        """Before the first upload of a recovered file: where it goes (a conflict moves
        it to a new name, so the namespace lock is taken), or nothing to send."""
        with self._namespace_lock, held.lock:
            if not held.recovered or not held.dirty or held.unlinked or held.staged is None:
                return
            old_path = held.path
            try:
                needed = recovery.settle(self.bucket, held, self.options.part_size)
            except (QarnotException, OSError) as error:
                self._upload_failed(held, error)
                raise FsError(errno.EIO, f"upload of {held.key} failed: {error}") from error
            held.recovered = False
            if not needed:
                self._committed(held)
            elif held.path != old_path:
                assert held.journal_id is not None
                self._steps.update(held.journal_id, path=held.path, key=held.key)
                if self._files.get(old_path) is held:
                    del self._files[old_path]
                self._files[held.path] = held

    def _recover(self) -> None:
        """Take over what crashed mounts left: their dirty files become pending uploads
        (retried at once in the background), their unfinished uploads are resumed or
        aborted."""
        journal = self._staging.journal
        with self._staging.orphans() as orphans:
            for folder, other in orphans:
                for entry in other.entries():
                    if (folder / entry.staged).is_file():
                        os.replace(folder / entry.staged, self._staging.root / entry.staged)
                        journal.adopt(entry, other.parts(entry.id))
                    other.remove(entry.id, abandon=False)
        entries = journal.entries()
        kept: set[str] = set()
        pending: list[OpenFile] = []
        for entry in entries:
            staged = self._staging.root / entry.staged
            if not staged.is_file() or entry.path in self._files:
                log.error("the journal names %s for %r, but it is %s", staged, entry.key,
                          "missing" if not staged.is_file() else "a duplicate")
                journal.remove(entry.id, abandon=True)
                continue
            kept.add(entry.staged)
            held = recovery.reopen(entry, staged)
            self._files[held.path] = held
            pending.append(held)
        self._staging.remove_strays(kept)
        if kept:
            log.warning("a previous mount stopped with %d file(s) not uploaded; uploading "
                        "them now: %s", len(kept), ", ".join(sorted(
                            e.path for e in entries if e.staged in kept)[:10]))
        # Before any new upload starts, so that none can be taken for an orphan.
        if kept or journal.abandoned() or journal.intents():
            try:
                self._uploader.clean_orphans(self.keys.prefix)
            except QarnotException as error:
                log.warning("could not check for unfinished uploads: %s", error)
        for held in pending:
            self._retries.schedule(held, now=True)

    # == namespace changes ===============================================================

    def unlink(self, path: str) -> None:
        self._check_writable()
        path = normalize(path)
        with self._namespace_lock:
            if is_fuse_hidden(path):
                self._drop_hidden(path)
                return
            if self._node(path).attrs.is_dir:
                raise FsError(errno.EISDIR, path)
            key = self.keys.file_key(path)
            held = self._files.get(path)
            if held is not None:
                self._detach(held)
            self.bucket.delete(key)
            self.cache.remove(path)
            self._keep_folder(parent_of(path))

    def _detach(self, held: OpenFile) -> None:
        """Make an open file nameless: still usable through its handles, never uploaded."""
        with held.lock:
            if held.handles > 0 and held.staged is None and held.on_bucket:
                self._stage(held)  # its handles must keep reading after the delete
            held.unlinked = True
            held.dirty = False
            self._forget_journal(held)
            if self._files.get(held.path) is held:
                del self._files[held.path]
            if held.handles == 0:
                held.discard_staged()

    def _hide(self, old: str, new: str, flags: int) -> None:
        """A rename to or from a ``.fuse_hidden`` name (keys.py): libfuse unlinking an
        open file (``hard_remove`` is off), which is the unlink of ``old``, the file
        staying reachable at ``new`` for stat (nlink 0) until its last handle is closed.

        Nothing of it reaches the bucket. Any other such rename is refused (EINVAL): the
        names are libfuse's, and an unlinked file cannot get a name back."""
        held = self._files.get(old)
        if held is None and is_fuse_hidden(old):
            raise FsError(errno.ENOENT, old)
        if held is None or held.handles == 0 or not is_fuse_hidden(new) \
                or parent_of(old) != parent_of(new):
            raise FsError(errno.EINVAL, f"{old} -> {new}: names starting with '.fuse_hidden' "
                          "are reserved by libfuse for open files that were unlinked")
        replaced = self._files.get(new)
        if replaced is held:
            return
        if replaced is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST, new)
            self._detach(replaced)
        if held.unlinked:
            del self._files[old]
        else:
            self.unlink(old)  # deletes the object (queued) and detaches ``held``
        with held.lock:
            held.path = new
            self._files[new] = held

    def _drop_hidden(self, path: str) -> None:
        """libfuse's unlink of a ``.fuse_hidden`` name after the last close (usually
        gone already: the release dropped it): local state only, no request."""
        held = self._files.get(path)
        if held is None:
            raise FsError(errno.ENOENT, path)
        self._detach(held)

    def _forget_journal(self, held: OpenFile) -> None:
        """Nothing of ``held`` is to be uploaded any more (deleted, or uploaded aside)."""
        self._retries.forget(held)
        if held.stream is not None:
            held.stream.cancel()
            held.stream = None
        if held.journal_id is not None:
            self._steps.remove(held.journal_id, abandon=True)
            held.journal_id = None
        held.base = None

    def _keep_folder(self, folder: str) -> None:
        """Write the marker of ``folder`` if removing its last entry made it vanish.

        On S3 a folder without a marker exists only through its keys; POSIX says it stays
        until rmdir, so the mount writes the marker that keeps it.
        """
        if folder == "/":
            return
        if self.cache.listing_size(folder):
            return
        if any(is_within(held.path, folder) and not held.unlinked
               for held in self._files.values()):
            return
        prefix = self.keys.dir_prefix(folder)
        if self.bucket.has_objects_under(prefix):
            return
        known = self.cache.get(folder)
        attrs = known.attrs if known is not None else dir_attributes(self.defaults)
        self.bucket.put(prefix, b"", encode_metadata(attrs))
        self.cache.put(folder, Node(attrs, exact=True))

    def mkdir(self, path: str, mode: int) -> None:
        self._check_writable()
        path = normalize(path)
        if path == "/":
            raise FsError(errno.EEXIST, path)
        prefix = self.keys.dir_prefix(path)
        with self._namespace_lock:
            if self._exists(path):
                raise FsError(errno.EEXIST, path)
            self._require_folder(path)
            uid, gid = self._owner()
            now = now_ns()
            attrs = Attributes(stat.S_IFDIR | (mode & PERMISSION_BITS), 0, uid, gid,
                               now, now, now, nlink=2)
            self.bucket.put(prefix, b"", encode_metadata(attrs))
            self.cache.put(path, Node(attrs, exact=True))
            self.cache.put_listing(path, {})

    def rmdir(self, path: str) -> None:
        self._check_writable()
        path = normalize(path)
        if path == "/":
            raise FsError(errno.EBUSY, "the root of the mount")
        with self._namespace_lock:
            if not self._node(path).attrs.is_dir:
                raise FsError(errno.ENOTDIR, path)
            prefix = self._require_empty(path)
            self._deletes.delete_now(prefix)
            self.cache.remove(path, tree=True)
            self._keep_folder(parent_of(path))

    def _require_empty(self, path: str) -> str:
        """The folder's prefix; FsError(ENOTEMPTY) if anything is under it, hidden or not."""
        if any(is_within(held.path, path) and held.path != path and not held.unlinked
               for held in self._files.values()):
            raise FsError(errno.ENOTEMPTY, path)
        prefix = self.keys.dir_prefix(path)
        if any(key != prefix for key in self.bucket.first_keys(prefix, 2)):
            raise FsError(errno.ENOTEMPTY, path)
        return prefix

    def symlink(self, target: str, link_path: str) -> None:
        self._check_writable()
        path = normalize(link_path)
        key = self.keys.file_key(path)
        body = target.encode("utf-8", "surrogateescape")
        if not body:
            raise FsError(errno.ENOENT, "empty link target")
        if len(body) > SYMLINK_MAX:
            raise FsError(errno.ENAMETOOLONG, "link target too long")
        with self._namespace_lock:
            if self._exists(path):
                raise FsError(errno.EEXIST, path)
            self._require_folder(path)
            uid, gid = self._owner()
            now = now_ns()
            attrs = Attributes(stat.S_IFLNK | 0o777, len(body), uid, gid, now, now, now)
            # Marked, so that listings tell it is a link without a HEAD (attrs.py).
            self.bucket.put_marked(key, body, encode_metadata(attrs))
            self.cache.put(path, Node(attrs, exact=True))

    def link(self, target: str, link_path: str) -> None:
        self._check_writable()
        raise FsError(errno.EPERM, "hard links are not supported")

    # == rename ==========================================================================

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        self._check_writable()
        if flags & ~RENAME_NOREPLACE:
            raise FsError(errno.EINVAL, "only RENAME_NOREPLACE is supported")
        old, new = normalize(old), normalize(new)
        if "/" in (old, new):
            raise FsError(errno.EBUSY, "the root of the mount")
        with self._namespace_lock:
            if is_fuse_hidden(old) or is_fuse_hidden(new):
                self._hide(old, new, flags)
                return
            source = self._node(old)
            if flags & RENAME_NOREPLACE and self._exists(new):
                raise FsError(errno.EEXIST, new)
            if old == new:
                return
            if source.attrs.is_dir and is_within(new, old):
                raise FsError(errno.EINVAL, "cannot move a folder into itself")
            self._require_folder(new)
            target = self._node(new) if self._exists(new) else None
            if target is not None:
                if flags & RENAME_NOREPLACE:
                    raise FsError(errno.EEXIST, new)
                if source.attrs.is_dir and not target.attrs.is_dir:
                    raise FsError(errno.ENOTDIR, new)
                if not source.attrs.is_dir and target.attrs.is_dir:
                    raise FsError(errno.EISDIR, new)
            if source.attrs.is_dir:
                self._rename_folder(old, new, source, target is not None)
            else:
                self._rename_file(old, new, source)
            if parent_of(old) != parent_of(new):
                self._keep_folder(parent_of(old))

    def _rename_file(self, old: str, new: str, source: Node) -> None:
        old_key, new_key = self.keys.file_key(old), self.keys.file_key(new)
        replaced = self._files.get(new)
        if replaced is not None:
            self._detach(replaced)
        held = self._files.get(old)
        attrs = source.attrs
        if held is None:
            self._copy_key(old_key, new_key, attrs.size, link=attrs.is_link)
        else:
            with held.lock:
                attrs = held.current_attrs()
                if held.dirty and held.staged is not None:
                    self.bucket.upload(new_key, held.staged.path, encode_metadata(attrs))
                    held.dirty = False
                    self._forget_journal(held)
                else:
                    self.bucket.copy(old_key, new_key)
                held.path, held.key, held.on_bucket = new, new_key, True
                del self._files[old]
                self._files[new] = held
        self._deletes.delete_now(old_key)  # a rename is complete when it returns
        self.cache.remove(old)
        self.cache.put(new, Node(attrs, exact=source.exact or held is not None))

    def _rename_folder(self, old: str, new: str, source: Node, replacing: bool) -> None:
        old_prefix, new_prefix = self.keys.dir_prefix(old), self.keys.dir_prefix(new)
        if replacing:
            self._require_empty(new)  # its marker is overwritten below, never deleted first
        infos = list(self.bucket.iter_objects(old_prefix))
        moves = [(info.key, new_prefix + info.key[len(old_prefix):]) for info in infos]
        if any(len(key.encode("utf-8")) > KEY_MAX for _, key in moves):
            raise FsError(errno.ENAMETOOLONG, f"a key under {new} would be too long")
        self._copy_all(moves, infos, keep=new_prefix if replacing else None)
        if not infos:  # a folder the mount knows but the bucket has no key for yet
            self.bucket.put(new_prefix, b"", encode_metadata(source.attrs))
        for held in [h for h in self._files.values() if is_within(h.path, old)]:
            with held.lock:
                del self._files[held.path]
                held.path = new + held.path[len(old):]
                if not held.unlinked:  # else a .fuse_hidden name: it has no key
                    held.key = self.keys.file_key(held.path)
                self._files[held.path] = held
                if held.journal_id is not None:
                    self._steps.update(held.journal_id, path=held.path, key=held.key)
        self.bucket.delete_many(key for key, _ in moves)
        self.cache.remove(old, tree=True)
        self.cache.forget(new)
        self.cache.put(new, source)

    def _copy_key(self, source: str, destination: str, size: int | None, link: bool,
                  metadata: dict[str, str] | None = None) -> None:
        """Server-side copy (one request when ``size`` is known), except for links: a
        CopyObject would drop their mark (the multipart ETag), so they are written again."""
        if not link:
            self.bucket.copy(source, destination, metadata, size=size)
            return
        if metadata is None:
            info = self.bucket.stat(source)
            if info is None:
                raise FsError(errno.ENOENT, source)
            metadata = info.metadata or {}
        self.bucket.put_marked(destination, self.bucket.read(source), metadata)

    def _copy_all(self, moves: list[tuple[str, str]], infos: list[ObjectInfo],
                  keep: str | None) -> None:
        """Copy every (source, destination) in parallel; all or nothing.

        If one copy fails, the copies already made are deleted (except ``keep``, the
        marker of a folder being replaced) and the first error is raised, so a failed
        rename leaves no half-copied destination that could pass for the result.
        """
        def copy(move: tuple[str, str], info: ObjectInfo) -> QarnotException | FsError | None:
            marked = may_be_symlink(info.size, info.e_tag, "marked")
            try:
                self._copy_key(*move, size=info.size, link=marked)
            except (QarnotException, FsError) as error:
                return error
            return None

        outcomes = list(self._pool.map(copy, moves, infos))
        failures = [error for error in outcomes if error is not None]
        if not failures:
            return
        made = [move[1] for move, error in zip(moves, outcomes, strict=True)
                if error is None and move[1] != keep]
        log.error("rename failed after %d of %d copies (undoing them): %s",
                  len(made), len(moves), failures[0])
        try:
            self.bucket.delete_many(made)
        except QarnotException as error:
            log.error("could not undo the copies of a failed rename: %s", error)
        raise failures[0]

    # == attributes ======================================================================

    def chmod(self, path: str, mode: int) -> None:
        def change(attrs: Attributes) -> None:
            attrs.mode = stat.S_IFMT(attrs.mode) | (mode & PERMISSION_BITS)

        self._change_attributes(path, change)

    def chown(self, path: str, uid: int, gid: int) -> None:
        def change(attrs: Attributes) -> None:
            if uid not in UNCHANGED_ID:
                attrs.uid = uid
            if gid not in UNCHANGED_ID:
                attrs.gid = gid

        self._change_attributes(path, change)

    def utimens(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        def change(attrs: Attributes) -> None:
            if atime_ns is not None:
                attrs.atime_ns = atime_ns
            if mtime_ns is not None:
                attrs.mtime_ns = mtime_ns

        self._change_attributes(path, change)

    def _change_attributes(self, path: str, change: Callable[[Attributes], None]) -> None:
        """Apply ``change``: to the staged attributes, or to the object's metadata."""
        self._check_writable()
        path = normalize(path)
        if path == "/":
            return  # the root has no object to hold attributes: accepted, not stored
        with self._namespace_lock:
            held = self._files.get(path)
            if held is not None and held.staged is not None:
                with held.lock:
                    change(held.attrs)
                    held.attrs.ctime_ns = now_ns()
                    held.dirty = True
                    self._track(held)
                    if held.stream is not None:
                        held.stream.metadata_stale = True
                return
            node = self.namespace.lookup(path)
            if node.attrs.is_dir:
                attrs = self.namespace.exact(path).attrs
                change(attrs)
                attrs.ctime_ns = now_ns()
                self.bucket.put(self.keys.dir_prefix(path), b"", encode_metadata(attrs))
            else:
                attrs = self._change_object(self.keys.file_key(path), change)
            self.cache.put(path, Node(attrs, exact=True))
            if held is not None:
                held.attrs = attrs

    def _change_object(self, key: str, change: Callable[[Attributes], None]) -> Attributes:
        """Rewrite an object's metadata in place, keeping metadata that is not ours."""
        info = self.bucket.stat(key)
        if info is None:
            raise FsError(errno.ENOENT, key)
        attrs = object_attributes(info, self.defaults)
        change(attrs)
        attrs.ctime_ns = now_ns()
        self._copy_key(key, key, info.size, may_be_symlink(info.size, info.e_tag, "marked"),
                       {**(info.metadata or {}), **encode_metadata(attrs)})
        return attrs

    # == lifecycle =======================================================================

    def pending_uploads(self) -> list[str]:
        """Paths whose content is not in the bucket yet."""
        return sorted(h.path for h in list(self._files.values()) if h.dirty and not h.unlinked)

    def shutdown(self) -> None:
        """Upload what is pending (one last try), close every copy, free the staging area
        (kept, with its journal, if something could not be uploaded: the next mount of
        the bucket and prefix with this staging folder uploads it)."""
        if self._shut_down:
            return
        self._shut_down = True
        self._retries.stop()
        summary = pending_summary(str(self._staging.root))
        if summary:
            log.info("waiting for %s", summary)
        failed = False
        for held in list(self._files.values()):
            try:
                self._upload(held)
            except FsError:
                failed = True
        with self._namespace_lock:
            for held in list(self._files.values()):
                with held.lock:
                    if held.staged is not None:
                        if held.dirty:
                            held.staged.close()
                        else:
                            held.discard_staged()
            self._files.clear()
        with self._handles_lock:
            for handle in self._handles.values():
                if handle.file.unlinked:
                    handle.file.discard_staged()
            self._handles.clear()
        self._pool.shutdown(wait=True)
        self._uploader.close()
        self._read_pool.shutdown(wait=True, cancel_futures=True)
        self._deletes.close()
        with contextlib.suppress(QarnotException, sqlite3.Error):
            self._uploader.abort_abandoned()
        self._staging.close(keep=failed)

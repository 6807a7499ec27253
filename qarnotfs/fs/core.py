"""The filesystem core: POSIX-like calls on a bucket, with no FUSE types (see SEMANTICS.md).

Owns: :class:`FsOptions` and :class:`Filesystem`, the namespace rules of every call the
FUSE adapter forwards: which requests each call makes, what is refused with which errno.
Lookups and listings are delegated to :mod:`.namespace`, attributes to :mod:`.attrs`,
extended attributes' format and rules to :mod:`.xattrs`, and everything about a file's
content and upload (staging, writes, uploads, retries, early parts, crash recovery) to
:mod:`.writeback`, which keeps one :class:`~.writeback.Item` per file the mount holds.

Thread safety. Lock order (never take an earlier lock while holding a later one):

1. path claims (:mod:`.claims`): a call claims the paths it changes (a folder's whole
   tree for rmdir and a folder rename) for its duration, so calls on unrelated paths
   never wait for each other, even while one of them waits for the storage;
2. ``Item.lock`` (writeback.py): one per held file, across its upload or download;
3. leaves, never held while calling out: ``Items``' table lock, ``_handles_lock``, the
   cache's lock, the journal's lock.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs
from cachetools import LRUCache

from ..exceptions import MissingObjectException, QarnotException
from . import xattrs
from .attrs import (
    PERMISSION_BITS,
    SPECIAL_TYPES,
    SYMLINK_MAX,
    Attributes,
    Defaults,
    SymlinkScan,
    dir_attributes,
    encode_metadata,
    folder_links,
    merged_metadata,
    needs_head,
    now_ns,
    object_attributes,
)
from .claims import PathClaims, one, tree
from .deletes import DEFAULT_DELAY, OrderedStorage
from .errors import FsError
from .handles import Handle, Opening, PageCache
from .inodes import InodeTable
from .keys import KEY_MAX, KeyMapper, is_fuse_hidden, is_within, name_of, normalize, parent_of
from .metacache import MetaCache, Node
from .namespace import Lookups, Namespace
from .prefetch import FIRST_BYTES, FirstBytes, FirstPages
from .readcache import ReadCache, open_read_cache
from .reader import DEFAULT_BUDGET, INITIAL_PIECE, ReadBudget, Reader
from .staging import StagingArea
from .status import pending_summary
from .storage import PART_SIZE
from .viewtimes import ViewTimes
from .writeback import Item, Items, WriteBack, WriteBackOptions

if TYPE_CHECKING:
    from ..objects import ObjectInfo, ObjectRead
    from .storage import Storage

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UNCHANGED_ID = (-1, 0xFFFFFFFF)
STATFS_BLOCK = 4096


def default_staging_dir() -> Path:
    """Where staged copies go unless configured: the user's cache folder."""
    return platformdirs.user_cache_path("qarnotfs") / "staging"


def default_read_cache_dir() -> Path:
    """Where the read cache keeps blocks unless configured: the user's cache folder."""
    return platformdirs.user_cache_path("qarnotfs") / "blocks"


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
    read_budget: int = DEFAULT_BUDGET
    """Bytes of read pieces all open files hold before reading ahead waits (reader.py)."""
    read_cache_dir: Path = field(default_factory=default_read_cache_dir)
    read_cache_size: int | None = None
    """Bound of the local read cache in bytes: None the default (readcache.py), 0 none."""
    delete_delay: float = DEFAULT_DELAY
    """Seconds an unlink's delete waits to be batched with others (0: sent at once)."""
    symlink_scan: SymlinkScan = "marked"
    lookups: Lookups = "exact"
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
        # Every part of the core uses this storage: unlinks are batched, and any other
        # request sends the waiting deletes first (deletes.py).
        self._deletes = OrderedStorage(storage, options.delete_delay)
        storage = self.bucket = self._deletes
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
        self._read_budget = ReadBudget(options.read_budget)
        self._read_cache = open_read_cache(
            options.read_cache_dir, getattr(storage.connection, "storage_url", ""),
            storage.name, options.read_cache_size)
        # What an open fetches of an object: a whole block when blocks are cached.
        self._first_piece = self._read_cache.block_size if self._read_cache else INITIAL_PIECE
        self.namespace = Namespace(storage, self.keys, self.cache, self.defaults, self._pool,
                                   FirstBytes(clock=options.clock),
                                   list_on_miss=options.lookups == "listed",
                                   first_pages=FirstPages(clock=options.clock))
        self._staging = StagingArea(options.staging_dir, storage.name, self.keys.prefix)
        self.inodes = InodeTable(self.keys.prefix, options.cache_size)
        self.times = ViewTimes(options.cache_size)
        self._claims = PathClaims()
        self.items = Items()
        self._handles: dict[int, Handle] = {}
        self._handles_lock = threading.Lock()
        # The ETag of each path at its last open: the kernel may hold pages of it.
        self._opened_etags: LRUCache[str, str] = LRUCache(maxsize=max(1, options.cache_size))
        self._numbers = itertools.count(1)
        self._caller = threading.local()
        self.writeback = WriteBack(
            storage, self._staging, self.items,
            WriteBackOptions(options.part_size, options.retry_first_delay,
                             options.retry_max_delay),
            storage.connection.max_concurrency, self._uploaded)
        self._shut_down = False
        self.writeback.recover()

    @property
    def staging_root(self) -> Path:
        """This mount's staging folder (its journal is there)."""
        return self._staging.root

    def _uploaded(self, item: Item, attrs: Attributes) -> None:
        """An upload (a close's or a background retry's) put ``item`` in the bucket."""
        self.cache.put(item.path, Node(attrs, exact=True))
        self._release_if_idle(item)

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
        """What is at ``path`` (normalized): a held file first, else the namespace."""
        item = self.items.get(path) or self.items.ghost(path)
        if item is not None:
            return Node(item.current_attrs(), exact=True)
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
            item = self._handle(fh).file
            return self.times.apply(item.path, item.current_attrs())
        path = normalize(path)
        return self._shown(path, self._node(path).attrs)

    def _shown(self, path: str, attrs: Attributes) -> Attributes:
        """``attrs`` as ``stat`` shows them: with the times of the mount's view
        (viewtimes.py) and, for a folder, the link count its cached listing tells."""
        shown = self.times.apply(path, attrs)
        if not shown.is_dir:
            return shown
        links = folder_links(self.cache.subfolders(path))
        if links == shown.nlink:
            return shown
        shown = shown.copy()
        shown.nlink = links
        return shown

    def readdir(self, path: str) -> list[tuple[str, Attributes]]:
        path = normalize(path)
        node = self._node(path)
        if not node.attrs.is_dir:
            raise FsError(errno.ENOTDIR, path)
        # Held files first: one whose upload completes during the listing leaves the
        # table then, and the listing may have been taken just before its object existed.
        held = self.items.in_folder(path)
        children = self.namespace.children(path)
        for item in held:
            if not item.gone:
                children[name_of(item.path)] = Node(item.current_attrs(), exact=True)
        shown = self._shown(path, node.attrs)
        entries = [(".", shown), ("..", shown)]
        base = path.rstrip("/")
        entries.extend((name, self._shown(f"{base}/{name}", children[name].attrs))
                       for name in sorted(children))
        return entries

    def inode(self, path: str | None, fh: int | None = None) -> int:
        """``st_ino`` of ``path`` (or of the open file ``fh`` when libfuse gives no
        path): the same for its object while the mount lives, across renames (inodes.py)."""
        if path is None and fh is not None:
            path = self._handle(fh).file.path
        return self.inodes.number(normalize(path or "/"))

    def inodes_of(self, folder: str, names: list[str]) -> list[int]:
        """``st_ino`` of each entry ``names`` of ``folder`` ("." and ".." included)."""
        folder = normalize(folder)
        numbers = self.inodes.numbers(folder, [n for n in names if n not in (".", "..")])
        own = {".": self.inodes.number(folder), "..": self.inodes.number(parent_of(folder))}
        found = iter(numbers)
        return [own[name] if name in own else next(found) for name in names]

    def readlink(self, path: str) -> str:
        path = normalize(path)
        if not self._node(path).attrs.is_link:
            raise FsError(errno.EINVAL, f"{path} is not a symbolic link")
        return self.bucket.read(self.keys.file_key(path)).decode("utf-8", "surrogateescape")

    def statfs(self) -> dict[str, int]:
        # f_namemax is the one limit statfs carries; PATH_MAX cannot be told (glibc's
        # pathconf answers _PC_PATH_MAX with a constant 4096 and asks no file system).
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

    def _new_handle(self, item: Item, flags: int, opening: Opening | None = None) -> int:
        opening = opening or Opening()
        number = next(self._numbers)
        reader = Reader(self.bucket, self._read_pool, self._read_budget,
                        self._read_cache_for(item))
        if opening.first is not None:
            reader.prime(item.key, item.etag, opening.first, item.attrs.size,
                         keep=not opening.cached)
        with self._handles_lock:
            self._handles[number] = Handle(number, item, flags, reader, opening.page_cache)
        return number

    def open(self, path: str, flags: int) -> int:
        """Open an existing file. Content is staged lazily: O_TRUNC stages an empty copy,
        else the first write or truncate downloads it (so ``touch`` or a chmod through an
        open handle never transfers the content). An open that may read checks the object
        (close-to-open, see :meth:`_check_object`)."""
        path = normalize(path)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writing or flags & os.O_TRUNC:
            self._check_writable()
        may_read = (flags & os.O_ACCMODE) != os.O_WRONLY and not flags & os.O_TRUNC
        item, opening = self._hold(path, check=may_read)
        try:
            if writing and flags & os.O_TRUNC:
                self.writeback.truncate(item, 0)
        except BaseException:
            self._let_go(item)
            raise
        return self._new_handle(item, flags, opening)

    def page_cache(self, fh: int) -> PageCache:
        """What the kernel may do with its page cache of the file for this open."""
        return self._handle(fh).page_cache

    def _hold(self, path: str, check: bool = False) -> tuple[Item, Opening]:
        """The item of an existing file at ``path``, with one more handle counted; with
        ``check``, the object is checked as it is now (and its first bytes fetched)."""
        with self._claims.hold(one(path)):
            item = self.items.hold(path) or self.items.revive(path)
            if item is None:
                # A check's GET tells the metadata: no HEAD of its own.
                node = self.namespace.lookup(path) if check else self.namespace.exact(path)
                if node.attrs.is_dir:
                    raise FsError(errno.EISDIR, path)
                if node.attrs.is_link:
                    raise FsError(errno.ELOOP, path)
                item = Item(path, self.keys.file_key(path), node.attrs, on_bucket=True,
                            handles=1, etag=node.etag)
                opening = self._check_object(item, node.exact) if check else Opening()
                self.items.put(item)
                if check:
                    self.namespace.ahead.opened(path)
                return item, opening
            try:
                return item, self._check_object(item, exact=True) if check else Opening()
            except BaseException:
                self._let_go(item)
                raise

    def _check_object(self, item: Item, exact: bool) -> Opening:
        """Close-to-open: see the object at ``item``'s key as it is now, through the GET
        of its first bytes (the whole of a small file), with no request of its own.

        The GET is conditional on the ETag seen at the last open when the kernel may hold
        pages of that version (and the attributes known are the object's own): an
        unchanged object then costs a 304 and keeps the pages. A changed one brings its
        size, ETag and metadata (the attributes, which a listing does not tell), and its
        pages are dropped; if its size is not the one the kernel was told, this open reads
        around the page cache (whose reads stop at the size the kernel knows) until the
        kernel asks for the attributes again. The first bytes the lookup of this path
        fetched (prefetch.py) stand for the object for a second, as the kernel's own
        lookup does: then the open sends nothing. So do the local read cache's blocks of
        that version: the GET is then conditional, and a 304 brings no bytes. A file this
        mount is writing is its own
        truth: nothing is asked.
        """
        with item.lock:
            if item.staged is not None or item.dirty or item.gone or not item.on_bucket:
                return Opening()
            told = item.attrs.size
            with self._handles_lock:
                opened = self._opened_etags.get(item.path)
            pages = exact and bool(item.etag) and opened == item.etag
            kept = self.namespace.first_bytes.take(item.path, item.etag) if exact else None
            # A whole cached block serves more reads than the lookup's first bytes.
            cached = self._cached_first(item, exact)
            first = cached or (kept.data if kept else None)
            since = self.cache.generation()
            answer = None
            if kept is None or not kept.fresh:
                answer = self._get_first(item, pages or first is not None, since)
            if answer is None:
                opening = Opening(PageCache(keep=pages), first, cached=cached is not None)
            else:
                attrs = object_attributes(answer.info, self.defaults)
                if attrs.is_dir or attrs.is_link:
                    raise FsError(errno.ESTALE, f"{item.path}: replaced by another type")
                item.attrs, item.etag = attrs, answer.info.etag
                self.cache.learn(item.path, Node(attrs.copy(), exact=True, etag=item.etag),
                                 since)
                opening = Opening(PageCache(bypass=attrs.size != told), answer.data)
            with self._handles_lock:
                self._opened_etags[item.path] = item.etag
            return opening

    def _read_cache_for(self, item: Item) -> ReadCache | None:
        """The read cache, for an object bigger than a lookup's GET. A smaller one comes
        whole in the answer of the request that checks it (the lookup's GET, or the
        open's, which is sent anyway): caching it would cost a block's write and a look
        in the index per open, and save no request."""
        return self._read_cache if item.attrs.size > FIRST_BYTES else None

    def _cached_first(self, item: Item, exact: bool) -> bytes | None:
        """The first block of the object from the local read cache, if it holds it for
        the ETag known (then the open's GET is conditional: a 304 sends no bytes)."""
        cache = self._read_cache_for(item)
        if cache is None or not exact or not item.etag:
            return None
        return cache.get(item.key, item.etag, 0, min(cache.block_size, item.attrs.size))

    def _get_first(self, item: Item, unless: bool, since: int) -> ObjectRead | None:
        """The GET of an open: the object's first piece, or None if ``unless`` and it still
        has ``item``'s ETag (a 304)."""
        try:
            return self.bucket.get(item.key, 0, self._first_piece,
                                   unless_etag=item.etag if unless else "")
        except MissingObjectException:
            self.cache.learn_missing(item.path, since)
            raise FsError(errno.ENOENT, f"{item.path}: deleted from the bucket") from None

    def create(self, path: str, mode: int, flags: int) -> int:
        self._check_writable()
        path = normalize(path)
        key = self.keys.file_key(path)
        with self._claims.hold(one(path)):
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
            item = Item(path, key, attrs, on_bucket=False, handles=1)
            self.writeback.truncate(item, 0)  # stages an empty copy, journaled, dirty
            self.items.put(item)
            self.times.entries_changed(parent_of(path), now)
        return self._new_handle(item, flags)

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handle(fh)
        item = handle.file
        staged = item.staged
        if staged is not None:
            return staged.read(size, offset)
        if item.lost is not None:
            raise FsError(errno.EIO, f"{item.path}: {item.lost}")
        return handle.reader.read(item.key, item.etag, size, offset, item.attrs.size)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handle(fh)
        if not handle.writable:
            raise FsError(errno.EBADF, "not open for writing")
        return self.writeback.write(handle.file, data, offset, handle.appending)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._check_writable()
        if length < 0:
            raise FsError(errno.EINVAL, "negative length")
        if fh is not None:
            self.writeback.truncate(self._handle(fh).file, length)
            return
        path = normalize(path)
        if self._node(path).attrs.is_dir:
            raise FsError(errno.EISDIR, path)
        item, _ = self._hold(path)
        try:
            self.writeback.truncate(item, length)
            self.writeback.upload(item)
        finally:
            self._let_go(item)

    def flush(self, fh: int) -> None:
        self.writeback.upload(self._handle(fh).file)

    def fsync(self, fh: int, datasync: bool) -> None:
        self.writeback.upload(self._handle(fh).file)

    def fsyncdir(self, path: str) -> None:
        """Make the folder's unlinks durable: send queued deletes, raise if they fail."""
        self._deletes.flush(raise_errors=True)

    def release(self, fh: int) -> None:
        with self._handles_lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            raise FsError(errno.EBADF, f"no open file {fh}")
        handle.reader.forget()  # its pieces leave the mount's read budget
        self._let_go(handle.file)

    def _let_go(self, item: Item) -> None:
        """Count one handle less; the last one uploads what is dirty and frees the copy."""
        if self.items.let_go(item) > 0:
            return
        if item.dirty:
            with contextlib.suppress(FsError):  # logged; retried in the background
                self.writeback.upload(item)
        self._release_if_idle(item)

    def _release_if_idle(self, item: Item) -> None:
        """Free the staged copy of a file no handle holds once nothing is pending.

        An unlinked file that libfuse renamed to a ``.fuse_hidden`` name becomes a ghost
        instead (writeback.GHOSTS): libfuse unlinks that name right after this last close,
        but the kernel may still open the inode by it (a path looked up just before an
        editor's atomic save replaced it), and must find the content, as a local file
        system would give it. Ghosts go after 30 s, or when 64 newer ones came.
        """
        with item.lock:
            # Still under its hidden name: libfuse has not unlinked that yet (it does right
            # after this last close), so the kernel may yet open it by that name.
            hidden = item.gone and is_fuse_hidden(item.path) \
                and self.items.get(item.path) is item
            if item.dirty or not self.items.drop_if_idle(item):
                return
            known = None if item.gone else self.cache.get(item.path)
            if not item.gone and (known is None or not known.exact):
                # What it knew stays known: the object has these attributes.
                self.cache.confirm(item.path, Node(item.current_attrs(), exact=True))
            if not hidden or item.staged is None:
                item.discard_staged()
                self._free(self.items.expired(time.monotonic()))
                return
        self._free(self.items.bury(item, time.monotonic()))

    @staticmethod
    def _free(ghosts: list[Item]) -> None:
        """Discard the staged copies of expired ghosts (unless reopened meanwhile)."""
        for ghost in ghosts:
            with ghost.lock:
                if ghost.handles == 0:
                    ghost.discard_staged()

    # == namespace changes ===============================================================

    def unlink(self, path: str) -> None:
        self._check_writable()
        path = normalize(path)
        with self._claims.hold(one(path)):
            if is_fuse_hidden(path):
                self._drop_hidden(path)
                return
            if self._node(path).attrs.is_dir:
                raise FsError(errno.EISDIR, path)
            key = self.keys.file_key(path)
            item = self.items.get(path)
            if item is not None:
                self._detach(item)
            self.bucket.delete(key)
            self.cache.remove(path)
            self._forget_removed(path)
            self._keep_folder(parent_of(path))

    def _detach(self, item: Item) -> None:
        """Make a held file nameless: still usable through its handles, never uploaded.

        Its handles must keep reading after the object is deleted, so a clean file that is
        open is downloaded first. If that cannot be done (a full staging disk, the storage
        failing), the unlink still happens, as POSIX requires (unlink has no ENOSPC): the
        open handles then read EIO, and a log line says why.
        """
        with item.lock:
            if item.handles > 0 and item.staged is None and item.on_bucket:
                try:
                    self.writeback.stage(item)
                except (FsError, QarnotException) as error:
                    item.lost = f"unlinked while open, and its content could not be kept: " \
                                f"{error}"
                    log.error("%s: the open handles of %r will read EIO", item.lost, item.path)
            self.writeback.give_up(item)
            self.items.drop(item)
            if item.handles == 0:
                item.discard_staged()

    def _hide(self, old: str, new: str, flags: int) -> None:
        """A rename to or from a ``.fuse_hidden`` name (keys.py): libfuse unlinking an
        open file (``hard_remove`` is off), which is the unlink of ``old``, the file
        staying reachable at ``new`` for stat (nlink 0) until its last handle is closed.

        Nothing of it reaches the bucket. Any other such rename is refused (EINVAL): the
        names are libfuse's, and an unlinked file cannot get a name back."""
        item = self.items.get(old)
        if item is None and is_fuse_hidden(old):
            raise FsError(errno.ENOENT, old)
        if item is None or item.handles == 0 or not is_fuse_hidden(new) \
                or parent_of(old) != parent_of(new):
            raise FsError(errno.EINVAL, f"{old} -> {new}: names starting with '.fuse_hidden' "
                          "are reserved by libfuse for open files that were unlinked")
        replaced = self.items.get(new)
        if replaced is item:
            return
        if replaced is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST, new)
            self._detach(replaced)
        self.inodes.renamed(old, new)  # fstat of the open file keeps its number
        if item.gone:
            self.items.drop(item, old)
        else:
            self.unlink(old)  # deletes the object (queued) and detaches ``item``
        with item.lock:
            item.path = new
            self.items.put(item)

    def _drop_hidden(self, path: str) -> None:
        """libfuse's unlink of a ``.fuse_hidden`` name after the last close: local state
        only, no request."""
        item = self.items.get(path)
        if item is None and self.items.ghost(path) is None:
            raise FsError(errno.ENOENT, path)
        # The name it kept its number under is gone (a ghost reopened by it gets another).
        self.inodes.removed(path)
        if item is None:
            return  # a ghost stays openable until it expires (_release_if_idle)
        with item.lock:
            self._detach(item)

    def _forget_removed(self, path: str) -> None:
        """``path`` (and its tree) is gone: its number and times go, its folder changed."""
        self.inodes.removed(path)
        self.times.removed(path)
        self.times.entries_changed(parent_of(path), now_ns())

    def _keep_folder(self, folder: str) -> None:
        """Write the marker of ``folder`` if removing its last entry made it vanish.

        On S3 a folder without a marker exists only through its keys; POSIX says it stays
        until rmdir, so the mount writes the marker that keeps it.
        """
        if folder == "/":
            return
        if self.cache.listing_size(folder):
            return
        if self.items.under(folder):
            return
        prefix = self.keys.dir_prefix(folder)
        if self.bucket.has_objects_under(prefix):
            return
        known = self.cache.get(folder)
        attrs = known.attrs if known is not None else dir_attributes(self.defaults)
        self.bucket.put(prefix, b"", encode_metadata(attrs))
        self.cache.put(folder, Node(attrs, exact=True))

    @contextlib.contextmanager
    def _creating(self, path: str) -> Iterator[tuple[int, int, int]]:
        """Claim ``path`` (normalized) for a new folder, link or special file: EEXIST if
        something is there, an error if its parent is no folder; gives the new entry's
        owner and time, which becomes its folder's mtime once it is made."""
        with self._claims.hold(one(path)):
            if self._exists(path):
                raise FsError(errno.EEXIST, path)
            self._require_folder(path)
            uid, gid = self._owner()
            now = now_ns()
            yield uid, gid, now
            self.times.entries_changed(parent_of(path), now)

    def mkdir(self, path: str, mode: int) -> None:
        self._check_writable()
        path = normalize(path)
        if path == "/":
            raise FsError(errno.EEXIST, path)
        prefix = self.keys.dir_prefix(path)
        with self._creating(path) as (uid, gid, now):
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
        with self._claims.hold(tree(path)):
            if not self._node(path).attrs.is_dir:
                raise FsError(errno.ENOTDIR, path)
            prefix = self._require_empty(path)
            self._deletes.delete_now(prefix)
            self.cache.remove(path, tree=True)
            self._forget_removed(path)
            self._keep_folder(parent_of(path))

    def _require_empty(self, path: str) -> str:
        """The folder's prefix; FsError(ENOTEMPTY) if anything is under it, hidden or not."""
        if any(item.path != path for item in self.items.under(path)):
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
        with self._creating(path) as (uid, gid, now):
            attrs = Attributes(stat.S_IFLNK | 0o777, len(body), uid, gid, now, now, now)
            # Marked, so that listings tell it is a link without a HEAD (attrs.py).
            self.bucket.put_marked(key, body, encode_metadata(attrs))
            self.cache.put(path, Node(attrs, exact=True))

    def link(self, target: str, link_path: str) -> None:
        self._check_writable()
        raise FsError(errno.EPERM, "hard links are not supported")

    def mknod(self, path: str, mode: int, rdev: int) -> None:
        """A FIFO, socket or device: an empty object whose metadata mode has the type (as
        s3fs stores it), written marked so listings tell it from an empty file (attrs.py).
        A regular file is an empty object, as ``create`` and ``close`` would leave it."""
        self._check_writable()
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind != stat.S_IFREG and kind not in SPECIAL_TYPES:
            raise FsError(errno.EINVAL, f"mknod cannot make file type {kind:o}")
        path = normalize(path)
        key = self.keys.file_key(path)
        with self._creating(path) as (uid, gid, now):
            device = rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
            attrs = Attributes(kind | (mode & PERMISSION_BITS), 0, uid, gid, now, now, now,
                               rdev=device)
            if kind == stat.S_IFREG:
                self.bucket.put(key, b"", encode_metadata(attrs))
            else:
                self.bucket.put_marked(key, b"", encode_metadata(attrs))
            self.cache.put(path, Node(attrs, exact=True))

    # == rename ==========================================================================

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        self._check_writable()
        if flags & ~RENAME_NOREPLACE:
            raise FsError(errno.EINVAL, "only RENAME_NOREPLACE is supported")
        old, new = normalize(old), normalize(new)
        if "/" in (old, new):
            raise FsError(errno.EBUSY, "the root of the mount")
        if is_fuse_hidden(old) or is_fuse_hidden(new):
            with self._claims.hold(one(old), one(new)):
                self._hide(old, new, flags)
            return
        source = self._node(old)
        claims = (tree(old), tree(new)) if source.attrs.is_dir else (one(old), one(new))
        with self._claims.hold(*claims):
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
            self._note_rename(old, new)
            if parent_of(old) != parent_of(new):
                self._keep_folder(parent_of(old))

    def _note_rename(self, old: str, new: str) -> None:
        """What a rename changes in the mount's view only: the moved entry keeps its
        inode number and gets a new ctime, both folders a new mtime and ctime."""
        self.inodes.renamed(old, new)
        now = now_ns()
        self.times.renamed(old, new)
        self.times.status_changed(new, now)
        self.times.entries_changed(parent_of(old), now)
        self.times.entries_changed(parent_of(new), now)

    def _rename_file(self, old: str, new: str, source: Node) -> None:
        old_key, new_key = self.keys.file_key(old), self.keys.file_key(new)
        replaced = self.items.get(new)
        if replaced is not None:
            self._detach(replaced)
        item = self.items.get(old)
        attrs = source.attrs
        if item is None:
            self._copy_key(old_key, new_key, attrs.size, marked=not attrs.is_file)
        else:
            with item.lock:  # no upload of it can start or be under way meanwhile
                attrs = item.current_attrs()
                if not self.writeback.upload_to(item, new_key) and item.on_bucket:
                    self.bucket.copy(old_key, new_key)
                self.writeback.retarget(item, new, new_key)
        self._deletes.delete_now(old_key)  # a rename is complete when it returns
        self.cache.remove(old)
        self.cache.put(new, Node(attrs, exact=source.exact or item is not None))

    def _rename_folder(self, old: str, new: str, source: Node, replacing: bool) -> None:
        if replacing:
            self._require_empty(new)  # its marker is overwritten below, never deleted first
        with contextlib.ExitStack() as held:
            # Every item under the folder is locked from before the listing until it
            # carries its new key: no upload can land between the copies and the deletes.
            moved = self.items.under(old, with_unlinked=True)
            for item in moved:
                held.enter_context(item.lock)
            self._move_tree(old, new, source, replacing, moved)
            # Before the items are let go: an upload waiting for one of them caches what
            # it sends under the new name, which this must not forget.
            listed = self.cache.listing(old)  # moves along: its link count stays known
            self.cache.remove(old, tree=True)
            self.cache.forget(new)
            self.cache.put(new, source)
            if listed is not None:
                self.cache.put_listing(new, listed)

    def _move_tree(self, old: str, new: str, source: Node, replacing: bool,
                   moved: list[Item]) -> None:
        old_prefix, new_prefix = self.keys.dir_prefix(old), self.keys.dir_prefix(new)
        infos = list(self.bucket.iter_objects(old_prefix))
        moves = [(info.key, new_prefix + info.key[len(old_prefix):]) for info in infos]
        if any(len(key.encode("utf-8")) > KEY_MAX for _, key in moves):
            raise FsError(errno.ENAMETOOLONG, f"a key under {new} would be too long")
        self._copy_all(moves, infos, keep=new_prefix if replacing else None)
        if not infos:  # a folder the mount knows but the bucket has no key for yet
            self.bucket.put(new_prefix, b"", encode_metadata(source.attrs))
        for item in moved:
            path = new + item.path[len(old):]
            # an unlinked file has a .fuse_hidden name and no key: it only moves along
            key = item.key if item.gone else self.keys.file_key(path)
            self.writeback.retarget(item, path, key)
        self.bucket.delete_many(key for key, _ in moves)

    def _copy_key(self, source: str, destination: str, size: int | None, marked: bool,
                  metadata: dict[str, str] | None = None, content_type: str = "") -> None:
        """Server-side copy (one request when ``size`` is known), except for marked
        objects (links, special files): a CopyObject would drop their mark (the multipart
        ETag), so they are written again."""
        if not marked:
            self.bucket.copy(source, destination, metadata, size=size,
                             content_type=content_type or None)
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
            marked = needs_head(info.size, info.e_tag, "marked")
            try:
                self._copy_key(*move, size=info.size, marked=marked)
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
        with self._claims.hold(one(path)):
            item = self.items.get(path)
            if item is not None and self.writeback.change_attributes(item, change):
                return
            node = self.namespace.lookup(path)
            if node.attrs.is_dir:
                attrs = self._change_marker(path, change)
            else:
                attrs = self._change_object(self.keys.file_key(path), change)
            self.cache.put(path, Node(attrs, exact=True))
            self.times.forget(path)
            if item is not None:
                item.attrs = attrs

    def _change_object(self, key: str, change: Callable[[Attributes], None]) -> Attributes:
        """Rewrite an object's metadata in place, keeping metadata that is not ours."""
        info = self.bucket.stat(key)
        if info is None:
            raise FsError(errno.ENOENT, key)
        attrs = object_attributes(info, self.defaults)
        change(attrs)
        attrs.ctime_ns = now_ns()
        self._copy_key(key, key, info.size, needs_head(info.size, info.e_tag, "marked"),
                       merged_metadata(info.metadata, attrs), info.content_type)
        return attrs

    def _change_marker(self, path: str, change: Callable[[Attributes], None]) -> Attributes:
        """Rewrite a folder's marker with changed attributes, keeping the metadata that is
        not ours (made if the folder was implicit)."""
        prefix = self.keys.dir_prefix(path)
        marker = self.bucket.stat(prefix)
        # The marker stores the times the mount showed (its entries' changes, viewtimes.py).
        attrs = self.times.apply(path, dir_attributes(self.defaults, marker)).copy()
        change(attrs)
        attrs.ctime_ns = now_ns()
        self.bucket.put(prefix, b"", merged_metadata(marker.metadata if marker else None,
                                                     attrs))
        return attrs

    # == extended attributes (xattrs.py) =================================================

    def getxattr(self, path: str, name: str) -> bytes:
        xattrs.require_stored(name)  # before any request: the kernel asks at every write
        return xattrs.value(self._exact_attrs(path).xattr, name)

    def listxattr(self, path: str) -> list[str]:
        return xattrs.names(self._exact_attrs(path).xattr)

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        def change(attrs: Attributes) -> None:
            changed = attrs.copy()
            changed.xattr = xattrs.with_value(attrs.xattr, name, value, flags)
            xattrs.require_room(encode_metadata(changed))
            attrs.xattr = changed.xattr

        self._change_xattrs(path, name, change)

    def removexattr(self, path: str, name: str) -> None:
        def change(attrs: Attributes) -> None:
            attrs.xattr = xattrs.without(attrs.xattr, name)

        self._change_xattrs(path, name, change)

    def _change_xattrs(self, path: str, name: str, change: Callable[[Attributes], None]) \
            -> None:
        xattrs.require_stored(name)
        self._check_writable()
        if normalize(path) == "/":
            raise FsError(errno.EOPNOTSUPP, "the root of the mount has no object to hold "
                          "extended attributes")
        self._change_attributes(path, change)

    def _exact_attrs(self, path: str) -> Attributes:
        """The attributes with the metadata they come from (a held file's, else a HEAD
        unless the cache has them)."""
        path = normalize(path)
        item = self.items.get(path) or self.items.ghost(path)
        if item is not None:
            return item.current_attrs()
        return self.namespace.exact(path).attrs

    # == lifecycle =======================================================================

    def pending_uploads(self) -> list[str]:
        """Paths whose content is not in the bucket yet."""
        return sorted(item.path for item in self.items.all() if item.dirty)

    def shutdown(self) -> None:
        """Upload what is pending (one last try), close every copy, free the staging area
        (kept, with its journal, if something could not be uploaded: the next mount of
        the bucket and prefix with this staging folder uploads it)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.writeback.stop_retries()
        summary = pending_summary(str(self._staging.root))
        if summary:
            log.info("waiting for %s", summary)
        failed = False
        for item in self.items.all():
            try:
                self.writeback.upload(item)
            except FsError:
                failed = True
        for item in self.items.clear():
            with item.lock:
                if item.staged is not None:
                    if item.dirty:
                        item.staged.close()
                    else:
                        item.discard_staged()
        with self._handles_lock:
            for handle in self._handles.values():
                if handle.file.gone:
                    handle.file.discard_staged()
            self._handles.clear()
        self._pool.shutdown(wait=True)
        self.writeback.close()
        self._read_pool.shutdown(wait=True, cancel_futures=True)
        if self._read_cache is not None:
            self._read_cache.close()
        self._deletes.close()
        self._staging.close(keep=failed)

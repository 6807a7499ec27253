"""The FUSE adapter: kernel requests in, :class:`~qarnotfs.fs.core.Filesystem` calls out.

Owns: the only import of ``mfusepy`` in the project, the translation of FUSE arguments
(paths, flags, buffers, timespecs) into core calls and of core errors into errnos, the
debug log line (with its duration) of every request, the libfuse configuration (kernel
attribute and entry timeouts, mount options) and running the FUSE loop. It holds no
filesystem semantics and never talks to the storage itself.

Lock order: ``_listings_lock`` is a leaf (the table of open folder listings), never held
while calling the core.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

# mfusepy picks libfuse 2 when both are installed; the mount needs libfuse 3 (fusermount3,
# rename flags, init config). The variable must be set before the import below.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy

from ..exceptions import QarnotException
from .attrs import BLOCK_SIZE, Attributes
from .errors import FsError, errno_for
from .handles import PageCache
from .xattrs import is_stored

if TYPE_CHECKING:
    from .core import Filesystem

log = logging.getLogger(__name__)

# libfuse 3 passes "now" and "leave unchanged" to utimens as these tv_nsec values with
# tv_sec = 0 (see fuse_lib_setattr); with use_ns they arrive as exactly these integers.
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

# libfuse 3's readdir flag (the kernel wants attributes) and the filler flag saying they
# are given (enum fuse_readdir_flags, enum fuse_fill_dir_flags).
FUSE_READDIR_PLUS = 1
FUSE_FILL_DIR_PLUS = 2

MAX_TRANSFER = 1024 * 1024
"""Largest write and read-ahead the kernel is asked to send (its own limit is 1 MiB)."""

MAX_IDLE_THREADS = 10
"""Idle libfuse worker threads kept around (the number libfuse documents as its default)."""

Listing = list[tuple[str, Attributes, int]]
"""A folder's entries as the adapter hands them to libfuse: (name, stat, st_ino)."""

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class KernelSettings:
    """How the kernel side of the mount behaves (everything libfuse needs to know)."""

    fsname: str
    read_only: bool = False
    allow_other: bool = False
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    flags: tuple[str, ...] = ()


def _describe(args: tuple[Any, ...]) -> str:
    """The arguments of a request for the log, with buffers shown by size only."""
    shown = (f"<{len(a)} bytes>" if isinstance(a, (bytes, bytearray)) else repr(a) for a in args)
    return f"({', '.join(shown)})"


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def _operation(method: F) -> F:
    """Run one FUSE request: time it, log it, and turn errors into ``FuseOSError``."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: FuseOperations, *args: Any) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return method(self, *args)
        except mfusepy.FuseOSError as error:
            outcome = _errno_name(error.errno or errno.EIO)
            raise
        except Exception as error:
            code = errno_for(error)
            outcome = _errno_name(code)
            if isinstance(error, QarnotException):
                # Storage failures reach the user only as an errno: the log says why.
                log.warning("%s%s: %s (%s)", name, _describe(args), error, outcome)
            elif not isinstance(error, FsError):
                log.error("%s%s failed unexpectedly", name, _describe(args), exc_info=True)
            raise mfusepy.FuseOSError(code) from error
        finally:
            if log.isEnabledFor(logging.DEBUG):
                elapsed_ms = (time.perf_counter() - started) * 1000
                log.debug("%s%s -> %s in %.3f ms", name, _describe(args), outcome, elapsed_ms)

    return wrapper  # type: ignore[return-value]


def _stat_ns(attributes: Attributes, inode: int) -> dict[str, int | float]:
    """The stat dict with times in nanoseconds, as mfusepy expects when ``use_ns`` is set."""
    stat = attributes.to_stat()
    stat["st_ino"] = inode
    stat["st_atime"] = attributes.atime_ns
    stat["st_mtime"] = attributes.mtime_ns
    stat["st_ctime"] = attributes.ctime_ns
    return stat


def _fill_stat(st: Any, attributes: Attributes, inode: int) -> None:
    """Set a C ``struct stat`` straight from ``attributes`` (what mfusepy's
    ``set_st_attrs`` does from a dict, without the dict: readdir fills thousands)."""
    st.st_ino = inode
    st.st_mode, st.st_size, st.st_nlink = attributes.mode, attributes.size, attributes.nlink
    st.st_rdev = attributes.rdev
    st.st_uid, st.st_gid = attributes.uid, attributes.gid
    st.st_blocks, st.st_blksize = (attributes.size + 511) // 512, BLOCK_SIZE
    st.st_atimespec.tv_sec, st.st_atimespec.tv_nsec = divmod(attributes.atime_ns, 1_000_000_000)
    st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec = divmod(attributes.mtime_ns, 1_000_000_000)
    st.st_ctimespec.tv_sec, st.st_ctimespec.tv_nsec = divmod(attributes.ctime_ns, 1_000_000_000)


def _resolve_time(value: int, now: int) -> int | None:
    if value == UTIME_OMIT:
        return None
    if value == UTIME_NOW:
        return now
    return value


class FuseOperations(mfusepy.Operations):
    """The FUSE callbacks, each a direct call to the core."""

    use_ns = True

    def __init__(
        self,
        filesystem: Filesystem,
        settings: KernelSettings,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.filesystem = filesystem
        self.settings = settings
        self._on_ready = on_ready
        self._listings: dict[int, Listing | None] = {}
        self._listings_lock = threading.Lock()
        self._listing_numbers = itertools.count(1)

    def _as_caller(self) -> AbstractContextManager[None]:
        """New files, folders and links belong to the process that creates them."""
        uid, gid, _pid = mfusepy.fuse_get_context()
        return self.filesystem.with_caller(uid, gid)

    # -- lifecycle ----------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        if conn_info is not None:
            # Fewer, larger requests: each one costs a trip through Python.
            conn_info.max_write = MAX_TRANSFER
            conn_info.max_readahead = MAX_TRANSFER
        if config is not None:
            config.attr_timeout = self.settings.attr_timeout
            config.entry_timeout = self.settings.entry_timeout
            # An open file unlinked is renamed to a ".fuse_hidden" name, so that fstat still
            # has a path to ask about; the core keeps those names local (keys.py, core.py).
            config.hard_remove = 0
            # The core numbers inodes (stable across renames and the kernel forgetting
            # them, inodes.py); libfuse's own numbers change when it forgets a node.
            config.use_ino = 1
        log.debug("FUSE initialised (attr_timeout=%s, entry_timeout=%s)",
                  self.settings.attr_timeout, self.settings.entry_timeout)
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        started = time.perf_counter()
        pending = self.filesystem.pending_uploads()
        if pending:
            log.info("waiting for %d pending upload(s) before exiting", len(pending))
        try:
            self.filesystem.shutdown()
        except Exception:
            log.exception("shutting the filesystem down failed")
        log.debug("destroy -> ok in %.3f ms", (time.perf_counter() - started) * 1000)

    # -- attributes and names -----------------------------------------------------------

    @_operation
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int | float]:
        return _stat_ns(self.filesystem.getattr(path or "/", fh),
                        self.filesystem.inode(path, fh))

    @_operation
    def readdir(self, path: str, fh: int) -> Listing:
        entries = self.filesystem.readdir(path)
        inodes = self.filesystem.inodes_of(path, [name for name, _ in entries])
        return [(name, attrs, inode)
                for (name, attrs), inode in zip(entries, inodes, strict=True)]

    @_operation
    def opendir(self, path: str) -> int:
        with self._listings_lock:
            number = next(self._listing_numbers)
            self._listings[number] = None
        return number

    @_operation
    def releasedir(self, path: str, fh: int) -> int:
        with self._listings_lock:
            self._listings.pop(fh, None)
        return 0

    def listing(self, path: str, fh: int, offset: int) -> Listing:
        """The entries of an open folder; read afresh at offset 0 (rewinddir), else the
        same snapshot, so a position means the same entry from one call to the next."""
        with self._listings_lock:
            snapshot = self._listings.get(fh)
        if offset == 0 or snapshot is None:
            snapshot = self.readdir(path, fh)
            with self._listings_lock:
                self._listings[fh] = snapshot
        return snapshot

    @_operation
    def statfs(self, path: str) -> dict[str, int]:
        return self.filesystem.statfs()

    @_operation
    def readlink(self, path: str) -> str:
        return self.filesystem.readlink(path)

    @_operation
    def mkdir(self, path: str, mode: int) -> int:
        with self._as_caller():
            self.filesystem.mkdir(path, mode)
        return 0

    @_operation
    def rmdir(self, path: str) -> int:
        self.filesystem.rmdir(path)
        return 0

    @_operation
    def unlink(self, path: str) -> int:
        self.filesystem.unlink(path)
        return 0

    @_operation
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self.filesystem.rename(old, new, flags)
        return 0

    @_operation
    def symlink(self, link_path: str, target: str) -> int:
        # mfusepy passes (new link's path, what it points to).
        with self._as_caller():
            self.filesystem.symlink(target, link_path)
        return 0

    @_operation
    def link(self, link_path: str, target: str) -> int:
        self.filesystem.link(target, link_path)
        return 0

    @_operation
    def mknod(self, path: str, mode: int, dev: int) -> int:
        with self._as_caller():
            self.filesystem.mknod(path, mode, dev)
        return 0

    @_operation
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.filesystem.getxattr(path, name)

    @_operation
    def listxattr(self, path: str) -> list[str]:
        return self.filesystem.listxattr(path)

    @_operation
    def setxattr(self, path: str, name: str, value: bytes, options: int,
                 position: int = 0) -> int:
        self.filesystem.setxattr(path, name, value, options)
        return 0

    @_operation
    def removexattr(self, path: str, name: str) -> int:
        self.filesystem.removexattr(path, name)
        return 0

    @_operation
    def chmod(self, path: str, mode: int) -> int:
        self.filesystem.chmod(path, mode)
        return 0

    @_operation
    def chown(self, path: str, uid: int, gid: int) -> int:
        self.filesystem.chown(path, uid, gid)
        return 0

    @_operation
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        now = time.time_ns()
        if times is None:
            self.filesystem.utimens(path, now, now)
        else:
            atime, mtime = times
            self.filesystem.utimens(path, _resolve_time(atime, now), _resolve_time(mtime, now))
        return 0

    @_operation
    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self.filesystem.truncate(path, length, fh)
        return 0

    # -- file handles -------------------------------------------------------------------

    @_operation
    def create(self, path: str, mode: int, flags: int) -> int:
        with self._as_caller():
            return self.filesystem.create(path, mode, flags)

    @_operation
    def open(self, path: str, flags: int) -> int:
        return self.filesystem.open(path, flags)

    def page_cache(self, fh: int) -> PageCache:
        try:
            return self.filesystem.page_cache(fh)
        except Exception:  # dropping the pages is always right
            log.debug("page_cache(%d) failed", fh, exc_info=True)
            return PageCache()

    @_operation
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.filesystem.read(fh, size, offset)

    @_operation
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self.filesystem.write(fh, data, offset)

    @_operation
    def flush(self, path: str, fh: int) -> int:
        self.filesystem.flush(fh)
        return 0

    @_operation
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self.filesystem.fsync(fh, bool(datasync))
        return 0

    @_operation
    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self.filesystem.fsyncdir(path)
        return 0

    @_operation
    def release(self, path: str, fh: int) -> int:
        self.filesystem.release(fh)
        return 0


class _Fuse(mfusepy.FUSE):
    """mfusepy's FUSE, passing on what its libfuse 3 wrappers drop.

    mfusepy discards rename's flags (so ``RENAME_NOREPLACE`` would silently replace),
    truncate's file handle, and every attribute of a folder's entries but their type.
    """

    def _path(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return int(self.operations.rename(self._path(old), self._path(new), flags))

    def open(self, path: bytes, fip: Any) -> int:
        """Open, and tell the kernel whether the pages it cached of the file are still
        good (``keep_cache``: the object did not change since the last open), or must be
        read around (``direct_io``: the object's size changed behind the kernel)."""
        result = int(super().open(path, fip))
        page_cache = self.operations.page_cache(fip.contents.fh)
        fip.contents.keep_cache = int(page_cache.keep)
        fip.contents.direct_io = int(page_cache.bypass)
        return result

    def getxattr(self, path: bytes, name: bytes, value: Any, size: int, *args: Any) -> int:
        """Names the mount does not store are refused before any Python-level work: the
        kernel asks for ``security.capability`` before every write, and ``ls -l`` for
        ``security.selinux`` and ``system.posix_acl_access`` of every file."""
        if not is_stored(name.decode(self.encoding, self.errors)):
            return -errno.EOPNOTSUPP
        return int(super().getxattr(path, name, value, size, *args))

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        fh = fip.contents.fh if fip else None
        return int(self.operations.truncate(self._path(path), length, fh))

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any,
                       flags: int) -> int:
        """Hand the kernel each entry's attributes when it asks for them (readdirplus).

        mfusepy only passes the file type, so ``ls -l`` would cost a lookup per entry.
        """
        plus = bool(flags & FUSE_READDIR_PLUS)
        entries = self.operations.listing(self._path(path), fip.contents.fh, offset)
        st = mfusepy.c_stat()
        # libfuse passes the attributes on only for entries filled with their position
        # (non-zero offsets), so each entry's offset is the position after it.
        for position in range(offset, len(entries)):
            name, attributes, inode = entries[position]
            ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
            fill_flags = 0
            if plus and name not in (".", ".."):
                _fill_stat(st, attributes, inode)
                fill_flags = FUSE_FILL_DIR_PLUS
            else:
                st.st_mode, st.st_ino = attributes.mode, inode
            encoded = name.encode(self.encoding, self.errors)
            if filler(buf, encoded, st, position + 1, fill_flags) != 0:
                break  # the kernel's buffer is full; it asks again from this position
        return 0


def _escape_option(value: str) -> str:
    """Escape a value for libfuse's comma-separated option parser."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def serve(
    filesystem: Filesystem,
    mountpoint: str,
    settings: KernelSettings,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Mount ``filesystem`` on ``mountpoint`` and serve requests until it is unmounted.

    Stays in the calling process (daemonizing is the caller's business). ``on_ready`` runs
    once the kernel has initialised the mount. libfuse unmounts on SIGINT, SIGTERM and
    SIGHUP; ``destroy`` then waits for the pending uploads before this returns.
    Raises ``RuntimeError`` if libfuse cannot mount (its reason is on stderr).
    """
    operations = FuseOperations(filesystem, settings, on_ready)
    options: dict[str, Any] = {
        "fsname": _escape_option(settings.fsname),
        "subtype": "qarnotfs",
        # The kernel checks permissions against the modes the core reports.
        "default_permissions": True,
        "ro": settings.read_only,
        "allow_other": settings.allow_other,
        # A libfuse 2 mount option; mfusepy moves it into libfuse 3's config (as
        # init_with_config does too): st_ino comes from the core either way.
        "use_ino": True,
    }
    options.update(dict.fromkeys(settings.flags, True))
    # libfuse 3.14 logs "Ignoring invalid max threads value" for its own default (-1).
    options["max_idle_threads"] = MAX_IDLE_THREADS
    _Fuse(operations, mountpoint, foreground=True, nothreads=False, **options)

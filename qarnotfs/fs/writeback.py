"""Write-back: the files the mount holds, and the one state machine each goes through.

Owns: :class:`Item` (one per path that is open or has content the bucket lacks: its name,
attributes, handle count, staged copy and :class:`State`), :class:`Items` (the table of
them by path) and :class:`WriteBack`, which makes every change to an item's content or
upload: staging, writes, truncates, uploads, early parts, background retries, giving an
upload up (and aborting its multipart upload at once), re-targeting it after a rename,
and taking over what a crashed mount left. It is the only writer of the staging journal;
the namespace calls in core.py only ask it.

States (``Item.state``), and what moves an item between them (all in :meth:`Item.move`)::

    CLEAN ──write/truncate/attrs──▶ DIRTY ──a part goes early──▶ STREAMING
      ▲                               │                              │
      │                               └──────close/fsync/retry───────┴──▶ UPLOADING
      └────────────── committed ◀──────────────────────────────────────────┘  │
                                 FAILED ◀──────────── upload failed ───────────┘
                                   └── retry (background) ──▶ UPLOADING
    any state ──unlink/replaced──▶ GONE (never uploaded; its multipart upload aborted)

Rules every background job keeps (see SEMANTICS.md, "Uploads and namespace changes"):

* An upload holds its item's lock from the moment it reads the item's key until the
  object is in the bucket (or the attempt failed). A rename holds the lock of every item
  it moves (one file, or every item under a folder) from before its listing until the
  item carries its new key: so an upload goes entirely to the old key before the rename
  copies it, or entirely to the new key after. No upload can land between a folder
  rename's copies and its deletes.
* An unlink or a rename over an item gives its upload up (GONE) under the item's lock: a
  retry or a recovery that comes later finds it GONE and sends nothing.
* An O_TRUNC open and ``truncate`` are the same call (:meth:`WriteBack.truncate`), which
  tells the early parts, so a part sent before a truncate never survives it.
* A multipart upload given up (file deleted, renamed while streaming, replaced by a new
  upload) is aborted at once in the background; one that cannot be aborted stays in the
  journal's ``abandoned`` table and is retried at shutdown and at the next mount.

Lock order (never take an earlier lock while holding a later one):

1. core's path claims (claims.py);
2. ``Item.lock``, one per item, held across its upload or download: only operations on
   that same file wait for it;
3. leaves, never held while calling out: ``Items._lock``, the journal's lock, the stream's
   lock, the retry queue's condition.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import QarnotException
from . import recovery
from .attrs import Attributes, encode_metadata, now_ns
from .errors import FsError
from .journal import BestEffortJournal, Entry, Journal
from .keys import is_within, parent_of
from .staging import StagedFile, StagingArea
from .streaming import PartStream
from .uploader import RetryQueue, Uploader

if TYPE_CHECKING:
    from .storage import Storage

log = logging.getLogger(__name__)


class State(enum.Enum):
    CLEAN = "clean"
    """Its content (if staged) is the object's."""
    DIRTY = "dirty"
    """The staged copy is newer than the bucket (journaled)."""
    STREAMING = "streaming"
    """Dirty, with parts of its multipart upload sent while it is written."""
    UPLOADING = "uploading"
    FAILED = "failed"
    """Its last upload failed: the copy is kept and a retry is scheduled."""
    GONE = "gone"
    """Unlinked or replaced: still readable through its handles, never uploaded."""


_MOVES: dict[State, set[State]] = {
    State.CLEAN: {State.DIRTY, State.GONE},
    State.DIRTY: {State.STREAMING, State.UPLOADING, State.CLEAN, State.FAILED, State.GONE},
    State.STREAMING: {State.DIRTY, State.UPLOADING, State.CLEAN, State.GONE},
    State.UPLOADING: {State.CLEAN, State.FAILED, State.DIRTY, State.GONE},
    State.FAILED: {State.DIRTY, State.UPLOADING, State.CLEAN, State.GONE},
    State.GONE: set(),
}
"""The transitions an item may make; anything else is a bug (AssertionError)."""

OWNERSHIP = frozenset({"mode", "uid", "gid", "xattr"})
"""The metadata a recovered file must carry for the bucket's copy to count as its own."""

GHOSTS = 64
GHOST_SECONDS = 30.0
"""How many unlinked files stay openable by their hidden name after their last close, and
for how long: the kernel may still open such an inode (a path looked up just before an
editor's rename over it), and must find its content."""

DIRTY_STATES = frozenset({State.DIRTY, State.STREAMING, State.UPLOADING, State.FAILED})


@dataclass(eq=False)
class Item:
    """A file the mount holds: open, staged, or dirty (content newer than the bucket's)."""

    path: str
    key: str
    attrs: Attributes
    on_bucket: bool
    """An object exists at ``key`` (so renaming copies it and unlinking deletes it)."""
    staged: StagedFile | None = None
    state: State = State.CLEAN
    handles: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    entry_id: int | None = None
    """Its journal entry, while it is dirty."""
    base: tuple[str, str] | None = None
    """ETag and LastModified of the object its staged content derives from, once known."""
    recovered: bool = False
    """Left dirty by a mount that crashed: check for a conflict before uploading."""
    stream: PartStream | None = None
    lost: str | None = None
    """Why its content could not be kept when it was unlinked (reads then fail)."""
    etag: str = ""
    """The ETag of the object at ``key`` as this mount last saw it ('' when unknown),
    which reads of the bucket's content are conditional on (reader.py)."""

    @property
    def dirty(self) -> bool:
        return self.state in DIRTY_STATES

    @property
    def gone(self) -> bool:
        return self.state is State.GONE

    def move(self, state: State) -> None:
        """The one place an item changes state."""
        if state is self.state:
            return
        assert state in _MOVES[self.state], f"{self.path}: {self.state} -> {state}"
        self.state = state

    def current_attrs(self) -> Attributes:
        """The attributes as stat shows them now (nlink 0 once unlinked)."""
        attrs = self.attrs.copy()
        attrs.nlink = 0 if self.gone else 1
        return attrs

    def discard_staged(self) -> None:
        if self.staged is not None:
            self.staged.discard()
            self.staged = None


class Items:
    """The items by path (a leaf lock: never held while calling out)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_path: dict[str, Item] = {}
        self._ghosts: OrderedDict[str, tuple[float, Item]] = OrderedDict()
        """Unlinked files kept by their ``.fuse_hidden`` name after their last close."""

    def get(self, path: str) -> Item | None:
        with self._lock:
            return self._by_path.get(path)

    def put(self, item: Item) -> None:
        with self._lock:
            self._by_path[item.path] = item

    def drop(self, item: Item, path: str | None = None) -> None:
        """Remove ``item`` from ``path`` (its own by default), if it is still there."""
        with self._lock:
            path = item.path if path is None else path
            if self._by_path.get(path) is item:
                del self._by_path[path]

    def hold(self, path: str) -> Item | None:
        """The item at ``path`` with one more handle, or None. Counted here, not under the
        item's lock, so that an open never waits for an upload of the same file; and
        atomically with :meth:`drop_if_idle`, so that a file is never freed as it is
        opened."""
        with self._lock:
            item = self._by_path.get(path)
            if item is not None:
                item.handles += 1
            return item

    def drop_if_idle(self, item: Item) -> bool:
        """Remove ``item`` if no handle holds it; whether it is (now) out of the table."""
        with self._lock:
            if item.handles > 0:
                return False
            if self._by_path.get(item.path) is item:
                del self._by_path[item.path]
            return True

    def let_go(self, item: Item) -> int:
        """One handle less; the number left."""
        with self._lock:
            item.handles -= 1
            return item.handles

    def rename(self, item: Item, new_path: str) -> None:
        """``item`` is now at ``new_path``; it stays out of the table if it was not in it
        (freed by an upload that completed while a rename waited for it)."""
        with self._lock:
            registered = self._by_path.get(item.path) is item
            if registered:
                del self._by_path[item.path]
            item.path = new_path
            if registered:
                self._by_path[new_path] = item

    def all(self) -> list[Item]:
        with self._lock:
            return list(self._by_path.values())

    def under(self, folder: str, with_unlinked: bool = False) -> list[Item]:
        """Items at ``folder`` or below it (named ones only, unless ``with_unlinked``)."""
        with self._lock:
            return [item for item in self._by_path.values()
                    if is_within(item.path, folder) and (with_unlinked or not item.gone)]

    def in_folder(self, folder: str) -> list[Item]:
        """Named items directly in ``folder``."""
        with self._lock:
            return [item for item in self._by_path.values() if not item.gone
                    and item.path != "/" and parent_of(item.path) == folder]

    def bury(self, item: Item, now: float) -> list[Item]:
        """Keep an unlinked file, no longer open, reachable by its ``.fuse_hidden`` name a
        little longer (see core.py's ``_release_if_idle``); returns the older ones this
        pushes out (their staged copies are to be freed)."""
        with self._lock:
            self._ghosts[item.path] = (now, item)
            self._ghosts.move_to_end(item.path)
        return self.expired(now)

    def expired(self, now: float) -> list[Item]:
        """Remove and return the ghosts past their time or their number."""
        with self._lock:
            out = []
            while self._ghosts and (len(self._ghosts) > GHOSTS
                                    or next(iter(self._ghosts.values()))[0] < now - GHOST_SECONDS):
                out.append(self._ghosts.popitem(last=False)[1][1])
            return out

    def ghost(self, path: str) -> Item | None:
        with self._lock:
            kept = self._ghosts.get(path)
            return kept[1] if kept is not None else None

    def revive(self, path: str) -> Item | None:
        """The ghost at ``path`` held again (one handle), or None."""
        with self._lock:
            kept = self._ghosts.pop(path, None)
            if kept is None:
                return None
            item = kept[1]
            item.handles += 1
            self._by_path[path] = item
            return item

    def clear(self) -> list[Item]:
        """Empty the table; returns every item it held, ghosts included."""
        with self._lock:
            held = [*self._by_path.values(), *(item for _, item in self._ghosts.values())]
            self._by_path.clear()
            self._ghosts.clear()
            return held


def reopen(entry: Entry, staged: Path) -> Item:
    """The dirty item a journal entry of a crashed mount stands for."""
    info = os.stat(staged)
    # A write after the entry's last update shows in the copy's mtime, not in the row.
    mtime = info.st_mtime_ns if info.st_mtime_ns > entry.updated * 1e9 else entry.mtime_ns
    attrs = Attributes(entry.mode, info.st_size, entry.uid, entry.gid, mtime, mtime, mtime,
                       xattr=entry.xattr)
    base = (entry.base_etag, entry.base_modified or "") if entry.base_etag else None
    return Item(entry.path, entry.key, attrs, on_bucket=base is not None,
                staged=StagedFile(staged), entry_id=entry.id, base=base, recovered=True)


@dataclass
class WriteBackOptions:
    part_size: int
    retry_first_delay: float = 0.5
    retry_max_delay: float = 30.0


class WriteBack:
    """Every change to an item's content or upload (see the module's docstring)."""

    def __init__(self, storage: Storage, staging: StagingArea, items: Items,
                 options: WriteBackOptions, workers: int,
                 on_uploaded: Callable[[Item, Attributes], None]) -> None:
        self._storage = storage
        self._staging = staging
        self._items = items
        self._journal: Journal = staging.journal
        # Steps of uploads already under way are journaled when possible: a full staging
        # disk must not stop an upload (it only loses the ability to resume it).
        self._steps = BestEffortJournal(staging.journal)
        self._uploader = Uploader(storage, self._steps, options.part_size, workers)
        self._retries: RetryQueue[Item] = RetryQueue(
            self._retry, options.retry_first_delay, options.retry_max_delay)
        self._on_uploaded = on_uploaded

    # == content ===========================================================================

    def stage(self, item: Item, empty: bool = False) -> None:
        """Give ``item`` a staged copy (its content downloaded unless ``empty``)."""
        if item.staged is not None:
            return
        with self._staging.guard(f"staging {item.path}"):
            if empty or not item.on_bucket:
                item.staged = self._staging.new_file(item.path)
                item.attrs.size = 0
                return
            local = self._staging.new_path(item.path)
            try:
                self._storage.download(item.key, local, size=item.attrs.size)
            except BaseException:
                local.unlink(missing_ok=True)
                raise
            item.staged = StagedFile(local)
            item.attrs.size = item.staged.size()

    def write(self, item: Item, data: bytes, offset: int, appending: bool) -> int:
        with item.lock:
            self.stage(item)
            assert item.staged is not None
            if appending:
                offset = item.attrs.size
            self._track(item)  # before the bytes land: a crash must find them
            try:
                with self._staging.guard(f"writing {item.path}"):
                    written = item.staged.write(data, offset)
            finally:  # a full disk may have taken part of the data
                item.attrs.size = item.staged.size()
                self._touch(item)
            self._send_early(item, offset, written)
        return written

    def truncate(self, item: Item, length: int) -> None:
        """ftruncate, truncate(2) and open(O_TRUNC) alike: the early parts are told."""
        with item.lock:
            self.stage(item, empty=length == 0)
            assert item.staged is not None
            with self._staging.guard(f"truncating {item.path}"):
                item.staged.truncate(length)
            if item.stream is not None:
                item.stream.truncated(length)
            item.attrs.size = length
            self._touch(item)

    def change_attributes(self, item: Item, change: Callable[[Attributes], None]) -> bool:
        """chmod/chown/utimens of a staged file, applied at its upload; False if ``item``
        has no staged copy (any more: an upload may have just freed it), and the change
        is then the object's."""
        with item.lock:
            if item.staged is None or item.gone:
                return False
            change(item.attrs)
            item.attrs.ctime_ns = now_ns()
            self._track(item)
            assert item.entry_id is not None
            attrs = item.attrs  # what a recovery after a crash must give the file
            self._steps.update(item.entry_id, mode=attrs.mode, uid=attrs.uid, gid=attrs.gid,
                               mtime_ns=attrs.mtime_ns, xattr=attrs.xattr)
            if item.stream is not None:
                item.stream.metadata_stale = True
        return True

    def _touch(self, item: Item) -> None:
        item.attrs.mtime_ns = item.attrs.ctime_ns = now_ns()
        self._track(item)

    def _track(self, item: Item) -> None:
        """Make ``item`` dirty, journaled the first time (nothing for a GONE item).

        For an existing object, its ETag then is the base a recovery compares with (one
        HEAD, unless the mount just uploaded it).
        """
        if item.gone:
            return
        if item.entry_id is None:
            assert item.staged is not None
            if item.on_bucket and item.base is None:
                info = self._storage.stat(item.key)
                item.base = (info.etag, info.last_modified.isoformat()) if info else None
            attrs = item.attrs
            with self._staging.guard(f"journaling {item.path}"):
                item.entry_id = self._journal.add(
                    staged=item.staged.path.name, path=item.path, key=item.key,
                    bucket=self._storage.name, prefix=self._staging.prefix,
                    base_etag=item.base[0] if item.base else None,
                    base_modified=item.base[1] if item.base else None,
                    mode=attrs.mode, uid=attrs.uid, gid=attrs.gid, mtime_ns=attrs.mtime_ns,
                    xattr=attrs.xattr)
        if item.state in (State.CLEAN, State.FAILED, State.UPLOADING):
            item.move(State.DIRTY)

    def _send_early(self, item: Item, offset: int, written: int) -> None:
        """Let the parts of a large file go while it is written (streaming.py)."""
        if item.entry_id is None or item.gone:
            return
        if item.stream is None:
            assert item.staged is not None
            item.stream = self._uploader.stream(item.entry_id, item.key, item.staged.path,
                                                encode_metadata(item.current_attrs()))
        item.stream.wrote(offset, written)
        if item.state is State.DIRTY and item.stream.started():
            item.move(State.STREAMING)

    # == uploads ===========================================================================

    def upload(self, item: Item) -> None:
        """Upload the staged copy if it is newer than the object; FsError(EIO) on failure
        (the copy and its journal entry stay, and a background retry is scheduled)."""
        if item.recovered:
            self._settle(item)
        with item.lock:
            if not item.dirty or item.staged is None:
                return
            attrs = item.current_attrs()
            item.move(State.UPLOADING)
            try:
                assert item.entry_id is not None
                self._steps.update(item.entry_id, state="uploading", mode=attrs.mode,
                                   uid=attrs.uid, gid=attrs.gid, mtime_ns=attrs.mtime_ns,
                                   xattr=attrs.xattr)
                stream, item.stream = item.stream, None
                self._uploader.upload(item.entry_id, item.key, item.staged.path,
                                      encode_metadata(attrs), stream)
            except (QarnotException, OSError, sqlite3.Error) as error:
                self._failed(item, error)
                raise FsError(errno.EIO, f"upload of {item.key} failed: {error}") from error
            self._committed(item)
            log.info("uploaded %r (%d bytes)", item.key, attrs.size)
            self._on_uploaded(item, attrs)

    def _committed(self, item: Item, abandon: bool = False) -> None:
        """The bucket has the staged content: the journal entry goes, the file is clean.
        With ``abandon``, the entry's unfinished multipart upload, if any, is given up and
        aborted (the content got there some other way)."""
        if item.entry_id is not None:
            self._steps.remove(item.entry_id, abandon=abandon)
            if abandon:
                self._uploader.abort_soon()
        item.entry_id, item.base, item.recovered = None, None, False
        self._retries.forget(item)
        item.move(State.CLEAN)
        item.on_bucket = True

    def _failed(self, item: Item, error: BaseException) -> None:
        assert item.staged is not None
        item.move(State.FAILED)
        if item.entry_id is not None:
            self._steps.failed(item.entry_id, str(error))
        try:  # the staged copy is now the only version of the data
            self._staging.make_durable(item.staged)
        except (OSError, sqlite3.Error) as sync_error:
            log.error("could not flush the staged copy %s to disk: %s", item.staged.path,
                      sync_error)
        delay = self._retries.schedule(item)
        log.error("upload of %r failed (the staged copy %s is kept and retried in the "
                  "background in %.1f s): %s", item.key, item.staged.path, delay, error)
        self._uploader.abort_soon()

    def _retry(self, item: Item) -> None:
        """The background retry of a failed upload (a new failure schedules the next)."""
        with contextlib.suppress(FsError):
            self.upload(item)

    def give_up(self, item: Item) -> None:
        """``item`` was unlinked or replaced: never upload it; its journal entry goes and
        any multipart upload it started is aborted at once (in the background)."""
        self._settle_without_upload(item, State.GONE)

    def upload_to(self, item: Item, key: str) -> bool:
        """A rename of a dirty file: its staged content goes straight to the new ``key``
        (the old key's object, if any, is stale); False if it is clean (the caller copies
        the object instead)."""
        with item.lock:
            if not item.dirty or item.staged is None:
                return False
            self._storage.upload(key, item.staged.path, encode_metadata(item.current_attrs()))
            self._settle_without_upload(item, State.CLEAN)
            item.on_bucket = True
            return True

    def _settle_without_upload(self, item: Item, state: State) -> None:
        """``item`` needs no upload of its own any more (GONE: deleted; CLEAN: its content
        went to the bucket another way): no retry, no early parts, no journal entry, and
        the multipart upload it started is aborted at once (in the background)."""
        with item.lock:
            self._retries.forget(item)
            if item.stream is not None:
                item.stream.cancel()
                item.stream = None
            if item.entry_id is not None:
                self._steps.remove(item.entry_id, abandon=True)
                item.entry_id = None
            item.base, item.recovered = None, False
            item.move(state)
        self._uploader.abort_soon()

    def retarget(self, item: Item, path: str, key: str) -> None:
        """A rename moved ``item`` (its lock held by the caller): its upload goes to the
        new key. Early parts cannot follow (a multipart upload's key is fixed): they are
        given up and aborted, and ``close`` sends the file whole."""
        with item.lock:
            self._items.rename(item, path)
            if item.gone:
                return
            item.key = key
            if item.stream is not None:
                item.stream.cancel()
                item.stream = None
                if item.entry_id is not None:
                    self._steps.forget_upload(item.entry_id)
                if item.state is State.STREAMING:
                    item.move(State.DIRTY)
                self._uploader.abort_soon()
            if item.base is not None:
                # The object now at the new key is a copy: its ETag is what a recovery
                # must compare with (a copy of a multipart object has another ETag).
                info = self._storage.stat(key)
                item.base = (info.etag, info.last_modified.isoformat()) if info else None
            if item.entry_id is not None:
                self._steps.update(item.entry_id, path=path, key=key,
                                   base_etag=item.base[0] if item.base else None,
                                   base_modified=item.base[1] if item.base else None)

    # == crash recovery ====================================================================

    def _settle(self, item: Item) -> None:
        """Before the first upload of a recovered file: where it goes (a conflict moves
        it to a new name), or nothing to send."""
        with item.lock:
            if not item.recovered or not item.dirty or item.staged is None:
                return
            old_path = item.path
            try:
                owned = {name: value for name, value in encode_metadata(item.attrs).items()
                         if name in OWNERSHIP}
                target = recovery.settle(self._storage, item.key, item.path, item.base,
                                         item.staged.path, self._uploader.part_size, owned)
            except (QarnotException, OSError) as error:
                self._failed(item, error)
                raise FsError(errno.EIO, f"upload of {item.key} failed: {error}") from error
            item.recovered = False
            if target is None:
                # The crashed mount's multipart upload of this file, if it began one, is
                # never completed now.
                self._committed(item, abandon=True)
                self._on_uploaded(item, item.current_attrs())
                return
            path, key = target
            if path != old_path:
                item.key = key
                self._items.rename(item, path)
                assert item.entry_id is not None
                self._steps.update(item.entry_id, path=path, key=key)

    def recover(self) -> None:
        """Take over what crashed mounts left: their dirty files become pending uploads
        (retried at once in the background), their unfinished uploads are resumed or
        aborted. Two entries for one path (two mounts sharing a staging folder, both
        killed) are both kept: the newer at the path, the other as a conflict copy."""
        journal = self._journal
        with self._staging.orphans() as orphans:
            for folder, other in orphans:
                for entry in other.entries():
                    if (folder / entry.staged).is_file():
                        recovery.move_into(folder / entry.staged, self._staging.root,
                                           entry.staged)
                        journal.adopt(entry, other.parts(entry.id))
                    other.remove(entry.id, abandon=False)
        kept: set[str] = set()
        pending: list[Item] = []
        for entry, staged, conflict in recovery.arrange(journal.entries(), self._staging.root):
            if staged is None:
                log.error("the journal names %s for %r, but it is missing", entry.staged,
                          entry.key)
                journal.remove(entry.id, abandon=True)
                continue
            kept.add(entry.staged)
            item = reopen(entry, staged)
            if conflict is not None:
                item.path, item.key = conflict
                journal.update(entry.id, path=item.path, key=item.key)
                log.warning("two crashed mounts left versions of %r: the older goes to %r",
                            entry.key, item.key)
            item.move(State.DIRTY)
            self._items.put(item)
            pending.append(item)
        self._staging.remove_strays(kept)
        if pending:
            log.warning("a previous mount stopped with %d file(s) not uploaded; uploading "
                        "them now: %s", len(pending),
                        ", ".join(sorted(item.path for item in pending)[:10]))
        # Before any new upload starts, so that none can be taken for an orphan.
        if kept or journal.abandoned() or journal.intents():
            try:
                self._uploader.clean_orphans(self._staging.prefix)
            except QarnotException as error:
                log.warning("could not check for unfinished uploads: %s", error)
        for item in pending:
            self._retries.schedule(item, now=True)

    # == lifecycle =========================================================================

    def stop_retries(self) -> None:
        self._retries.stop()

    def close(self) -> None:
        """After the last upload: stop the pools, abort what was given up (best effort)."""
        self._uploader.close()
        with contextlib.suppress(QarnotException, sqlite3.Error):
            self._uploader.abort_abandoned()

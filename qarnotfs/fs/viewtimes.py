"""Times the mount shows but does not store: a folder's mtime and ctime when entries are
created, removed or renamed in it, and the ctime of a renamed entry.

Owns: :class:`ViewTimes`. Writing them to the bucket would cost a request per change
(a PUT of the folder's marker for every file created: small-file writes twice as slow;
s3fs does it only with its ``update_parent_dir_stat`` option, off by default), and a
rename's copy keeps the object's metadata as it is. So they live in this mount's view:
:meth:`ViewTimes.apply` raises the stored times to them in every ``stat`` and listing.
They are written to the bucket when the mount rewrites the object's metadata anyway
(chmod, chown, utimens: see core.py), and are lost at unmount, or when more than
``maxsize`` paths hold such times (the least recently changed go first): the stored
times show again. Other machines see the stored times only.

Lock order: ``ViewTimes._lock`` is a leaf (never held while calling out).
"""

from __future__ import annotations

import threading

from .attrs import Attributes
from .pathmap import PathMap


class ViewTimes:
    """(mtime, ctime) in nanoseconds the mount shows for paths, above what is stored."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._times: PathMap[tuple[int, int]] = PathMap(max(1, maxsize))

    def entries_changed(self, folder: str, now_ns: int) -> None:
        """An entry of ``folder`` was created, removed or renamed (mtime and ctime)."""
        with self._lock:
            self._times.set(folder, (now_ns, now_ns))

    def status_changed(self, path: str, now_ns: int) -> None:
        """``path`` changed, not its content (a rename): its ctime."""
        with self._lock:
            mtime, _ = self._times.get(path) or (0, 0)
            self._times.set(path, (mtime, now_ns))

    def apply(self, path: str, attrs: Attributes) -> Attributes:
        """``attrs`` with the times this mount changed, when later than the stored ones
        (a copy if changed)."""
        if not len(self._times):
            return attrs
        with self._lock:
            times = self._times.get(path)
        if times is None:
            return attrs
        mtime, ctime = times
        if mtime <= attrs.mtime_ns and ctime <= attrs.ctime_ns:
            return attrs
        shown = attrs.copy()
        shown.mtime_ns, shown.ctime_ns = max(mtime, attrs.mtime_ns), max(ctime, attrs.ctime_ns)
        return shown

    def renamed(self, old: str, new: str) -> None:
        """``old`` and what is under it moved to ``new`` (replacing what was there)."""
        with self._lock:
            self._times.move_tree(old, new)

    def removed(self, path: str) -> None:
        """``path`` and what is under it no longer exist, or their times are stored now."""
        with self._lock:
            self._times.drop_tree(path)

    def forget(self, path: str) -> None:
        """The times of ``path`` (not under it) are stored now."""
        with self._lock:
            self._times.pop(path)

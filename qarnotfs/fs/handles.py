"""Open files and their handles: the state the core keeps while files are open or dirty.

Owns: :class:`OpenFile` (one per path that is open or has content not yet uploaded: its
current path and key, attributes, staged copy, dirty and unlinked flags, handle count,
lock and journal entry) and :class:`Handle` (one per open(2): flags and read-ahead
reader). Several handles of one path share one OpenFile, so they all see the same bytes.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from .attrs import Attributes
from .reader import Reader
from .staging import StagedFile
from .streaming import PartStream


@dataclass(eq=False)
class OpenFile:
    """A file the mount holds: open, staged, or dirty (content newer than the bucket's)."""

    path: str
    key: str
    attrs: Attributes
    on_bucket: bool
    """An object exists at ``key`` (so renaming copies it and unlinking deletes it)."""
    staged: StagedFile | None = None
    dirty: bool = False
    unlinked: bool = False
    handles: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    journal_id: int | None = None
    """Its entry in the staging journal, while it is dirty."""
    base: tuple[str, str] | None = None
    """ETag and LastModified of the object its staged content derives from, once known
    (None with ``on_bucket`` False: there was no object)."""
    recovered: bool = False
    """Left dirty by a mount that crashed: check for a conflict before uploading."""
    stream: PartStream | None = None
    """The parts of its upload sent while it is written (once it outgrows one part)."""

    def current_attrs(self) -> Attributes:
        """The attributes as stat shows them now (nlink 0 once unlinked).

        ``attrs.size`` is kept equal to the staged copy's size by every write and
        truncate, so this never touches a descriptor another thread may be closing.
        """
        attrs = self.attrs.copy()
        attrs.nlink = 0 if self.unlinked else 1
        return attrs

    def discard_staged(self) -> None:
        if self.staged is not None:
            self.staged.discard()
            self.staged = None


@dataclass(eq=False)
class Handle:
    """One open(2) of a file."""

    number: int
    file: OpenFile
    flags: int
    reader: Reader

    @property
    def writable(self) -> bool:
        return (self.flags & os.O_ACCMODE) != os.O_RDONLY

    @property
    def appending(self) -> bool:
        return bool(self.flags & os.O_APPEND)

"""Handles: one per open(2) of a file.

Owns: :class:`Handle` (its flags, its read-ahead reader, what the kernel may do with its
page cache) and :class:`Opening`, what an open learned of the object. Several handles of
one path share one :class:`~.writeback.Item`, so they all see the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .reader import Reader

if TYPE_CHECKING:
    from .writeback import Item


@dataclass(frozen=True)
class PageCache:
    """What the kernel may do with the pages it cached of a file, for one open."""

    keep: bool = False
    """The pages are of the object as it is now: keep them (FOPEN_KEEP_CACHE)."""
    bypass: bool = False
    """Read around the page cache (FOPEN_DIRECT_IO): the size the kernel knows is not the
    object's, and page cache reads stop at that size."""


@dataclass(frozen=True)
class Opening:
    """What an open learned of the object: the page cache rule, and its first bytes when
    it fetched them (the whole of a small file)."""

    page_cache: PageCache = PageCache()
    first: bytes | None = None
    cached: bool = False
    """``first`` came from the local read cache (not to be put there again)."""


@dataclass(eq=False)
class Handle:
    """One open(2) of a file."""

    number: int
    file: Item
    flags: int
    reader: Reader
    page_cache: PageCache = PageCache()

    @property
    def writable(self) -> bool:
        return (self.flags & os.O_ACCMODE) != os.O_RDONLY

    @property
    def appending(self) -> bool:
        return bool(self.flags & os.O_APPEND)

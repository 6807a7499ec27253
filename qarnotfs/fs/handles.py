"""Handles: one per open(2) of a file.

Owns: :class:`Handle` (its flags and its read-ahead reader). Several handles of one path
share one :class:`~.writeback.Item`, so they all see the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .reader import Reader

if TYPE_CHECKING:
    from .writeback import Item


@dataclass(eq=False)
class Handle:
    """One open(2) of a file."""

    number: int
    file: Item
    flags: int
    reader: Reader
    etag: str = ""
    """The ETag of the object as the open found it ("" if unknown or not on the bucket)."""

    @property
    def writable(self) -> bool:
        return (self.flags & os.O_ACCMODE) != os.O_RDONLY

    @property
    def appending(self) -> bool:
        return bool(self.flags & os.O_APPEND)

"""A map keyed by mount paths that moves and drops whole trees without scanning.

Owns: :class:`PathMap`, the structure of the inode table (inodes.py) and of the mount's
view of folder times (viewtimes.py): entries for a few paths among millions, where a
folder rename or an rmdir must find the entries under a folder. Each folder counts the
entries below it, so a tree operation scans only when the tree holds some. Optionally
bounded: past ``maxsize`` entries the least recently set goes.

Not thread-safe: its owner holds its own lock around every call.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


def ancestors(path: str) -> list[str]:
    """``path`` and each folder above it, nearest first, the root excluded."""
    found = []
    while path not in ("", "/"):
        found.append(path)
        path = path.rsplit("/", 1)[0]
    return found


class PathMap(Generic[V]):
    """{path: value} for absolute, normalized mount paths."""

    def __init__(self, maxsize: int | None = None) -> None:
        self._entries: OrderedDict[str, V] = OrderedDict()
        self._below: dict[str, int] = {}
        self._maxsize = maxsize

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> V | None:
        return self._entries.get(path)

    def set(self, path: str, value: V) -> None:
        if path in self._entries:
            self._entries.move_to_end(path)
        else:
            for folder in ancestors(path)[1:]:
                self._below[folder] = self._below.get(folder, 0) + 1
        self._entries[path] = value
        if self._maxsize is not None and len(self._entries) > self._maxsize:
            self.pop(next(iter(self._entries)))

    def pop(self, path: str) -> V | None:
        if path not in self._entries:
            return None
        for folder in ancestors(path)[1:]:
            left = self._below[folder] - 1
            if left:
                self._below[folder] = left
            else:
                del self._below[folder]
        return self._entries.pop(path)

    def tree(self, path: str) -> list[str]:
        """The paths at or under ``path`` that have an entry."""
        found = [path] if path in self._entries else []
        if self._below.get(path):
            found.extend(p for p in self._entries if p.startswith(path + "/"))
        return found

    def drop_tree(self, path: str) -> None:
        for found in self.tree(path):
            self.pop(found)

    def move_tree(self, old: str, new: str) -> None:
        """What was at and under ``old`` is now at and under ``new`` (which it replaces)."""
        moving = [(path, self.pop(path)) for path in self.tree(old)]
        self.drop_tree(new)
        for path, value in moving:
            if value is not None:
                self.set(new + path[len(old):], value)

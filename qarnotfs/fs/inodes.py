"""Inode numbers: stable for an object for the life of the mount, across renames.

Owns: :class:`InodeTable`, the ``st_ino`` of every path the mount shows. No FUSE types.

How a number is made. Every path has an *identity*, a string whose 63-bit BLAKE2b hash is
its number (the root is 1). A path nobody renamed is its own identity (the mount prefix
and the path, so a number is the same at every mount of the same prefix). A rename
records, for the new path, the identity the old path had (``_moved``, one entry per
rename, file or folder: the paths under a renamed folder derive theirs from it, so a
folder of a million keys costs one entry, not a million) and *retires* that identity.
A path whose identity was given away (a new file where a renamed one was) gets a fresh
identity of its own, recorded like a rename, so its number cannot be the moved one's.

Collisions. Two identities with one hash would show two objects as one file (``cp``
would refuse to copy one onto the other). The numbers handed out recently (``recent``
of them, the metadata cache's size) remember which identity holds them; a different
identity hashing to a held number gets a fresh identity instead. Beyond that window a
collision is not detected; its odds are about N²/2⁶⁴ for N paths (1 in 10⁷ for a
million paths).

Memory: one small entry per rename made through this mount (and per collision or reused
name), none per object of the bucket, plus the bounded ``recent`` window. Entries under
a path go when the mount removes it.

Lock order: ``InodeTable._lock`` is a leaf (never held while calling out).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import dataclass

from .pathmap import PathMap

ROOT_INODE = 1
_HASH_BITS = 63  # below 2**63: some programs keep st_ino in a signed 64-bit integer
_FRESH = "\0"  # fresh identities start with NUL, which no path holds


@dataclass(frozen=True, slots=True)
class _Origin:
    identity: str
    sequence: int  # when it was recorded: retirements after it take its names away


def _hash(identity: str) -> int:
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogateescape"), digest_size=8)
    number = int.from_bytes(digest.digest(), "big") >> (64 - _HASH_BITS)
    return number if number > ROOT_INODE else number + 2


class InodeTable:
    """``st_ino`` of mount paths (absolute, normalized), kept across renames."""

    def __init__(self, prefix: str = "", recent: int = 100_000) -> None:
        self._prefix = prefix.rstrip("/")
        self._lock = threading.Lock()
        self._moved: PathMap[_Origin] = PathMap()
        self._retired: dict[str, int] = {}  # identity -> sequence of its retirement
        self._recent: dict[int, str] = {}  # number -> identity, oldest first
        self._recent_size = max(1, recent)
        self._sequence = itertools.count(1)
        self._fresh = itertools.count(1)

    def __len__(self) -> int:
        """How many paths hold a recorded identity (renamed, reused or collided)."""
        with self._lock:
            return len(self._moved)

    def number(self, path: str) -> int:
        if path == "/":
            return ROOT_INODE
        with self._lock:
            return self._number(path, self._identity(path))

    def numbers(self, folder: str, names: list[str]) -> list[int]:
        """The numbers of ``folder``'s entries ``names`` (the folder is resolved once)."""
        base = folder.rstrip("/")
        with self._lock:
            if not self._retired and not len(self._moved):
                return [self._number(f"{base}/{name}", f"{self._prefix}{base}/{name}")
                        for name in names]
            parent = self._resolve(folder)
            numbers = []
            for name in names:
                path = f"{base}/{name}"
                numbers.append(self._number(path, self._child(path, name, parent)[0]))
            return numbers

    def renamed(self, old: str, new: str) -> None:
        """``old`` (and everything under it) is now at ``new``, which it replaced."""
        with self._lock:
            if old == new:
                return
            origin = self._identity(old)
            self._moved.move_tree(old, new)
            sequence = next(self._sequence)
            self._moved.set(new, _Origin(origin, sequence))
            self._retired[origin] = sequence

    def removed(self, path: str) -> None:
        """``path`` and everything under it no longer exist."""
        with self._lock:
            self._moved.drop_tree(path)

    # -- under the lock ------------------------------------------------------------------

    def _number(self, path: str, identity: str) -> int:
        number = _hash(identity)
        holder = self._recent.get(number)
        while holder is not None and holder != identity:  # a collision: another identity
            identity = self._give_fresh(path)
            number = _hash(identity)
            holder = self._recent.get(number)
        if holder is None:
            self._recent[number] = identity
            if len(self._recent) > self._recent_size:  # the oldest goes first
                del self._recent[next(iter(self._recent))]
        return number

    def _identity(self, path: str) -> str:
        if not self._retired and not len(self._moved):
            return self._prefix + path
        return self._resolve(path)[0]

    def _resolve(self, path: str) -> tuple[str, int]:
        """(identity, sequence it dates from) of ``path``, from the root down."""
        if path == "/":
            return self._prefix, 0
        folder, name = path.rsplit("/", 1)
        return self._child(path, name, self._resolve(folder or "/"))

    def _child(self, path: str, name: str, parent: tuple[str, int]) -> tuple[str, int]:
        """The identity of ``path``, entry ``name`` of a folder whose identity is
        ``parent``: its own if it was renamed (or given one), else the folder's and its
        name, unless a rename gave that identity away since (then a fresh one)."""
        origin = self._moved.get(path)
        if origin is not None:
            return origin.identity, origin.sequence
        identity, since = f"{parent[0]}/{name}", parent[1]
        if self._retired.get(identity, 0) > since:
            self._give_fresh(path)
            return self._child(path, name, parent)  # now recorded
        return identity, since

    def _give_fresh(self, path: str) -> str:
        identity = f"{_FRESH}{next(self._fresh)}"
        self._moved.set(path, _Origin(identity, next(self._sequence)))
        return identity

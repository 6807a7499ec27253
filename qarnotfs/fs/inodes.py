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
from collections import OrderedDict
from dataclasses import dataclass

from .pathmap import PathMap, ancestors

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
        self._recent: OrderedDict[int, str] = OrderedDict()
        self._recent_size = max(1, recent)
        self._sequence = itertools.count(1)
        self._fresh = itertools.count(1)

    def __len__(self) -> int:
        """How many paths hold a recorded identity (renamed, reused or collided)."""
        with self._lock:
            return len(self._moved)

    def number(self, path: str) -> int:
        with self._lock:
            return self._number(path)

    def numbers(self, folder: str, names: list[str]) -> list[int]:
        """The numbers of ``folder``'s entries ``names`` (one lock for a whole listing)."""
        base = folder.rstrip("/")
        with self._lock:
            return [self._number(f"{base}/{name}") for name in names]

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

    def _number(self, path: str) -> int:
        if path == "/":
            return ROOT_INODE
        identity = self._identity(path)
        number = _hash(identity)
        holder = self._recent.get(number)
        while holder is not None and holder != identity:  # a collision: another identity
            identity = self._give_fresh(path)
            number = _hash(identity)
            holder = self._recent.get(number)
        self._recent[number] = identity
        self._recent.move_to_end(number)
        if len(self._recent) > self._recent_size:
            self._recent.popitem(last=False)
        return number

    def _identity(self, path: str) -> str:
        if not len(self._moved) and not self._retired:
            return self._prefix + path
        identity, since = self._prefix + path, 0
        for folder in ancestors(path):
            origin = self._moved.get(folder)
            if origin is not None:
                identity, since = origin.identity + path[len(folder):], origin.sequence
                break
        if self._taken(identity, since):
            identity = self._give_fresh(path)
        return identity

    def _taken(self, identity: str, since: int) -> bool:
        """True if ``identity`` (or a folder identity above it) was given to a renamed
        object after ``since``: the path holding it now is a new object."""
        if not self._retired:
            return False
        while True:
            if self._retired.get(identity, 0) > since:
                return True
            if "/" not in identity.lstrip("/"):
                return False
            identity = identity.rsplit("/", 1)[0]

    def _give_fresh(self, path: str) -> str:
        identity = f"{_FRESH}{next(self._fresh)}"
        self._moved.set(path, _Origin(identity, next(self._sequence)))
        return identity

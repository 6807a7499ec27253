"""Claims on paths: how namespace changes of one file or folder exclude each other without a
mount-wide lock.

Owns: :class:`PathClaims`. A call that changes which paths exist (create, unlink, rename,
mkdir, rmdir, symlink, chmod...) claims the paths it touches for its whole duration:
``one(path)`` for a file or a name, ``tree(path)`` for a folder and everything under it
(rmdir, folder rename). Two claims conflict when they name the same path, or when one is
a tree holding the other's path. A call waits only for calls that touch its own paths,
so a request that hangs on file A (a stuck upload, a 300 MiB download for an unlink)
never stalls an operation on an unrelated file B.

Every claim a call needs is taken at once (all or none), so two calls can never hold one
claim each while waiting for the other's: no deadlock without a global order. Claims are
reentrant for the thread that holds them (a rename over an open file unlinks it inside
the rename's claim).

Lock order: this is the first lock of the core (see core.py); ``PathClaims._condition``
is held only to look at and change the table, never across a request.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from .keys import is_within


@dataclass(frozen=True)
class Claim:
    path: str
    tree: bool = False
    """The path and everything under it."""

    def conflicts(self, other: Claim) -> bool:
        if self.path == other.path:
            return True
        if self.tree and is_within(other.path, self.path):
            return True
        return other.tree and is_within(self.path, other.path)


def one(path: str) -> Claim:
    return Claim(path)


def tree(path: str) -> Claim:
    return Claim(path, tree=True)


class PathClaims:
    """The claims held now, by thread."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._held: dict[Claim, tuple[int, int]] = {}
        """Claim -> (owner thread id, depth)."""

    def _blocked(self, wanted: list[Claim], me: int) -> bool:
        return any(claim.conflicts(held) and owner != me
                   for held, (owner, _depth) in self._held.items() for claim in wanted)

    @contextlib.contextmanager
    def hold(self, *wanted: Claim) -> Iterator[None]:
        """Hold every claim in ``wanted`` for the block (waiting for conflicting ones)."""
        me = threading.get_ident()
        claims = list(dict.fromkeys(wanted))
        with self._condition:
            self._condition.wait_for(lambda: not self._blocked(claims, me))
            for claim in claims:
                owner, depth = self._held.get(claim, (me, 0))
                self._held[claim] = (owner, depth + 1)
        try:
            yield
        finally:
            with self._condition:
                for claim in claims:
                    owner, depth = self._held[claim]
                    if depth > 1:
                        self._held[claim] = (owner, depth - 1)
                    else:
                        del self._held[claim]
                self._condition.notify_all()

    def busy(self) -> list[Claim]:
        """The claims held now (for tests and diagnostics)."""
        with self._condition:
            return list(self._held)

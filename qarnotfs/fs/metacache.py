"""The metadata cache: what the mount believes about paths, for a bounded time.

Owns: :class:`Node` (a path's attributes, and whether they come from the object's own
metadata) and :class:`MetaCache`, three cachetools ``TTLCache`` maps (LRU + TTL): positive
entries and whole folder listings live ``ttl`` seconds, "does not exist" answers live
``negative_ttl`` seconds. The mount's own changes go through :meth:`MetaCache.put` and
:meth:`MetaCache.remove`, which also patch the cached listing of the parent folder, so they
show at once; the TTLs bound how long changes made by others stay unseen. A TTL of 0
disables that map. Thread-safe (one internal lock, never held while calling out).

What the mount *observes* (a HEAD, a LIST) goes through the ``learn*`` methods with the
generation read before the request: an observation is dropped if the mount changed that
path, its folder or an ancestor meanwhile, so a slow LIST that started before our own
upload can never hide the uploaded file (or bring back a deleted one) for a TTL.

Lock order: ``MetaCache._lock`` is a leaf: held to read or change the cache, never while
calling out (callers hold path claims or an item's lock before it, never after).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache, TTLCache

from .attrs import Attributes
from .keys import is_within, name_of, parent_of


@dataclass(frozen=True, slots=True)
class Node:
    """A path's attributes; ``exact`` when they come from its metadata or our own write;
    ``etag`` the object's ETag when the bucket told it (a listing or a HEAD)."""

    attrs: Attributes
    exact: bool = False
    etag: str = ""

    def copy(self) -> Node:
        return Node(self.attrs.copy(), self.exact, self.etag)


class _Children(dict[str, Node]):
    """A folder's cached listing, when it was learned, and how many of its entries are
    folders (kept up to date by every patch, so a folder's ``stat`` never counts)."""

    learned: float = 0.0
    subfolders: int = 0

    def patch(self, name: str, node: Node | None) -> None:
        """Set (or, with None, remove) the entry ``name``, keeping the folder count."""
        old = self.pop(name, None)
        self.subfolders -= old is not None and old.attrs.is_dir
        if node is not None:
            self[name] = node
            self.subfolders += node.attrs.is_dir


class _Map:
    """A TTLCache, or nothing at all when its TTL is 0."""

    def __init__(self, ttl: float, maxsize: int, timer: Callable[[], float]) -> None:
        self.cache: TTLCache[str, object] | None = (
            TTLCache(maxsize=max(1, maxsize), ttl=ttl, timer=timer) if ttl > 0 else None)

    def get(self, key: str) -> object | None:
        return None if self.cache is None else self.cache.get(key)

    def set(self, key: str, value: object) -> None:
        if self.cache is not None:
            self.cache[key] = value

    def pop(self, key: str) -> None:
        if self.cache is not None:
            self.cache.pop(key, None)

    def drop_tree(self, folder: str) -> None:
        if self.cache is not None:
            for key in [k for k in list(self.cache.keys()) if is_within(k, folder)]:
                self.cache.pop(key, None)

    def clear(self) -> None:
        if self.cache is not None:
            self.cache.clear()


class MetaCache:
    """Positive, negative and listing caches for mount paths (absolute, normalized)."""

    def __init__(self, ttl: float, negative_ttl: float, maxsize: int,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._timer = timer
        self._negative_ttl = negative_ttl
        self._entries = _Map(ttl, maxsize, timer)
        self._missing = _Map(negative_ttl, maxsize, timer)
        # Listings are heavier (one dict each): a smaller share of the budget.
        self._listings = _Map(ttl, max(1, maxsize // 10), timer)
        self._generation = 0
        self._changed: LRUCache[str, int] = LRUCache(maxsize=max(1, maxsize))

    def generation(self) -> int:
        """Read this before asking the bucket; pass it to the ``learn*`` methods."""
        with self._lock:
            return self._generation

    def _mark(self, path: str, folder: bool = True) -> None:
        self._generation += 1
        self._changed[path] = self._generation
        if folder and path != "/":
            self._changed[parent_of(path)] = self._generation

    def changed_since(self, path: str, since: int) -> bool:
        """True if the mount changed ``path``, its folder or an ancestor after ``since``."""
        with self._lock:
            return self._stale(path, since)

    def _stale(self, path: str, since: int) -> bool:
        """True if the mount changed ``path``, its folder or an ancestor after ``since``."""
        while True:
            if self._changed.get(path, 0) > since:
                return True
            if path == "/":
                return False
            path = parent_of(path)

    def get(self, path: str) -> Node | None:
        """The cached node of ``path`` (a copy), or None if unknown or expired."""
        with self._lock:
            node = self._entries.get(path)
        return node.copy() if isinstance(node, Node) else None

    def is_missing(self, path: str) -> bool:
        """True if ``path`` is recently known not to exist."""
        with self._lock:
            return self._missing.get(path) is not None

    def listing(self, folder: str) -> dict[str, Node] | None:
        """The cached content of ``folder`` ({name: node}, a copy), or None."""
        with self._lock:
            children = self._listings.get(folder)
            if not isinstance(children, dict):
                return None
            return {name: node.copy() for name, node in children.items()}

    def child(self, folder: str, name: str) -> tuple[bool, Node | None]:
        """What ``folder``'s cached listing says of ``name``: (True, its node) if listed,
        (True, None) if absent from a listing younger than the negative TTL (a listing
        vouches for a missing name no longer than a "does not exist" answer would), else
        (False, None). Copies one node, not the whole listing."""
        with self._lock:
            children = self._listings.get(folder)
            if not isinstance(children, _Children):
                return False, None
            node = children.get(name)
            if node is None:
                return self._timer() - children.learned < self._negative_ttl, None
        return True, node.copy()

    def has_listing(self, folder: str) -> bool:
        """True if a listing of ``folder`` is cached (whatever its age)."""
        with self._lock:
            return isinstance(self._listings.get(folder), _Children)

    def subfolders(self, folder: str) -> int | None:
        """How many folders the cached listing of ``folder`` has (None if not cached)."""
        with self._lock:
            children = self._listings.get(folder)
            return children.subfolders if isinstance(children, _Children) else None

    def listing_size(self, folder: str) -> int | None:
        """How many entries the cached listing of ``folder`` has (None if not cached)."""
        with self._lock:
            children = self._listings.get(folder)
            return len(children) if isinstance(children, dict) else None

    def put(self, path: str, node: Node) -> None:
        """Record that ``path`` exists with these attributes (and patch its parent's listing)."""
        with self._lock:
            self._mark(path)
            self._store(path, node)

    def confirm(self, path: str, node: Node) -> None:
        """Record the attributes the mount knows of the file at ``path`` as exact: not a
        change of its folder, so lookups and listings of it under way stay valid (a
        sibling's lookup ahead, siblings.py), only those of ``path`` itself."""
        with self._lock:
            self._mark(path, folder=False)
            self._store(path, node)

    def learn(self, path: str, node: Node, since: int) -> None:
        """Record an observation of ``path`` made after generation ``since``."""
        with self._lock:
            if not self._stale(path, since):
                self._store(path, node)

    def learn_missing(self, path: str, since: int) -> None:
        """Record that the bucket had nothing at ``path`` (observed after ``since``)."""
        with self._lock:
            if not self._stale(path, since):
                self._entries.pop(path)
                self._missing.set(path, True)

    def learn_listing(self, folder: str, children: dict[str, Node], since: int) -> None:
        """Record the content of ``folder`` listed after generation ``since``."""
        with self._lock:
            if not self._stale(folder, since):
                self._store_listing(folder, children)

    # Stored nodes are never changed in place (callers get copies), so the entries map
    # and a listing share one copy: half the memory per cached entry.
    def _store(self, path: str, node: Node) -> None:
        stored = node.copy()
        self._entries.set(path, stored)
        self._missing.pop(path)
        if path != "/":
            children = self._listings.get(parent_of(path))
            if isinstance(children, _Children):
                children.patch(name_of(path), stored)

    def put_listing(self, folder: str, children: dict[str, Node]) -> None:
        """Record the full content of ``folder`` as the mount made it (mkdir)."""
        with self._lock:
            self._mark(folder)
            self._store_listing(folder, children)

    def _store_listing(self, folder: str, children: dict[str, Node]) -> None:
        stored = _Children((name, node.copy()) for name, node in children.items())
        stored.learned = self._timer()
        stored.subfolders = sum(node.attrs.is_dir for node in stored.values())
        self._listings.set(folder, stored)
        for name, node in stored.items():
            path = f"{folder.rstrip('/')}/{name}"
            self._entries.set(path, node)
            self._missing.pop(path)

    def remove(self, path: str, tree: bool = False) -> None:
        """Record that ``path`` no longer exists (with everything under it if ``tree``)."""
        with self._lock:
            self._mark(path)
            for cache in (self._entries, self._listings, self._missing):
                if tree:
                    cache.drop_tree(path)
                else:
                    cache.pop(path)
            self._missing.set(path, True)
            children = self._listings.get(parent_of(path))
            if isinstance(children, _Children):
                children.patch(name_of(path), None)

    def forget(self, path: str) -> None:
        """Drop what is known about ``path`` and under it, and its entry in its parent's
        listing (the listing stays: a folder moved in there still counts once put)."""
        with self._lock:
            self._mark(path)
            for cache in (self._entries, self._listings, self._missing):
                cache.drop_tree(path)
            children = self._listings.get(parent_of(path))
            if isinstance(children, _Children):
                children.patch(name_of(path), None)

    def clear(self) -> None:
        with self._lock:
            for cache in (self._entries, self._listings, self._missing):
                cache.clear()

"""What exists in the bucket, as the mount sees it: lookups and folder listings.

Owns: answering "what is at this path" and "what is in this folder" from the metadata
cache, else from the bucket, by THE attribute rule of the mount:

* a folder is listed by one LIST of all the keys under it (every level, one page of up to
  1,000 keys), continued, when there are more, by a delimited listing after the last key
  seen. Each sub-folder whose keys all fit in that first page is listed too (a ``find``
  or ``ls -R`` of a small tree costs one request); the entries' type, size and times come
  from the listing, with no request per entry except:

  - *link and special file candidates* (``attrs.needs_head``: 0 to 4095 bytes and, by
    default, the multipart ETag qarnotfs gives its links and special files), HEADed in
    parallel because only their metadata tells whether they are symbolic links, FIFOs,
    sockets or devices (and a kernel inode never changes type);
  - sub-folders with a marker object (or not listed, so not known to have none), whose
    marker is HEADed in parallel for the mode, owner and times a folder's metadata holds;

* other entries show the default mode and owner until the mount learns their metadata (a
  lookup of a name not listed yet, an open, a chmod...: each of those HEADs the object);
* a lookup the cache cannot answer costs a GET of the key's first 64 KiB (its headers
  tell what a HEAD would; the bytes are kept for the open that follows, prefetch.py):
  one request for a file. Only when that finds nothing is the folder rule asked, by a
  one-key LIST of ``key/`` (plus a HEAD of the folder's marker when the LIST shows one).
  So a key that is also a folder (``x`` and ``x/y``) shows as a file when looked up by
  name, until a listing of its parent shows the folder, which wins from then on; with
  ``lookups="listed"`` a lookup lists the parent folder instead (as above, once: the
  siblings are then answered from the listing), unless the keys below that folder fill
  more than one page.

Lock order: ``Namespace._big_lock`` is a leaf (never held while calling out).

Open files are not this module's business: the core overlays them. Nor are the
``.fuse_hidden`` names libfuse gives them once unlinked: a lookup of one is ENOENT,
without a request (keys.py).
"""

from __future__ import annotations

import errno
import logging
import threading
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cachetools import LRUCache

from ..exceptions import MissingObjectException
from ..objects import Listing, ObjectInfo, ObjectRead
from .attrs import Defaults, dir_attributes, needs_head, object_attributes
from .errors import FsError
from .keys import KeyMapper, is_fuse_hidden, join, name_of, parent_of, unrepresentable
from .metacache import MetaCache, Node
from .prefetch import FIRST_BYTES, FirstBytes, FirstPages, Page
from .siblings import SiblingReadAhead

if TYPE_CHECKING:
    from .storage import Storage

log = logging.getLogger(__name__)

Lookups = Literal["exact", "listed"]
LOOKUPS: tuple[Lookups, ...] = ("exact", "listed")
"""How a name the caches cannot answer is looked up: by name (a HEAD and a one-key LIST:
its stored mode, owner and times at once), or by listing its folder (one request for all
the siblings, which show the listing's attributes until opened)."""

BIG_FOLDERS = 4096
"""Folders remembered as too big to list for a lookup (a bound on memory)."""


def split_tree(prefix: str, objects: list[ObjectInfo], truncated: bool) -> dict[str, Listing]:
    """Delimited listings (as ``list_folder`` gives them) of ``prefix`` and of every
    sub-prefix, built from a listing of all the keys under ``prefix`` in key order.

    When ``truncated``, the prefixes that contain the last key may have more keys: they
    are left out, except ``prefix`` itself (the caller completes it).
    """
    listings: dict[str, Listing] = {prefix: Listing()}
    seen: set[str] = set()
    for info in objects:
        folder = prefix
        names = info.key[len(prefix):].split("/")
        for name in names[:-1]:
            sub = f"{folder}{name}/"
            if sub not in seen:
                seen.add(sub)
                listings[folder].prefixes.append(sub)
                listings[sub] = Listing()
            folder = sub
        listings[folder].objects.append(info)
    if truncated and objects:
        last = objects[-1].key
        for sub in [p for p in listings if p != prefix and last.startswith(p)]:
            del listings[sub]
    return listings


class Namespace:
    """Lookups and listings of mount paths, cached."""

    def __init__(self, bucket: Storage, keys: KeyMapper, cache: MetaCache,
                 defaults: Defaults, pool: Executor, first_bytes: FirstBytes,
                 list_on_miss: bool = False, first_pages: FirstPages | None = None) -> None:
        self.bucket = bucket
        self.keys = keys
        self.cache = cache
        self.defaults = defaults
        self._pool = pool
        self.first_bytes = first_bytes
        self.first_pages = first_pages if first_pages is not None else FirstPages()
        self._list_on_miss = list_on_miss
        self._big_lock = threading.Lock()
        self._big_folders: LRUCache[str, bool] = LRUCache(maxsize=BIG_FOLDERS)
        """Folders with more than a page of keys below them: a lookup there asks by name."""
        self.ahead = SiblingReadAhead(pool, FIRST_BYTES, self.files_of,
                                      lambda path: self.fetch(path, keep_bytes=True))
        """Lookups ahead of a program reading a folder's files in order (siblings.py)."""

    def _is_big(self, folder: str) -> bool:
        with self._big_lock:
            return folder in self._big_folders

    def root(self) -> Node:
        return Node(dir_attributes(self.defaults), exact=True)

    def lookup(self, path: str) -> Node:
        """The node at ``path`` (normalized); FsError(ENOENT) if there is none."""
        if path == "/":
            return self.root()
        if is_fuse_hidden(path):
            # Never a key (keys.py): libfuse's probe of a hidden name costs no request.
            raise FsError(errno.ENOENT, path)
        node = self.cache.get(path)
        if node is not None:
            return self._after_ahead(path, node)
        if self.cache.is_missing(path):
            raise FsError(errno.ENOENT, path)
        parent, name = parent_of(path), name_of(path)
        listed, sibling = self.cache.child(parent, name)
        if not listed and self._list_on_miss and not self.cache.has_listing(parent) \
                and not self._is_big(parent):
            # Listing the folder costs what asking for one name costs, and answers for
            # every sibling (a program reading a folder's files sends one LIST, not one
            # per file); a folder with more than a page of keys below it is asked by name.
            if self._list(parent, whole=False) is None:
                with self._big_lock:
                    self._big_folders[parent] = True
            listed, sibling = self.cache.child(parent, name)
        if listed:
            if sibling is None:
                raise FsError(errno.ENOENT, path)
            return self._after_ahead(path, sibling)
        if self.ahead.wait_for(path):
            node = self.cache.get(path)
            if node is not None:
                return node
        return self.fetch(path, keep_bytes=True)

    def _after_ahead(self, path: str, node: Node) -> Node:
        """``node``, or what the fetch ahead of ``path`` under way learned (exact)."""
        if node.exact or not self.ahead.wait_for(path):
            return node
        return self.cache.get(path) or node

    def fetch(self, path: str, keep_bytes: bool = False, folder: bool = False) -> Node:
        """Ask the bucket what is at ``path``, and cache the answer.

        The file's key is asked first (with ``keep_bytes``, a GET of its first bytes, kept
        for an open: prefetch.py; else a HEAD): a file found so costs that one request.
        Only a missing key, or a path known to be a ``folder`` (listed as one), is asked
        the folder rule (a one-key LIST of ``key/``, and a HEAD of the marker if any).
        """
        since = self.cache.generation()
        if not folder:
            node = self._file_node(path, keep_bytes)
            if node is not None:
                self.cache.learn(path, node, since)
                return node
        prefix = self.keys.dir_prefix(path)
        objects, truncated = self.bucket.list_page(prefix)  # kept for its listing
        if objects:
            marker = self.bucket.stat(prefix) if objects[0].key == prefix else None
            node = Node(dir_attributes(self.defaults, marker), exact=True)
            self.first_pages.keep(path, Page(objects, truncated, since))
        elif folder:  # no longer a folder: maybe a file now
            return self.fetch(path, keep_bytes)
        else:
            self.cache.learn_missing(path, since)
            raise FsError(errno.ENOENT, path)
        self.cache.learn(path, node, since)
        return node

    def _file_node(self, path: str, keep_bytes: bool) -> Node | None:
        """The node of the object at ``path``'s key, None if there is none."""
        key = self.keys.file_key(path)
        answer = self._read_first(key) if keep_bytes else self.bucket.stat(key)
        info = answer.info if isinstance(answer, ObjectRead) else answer
        if info is None:
            return None
        node = Node(object_attributes(info, self.defaults), exact=True, etag=info.etag)
        if isinstance(answer, ObjectRead) and node.attrs.is_file:
            self.first_bytes.keep(path, info.etag, answer.data)
        return node

    def _read_first(self, key: str) -> ObjectRead | None:
        try:
            return self.bucket.get(key, 0, FIRST_BYTES)
        except MissingObjectException:
            return None

    def files_of(self, folder: str) -> dict[str, int]:
        """The files of ``folder`` and their sizes: from its cached listing, else from the
        first page of its keys (one LIST, not cached: a lookup by name still asks by name)."""
        cached = self.cache.listing(folder)
        if cached is not None:
            return {name: node.attrs.size for name, node in cached.items()
                    if node.attrs.is_file}
        prefix = self.keys.dir_prefix(folder)
        objects, truncated = self.bucket.list_page(prefix)
        listing = split_tree(prefix, objects, truncated)[prefix]
        return {name: info.size
                for name, info in self.keys.entries(prefix, listing).files.items()}

    def exact(self, path: str) -> Node:
        """The node with its metadata (HEAD unless already known)."""
        node = self.lookup(path)
        if node.exact or path == "/":
            return node
        return self.fetch(path, folder=node.attrs.is_dir)

    def children(self, folder: str) -> dict[str, Node]:
        """The entries of ``folder`` (normalized) by name, from the cache or the bucket."""
        cached = self.cache.listing(folder)
        if cached is not None:
            return cached
        children = self._list(folder, whole=True)
        assert children is not None, "a whole listing always answers"
        return children

    def _list(self, folder: str, whole: bool) -> dict[str, Node] | None:
        """List ``folder`` from the bucket and cache what the listing tells (its tree,
        when it fits in a page); unless ``whole``, None if its keys fill more than a page."""
        prefix = self.keys.dir_prefix(folder)
        page = self.first_pages.take(folder)
        if page is not None and not self.cache.changed_since(folder, page.since):
            objects, truncated, since = page.objects, page.truncated, page.since
        else:
            since = self.cache.generation()
            objects, truncated = self.bucket.list_page(prefix)
        if truncated and not whole:
            return None
        listings = split_tree(prefix, objects, truncated)
        if truncated:
            rest = self.bucket.list_folder(prefix, start_after=objects[-1].key)
            top = listings[prefix]
            known = set(top.prefixes)
            top.objects.extend(rest.objects)
            top.prefixes.extend(p for p in rest.prefixes if p not in known)
        probes: list[_Probe] = []
        found: dict[str, dict[str, Node]] = {}
        paths = {prefix: folder}
        for sub in sorted(listings, key=len):  # each folder after its parent
            if sub != prefix:
                parent = sub[:sub.rfind("/", 0, len(sub) - 1) + 1]
                name = sub[len(parent):-1]
                if parent not in paths or unrepresentable(name):
                    continue  # a hidden sub-folder (keys.py): not listed
                paths[sub] = join(paths[parent], name)
            found[paths[sub]] = self._nodes(paths[sub], sub, listings[sub], listings, probes)
        self._probe(probes)
        if folder != "/" and any(info.key == prefix for info in listings[prefix].objects):
            self._refresh_folder(folder, prefix, since)
        for path, children in found.items():
            self.cache.learn_listing(path, children, since)
        return found[folder]

    def _nodes(self, folder: str, prefix: str, listing: Listing,
               listings: dict[str, Listing], probes: list[_Probe]) -> dict[str, Node]:
        """The entries of one listed folder; those that need a HEAD (link candidates,
        sub-folders that may have a marker) are added to ``probes`` meanwhile."""
        entries = self.keys.entries(prefix, listing)
        children: dict[str, Node] = {}
        for name in entries.folders:
            known = self.cache.get(join(folder, name))
            sub = f"{prefix}{name}/"
            if known is not None and known.exact and known.attrs.is_dir:
                children[name] = known
                continue
            children[name] = Node(dir_attributes(self.defaults), exact=True)
            if sub not in listings or any(o.key == sub for o in listings[sub].objects):
                probes.append(_Probe(children, name, sub))
        for name, info in entries.files.items():
            known = self.cache.get(join(folder, name))
            if known is not None and known.exact and not known.attrs.is_dir \
                    and known.attrs.size == info.size and known.etag in ("", info.etag):
                children[name] = Node(known.attrs, exact=True, etag=info.etag)
                continue
            children[name] = Node(object_attributes(info, self.defaults), etag=info.etag)
            if needs_head(info.size, info.e_tag, self.defaults.symlink_scan):
                probes.append(_Probe(children, name, info.key))
        return children

    def _probe(self, probes: list[_Probe]) -> None:
        """HEAD every probed key (in parallel) and put in the attributes they tell."""
        results = self._pool.map(self.bucket.stat, [probe.key for probe in probes])
        for probe, result in zip(probes, results, strict=True):
            if probe.key.endswith("/"):
                probe.children[probe.name] = Node(dir_attributes(self.defaults, result),
                                                  exact=True)
            elif result is not None:
                probe.children[probe.name] = Node(object_attributes(result, self.defaults),
                                                  exact=True, etag=result.etag)
            else:  # deleted since the listing
                del probe.children[probe.name]

    def _refresh_folder(self, folder: str, prefix: str, since: int) -> None:
        known = self.cache.get(folder)
        if known is not None and known.exact:
            return
        marker = self.bucket.stat(prefix)
        if marker is not None:
            self.cache.learn(folder, Node(dir_attributes(self.defaults, marker), exact=True),
                             since)


@dataclass(frozen=True)
class _Probe:
    """An entry of ``children`` whose attributes need a HEAD of ``key``."""

    children: dict[str, Node]
    name: str
    key: str

"""What exists in the bucket, as the mount sees it: lookups and folder listings.

Owns: answering "what is at this path" and "what is in this folder" from the metadata
cache, else from the bucket, by THE attribute rule of the mount:

* a folder listing is one paginated ``list_folder``; it gives each entry's type, size and
  modification time with no request per entry, except objects of 1 to 4095 bytes, which
  are HEADed (in parallel) because only their metadata tells whether they are symbolic
  links (and a kernel inode may never change type later), and sub-folders, whose marker
  is HEADed (in parallel) for the mode, owner and times a folder's metadata holds;
* other entries show the default mode and owner until the mount learns their metadata (a
  lookup of a name not listed yet, an open, a chmod...: each of those HEADs the object);
* a lookup that the cache cannot answer costs a HEAD of the key and a one-key LIST of
  ``key/`` (a folder wins over a file of the same name).

Open files are not this module's business: the core overlays them.
"""

from __future__ import annotations

import errno
import logging
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from .attrs import Defaults, dir_attributes, may_be_symlink, object_attributes
from .errors import FsError
from .keys import KeyMapper, join, name_of, parent_of
from .metacache import MetaCache, Node

if TYPE_CHECKING:
    from ..bucket import Bucket

log = logging.getLogger(__name__)


class Namespace:
    """Lookups and listings of mount paths, cached."""

    def __init__(self, bucket: Bucket, keys: KeyMapper, cache: MetaCache,
                 defaults: Defaults, pool: Executor) -> None:
        self.bucket = bucket
        self.keys = keys
        self.cache = cache
        self.defaults = defaults
        self._pool = pool

    def root(self) -> Node:
        return Node(dir_attributes(self.defaults), exact=True)

    def lookup(self, path: str) -> Node:
        """The node at ``path`` (normalized); FsError(ENOENT) if there is none."""
        if path == "/":
            return self.root()
        node = self.cache.get(path)
        if node is not None:
            return node
        if self.cache.is_missing(path):
            raise FsError(errno.ENOENT, path)
        siblings = self.cache.listing(parent_of(path))
        if siblings is not None:
            node = siblings.get(name_of(path))
            if node is None:
                raise FsError(errno.ENOENT, path)
            return node
        return self.fetch(path)

    def fetch(self, path: str) -> Node:
        """Ask the bucket what is at ``path`` (folder first), and cache the answer."""
        prefix = self.keys.dir_prefix(path)
        since = self.cache.generation()
        if self.bucket.has_objects_under(prefix):
            marker = self.bucket.stat(prefix)
            node = Node(dir_attributes(self.defaults, marker), exact=True)
        else:
            info = self.bucket.stat(self.keys.file_key(path))
            if info is None:
                self.cache.learn_missing(path, since)
                raise FsError(errno.ENOENT, path)
            node = Node(object_attributes(info, self.defaults), exact=True)
        self.cache.learn(path, node, since)
        return node

    def exact(self, path: str) -> Node:
        """The node with its metadata (HEAD unless already known)."""
        node = self.lookup(path)
        if node.exact or path == "/":
            return node
        return self.fetch(path)

    def children(self, folder: str) -> dict[str, Node]:
        """The entries of ``folder`` (normalized) by name, from the cache or one listing."""
        cached = self.cache.listing(folder)
        if cached is not None:
            return cached
        prefix = self.keys.dir_prefix(folder)
        since = self.cache.generation()
        entries = self.keys.entries(prefix, self.bucket.list_folder(prefix))
        children: dict[str, Node] = {}
        probes = []
        for name in entries.folders:
            known = self.cache.get(join(folder, name))
            if known is not None and known.exact and known.attrs.is_dir:
                children[name] = known
            else:
                children[name] = Node(dir_attributes(self.defaults))
                probes.append(f"{prefix}{name}/")
        for name, info in entries.files.items():
            known = self.cache.get(join(folder, name))
            if known is not None and known.exact and not known.attrs.is_dir \
                    and known.attrs.size == info.size:
                children[name] = known
            elif may_be_symlink(info.size):
                probes.append(info.key)
            else:
                children[name] = Node(object_attributes(info, self.defaults))
        for key, result in zip(probes, self._pool.map(self.bucket.stat, probes), strict=True):
            name = key[len(prefix):].rstrip("/")
            if key.endswith("/"):
                children[name] = Node(dir_attributes(self.defaults, result), exact=True)
            elif result is not None:  # None: deleted since the listing
                children[name] = Node(object_attributes(result, self.defaults), exact=True)
        if entries.marker is not None and folder != "/":
            self._refresh_folder(folder, prefix, since)
        self.cache.learn_listing(folder, children, since)
        return children

    def _refresh_folder(self, folder: str, prefix: str, since: int) -> None:
        known = self.cache.get(folder)
        if known is not None and known.exact:
            return
        marker = self.bucket.stat(prefix)
        if marker is not None:
            self.cache.learn(folder, Node(dir_attributes(self.defaults, marker), exact=True),
                             since)

"""Mount paths and bucket keys: how one becomes the other, and which keys cannot be names.

Owns: the mapping between an absolute mount path (``/a/b``) and its key under the mount's
prefix (``PREFIX/a/b`` for a file, ``PREFIX/a/b/`` for a folder), the limits a path must
respect (a name is at most 255 bytes, a key at most 1024 bytes, names are UTF-8), and THE
rule for keys that cannot be shown as file names:

* a key is shown only if every segment after the mount prefix is a valid name: not empty
  (``a//b``), not ``.`` or ``..``, at most 255 bytes, without NUL;
* a key ``x`` next to keys under ``x/`` (a file and a folder with one name): the folder
  wins and the file is hidden;
* a name starting with ``.fuse_hidden`` is libfuse's (:data:`FUSE_HIDDEN_PREFIX`): the
  mount never shows such a key and never makes one (``file_key``/``dir_prefix`` refuse
  it), since it uses these names for open files that were unlinked (SEMANTICS.md).

Hidden keys are logged once (warning) and left untouched in the bucket; they never break a
listing. They still count when deciding whether a folder is empty (rmdir says ENOTEMPTY).

Lock order: ``_warned_lock`` is a leaf (the set of keys already logged).
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass, field

from ..objects import Listing, ObjectInfo
from ..paths import as_prefix
from .errors import FsError

log = logging.getLogger(__name__)

NAME_MAX = 255
"""Longest name in bytes, as on Linux filesystems."""
KEY_MAX = 1024
"""Longest S3 key in bytes."""
_WARNED_MAX = 10_000
FUSE_HIDDEN_PREFIX = ".fuse_hidden"
"""libfuse renames an open file being unlinked to ``.fuse_hidden<16 hex digits>`` in its
folder, and unlinks that name after the last close: such names stay local to the mount."""


def split_path(path: str) -> list[str]:
    """The names of an absolute mount path ('/' gives []), each checked.

    Raises FsError: EINVAL for a relative path, an empty, ``.`` or ``..`` name, or a name
    that is not valid UTF-8 (bucket keys are UTF-8); ENAMETOOLONG for a name over 255 bytes.
    """
    if not path.startswith("/"):
        raise FsError(errno.EINVAL, f"not an absolute path: {path!r}")
    names = path.strip("/").split("/") if path.strip("/") else []
    for name in names:
        check_name(name)
    return names


def check_name(name: str) -> None:
    """Raise FsError unless ``name`` can be one segment of a key."""
    if name in ("", ".", "..") or "\0" in name:
        raise FsError(errno.EINVAL, f"invalid name {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise FsError(errno.EINVAL, f"name {name!r} is not valid UTF-8") from None
    if size > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")


def is_fuse_hidden(path: str) -> bool:
    """True if a name of ``path`` is reserved by libfuse for unlinked open files."""
    return any(name.startswith(FUSE_HIDDEN_PREFIX) for name in path.split("/"))


def unrepresentable(name: str) -> str | None:
    """Why ``name`` (one segment of a stored key) cannot be shown, or None if it can."""
    if name.startswith(FUSE_HIDDEN_PREFIX):
        return f"names starting with {FUSE_HIDDEN_PREFIX!r} are reserved by libfuse"
    if name == "":
        return "empty name (repeated '/')"
    if name in (".", ".."):
        return f"name {name!r}"
    if "\0" in name:
        return "NUL in name"
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
        return f"name longer than {NAME_MAX} bytes"
    return None


def parent_of(path: str) -> str:
    """The parent folder of a normalized mount path ('/' is its own parent)."""
    head = path.rstrip("/").rsplit("/", 1)[0]
    return head or "/"


def name_of(path: str) -> str:
    """The last name of a mount path ('' for the root)."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def join(folder: str, name: str) -> str:
    """The path of ``name`` inside ``folder``."""
    return f"{folder.rstrip('/')}/{name}"


def normalize(path: str) -> str:
    """The canonical form of a mount path: absolute, no trailing '/' except the root."""
    names = split_path(path)
    return "/" + "/".join(names)


def is_within(path: str, folder: str) -> bool:
    """True if ``path`` is ``folder`` or inside it."""
    return folder in ("/", path) or path.startswith(folder.rstrip("/") + "/")


@dataclass
class FolderEntries:
    """The visible content of one listed folder, after the naming rule was applied."""

    files: dict[str, ObjectInfo] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)
    marker: ObjectInfo | None = None


class KeyMapper:
    """Maps mount paths to keys under one prefix, and listings to visible entries."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = as_prefix(prefix)
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()

    def file_key(self, path: str) -> str:
        """The key of the file (or symlink) at ``path``."""
        names = split_path(path)
        if not names:
            raise FsError(errno.EISDIR, "the root is a folder")
        return self._checked(self.prefix + "/".join(names), names)

    def dir_prefix(self, path: str) -> str:
        """The prefix (and marker key) of the folder at ``path``; the mount prefix for '/'."""
        names = split_path(path)
        if not names:
            return self.prefix
        return self._checked(self.prefix + "/".join(names) + "/", names)

    def path_of(self, key: str) -> str | None:
        """The mount path of a key under the prefix (None if outside it or hidden)."""
        if not key.startswith(self.prefix):
            return None
        rest = key[len(self.prefix):].rstrip("/")
        if not rest:
            return "/"
        if any(unrepresentable(name) for name in rest.split("/")):
            return None
        return "/" + rest

    @staticmethod
    def _checked(key: str, names: list[str]) -> str:
        """``key``, unless it is too long or one of its ``names`` is libfuse's."""
        if any(name.startswith(FUSE_HIDDEN_PREFIX) for name in names):
            raise FsError(errno.EINVAL, f"names starting with {FUSE_HIDDEN_PREFIX!r} are "
                          "reserved by libfuse for open files that were unlinked")
        if len(key.encode("utf-8")) > KEY_MAX:
            raise FsError(errno.ENAMETOOLONG, f"key longer than {KEY_MAX} bytes")
        return key

    def entries(self, prefix: str, listing: Listing) -> FolderEntries:
        """What the folder listed at ``prefix`` shows, hiding keys the rule refuses."""
        result = FolderEntries()
        for common in listing.prefixes:
            name = common[len(prefix):-1]
            reason = unrepresentable(name)
            if reason:
                self.warn_hidden(common, reason)
            else:
                result.folders.add(name)
        for info in listing.objects:
            name = info.key[len(prefix):]
            if name == "":
                result.marker = info
                continue
            reason = unrepresentable(name)
            if reason is None and name in result.folders:
                reason = "a folder has the same name (the folder is shown)"
            if reason:
                self.warn_hidden(info.key, reason)
            else:
                result.files[name] = info
        return result

    def warn_hidden(self, key: str, reason: str) -> None:
        """Log (once per key) that ``key`` is hidden from the mount, and why."""
        with self._warned_lock:
            if key in self._warned:
                return
            if len(self._warned) >= _WARNED_MAX:
                self._warned.clear()
            self._warned.add(key)
        log.warning("key %r is hidden from the mount: %s", key, reason)

"""File attributes, and how they are stored in object metadata the way s3fs stores them.

Owns: :class:`Attributes` (one stat result), :class:`Defaults` (what objects without our
metadata get), the s3fs-compatible metadata encoding (``x-amz-meta-mode`` = decimal st_mode
with type bits, ``-uid``, ``-gid``, ``-mtime``/``-atime``/``-ctime`` = decimal seconds with
an optional fraction), and the rule that decides an object's type:

* a key ending in ``/`` or a common prefix is a folder;
* an object is a symbolic link when its metadata mode says S_IFLNK AND it is a *link
  candidate*: 1 to 4095 bytes (a possible link target) and, with the default
  ``symlink_scan="marked"``, a multipart ETag (``...-1``: qarnotfs writes its links as a
  one-part multipart upload, a mark a listing shows). With ``symlink_scan="small"`` every
  object of 1 to 4095 bytes is a candidate (s3fs writes links with a plain PUT).
* an object is a *special file* (FIFO, socket, character or block device, as ``mknod``
  makes them) when its metadata mode says so AND it is a *special candidate*: empty and,
  with ``symlink_scan="marked"``, a multipart ETag (qarnotfs writes special files as a
  one-part multipart upload of nothing, the links' mark). With ``"small"`` every empty
  object is a candidate (s3fs writes special files with a plain PUT). Its device number
  is ``x-amz-meta-rdev`` (decimal; s3fs stores none, and shows 0).
  Otherwise it is a regular file, whatever its metadata says (s3fs's old ``dir``
  objects, and s3fs's FIFOs with the default scan, show as regular files).

Keeping the type a function of (key, size, ETag, metadata) lets a listing and a HEAD
agree, which the kernel requires (an inode never changes type), and lets a listing HEAD
only the candidates (:func:`needs_head`).

The metadata keys the mount owns (:data:`OWNED_METADATA`) are rewritten by every change
of attributes; any other key (another tool's) is kept (:func:`merged_metadata`).
Extended attributes travel with the attributes as the raw ``x-amz-meta-xattr`` value
(s3fs's encoding, see :mod:`.xattrs`), so every path that writes attributes keeps them.
"""

from __future__ import annotations

import logging
import stat
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from ..objects import ObjectInfo

log = logging.getLogger(__name__)

SYMLINK_MAX = 4095
"""Longest symbolic link target in bytes (PATH_MAX - 1)."""
BLOCK_SIZE = 4096
_NS = 1_000_000_000
PERMISSION_BITS = 0o7777
SPECIAL_TYPES = frozenset({stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK})
"""File types ``mknod`` makes besides regular files: stored as empty objects."""
OWNED_METADATA = frozenset({"mode", "uid", "gid", "mtime", "atime", "ctime", "rdev", "xattr"})
"""User metadata keys (without ``x-amz-meta-``) the mount writes; others are kept."""
SymlinkScan = Literal["marked", "small"]
SYMLINK_SCANS: tuple[SymlinkScan, ...] = ("marked", "small")


@dataclass(slots=True)
class Attributes:
    """What stat(2) reports for one file, folder or link."""

    mode: int
    size: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int = 1
    rdev: int = 0
    """Device number of a character or block device (0 otherwise)."""
    xattr: str = ""
    """Extended attributes as stored (s3fs's ``x-amz-meta-xattr`` value; see xattrs.py)."""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_special(self) -> bool:
        return stat.S_IFMT(self.mode) in SPECIAL_TYPES

    def copy(self) -> Attributes:
        # Not dataclasses.replace: a listing copies thousands, and this is 5 times faster.
        return Attributes(self.mode, self.size, self.uid, self.gid, self.atime_ns,
                          self.mtime_ns, self.ctime_ns, self.nlink, self.rdev, self.xattr)

    def to_stat(self) -> dict[str, int | float]:
        """The attributes as os.stat-style keys (float seconds and integer nanoseconds)."""
        return {
            "st_mode": self.mode,
            "st_size": self.size,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_nlink": self.nlink,
            "st_rdev": self.rdev,
            "st_atime": self.atime_ns / _NS,
            "st_mtime": self.mtime_ns / _NS,
            "st_ctime": self.ctime_ns / _NS,
            "st_atime_ns": self.atime_ns,
            "st_mtime_ns": self.mtime_ns,
            "st_ctime_ns": self.ctime_ns,
            "st_blocks": (self.size + 511) // 512,
            "st_blksize": BLOCK_SIZE,
        }


@dataclass(frozen=True)
class Defaults:
    """Owner and permissions for objects that carry no metadata of ours."""

    uid: int
    gid: int
    umask: int = 0o022
    time_ns: int = 0
    """Times of folders that have no marker object (the mount's start)."""
    symlink_scan: SymlinkScan = "marked"
    """Which objects may be links (see the module docstring)."""

    @property
    def file_mode(self) -> int:
        return stat.S_IFREG | (0o666 & ~self.umask)

    @property
    def dir_mode(self) -> int:
        return stat.S_IFDIR | (0o777 & ~self.umask)


def now_ns() -> int:
    return time.time_ns()


def format_time(ns: int) -> str:
    """Nanoseconds as s3fs writes times: decimal seconds, with a fraction when needed."""
    seconds, fraction = divmod(ns, _NS)
    return f"{seconds}.{fraction:09d}" if fraction else str(seconds)


def parse_time(value: str | None) -> int | None:
    """Decimal seconds (maybe with a fraction) as nanoseconds; None if absent or invalid."""
    if value is None:
        return None
    try:
        return int(Decimal(value.strip()) * _NS)
    except (InvalidOperation, ValueError):
        log.debug("ignoring invalid time %r in metadata", value)
        return None


def parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        log.debug("ignoring invalid number %r in metadata", value)
        return None


def encode_metadata(attrs: Attributes) -> dict[str, str]:
    """The user metadata s3fs writes for these attributes (without the x-amz-meta- prefix),
    with the device number of a device and the extended attributes when there are any."""
    metadata = {
        "mode": str(attrs.mode),
        "uid": str(attrs.uid),
        "gid": str(attrs.gid),
        "mtime": format_time(attrs.mtime_ns),
        "atime": format_time(attrs.atime_ns),
        "ctime": format_time(attrs.ctime_ns),
    }
    if attrs.rdev:
        metadata["rdev"] = str(attrs.rdev)
    if attrs.xattr:
        metadata["xattr"] = attrs.xattr
    return metadata


def merged_metadata(stored: dict[str, str] | None, attrs: Attributes) -> dict[str, str]:
    """The metadata to write back over ``stored`` for ``attrs``: every key the mount does
    not own is kept (another tool's, the SDK's hash...), the mount's own are replaced (a
    removed one, such as the last extended attribute, goes)."""
    kept = {name: value for name, value in (stored or {}).items()
            if name not in OWNED_METADATA}
    return {**kept, **encode_metadata(attrs)}


def object_type(size: int, metadata: dict[str, str] | None, e_tag: str = "",
                scan: SymlinkScan = "small") -> int:
    """The type rule (module docstring): S_IFLNK for a link candidate whose metadata mode
    says link, a special type for a special candidate whose mode says so, else S_IFREG."""
    if not metadata or not needs_head(size, e_tag, scan):
        return stat.S_IFREG
    mode = parse_int(metadata.get("mode"))
    kind = stat.S_IFMT(mode) if mode is not None else stat.S_IFREG
    if kind == stat.S_IFLNK and may_be_symlink(size, e_tag, scan):
        return kind
    if kind in SPECIAL_TYPES and size == 0:
        return kind
    return stat.S_IFREG


def is_symlink(size: int, metadata: dict[str, str] | None, e_tag: str = "",
               scan: SymlinkScan = "small") -> bool:
    """The type rule for links: a link candidate (see :func:`may_be_symlink`) with
    S_IFLNK in its metadata mode."""
    return object_type(size, metadata, e_tag, scan) == stat.S_IFLNK


def is_multipart_etag(e_tag: str) -> bool:
    """True for the ETag of a multipart upload (``"<md5 of md5s>-<parts>"``)."""
    return "-" in e_tag


def may_be_symlink(size: int, e_tag: str = "", scan: SymlinkScan = "small") -> bool:
    """True if an object could be a link (worth a HEAD to find out), from what a listing
    shows: 1 to 4095 bytes and, unless ``scan`` is "small", a multipart ETag."""
    if not 0 < size <= SYMLINK_MAX:
        return False
    return scan == "small" or is_multipart_etag(e_tag)


def needs_head(size: int, e_tag: str = "", scan: SymlinkScan = "small") -> bool:
    """True if only the metadata can tell the object's type (worth a HEAD in a listing):
    a link candidate, or an empty object (a special file candidate) with the same mark
    (a multipart ETag) unless ``scan`` is "small". With ``scan="marked"`` this is also
    what must be rewritten (not copied) to keep its mark."""
    if not 0 <= size <= SYMLINK_MAX:
        return False
    return scan == "small" or is_multipart_etag(e_tag)


def _timestamp_ns(info: ObjectInfo | None) -> int:
    if info is None:
        return now_ns()
    return int(info.last_modified.timestamp() * _NS)


def _apply_metadata(attrs: Attributes, metadata: dict[str, str] | None) -> Attributes:
    if not metadata:
        return attrs
    mode = parse_int(metadata.get("mode"))
    if mode is not None:
        attrs.mode = stat.S_IFMT(attrs.mode) | (mode & PERMISSION_BITS)
    attrs.uid = _or(parse_int(metadata.get("uid")), attrs.uid)
    attrs.gid = _or(parse_int(metadata.get("gid")), attrs.gid)
    attrs.mtime_ns = _or(parse_time(metadata.get("mtime")), attrs.mtime_ns)
    attrs.atime_ns = _or(parse_time(metadata.get("atime")), attrs.mtime_ns)
    attrs.ctime_ns = _or(parse_time(metadata.get("ctime")), attrs.mtime_ns)
    if attrs.is_special:
        attrs.rdev = _or(parse_int(metadata.get("rdev")), 0)
    attrs.xattr = metadata.get("xattr", "")
    return attrs


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def object_attributes(info: ObjectInfo, defaults: Defaults) -> Attributes:
    """The attributes of a file or link object (metadata used when ``info`` has it)."""
    time_ns = _timestamp_ns(info)
    kind = object_type(info.size, info.metadata, info.e_tag, defaults.symlink_scan)
    attrs = Attributes(mode=kind | (defaults.file_mode & PERMISSION_BITS), size=info.size,
                       uid=defaults.uid, gid=defaults.gid, atime_ns=time_ns,
                       mtime_ns=time_ns, ctime_ns=time_ns)
    if kind == stat.S_IFLNK:
        attrs.mode = stat.S_IFLNK | 0o777
    return _apply_metadata(attrs, info.metadata)


def folder_links(subfolders: int | None) -> int:
    """``st_nlink`` of a folder with ``subfolders`` sub-folders, as on ext4: its entry in
    its parent, its ``.``, and each sub-folder's ``..``; 1 when the count is not known
    (the mount has no listing of it), as btrfs and s3fs always say: fts (``find``,
    ``du``) reads a count below 2 as "unknown", where a count too small (such as
    mountpoint-s3's constant 2) may make it skip looking at the last entries."""
    return 1 if subfolders is None else 2 + subfolders


def dir_attributes(defaults: Defaults, marker: ObjectInfo | None = None) -> Attributes:
    """The attributes of a folder, from its marker object when there is one."""
    time_ns = _timestamp_ns(marker) if marker is not None else defaults.time_ns
    attrs = Attributes(mode=defaults.dir_mode, size=0, uid=defaults.uid, gid=defaults.gid,
                       atime_ns=time_ns, mtime_ns=time_ns, ctime_ns=time_ns, nlink=2)
    return _apply_metadata(attrs, marker.metadata if marker is not None else None)

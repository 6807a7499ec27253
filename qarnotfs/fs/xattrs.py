"""Extended attributes: how they are stored in object metadata, and the rules of the calls.

Owns: the encoding of a file's or folder's extended attributes in its object's metadata
exactly as s3fs-fuse stores them, so each tool reads the other's: the user metadata
``x-amz-meta-xattr`` holds a JSON object ``{"name":"<base64 of the value>",...}`` (names
in byte order, no spaces), URL-encoded with every byte but ``A-Z a-z 0-9 . - _ ~ /``
written ``%XX`` (upper-case hex); and the rules of setxattr/removexattr: the name spaces
the mount stores, ``XATTR_CREATE``/``XATTR_REPLACE``, and the size limit.

* ``user.*`` and ``trusted.*`` are stored. ``system.*`` (POSIX ACLs, which the mount does
  not enforce) and ``security.*`` (SELinux labels, file capabilities, which the kernel asks
  about at every write and ``ls -l`` for every file) are not supported: EOPNOTSUPP at
  once, without a request; such names written by s3fs are kept but not listed.
* S3 allows 2 KiB of user metadata per object (names and values, UTF-8): a change that
  would make the mount's own metadata exceed it is refused with ENOSPC, as ext4 does when
  an inode's attribute space is full (values over 64 KiB get E2BIG from the kernel).
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import os
from urllib.parse import quote, unquote

from .errors import FsError

log = logging.getLogger(__name__)

METADATA_MAX = 2048
"""Bytes of user metadata (names and values, UTF-8) S3 accepts on one object."""
STORED_NAMESPACES = ("user.", "trusted.")
XATTR_CREATE = getattr(os, "XATTR_CREATE", 1)
XATTR_REPLACE = getattr(os, "XATTR_REPLACE", 2)


def decode(raw: str) -> dict[str, bytes]:
    """The attributes stored in ``raw`` (an ``x-amz-meta-xattr`` value); {} if there are
    none, and (with a warning) if the value is not s3fs's format."""
    if not raw:
        return {}
    try:
        stored = json.loads(unquote(raw))
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
        return {str(name): base64.b64decode(str(value), validate=True)
                for name, value in stored.items()}
    except (ValueError, binascii.Error) as error:
        log.warning("ignoring extended attributes that are not in s3fs's format (%s): %r",
                    error, raw[:200])
        return {}


def encode(values: dict[str, bytes]) -> str:
    """``values`` as s3fs stores them ("" when there are none: no metadata key at all)."""
    if not values:
        return ""
    text = json.dumps({name: base64.b64encode(value).decode("ascii")
                       for name, value in values.items()},
                      separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return quote(text, safe="/")


def is_stored(name: str) -> bool:
    """True for the name spaces the mount stores (see the module docstring)."""
    return name.startswith(STORED_NAMESPACES)


def require_stored(name: str) -> None:
    if not is_stored(name):
        raise FsError(errno.EOPNOTSUPP, f"extended attribute {name!r}: only user.* and "
                      "trusted.* names are stored")


def names(raw: str) -> list[str]:
    """What listxattr shows: the stored names of the supported name spaces."""
    return sorted(name for name in decode(raw) if is_stored(name))


def value(raw: str, name: str) -> bytes:
    require_stored(name)
    values = decode(raw)
    if name not in values:
        raise FsError(errno.ENODATA, f"no extended attribute {name!r}")
    return values[name]


def with_value(raw: str, name: str, data: bytes, flags: int) -> str:
    """``raw`` with ``name`` set to ``data``; FsError for XATTR_CREATE of an existing
    name (EEXIST) and XATTR_REPLACE of a missing one (ENODATA)."""
    require_stored(name)
    values = decode(raw)
    if flags & XATTR_CREATE and name in values:
        raise FsError(errno.EEXIST, f"extended attribute {name!r} exists")
    if flags & XATTR_REPLACE and name not in values:
        raise FsError(errno.ENODATA, f"no extended attribute {name!r}")
    values[name] = data
    return encode(values)


def without(raw: str, name: str) -> str:
    """``raw`` without ``name``; FsError(ENODATA) if it has none."""
    require_stored(name)
    values = decode(raw)
    if values.pop(name, None) is None:
        raise FsError(errno.ENODATA, f"no extended attribute {name!r}")
    return encode(values)


def require_room(metadata: dict[str, str]) -> None:
    """FsError(ENOSPC) if ``metadata`` (user metadata without ``x-amz-meta-``) is over
    what S3 accepts on one object."""
    size = sum(len(key.encode("utf-8")) + len(text.encode("utf-8"))
               for key, text in metadata.items())
    if size > METADATA_MAX:
        raise FsError(errno.ENOSPC, f"extended attributes too large: the object's metadata "
                      f"would be {size} bytes, S3 allows {METADATA_MAX}")

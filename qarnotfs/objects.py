"""What the storage says about objects: summaries and listings, as plain values.

Owns: :class:`ObjectInfo` (one object's key, size, ETag, modification time and, when
known, its user metadata) and :class:`Listing` (the objects and common prefixes of one
delimited listing). They carry no client and no behaviour, so every layer can share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .checksums import normalize_etag


@dataclass(frozen=True)
class ObjectInfo:
    """One object. ``metadata`` is None when it came from a listing (which has none).

    Attribute names follow boto3's ``ObjectSummary`` (``key``, ``size``, ``e_tag``,
    ``last_modified``) so code written for the Qarnot SDK keeps working.
    """

    key: str
    size: int
    e_tag: str
    last_modified: datetime
    metadata: dict[str, str] | None = None
    bucket_name: str = ""
    content_type: str = ""
    """The object's Content-Type, when it came from a HEAD (a listing has none)."""

    @property
    def etag(self) -> str:
        """The ETag without quotes."""
        return normalize_etag(self.e_tag)

    @classmethod
    def from_listing(cls, entry: dict[str, Any], bucket_name: str = "") -> ObjectInfo:
        return cls(
            key=entry["Key"],
            size=int(entry.get("Size", 0)),
            e_tag=entry.get("ETag", ""),
            last_modified=entry["LastModified"],
            bucket_name=bucket_name,
        )

    @classmethod
    def from_head(cls, key: str, answer: dict[str, Any], bucket_name: str = "") -> ObjectInfo:
        return cls(
            key=key,
            size=int(answer.get("ContentLength", 0)),
            e_tag=answer.get("ETag", ""),
            last_modified=answer["LastModified"],
            metadata={k.lower(): v for k, v in answer.get("Metadata", {}).items()},
            bucket_name=bucket_name,
            content_type=answer.get("ContentType", ""),
        )

    @classmethod
    def from_get(cls, key: str, answer: dict[str, Any], bucket_name: str = "") -> ObjectInfo:
        """The object a GET answered for; its size is the whole object's, even when the
        GET asked for a range (``Content-Range: bytes 0-99/1000``)."""
        whole = str(answer.get("ContentRange", "")).rpartition("/")[2]
        size = int(whole) if whole.isdigit() else int(answer.get("ContentLength", 0))
        return cls(
            key=key,
            size=size,
            e_tag=answer.get("ETag", ""),
            last_modified=answer["LastModified"],
            metadata={k.lower(): v for k, v in answer.get("Metadata", {}).items()},
            bucket_name=bucket_name,
        )


@dataclass(frozen=True)
class ObjectRead:
    """What one GET told: the object (``info``: its whole size, ETag and metadata, from
    the response's headers) and the bytes asked for."""

    info: ObjectInfo
    data: bytes = b""


@dataclass
class Listing:
    """The result of listing one prefix with a delimiter: files and sub-prefixes."""

    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

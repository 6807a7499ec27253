"""What the storage says about objects: summaries and listings, as plain values.

Owns: :class:`ObjectInfo` (one object's key, size, ETag, modification time and, when
known, its user metadata) and :class:`Listing` (the objects and common prefixes of one
delimited listing). They carry no client and no behaviour, so every layer can share them.
Also the rule that cuts an object's bytes into *chunks* (:func:`chunk_bounds`).
"""

from __future__ import annotations

from collections.abc import Iterator
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


def chunk_bounds(offset: int, length: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """Where the bytes [offset, offset + length) of an object are cut into chunks: at the
    object's multiples of ``chunk_size``, so the chunks of any range line up with those of
    any other (a read of one aligned chunk is then served by one buffer, without a copy).
    The first and last chunks may be shorter."""
    end = offset + length
    while offset < end:
        stop = min((offset // chunk_size + 1) * chunk_size, end)
        yield offset, stop
        offset = stop


def split_chunks(data: bytes, offset: int, chunk_size: int) -> list[bytes]:
    """``data``, the object's bytes from ``offset``, cut as :func:`chunk_bounds` says."""
    return [data[start - offset:stop - offset]
            for start, stop in chunk_bounds(offset, len(data), chunk_size)]

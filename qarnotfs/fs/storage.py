"""The storage as the filesystem sees it: the calls ``fs/`` makes, as a typed Protocol.

Owns: :class:`Storage` (exactly the object calls the filesystem makes on a bucket, with the
signatures of :class:`qarnotfs.bucket.Bucket`, which satisfies it as it is), and the
filesystem's part-size rule, :func:`part_size_for`. ``fs/`` depends on this module, not on
``bucket.py`` or ``connection.py``: the in-memory store of the tests (``tests/memstore.py``)
and :class:`~qarnotfs.fs.deletes.OrderedStorage` implement the same Protocol.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Protocol, Union

if TYPE_CHECKING:
    from ..objects import Listing, ObjectInfo, ObjectRead
    from ..progress import ProgressArg

LocalPath = Union[str, "os.PathLike[str]"]

MIB = 1 << 20
PART_SIZE = 8 * MIB
"""Multipart part size up to :data:`PART_SIZE_LIMIT` bytes (the Qarnot SDK's ETag rule)."""
MAX_PARTS = 10_000
"""The most parts one S3 multipart upload may have."""
PART_SIZE_LIMIT = PART_SIZE * MAX_PARTS
"""The largest file sent in 8 MiB parts: 80,000 MiB (78.1 GiB, "80 GB")."""
DELETE_BATCH = 1000
"""DeleteObjects accepts at most this many keys per request."""


def part_size_for(size: int, base: int = PART_SIZE) -> int:
    """The part size of a multipart upload of ``size`` bytes: ``base`` (8 MiB) up to
    10,000 such parts (:data:`PART_SIZE_LIMIT`), above that the smallest whole number of
    MiB that fits the file in 10,000 parts."""
    if size <= base * MAX_PARTS:
        return base
    return -(-size // (MAX_PARTS * MIB)) * MIB


class StorageLimits(Protocol):
    """What the filesystem reads of the storage's configuration."""

    @property
    def max_concurrency(self) -> int:
        """How many requests the storage's client sends at once (its pool's size)."""
        ...


class Storage(Protocol):
    """One bucket's objects: the calls the filesystem makes (see :class:`Bucket` for each
    call's documented behaviour; implementations raise the same qarnotfs exceptions)."""

    @property
    def name(self) -> str: ...

    @property
    def connection(self) -> StorageLimits: ...

    # -- objects --------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo | None: ...

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def get(self, key: str, offset: int = 0, length: int | None = None, *,
            unless_etag: str = "", only_etag: str = "") -> ObjectRead | None: ...

    def read_chunks(self, key: str, offset: int, length: int, *, only_etag: str = "",
                    chunk_size: int = 1 << 20) -> list[bytes]: ...

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> str: ...

    def put_marked(self, key: str, data: bytes,
                   metadata: dict[str, str] | None = None) -> None: ...

    def upload(self, key: str, source: LocalPath | IO[bytes],
               metadata: dict[str, str] | None = None, progress: ProgressArg = None) -> None: ...

    def download(self, key: str, target: LocalPath, progress: ProgressArg = None,
                 size: int | None = None) -> None: ...

    def copy(self, source: str, destination: str, metadata: dict[str, str] | None = None,
             size: int | None = None, content_type: str | None = None) -> None: ...

    def delete(self, key: str) -> None:
        """Delete one object (the Bucket's no-key form, which deletes the bucket, is not
        part of what the filesystem may call)."""
        ...

    def delete_many(self, keys: Iterable[str]) -> None: ...

    # -- listings -------------------------------------------------------------------------

    def first_keys(self, prefix: str, count: int) -> list[str]: ...

    def has_objects_under(self, prefix: str) -> bool: ...

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def list_folder(self, prefix: str = "", start_after: str = "") -> Listing: ...

    def list_page(self, prefix: str) -> tuple[list[ObjectInfo], bool]: ...

    # -- multipart uploads ----------------------------------------------------------------

    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str: ...

    def upload_part(self, key: str, upload_id: str, number: int,
                    data: bytes | IO[bytes]) -> str: ...

    def list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None: ...

    def complete_multipart(self, key: str, upload_id: str,
                           etags: list[tuple[int, str]]) -> str: ...

    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    def list_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str, float]]: ...

"""The SDK's listing results as boto3 resources, with errors translated.

Owns: :class:`ObjectSummaries`, the lazy boto3 ``ObjectSummary`` collection that
``Bucket.directory()`` returns (as the SDK's does: iterate it, ``.filter()``, ``.limit()``,
``.page_size()``, ``.pages()``, ``.delete()``), wrapped so that a botocore error met while
it runs leaves as a qarnotfs exception, like every other Bucket call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .exceptions import storage_errors

if TYPE_CHECKING:
    from mypy_boto3_s3.service_resource import ObjectSummary


class ObjectSummaries:
    """A boto3 collection of ``S3.ObjectSummary`` (requests are made when it is used)."""

    def __init__(self, collection: Any, bucket_name: str) -> None:
        self._collection = collection
        self._bucket_name = bucket_name

    def __repr__(self) -> str:
        return f"ObjectSummaries({self._collection!r})"

    def __iter__(self) -> Iterator[ObjectSummary]:
        with storage_errors(self._bucket_name):
            yield from self._collection

    def pages(self) -> Iterator[list[ObjectSummary]]:
        with storage_errors(self._bucket_name):
            yield from self._collection.pages()

    def all(self) -> ObjectSummaries:
        return self._derived(self._collection.all())

    def filter(self, **arguments: Any) -> ObjectSummaries:
        return self._derived(self._collection.filter(**arguments))

    def limit(self, count: int) -> ObjectSummaries:
        return self._derived(self._collection.limit(count))

    def page_size(self, count: int) -> ObjectSummaries:
        return self._derived(self._collection.page_size(count))

    def delete(self, **arguments: Any) -> list[dict[str, Any]]:
        """Delete every object of the collection (DeleteObjects, 1,000 keys a request)."""
        with storage_errors(self._bucket_name):
            return list(self._collection.delete(**arguments))

    def _derived(self, collection: Any) -> ObjectSummaries:
        return ObjectSummaries(collection, self._bucket_name)

"""The Qarnot SDK's ``Bucket``, implemented on boto3, plus the object calls the mount needs.

Owns: every S3 request about one bucket. The first half is the object-level API used by
the filesystem (stat, list, ranged read, put, upload, download, copy, batched delete); the
second half is the SDK's API, the documented one (``list_files``, ``add_file``,
``get_file``, ``sync_directory``, ...) and what ``qarnot.storage.Storage`` adds (``b[key]``,
``del b[key]``, ``iter(b)``, ``==``, ``add_string``, ``delete()``), built on it. Listings
for SDK callers are boto3 ``ObjectSummary`` resources, as the SDK documents; the mount and
the CLI use :class:`~qarnotfs.objects.ObjectInfo` values. Errors leave this module as
qarnotfs exceptions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import mimetypes
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union, cast

from .checksums import SHA1_METADATA_KEY, normalize_etag
from .connection import PART_SIZE
from .exceptions import (
    InvalidRangeException,
    MissingBucketException,
    MissingObjectException,
    MissingUploadException,
    NotModifiedException,
    PreconditionFailedException,
    QarnotGenericException,
    StorageUnreachableException,
    storage_errors,
)
from .objects import Listing, ObjectInfo, ObjectRead
from .paths import as_prefix, local_path_for_key, sanitize_key, walk_files
from .progress import Progress, ProgressArg
from .summaries import ObjectSummaries
from .sync import DownloadPlan, SyncPlan, plan_download, plan_upload

if TYPE_CHECKING:
    from mypy_boto3_s3.service_resource import ObjectSummary

    from .connection import Connection

log = logging.getLogger(__name__)

LocalPath = Union[str, "os.PathLike[str]"]
DELETE_BATCH = 1000
"""DeleteObjects accepts at most this many keys per request."""
COPY_OBJECT_MAX = 5 << 30
"""The largest object one CopyObject request copies (S3's limit)."""
COPY_TOO_LARGE_CODES = ("InvalidRequest", "EntityTooLarge")


def content_type_args(key: str, known: str | None = None) -> dict[str, Any]:
    """The ``ContentType`` argument for an object written at ``key``: ``known`` (the
    object's own, kept by a copy that replaces metadata), else guessed from the name with
    :mod:`mimetypes` as s3fs and ``aws s3 cp`` do; none (S3's default) if it cannot be."""
    guessed = known or (mimetypes.guess_type(key)[0] if not key.endswith("/") else None)
    return {"ContentType": guessed} if guessed else {}
"""What CopyObject answers for a source over :data:`COPY_OBJECT_MAX`."""


class Bucket:
    """A storage bucket. Create it with :class:`~qarnotfs.connection.Connection`."""

    def __init__(self, connection: Connection, name: str, create: bool = True) -> None:
        self._connection = connection
        self._s3 = connection.s3
        self._name = name
        self._warn = connection.show_bucket_warnings
        if create:
            self._create()

    def __repr__(self) -> str:
        return f"Bucket({self._name!r})"

    def __eq__(self, other: object) -> bool:
        """Buckets are equal when they have the same name, as in the SDK."""
        if isinstance(other, Bucket):
            return self._name == other._name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._name)

    @property
    def uuid(self) -> str:
        """Bucket identifier (its name)."""
        return self._name

    @property
    def description(self) -> str:
        """Bucket identifier (its name)."""
        return self._name

    @property
    def name(self) -> str:
        return self._name

    @property
    def connection(self) -> Connection:
        return self._connection

    def _create(self) -> None:
        try:
            with storage_errors(bucket=self._name):
                self._s3.create_bucket(Bucket=self._name)
        except QarnotGenericException as error:
            if error.code == "BucketAlreadyOwnedByYou":
                return
            failure = QarnotGenericException(f"cannot create bucket {self._name!r}: {error}")
            failure.code, failure.status = error.code, error.status
            raise failure from error

    def _key(self, remote: str) -> str:
        if not self._connection.sanitize_bucket_paths:
            return remote
        return sanitize_key(remote, warn=self._warn)

    # == object-level API ===============================================================

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's summary with its metadata (one HEAD), or None if it does not exist."""
        try:
            with storage_errors(self._name, key):
                answer = self._s3.head_object(Bucket=self._name, Key=key)
        except MissingObjectException:
            return None
        return ObjectInfo.from_head(key, cast(dict[str, Any], answer), self._name)

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, page after page."""
        for page in self._pages(prefix, delimiter=None):
            for entry in page.get("Contents", []):
                yield ObjectInfo.from_listing(cast(dict[str, Any], entry), self._name)

    def list_folder(self, prefix: str = "", start_after: str = "") -> Listing:
        """One folder level: the objects directly under ``prefix`` and its sub-prefixes
        (only those after the key ``start_after`` when given)."""
        listing = Listing()
        for page in self._pages(prefix, delimiter="/", start_after=start_after):
            listing.objects.extend(
                ObjectInfo.from_listing(cast(dict[str, Any], entry), self._name)
                for entry in page.get("Contents", [])
            )
            listing.prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return listing

    def has_objects_under(self, prefix: str) -> bool:
        """True if at least one key starts with ``prefix`` (one small request)."""
        with storage_errors(self._name):
            answer = self._s3.list_objects_v2(Bucket=self._name, Prefix=prefix, MaxKeys=1)
        return bool(answer.get("KeyCount", 0))

    def first_keys(self, prefix: str, count: int) -> list[str]:
        """The first ``count`` keys (at most 1,000) starting with ``prefix``: one request,
        however many keys there are (an emptiness check needs 2, not a 1,000-key page)."""
        with storage_errors(self._name):
            answer = self._s3.list_objects_v2(Bucket=self._name, Prefix=prefix, MaxKeys=count)
        return [str(entry["Key"]) for entry in answer.get("Contents", [])]

    def list_page(self, prefix: str) -> tuple[list[ObjectInfo], bool]:
        """The first page (up to 1,000) of the keys under ``prefix``, all levels, and True
        if more keys follow."""
        with storage_errors(self._name):
            answer = self._s3.list_objects_v2(Bucket=self._name, Prefix=prefix)
        objects = [ObjectInfo.from_listing(cast(dict[str, Any], entry), self._name)
                   for entry in answer.get("Contents", [])]
        return objects, bool(answer.get("IsTruncated"))

    def _pages(self, prefix: str, delimiter: str | None, start_after: str = "") \
            -> Iterator[dict[str, Any]]:
        paginator = self._s3.get_paginator("list_objects_v2")
        arguments: dict[str, Any] = {"Bucket": self._name, "Prefix": prefix}
        if delimiter:
            arguments["Delimiter"] = delimiter
        if start_after:
            arguments["StartAfter"] = start_after
        with storage_errors(self._name):
            for page in paginator.paginate(**arguments):
                yield cast(dict[str, Any], page)

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of the object from ``offset`` (``length`` of them, or up to the end)."""
        if length == 0:
            return b""
        try:
            return b"".join(self._get(key, offset, length, {})[1])
        except InvalidRangeException:
            return b""

    def get(self, key: str, offset: int = 0, length: int | None = None, *,
            unless_etag: str = "", only_etag: str = "") -> ObjectRead | None:
        """One GET of ``length`` bytes from ``offset`` (or up to the end), with what the
        response's headers tell of the object (its whole size, ETag, metadata).

        ``unless_etag``: answer None if the object still has this ETag (If-None-Match: a
        304 costs a round trip, no transfer). ``only_etag``: raise
        :class:`PreconditionFailedException` if the object no longer has this ETag
        (If-Match: the bytes can never come from a replacement). A range starting at or
        past the end gives no bytes (and, since such an answer has no headers, a HEAD says
        what the object is). Raises :class:`MissingObjectException` if there is none.
        """
        answer = self._get_checked(key, offset, length, unless_etag, only_etag, 0)
        if answer is None:
            return None
        info, chunks = answer
        return ObjectRead(info, b"".join(chunks))

    def read_chunks(self, key: str, offset: int, length: int, *, only_etag: str = "",
                    chunk_size: int = 1 << 20) -> list[bytes]:
        """The bytes of :meth:`get` (with ``only_etag``), as consecutive chunks cut at the
        object's multiples of ``chunk_size`` (:func:`~qarnotfs.objects.chunk_bounds`: the
        first and last may be shorter). Buffers of a MiB are memory the process reuses
        from one read to the next, where one buffer of several MiB is fresh memory each
        time (a page fault per 4 KiB: see the mount's allocator)."""
        answer = self._get_checked(key, offset, length, "", only_etag, chunk_size)
        assert answer is not None, "a GET without If-None-Match always answers"
        return answer[1]

    def _get_checked(self, key: str, offset: int, length: int | None, unless_etag: str,
                     only_etag: str, chunk_size: int) -> tuple[ObjectInfo, list[bytes]] | None:
        conditions = {"IfNoneMatch": _quoted(unless_etag)} if unless_etag else {}
        if only_etag:
            conditions["IfMatch"] = _quoted(only_etag)
        try:
            answer, chunks = self._get(key, offset, length, conditions, chunk_size)
        except NotModifiedException:
            return None
        except InvalidRangeException:
            info = self.stat(key)
            if info is None:
                raise MissingObjectException(f"{self._name}/{key}: no such object") from None
            if only_etag and info.etag != normalize_etag(only_etag):
                raise PreconditionFailedException(f"{self._name}/{key}: replaced") from None
            return info, []
        return ObjectInfo.from_get(key, answer, self._name), chunks

    def _get(self, key: str, offset: int, length: int | None, conditions: dict[str, str],
             chunk_size: int = 0) -> tuple[dict[str, Any], list[bytes]]:
        """One GET; its body whole (``chunk_size`` 0) or in chunks (:meth:`read_chunks`)."""
        arguments: dict[str, Any] = {"Bucket": self._name, "Key": key, **conditions}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            arguments["Range"] = f"bytes={offset}-{end}"
        # botocore retries a request until its response starts; a connection cut while
        # the body arrives is retried here (as s3transfer does for downloads).
        failures = 0
        while True:
            with storage_errors(self._name, key):
                answer = cast(dict[str, Any], self._s3.get_object(**arguments))
            try:
                with storage_errors(self._name, key):
                    body = answer["Body"]
                    if not chunk_size:
                        return answer, [bytes(body.read())]
                    return answer, _read_in_chunks(body, offset, chunk_size)
            except StorageUnreachableException as error:
                failures += 1
                if failures > self._connection.retry_count:
                    raise
                log.info("reading %r was cut (%s); retrying", key, error)

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        """Store ``data`` as the whole object in one request; returns the ETag."""
        with storage_errors(self._name, key):
            answer = self._s3.put_object(
                Bucket=self._name, Key=key, Body=data, Metadata=metadata or {},
                **content_type_args(key))
        return str(answer.get("ETag", ""))

    def put_marked(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Store ``data`` as a one-part multipart upload: the same object as :meth:`put`,
        but its ETag ends in ``-1``, a mark that listings show (the mount writes its
        symbolic links this way so a listing tells them apart without a HEAD)."""
        upload_id = self.create_multipart(key, metadata)
        try:
            etag = self.upload_part(key, upload_id, 1, data)
            self.complete_multipart(key, upload_id, [(1, etag)])
        except BaseException:
            with contextlib.suppress(QarnotGenericException):
                self.abort_multipart(key, upload_id)
            raise

    def upload(
        self,
        key: str,
        source: LocalPath | IO[bytes],
        metadata: dict[str, str] | None = None,
        progress: ProgressArg = None,
    ) -> None:
        """Upload a local file or binary file object; multipart in parallel from 8 MiB.

        A local file under 8 MiB is one PutObject: boto3's transfer manager would cost
        more to set up and tear down than the request itself.
        """
        extra = {**({"Metadata": metadata} if metadata else {}), **content_type_args(key)}
        total = _size_of(source)
        with Progress(progress, total, key) as counter, storage_errors(self._name, key):
            if isinstance(source, (str, os.PathLike)) and total < PART_SIZE:
                with open(source, "rb") as handle:
                    self._s3.put_object(Bucket=self._name, Key=key, Body=handle.read(),
                                        Metadata=metadata or {}, **content_type_args(key))
                counter(total)
            elif isinstance(source, (str, os.PathLike)):
                self._s3.upload_file(
                    os.fspath(source), self._name, key, ExtraArgs=extra,
                    Callback=counter, Config=self._connection.transfer_config,
                )
            else:
                self._s3.upload_fileobj(
                    source, self._name, key, ExtraArgs=extra,
                    Callback=counter, Config=self._connection.transfer_config,
                )

    def download(self, key: str, target: LocalPath, progress: ProgressArg = None,
                 size: int | None = None) -> None:
        """Write the object to ``target`` atomically (parallel ranged GETs when big).

        The bytes go to a temporary file beside ``target`` that replaces it at the end,
        so a failed download leaves neither a partial nor an empty file.
        """
        target = Path(target)
        if size is None:
            info = self.stat(key)
            if info is None:
                raise MissingObjectException(f"{self._name}/{key}: no such object")
            size = info.size
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name[:200]}.", suffix=".part",
                                         dir=target.parent)
        os.close(fd)
        try:
            with Progress(progress, size, key) as counter, storage_errors(self._name, key):
                self._s3.download_file(self._name, key, temporary, Callback=counter,
                                       Config=self._connection.transfer_config)
            os.replace(temporary, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def copy(self, source: str, destination: str, metadata: dict[str, str] | None = None,
             size: int | None = None, content_type: str | None = None) -> None:
        """Server-side copy; ``metadata`` replaces the source's when given, and the
        Content-Type then is ``content_type`` (the source's, to keep it), else the one
        guessed from ``destination`` (a copy that keeps the metadata keeps the type).

        With the source's ``size`` known (from a listing) and at most 5 GiB (the most one
        CopyObject takes), one request: on Ceph RGW it copies no data within a bucket
        (48 ms for 256 MiB where parts copied in parallel took 0.84 s). Else s3transfer,
        which HEADs the source first and copies parts.
        """
        extra: dict[str, Any] = {}
        if metadata is not None:
            extra = {"Metadata": metadata, "MetadataDirective": "REPLACE",
                     **content_type_args(destination, content_type)}
        if size is not None and size <= COPY_OBJECT_MAX:
            with storage_errors(self._name, source):
                self._s3.copy_object(Bucket=self._name, Key=destination,
                                     CopySource={"Bucket": self._name, "Key": source}, **extra)
            return
        with storage_errors(self._name, source):
            self._s3.copy(
                {"Bucket": self._name, "Key": source}, self._name, destination,
                ExtraArgs=extra or None, Config=self._connection.transfer_config,
            )

    def delete(self, key: str | None = None) -> None:
        """With a key, delete that object. Without one, delete the bucket and its contents.

        (The no-argument form is the SDK's ``Bucket.delete()``.)
        """
        if key is not None:
            with storage_errors(self._name, key):
                self._s3.delete_object(Bucket=self._name, Key=key)
            return
        self.delete_many(info.key for info in self.iter_objects())
        self._abort_multipart_uploads()
        with storage_errors(self._name):
            self._s3.delete_bucket(Bucket=self._name)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete keys in batches of 1,000, several batches at a time."""
        batches: list[list[str]] = []
        for key in keys:
            if not batches or len(batches[-1]) == DELETE_BATCH:
                batches.append([])
            batches[-1].append(key)
        if not batches:
            return
        workers = min(len(batches), self._connection.max_concurrency)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for failed in pool.map(self._delete_batch, batches):
                if failed:
                    raise QarnotGenericException(
                        f"{self._name}: could not delete {len(failed)} key(s), first "
                        f"{failed[0]['Key']!r}: {failed[0].get('Message', failed[0].get('Code'))}"
                    )

    def _delete_batch(self, keys: list[str]) -> list[dict[str, str]]:
        with storage_errors(self._name):
            answer = self._s3.delete_objects(
                Bucket=self._name,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )
        return cast(list[dict[str, str]], answer.get("Errors", []))

    # -- multipart uploads driven by the caller (the mount's resumable uploads) ----------

    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        """Start a multipart upload of ``key``; returns its upload id."""
        with storage_errors(self._name, key):
            answer = self._s3.create_multipart_upload(
                Bucket=self._name, Key=key, Metadata=metadata or {}, **content_type_args(key))
        return str(answer["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int,
                    data: bytes | IO[bytes]) -> str:
        """Send part ``number`` (from 1) of an upload, from bytes or a seekable file-like
        object (read in pieces as it goes); returns its ETag."""
        with storage_errors(self._name, key):
            answer = self._s3.upload_part(Bucket=self._name, Key=key, UploadId=upload_id,
                                          PartNumber=number, Body=data)
        return str(answer["ETag"])

    def list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """The parts the storage holds for an upload ({number: (ETag, size)}), or None if
        the upload no longer exists (completed or aborted)."""
        parts: dict[int, tuple[str, int]] = {}
        paginator = self._s3.get_paginator("list_parts")
        try:
            with storage_errors(self._name, key):
                for page in paginator.paginate(Bucket=self._name, Key=key, UploadId=upload_id):
                    for part in page.get("Parts", []):
                        parts[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
        except MissingUploadException:
            return None
        return parts

    def complete_multipart(self, key: str, upload_id: str, etags: list[tuple[int, str]]) \
            -> str:
        """Assemble the parts ([(number, ETag)], in order); returns the object's ETag."""
        with storage_errors(self._name, key):
            answer = self._s3.complete_multipart_upload(
                Bucket=self._name, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in etags]})
        return str(answer.get("ETag", ""))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort an upload (already gone counts as done)."""
        with contextlib.suppress(MissingUploadException), storage_errors(self._name, key):
            self._s3.abort_multipart_upload(Bucket=self._name, Key=key, UploadId=upload_id)

    def list_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str, float]]:
        """The unfinished multipart uploads under ``prefix``: (key, upload id, when it was
        initiated, in seconds since the epoch by the storage's clock)."""
        found: list[tuple[str, str, float]] = []
        paginator = self._s3.get_paginator("list_multipart_uploads")
        with storage_errors(self._name):
            for page in paginator.paginate(Bucket=self._name, Prefix=prefix):
                found.extend((u["Key"], u["UploadId"], u["Initiated"].timestamp())
                             for u in page.get("Uploads", []))
        return found

    def _abort_multipart_uploads(self) -> None:
        with storage_errors(self._name):
            answer = self._s3.list_multipart_uploads(Bucket=self._name)
            for upload in answer.get("Uploads", []):
                self._s3.abort_multipart_upload(
                    Bucket=self._name, Key=upload["Key"], UploadId=upload["UploadId"])

    # == the SDK's API ==================================================================

    def list_files(self) -> list[ObjectSummary]:
        """Every object of the bucket, as boto3 ``S3.ObjectSummary`` resources."""
        with storage_errors(self._name):
            return [summary for summary in self._resource_bucket().objects.all()
                    if summary.key is not None]

    def directory(self, directory: str = "") -> ObjectSummaries:
        """The objects whose keys start with ``directory``: a lazy boto3 collection of
        ``S3.ObjectSummary`` (iterate it, or ``.filter()``, ``.delete()``... it)."""
        collection = self._resource_bucket().objects.filter(Prefix=self._key(directory))
        return ObjectSummaries(collection, self._name)

    def _resource_bucket(self) -> Any:
        return self._connection.s3resource.Bucket(self._name)

    def __iter__(self) -> Iterator[ObjectSummary]:
        return iter(self.list_files())

    def __contains__(self, remote: object) -> bool:
        return isinstance(remote, str) and self.stat(self._key(remote)) is not None

    def __getitem__(self, remote: str) -> str:
        """``b[remote]`` downloads the object as :meth:`get_file` does; KeyError if missing."""
        try:
            return self.get_file(remote)
        except ValueError as error:
            raise KeyError(remote) from error

    def __setitem__(self, remote: str, local: LocalPath | IO[bytes]) -> None:
        if isinstance(local, (str, os.PathLike)) and os.path.isdir(local):
            self.add_directory(local, remote)
        else:
            self.add_file(local, remote)

    def __delitem__(self, remote: str) -> None:
        self.delete_file(remote)

    def add_string(self, string: str, remote: str) -> str:
        """Store ``string``, encoded in UTF-8, as the object ``remote``; returns the key."""
        return self.add_file(io.BytesIO(string.encode("utf-8")), remote)

    def add_file(self, local_or_file: LocalPath | IO[bytes], remote: str | None = None,
                 progress: ProgressArg = None) -> str:
        """Upload a local file (path) or a binary file object; returns the key.

        Without ``remote`` the key is the file's base name. A path is read once: under
        8 MiB its SHA-1 goes in the object's metadata (for later syncs); from 8 MiB the
        multipart ETag of its 8 MiB parts identifies its content instead.
        """
        if remote is None:
            name = local_or_file if isinstance(local_or_file, (str, os.PathLike)) \
                else getattr(local_or_file, "name", None)
            if not name:
                raise ValueError("remote is required for a file object without a name")
            remote = os.path.basename(os.fspath(name))
        key = self._key(remote)
        if isinstance(local_or_file, (str, os.PathLike)):
            if not os.path.isfile(local_or_file):
                raise FileNotFoundError(f"no such file: {os.fspath(local_or_file)}")
            self._upload_path(key, local_or_file, progress)
        else:
            self.upload(key, local_or_file, None, progress)
        return key

    def _upload_path(self, key: str, path: LocalPath, progress: ProgressArg) -> None:
        with open(path, "rb") as handle:
            data = handle.read(PART_SIZE)
        if len(data) == PART_SIZE:
            self.upload(key, path, None, progress)
            return
        with Progress(progress, len(data), key) as counter:
            self.put(key, data, {SHA1_METADATA_KEY: hashlib.sha1(data).hexdigest()})
            counter(len(data))

    def add_directory(self, local: LocalPath, remote: str = "",
                      progress: ProgressArg = None) -> list[str]:
        """Upload a folder's files under ``remote``, keeping its hierarchy; returns the keys.

        Symbolic links are not followed and empty folders are skipped, as in the SDK.
        """
        if not os.path.isdir(local):
            raise OSError(f"not a directory: {os.fspath(local)}")
        files = {f"{as_prefix(remote)}{relative}": path
                 for relative, path in walk_files(Path(local))}
        return self._upload_many(files, progress)

    def _upload_many(self, files: dict[str, Path], progress: ProgressArg) -> list[str]:
        workers = max(1, min(len(files), self._connection.max_concurrency))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda item: self.add_file(item[1], item[0], progress),
                                 files.items()))

    def get_file(self, remote: str, local: LocalPath | None = None,
                 progress: ProgressArg = None) -> str:
        """Download one object; returns the local path. Creates the needed folders.

        Without ``local`` the file goes to the key's path under the current folder (a key
        that would lead outside it is refused). If ``local`` is an existing folder the
        file goes inside it under the key's base name. Raises ValueError if the key does
        not exist, leaving no file behind.
        """
        key = self._key(remote)
        info = self.stat(key)
        if info is None or key.endswith("/"):
            raise ValueError(f"no such file: {key!r} in bucket {self._name!r}")
        if local is None:
            target = local_path_for_key(os.getcwd(), key)
            if target is None:
                raise ValueError(f"key {key!r} cannot be written under the current folder")
        else:
            target = Path(local)
            if target.is_dir():
                target = target / os.path.basename(key)
        self.download(key, target, progress, size=info.size)
        return os.fspath(target)

    def get_all_files(self, output_dir: LocalPath, progress: ProgressArg = None) -> None:
        """Download every object into ``output_dir`` (overwriting what is there).

        Keys ending in ``/`` become folders; objects with the same ETag are downloaded once
        and copied locally; keys that would land outside ``output_dir`` are skipped with
        a warning.
        """
        downloads: list[tuple[ObjectInfo, Path]] = []
        for info in self.iter_objects():
            target = local_path_for_key(output_dir, info.key)
            if target is None:
                log.warning("skipping key %r: it would be written outside %s",
                            info.key, output_dir)
            elif info.key.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
            else:
                downloads.append((info, target))
        self._download_once_each(downloads, progress)

    def _download_once_each(self, downloads: list[tuple[ObjectInfo, Path]],
                            progress: ProgressArg) -> None:
        """Download in parallel; objects with the same ETag and size are downloaded once
        and copied locally."""
        first_copy: dict[tuple[str, int], Path] = {}
        duplicates: list[tuple[Path, Path]] = []
        unique: list[tuple[ObjectInfo, Path]] = []
        for info, target in downloads:
            if (info.etag, info.size) in first_copy:
                duplicates.append((first_copy[(info.etag, info.size)], target))
            else:
                first_copy[(info.etag, info.size)] = target
                unique.append((info, target))
        workers = max(1, min(len(unique), self._connection.max_concurrency))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda item: self.download(item[0].key, item[1], progress,
                                                     size=item[0].size), unique))
        for source, target in duplicates:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)

    def sync_remote_to_local(self, local_directory: LocalPath,
                             remote_directory: str | None = None,
                             progress: ProgressArg = None) -> DownloadPlan:
        """Make a local folder hold the objects under the ``remote_directory`` folder (the
        whole bucket by default), that prefix stripped from their keys.

        Objects whose local copy differs (name, size, content) are downloaded; keys ending
        in ``/`` become folders; identical objects are downloaded once; local files the
        bucket lacks are kept; keys that would land outside the folder are skipped with a
        warning. Returns the plan carried out.
        """
        root = Path(local_directory)
        prefix = as_prefix(self._key(remote_directory)) if remote_directory else ""
        existing = {info.key: info for info in self.iter_objects(prefix)}
        for key in existing:
            folder = local_path_for_key(root, key[len(prefix):]) if key.endswith("/") else None
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        plan = plan_download(existing, prefix, root, self.stat, delete=False)
        for key in plan.skipped:
            log.warning("skipping key %r: it would be written outside %s", key, root)
        self._download_once_each(plan.downloads, progress)
        return plan

    def copy_file(self, source: str, dest: str) -> dict[str, Any]:
        """Server-side copy of ``source`` to ``dest``; returns CopyObject's answer, as the
        SDK does. One request up to 5 GiB; a bigger source (which CopyObject refuses) is
        copied in parts."""
        return self._copy_whole(self._key(source), self._key(dest))

    def _copy_whole(self, source_key: str, destination: str) -> dict[str, Any]:
        try:
            with storage_errors(self._name, source_key):
                return dict(self._s3.copy_object(
                    Bucket=self._name, Key=destination,
                    CopySource={"Bucket": self._name, "Key": source_key}))
        except QarnotGenericException as error:
            if error.code not in COPY_TOO_LARGE_CODES:
                raise
        self.copy(source_key, destination)
        copied = self.stat(destination)
        if copied is None:
            raise MissingObjectException(f"{self._name}/{destination}: gone after its copy")
        return {"CopyObjectResult": {"ETag": copied.e_tag,
                                     "LastModified": copied.last_modified}}

    def delete_file(self, remote: str) -> None:
        """Delete one object (deleting a missing key is not an error, as in S3)."""
        self.delete(self._key(remote))

    def update(self, flush: bool = False) -> None:
        """Kept for compatibility with the SDK: there is no state to refresh."""

    def flush(self) -> None:
        """Kept for compatibility with the SDK: writes are never buffered here."""

    # -- sync --------------------------------------------------------------------------

    def sync_directory(self, directory: LocalPath, verbose: bool = False,
                       remote: str | None = None, progress: ProgressArg = None,
                       dry_run: bool = False) -> SyncPlan:
        """Make the bucket (or ``remote`` prefix) hold exactly the folder's files.

        Objects under the prefix that the folder lacks are deleted. What is compared:
        name, size, then content (see :func:`qarnotfs.sync.plan_upload`).
        """
        if not os.path.isdir(directory):
            raise OSError(f"not a directory: {os.fspath(directory)}")
        files = {relative: path for relative, path in walk_files(Path(directory))}
        return self.sync_files(files, verbose, remote, progress, dry_run)

    def sync_files(self, files: Mapping[str, LocalPath], verbose: bool = False,
                   remote: str | None = None, progress: ProgressArg = None,
                   dry_run: bool = False) -> SyncPlan:
        """Make the bucket (or ``remote`` prefix) hold exactly ``files`` ({key: local path}).

        ``remote`` is a folder: it ends at a ``/`` boundary, so syncing ``pre`` never
        touches ``pre2/``. Returns the plan that was carried out.
        """
        prefix = as_prefix(remote)
        wanted = {f"{prefix}{self._key(key)}": Path(path) for key, path in files.items()}
        existing = {info.key: info for info in self.iter_objects(prefix)}
        plan = plan_upload(wanted, existing, self.stat)
        if dry_run:
            for line in plan.describe(self._name):
                log.info("(dry run) %s", line)
        else:
            self.apply(plan, progress, self._connection.logger.info if verbose else None)
        return plan

    def apply(self, plan: SyncPlan, progress: ProgressArg = None,
              report: Callable[[str], object] | None = None) -> None:
        """Carry out an upload plan: server-side copies, uploads in parallel, copies of
        what was uploaded, then deletes.

        Copies come first because a copy's source may be among the deletes. When all is
        done, ``report`` receives the plan's lines (:meth:`SyncPlan.describe`).
        """
        for source, destination in plan.copies:
            self._copy_whole(source, destination)
        self._upload_many(dict(plan.uploads), progress)
        for source, destination in plan.duplicates:
            self._copy_whole(source, destination)
        self.delete_many(plan.deletes)
        if report:
            for line in plan.describe(self._name):
                report(line)


def _size_of(source: LocalPath | IO[bytes]) -> int:
    if isinstance(source, (str, os.PathLike)):
        return os.path.getsize(source)
    try:
        position = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(position)
        return end - position
    except (OSError, AttributeError, ValueError):
        return 0


__all__ = ["Bucket", "MissingBucketException"]


def _quoted(etag: str) -> str:
    """An ETag as HTTP conditions carry it (in double quotes)."""
    return f'"{normalize_etag(etag)}"'


def _read_in_chunks(body: Any, offset: int, chunk_size: int) -> list[bytes]:
    """A GET's body (the object's bytes from ``offset``) cut at the object's multiples of
    ``chunk_size``, as :func:`~qarnotfs.objects.chunk_bounds` says."""
    chunks: list[bytes] = []
    wanted = chunk_size - offset % chunk_size
    while chunk := body.read(wanted):
        chunks.append(bytes(chunk))
        wanted = chunk_size
    return chunks

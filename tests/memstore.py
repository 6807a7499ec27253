"""An in-memory bucket for the core and model tests: a :class:`Storage` with fault hooks.

Owns: :class:`MemStore`, a dict-backed, multipart-aware implementation of
:class:`qarnotfs.fs.storage.Storage` that answers as :class:`qarnotfs.bucket.Bucket` does on
the test servers (same return types, ETags computed like S3, same exception classes for
the same situations; ``test_20_storage_conformance.py`` runs the same scenarios on both),
and :class:`Faults`, the hooks a test uses to make any call fail, wait or hang, and to
count calls.

Where the servers differ, MemStore follows both moto and Ceph RGW where they agree:
a delimited listing that starts after a key inside a common prefix leaves that prefix out;
a CopyObject (size given) makes a single-part ETag; a copy without the size of an object
of 8 MiB or more goes through s3transfer and gets a multipart ETag of 8 MiB parts, as an
upload of a file of 8 MiB or more does; a CompleteMultipartUpload repeated after it
succeeded returns the same ETag.

Each public call is one "request": it counts as one call of its own name, even where the
Bucket sends several (``put_marked``, a large ``upload``), and its fault hooks apply to it.

Thread safety. Lock order: ``Faults._lock`` and ``MemStore._lock`` are leaves, never held
together, never held while a fault waits or sleeps (so a hung call blocks no other call).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from qarnotfs.checksums import normalize_etag
from qarnotfs.exceptions import (
    InvalidPartException,
    MissingObjectException,
    MissingUploadException,
    PreconditionFailedException,
    QarnotException,
    QarnotGenericException,
)
from qarnotfs.fs.storage import MAX_PARTS, PART_SIZE, LocalPath
from qarnotfs.objects import Listing, ObjectInfo, ObjectRead, split_chunks
from qarnotfs.progress import ProgressArg

LIST_PAGE = 1000
"""The most keys one S3 listing answers (MaxKeys above it gives this many)."""
MIN_PART_SIZE = 5 << 20
"""S3 refuses to complete an upload whose parts but the last are smaller than this."""
COPY_OBJECT_MAX = 5 << 30
"""The largest object one CopyObject copies; Bucket.copy goes through s3transfer above."""
GATE_TIMEOUT = 60.0
"""A hung call that nobody releases fails after this long (rather than hang the suite)."""

KeyMatch = str | Callable[[str], bool] | None
"""Which calls a fault applies to: any (None), one key, or keys a predicate accepts."""


# == fault hooks ======================================================================


class Gate:
    """Holds the calls of a :meth:`Faults.hang` until :meth:`release`."""

    def __init__(self, timeout: float = GATE_TIMEOUT) -> None:
        self.entered = threading.Event()
        """Set when a call has reached the gate (a test waits for it, not for time)."""
        self._open = threading.Event()
        self._timeout = timeout

    def release(self) -> None:
        """Let every held call (and every later one) through."""
        self._open.set()

    def wait_entered(self, timeout: float = 10.0) -> bool:
        """Wait until a call reaches the gate; False if none did within ``timeout``."""
        return self.entered.wait(timeout)

    def _hold(self) -> None:
        self.entered.set()
        if not self._open.wait(self._timeout):
            raise AssertionError(f"a call held by a gate was not released in {self._timeout} s")


@dataclass
class Fault:
    """One hook: what it does to which calls. ``fired`` counts the calls it acted on."""

    method: str
    """A Storage method's name, or "*" for every method."""
    key: KeyMatch
    nth: int | None
    """Act only on the nth matching call (from 1); None: on every matching call."""
    times: int | None
    """Act at most this many times (None: no limit)."""
    act: Callable[[], None]
    after: bool = False
    """Act after the call has taken effect (a reply lost on its way back)."""
    matched: int = 0
    fired: int = 0

    def _applies(self, method: str, keys: tuple[str, ...]) -> bool:
        if self.method not in ("*", method):
            return False
        if self.key is None:
            return True
        if isinstance(self.key, str):
            return self.key in keys
        return any(self.key(key) for key in keys)

    def _fires(self) -> bool:
        self.matched += 1
        if self.nth is not None and self.matched != self.nth:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


class Faults:
    """The fault hooks and call counts of one :class:`MemStore`.

    ``fail`` raises, ``delay`` sleeps, ``hang`` waits on a :class:`Gate`; each applies to
    one method (or "*"), optionally only to calls about a key, only to the nth such call,
    or at most ``times`` times. ``calls`` counts calls per method, ``log`` keeps their
    order as (method, keys).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, tuple[str, ...]]] = []

    def fail(self, method: str, error: BaseException | type[BaseException], *,
             key: KeyMatch = None, nth: int | None = None, times: int | None = None,
             after: bool = False) -> Fault:
        """Make matching calls raise ``error`` (before they take effect, or ``after``)."""

        def act() -> None:
            if isinstance(error, BaseException):
                raise error
            raise error(f"{method}: failure injected by the test")

        return self._add(Fault(method, key, nth, times, act, after))

    def delay(self, method: str, seconds: float, *, key: KeyMatch = None,
              nth: int | None = None, times: int | None = None) -> Fault:
        """Make matching calls take ``seconds`` longer (before they take effect)."""
        return self._add(Fault(method, key, nth, times, lambda: time.sleep(seconds)))

    def hang(self, method: str, *, key: KeyMatch = None, nth: int | None = None,
             times: int | None = None, timeout: float = GATE_TIMEOUT) -> Gate:
        """Hold matching calls (before they take effect) until the gate is released."""
        gate = Gate(timeout)
        self._add(Fault(method, key, nth, times, gate._hold))
        return gate

    def remove(self, fault: Fault) -> None:
        with self._lock:
            self._faults.remove(fault)

    def clear(self) -> None:
        """Remove every hook (counts and log stay)."""
        with self._lock:
            self._faults.clear()

    def count(self, method: str) -> int:
        with self._lock:
            return self.calls[method]

    def tally(self, name: str, amount: int = 1) -> None:
        """Count ``amount`` more of ``name`` (what a call did, beside the call itself)."""
        with self._lock:
            self.calls[name] += amount

    def take(self) -> Counter[str]:
        """The calls since the last take, by method; the counts start again at zero."""
        with self._lock:
            taken, self.calls = self.calls, Counter()
            self.log.clear()
            return taken

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    @contextlib.contextmanager
    def request(self, method: str, *keys: str) -> Iterator[None]:
        """Count one call and apply its hooks around the block that carries it out."""
        with self._lock:
            self.calls[method] += 1
            self.log.append((method, keys))
            firing = [fault for fault in self._faults
                      if fault._applies(method, keys) and fault._fires()]
        for fault in firing:
            if not fault.after:
                fault.act()
        yield
        for fault in firing:
            if fault.after:
                fault.act()


# == the store =========================================================================


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    metadata: dict[str, str]
    e_tag: str
    """Quoted, as S3 gives it."""
    last_modified: datetime


@dataclass
class _Upload:
    key: str
    metadata: dict[str, str]
    initiated: datetime
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class MemLimits:
    """What the filesystem reads of the storage's configuration (``connection``)."""

    max_concurrency: int = 10


def _now() -> datetime:
    # S3's LastModified has whole seconds (HEAD says it to the second).
    return datetime.now(timezone.utc).replace(microsecond=0)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _multipart_etag(part_digests: list[str]) -> str:
    joined = b"".join(bytes.fromhex(digest) for digest in part_digests)
    return f'"{_md5(joined)}-{len(part_digests)}"'


def _chunked_etag(data: bytes, part_size: int = PART_SIZE) -> str:
    """The ETag of ``data`` sent by s3transfer in ``part_size`` parts."""
    pieces = [data[start:start + part_size] for start in range(0, len(data), part_size)]
    return _multipart_etag([_md5(piece) for piece in pieces])


def _lower_keys(metadata: dict[str, str] | None) -> dict[str, str]:
    # Metadata travels as HTTP headers: the storage gives its names back in lower case.
    return {name.lower(): value for name, value in (metadata or {}).items()}


class MemStore:
    """A bucket in memory (see the module's docstring). ``faults`` holds its hooks."""

    def __init__(self, name: str = "memstore", max_concurrency: int = 10,
                 min_part_size: int = MIN_PART_SIZE) -> None:
        self._name = name
        self._min_part_size = min_part_size
        """S3's 5 MiB; models lower it to exercise multipart uploads with small files."""
        self._limits = MemLimits(max_concurrency)
        self._lock = threading.Lock()
        self._objects: dict[str, StoredObject] = {}
        self._uploads: dict[str, _Upload] = {}
        self._completed: dict[str, tuple[str, str]] = {}
        """Upload id -> (key, ETag) of completed uploads: a repeated complete succeeds."""
        self._ids = itertools.count(1)
        self.faults = Faults()

    def __repr__(self) -> str:
        return f"MemStore({self._name!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def connection(self) -> MemLimits:
        return self._limits

    # -- for the tests: a look inside without counting a call ---------------------------

    def contents(self) -> dict[str, bytes]:
        """Every object's bytes by key (no hook applies, no call is counted)."""
        with self._lock:
            return {key: stored.data for key, stored in self._objects.items()}

    def object(self, key: str) -> StoredObject | None:
        with self._lock:
            return self._objects.get(key)

    def uploads(self) -> dict[str, str]:
        """The unfinished multipart uploads: {upload id: key}."""
        with self._lock:
            return {upload_id: upload.key for upload_id, upload in self._uploads.items()}

    # -- helpers --------------------------------------------------------------------------

    def _error(self, error: type[QarnotException], code: str, message: str,
               key: str | None = None) -> QarnotException:
        """``error`` carrying the S3 ``code``, as exceptions.translate builds them."""
        where = f"{self._name}/{key}: " if key else f"{self._name}: "
        made = error(f"{where}{code}: {message}")
        made.code = code
        return made

    def _missing(self, key: str) -> QarnotException:
        return self._error(MissingObjectException, "NoSuchKey",
                           "The specified key does not exist.", key)

    def _no_upload(self, key: str) -> QarnotException:
        return self._error(MissingUploadException, "NoSuchUpload",
                           "The specified upload does not exist.", key)

    def _store(self, key: str, data: bytes, metadata: dict[str, str], e_tag: str) -> str:
        with self._lock:
            self._objects[key] = StoredObject(bytes(data), _lower_keys(metadata), e_tag, _now())
        return e_tag

    def _get(self, key: str) -> StoredObject:
        with self._lock:
            stored = self._objects.get(key)
        if stored is None:
            raise self._missing(key)
        return stored

    def _summary(self, key: str, stored: StoredObject, with_metadata: bool) -> ObjectInfo:
        return ObjectInfo(key=key, size=len(stored.data), e_tag=stored.e_tag,
                          last_modified=stored.last_modified,
                          metadata=dict(stored.metadata) if with_metadata else None,
                          bucket_name=self._name)

    def _sorted(self, prefix: str) -> list[tuple[str, StoredObject]]:
        # S3 lists keys in UTF-8 byte order, which is code point order.
        with self._lock:
            return sorted((key, stored) for key, stored in self._objects.items()
                          if key.startswith(prefix))

    # -- objects ----------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo | None:
        with self.faults.request("stat", key), self._lock:
            stored = self._objects.get(key)
        return None if stored is None else self._summary(key, stored, with_metadata=True)

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self.faults.request("read", key):
            if length == 0:
                return b""  # the Bucket sends no request for it
            data = self._get(key).data
        end = len(data) if length is None else offset + length
        return data[offset:end]

    def get(self, key: str, offset: int = 0, length: int | None = None, *,
            unless_etag: str = "", only_etag: str = "") -> ObjectRead | None:
        with self.faults.request("get", key):
            stored = self._get(key)
        summary = self._summary(key, stored, with_metadata=True)
        if only_etag and summary.etag != normalize_etag(only_etag):
            raise self._error(PreconditionFailedException, "PreconditionFailed",
                              "At least one of the pre-conditions did not hold.", key)
        if unless_etag and summary.etag == normalize_etag(unless_etag):
            self.faults.tally("get unchanged")
            return None
        end = len(stored.data) if length is None else offset + length
        self.faults.tally("get bytes", len(stored.data[offset:end]))
        return ObjectRead(summary, stored.data[offset:end])

    def read_chunks(self, key: str, offset: int, length: int, *, only_etag: str = "",
                    chunk_size: int = 1 << 20) -> list[bytes]:
        answer = self.get(key, offset, length, only_etag=only_etag)
        assert answer is not None, "a GET without If-None-Match always answers"
        return split_chunks(answer.data, offset, chunk_size)

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        with self.faults.request("put", key):
            return self._store(key, data, metadata or {}, f'"{_md5(data)}"')

    def put_marked(self, key: str, data: bytes,
                   metadata: dict[str, str] | None = None) -> None:
        with self.faults.request("put_marked", key):
            self._store(key, data, metadata or {}, _multipart_etag([_md5(data)]))

    def upload(self, key: str, source: LocalPath | IO[bytes],
               metadata: dict[str, str] | None = None, progress: ProgressArg = None) -> None:
        with self.faults.request("upload", key):
            if isinstance(source, (str, os.PathLike)):
                data = Path(source).read_bytes()
            else:
                data = source.read()
            e_tag = _chunked_etag(data) if len(data) >= PART_SIZE else f'"{_md5(data)}"'
            self._store(key, data, metadata or {}, e_tag)

    def download(self, key: str, target: LocalPath, progress: ProgressArg = None,
                 size: int | None = None) -> None:
        with self.faults.request("download", key):
            data = self._get(key).data
            # As the Bucket: a temporary file beside the target replaces it at the end.
            destination = Path(target)
            destination.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=f".{destination.name[:200]}.",
                                             suffix=".part", dir=destination.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(temporary, destination)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)

    def copy(self, source: str, destination: str, metadata: dict[str, str] | None = None,
             size: int | None = None, content_type: str | None = None) -> None:
        with self.faults.request("copy", source, destination):
            stored = self._get(source)
            if source == destination and metadata is None:
                raise self._error(
                    QarnotGenericException, "InvalidRequest", "This copy request is illegal "
                    "because it is trying to copy an object to itself without changing the "
                    "object's metadata", source)
            one_request = size is not None and size <= COPY_OBJECT_MAX
            data = stored.data
            e_tag = f'"{_md5(data)}"' if one_request or len(data) < PART_SIZE \
                else _chunked_etag(data)
            self._store(destination, data,
                        stored.metadata if metadata is None else metadata, e_tag)

    def delete(self, key: str) -> None:
        with self.faults.request("delete", key), self._lock:
            self._objects.pop(key, None)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        with self.faults.request("delete_many", *keys), self._lock:
            for key in keys:
                self._objects.pop(key, None)

    # -- listings -------------------------------------------------------------------------

    def first_keys(self, prefix: str, count: int) -> list[str]:
        with self.faults.request("first_keys", prefix):
            return [key for key, _ in self._sorted(prefix)[:min(count, LIST_PAGE)]]

    def has_objects_under(self, prefix: str) -> bool:
        with self.faults.request("has_objects_under", prefix):
            return bool(self._sorted(prefix))

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self.faults.request("iter_objects", prefix):
            found = self._sorted(prefix)
        return iter([self._summary(key, stored, with_metadata=False) for key, stored in found])

    def list_folder(self, prefix: str = "", start_after: str = "") -> Listing:
        with self.faults.request("list_folder", prefix):
            found = self._sorted(prefix)
        listing = Listing()
        for key, stored in found:
            if key <= start_after:
                continue
            cut = key.find("/", len(prefix))
            if cut < 0:
                listing.objects.append(self._summary(key, stored, with_metadata=False))
                continue
            common = key[:cut + 1]
            # Like moto and RGW: a prefix holding the start key is left out whole.
            if common > start_after and common not in listing.prefixes[-1:]:
                listing.prefixes.append(common)
        return listing

    def list_page(self, prefix: str) -> tuple[list[ObjectInfo], bool]:
        with self.faults.request("list_page", prefix):
            found = self._sorted(prefix)
        page = [self._summary(key, stored, with_metadata=False)
                for key, stored in found[:LIST_PAGE]]
        return page, len(found) > LIST_PAGE

    # -- multipart uploads ----------------------------------------------------------------

    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        with self.faults.request("create_multipart", key), self._lock:
            upload_id = f"mem-upload-{next(self._ids)}"
            self._uploads[upload_id] = _Upload(key, _lower_keys(metadata), _now())
            return upload_id

    def upload_part(self, key: str, upload_id: str, number: int,
                    data: bytes | IO[bytes]) -> str:
        with self.faults.request("upload_part", key):
            body = data if isinstance(data, bytes) else data.read()
            if not 1 <= number <= MAX_PARTS:
                raise self._error(QarnotGenericException, "InvalidArgument",
                                  "Part number must be an integer between 1 and 10000", key)
            with self._lock:
                upload = self._uploads.get(upload_id)
                if upload is None or upload.key != key:
                    raise self._no_upload(key)
                e_tag = f'"{_md5(body)}"'
                upload.parts[number] = (bytes(body), e_tag)
            return e_tag

    def list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        with self.faults.request("list_parts", key), self._lock:
            upload = self._uploads.get(upload_id)
            if upload is None or upload.key != key:
                return None
            return {number: (e_tag, len(body))
                    for number, (body, e_tag) in sorted(upload.parts.items())}

    def complete_multipart(self, key: str, upload_id: str,
                           etags: list[tuple[int, str]]) -> str:
        with self.faults.request("complete_multipart", key), self._lock:
            done = self._completed.get(upload_id)
            if done is not None and done[0] == key:
                return done[1]
            upload = self._uploads.get(upload_id)
            if upload is None or upload.key != key:
                raise self._no_upload(key)
            bodies = self._chosen_parts(key, upload, etags)
            e_tag = _multipart_etag([_md5(body) for body in bodies])
            self._objects[key] = StoredObject(b"".join(bodies), upload.metadata, e_tag, _now())
            del self._uploads[upload_id]
            self._completed[upload_id] = (key, e_tag)
            return e_tag

    def _chosen_parts(self, key: str, upload: _Upload,
                      etags: list[tuple[int, str]]) -> list[bytes]:
        """The parts a complete names, checked as S3 checks them."""
        if not etags:
            raise self._error(QarnotGenericException, "MalformedXML",
                              "The XML you provided was not well-formed", key)
        numbers = [number for number, _ in etags]
        if numbers != sorted(set(numbers)):
            raise self._error(InvalidPartException, "InvalidPartOrder",
                              "The list of parts was not in ascending order", key)
        bodies = []
        for number, e_tag in etags:
            held = upload.parts.get(number)
            if held is None or held[1].strip('"') != e_tag.strip('"'):
                raise self._error(InvalidPartException, "InvalidPart",
                                  "One or more of the specified parts could not be found", key)
            bodies.append(held[0])
        if any(len(body) < self._min_part_size for body in bodies[:-1]):
            raise self._error(QarnotGenericException, "EntityTooSmall", "Your proposed "
                              "upload is smaller than the minimum allowed object size", key)
        return bodies

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with self.faults.request("abort_multipart", key), self._lock:
            upload = self._uploads.get(upload_id)
            if upload is not None and upload.key == key:
                del self._uploads[upload_id]

    def list_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str, float]]:
        with self.faults.request("list_multipart_uploads", prefix), self._lock:
            found = [(upload.key, upload.initiated, upload_id)
                     for upload_id, upload in self._uploads.items()
                     if upload.key.startswith(prefix)]
        return [(key, upload_id, initiated.timestamp())
                for key, initiated, upload_id in sorted(found)]

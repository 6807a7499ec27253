"""The in-memory store answers as the Bucket does on the test server.

Each scenario runs twice, on the real :class:`~qarnotfs.bucket.Bucket` (moto, or Ceph RGW
with ``--backend rgw``) and on a :class:`memstore.MemStore` of the same name, and its
answers must be equal: listings, ETags, metadata, the classes of the errors, multipart
flows, copies, batched deletes. Only what no two stores share is set aside: upload ids
(replaced by their order of creation) and times (checked to be recent and tz-aware).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from memstore import MemStore

from qarnotfs.bucket import Bucket
from qarnotfs.exceptions import (
    InvalidPartException,
    MissingUploadException,
    QarnotGenericException,
)
from qarnotfs.fs.storage import PART_SIZE, Storage
from qarnotfs.objects import Listing, ObjectInfo

pytest_plugins = ("fs_helpers",)

MIB = 1 << 20
Scenario = Callable[[Storage, Path], list[Any]]


def recent(when: datetime | float) -> bool:
    """True for a time of the last few minutes (tz-aware when a datetime)."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            return False
        when = when.timestamp()
    return abs(datetime.now(timezone.utc).timestamp() - when) < 300


def summary(info: ObjectInfo | None) -> tuple[Any, ...] | None:
    if info is None:
        return None
    return (info.key, info.size, info.e_tag, info.metadata, info.bucket_name,
            recent(info.last_modified))


def copy_summary(storage: Storage, key: str, source: str) -> tuple[Any, ...] | None:
    """``summary`` of a copy, its ETag reduced to whether it is one a copy may have: S3 and
    moto give a copy the MD5 of its bytes, Ceph RGW keeps the source's ETag."""
    info = storage.stat(key)
    if info is None:
        return None
    data = storage.read(key)
    source_info = storage.stat(source)
    valid = {f'"{hashlib.md5(data).hexdigest()}"',
             source_info.e_tag if source_info is not None else ""}
    return (*summary(info)[:2], info.e_tag in valid, *summary(info)[3:])  # type: ignore[index]


def folder(listing: Listing) -> tuple[list[Any], list[str]]:
    return [summary(info) for info in listing.objects], listing.prefixes


def outcome(call: Callable[[], Any]) -> Any:
    """What a call returned, or the class of what it raised."""
    try:
        return call()
    except Exception as error:  # the class is the answer
        return f"raises {type(error).__name__}"


def refusal(call: Callable[[], Any]) -> Exception | None:
    """What a call raised, or None."""
    try:
        call()
    except Exception as error:  # the error is the answer
        return error
    return None


# -- scenarios ---------------------------------------------------------------------------


def objects(storage: Storage, _: Path) -> list[Any]:
    return [
        storage.put("a", b"hello", {"Mode": "33188", "uid": "0"}),
        storage.put("empty", b""),
        summary(storage.stat("a")),
        summary(storage.stat("empty")),
        summary(storage.stat("missing")),
        storage.read("a"),
        storage.read("a", 1),
        storage.read("a", 1, 3),
        storage.read("a", 3, 100),
        storage.read("a", 5),
        storage.read("a", 50, 2),
        storage.read("empty", 0, 4),
        storage.read("missing", 0, 0),
        outcome(lambda: storage.read("missing")),
        outcome(lambda: storage.read("missing", 2, 2)),
        storage.put("a", b"again"),
        summary(storage.stat("a")),
    ]


def chunked_reads(storage: Storage, _: Path) -> list[Any]:
    """The Reader's GETs: the bytes in chunks, never from a replacement."""
    etag = storage.put("c", b"0123456789")
    return [
        storage.read_chunks("c", 0, 10, chunk_size=4),
        storage.read_chunks("c", 1, 8, only_etag=etag, chunk_size=3),
        storage.read_chunks("c", 2, 100, only_etag=etag, chunk_size=8),
        storage.read_chunks("c", 10, 5, only_etag=etag),
        outcome(lambda: storage.read_chunks("c", 0, 4, only_etag='"0123"')),
        outcome(lambda: storage.read_chunks("missing", 0, 4)),
    ]


def listings(storage: Storage, _: Path) -> list[Any]:
    for key in ("top", "d/", "d/x", "d/y/z", "d/y/w", "d/y/", "da", "d!x", "e/f/g", "d/zz"):
        storage.put(key, key.encode())
    return [
        folder(storage.list_folder()),
        folder(storage.list_folder("d/")),
        folder(storage.list_folder("d/", start_after="d/x")),
        folder(storage.list_folder("d/", start_after="d/y/w")),  # inside the prefix d/y/
        folder(storage.list_folder("d/", start_after="d/y")),
        folder(storage.list_folder("d/", start_after="d/zz")),
        folder(storage.list_folder("nothing/")),
        [summary(info) for info in storage.iter_objects("d")],
        [summary(info) for info in storage.iter_objects()],
        [summary(info) for info in storage.list_page("d/")[0]], storage.list_page("d/")[1],
        storage.first_keys("d/", 2), storage.first_keys("", 0), storage.first_keys("zz", 5),
        storage.has_objects_under("d/y/"), storage.has_objects_under("d/q"),
    ]


def many_keys(storage: Storage, _: Path) -> list[Any]:
    keys = [f"k/{index:04d}" for index in range(1001)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: storage.put(key, b""), keys))
    page, truncated = storage.list_page("k/")
    results = [
        len(page), page[-1].key, truncated,
        # (first_keys of more than 1,000: AWS and RGW give 1,000, moto all; the fs asks 2.)
        len(storage.first_keys("k/", 1000)),
        sum(1 for _ in storage.iter_objects("k/")),
        len(storage.list_folder("k/").objects),
        storage.list_folder("", start_after="k/0999").prefixes,
        storage.list_page("k/1")[1],
    ]
    storage.delete_many(iter(keys[:-1]))
    storage.delete_many([])
    return [*results, storage.first_keys("", 10)]


def copies(storage: Storage, _: Path) -> list[Any]:
    big = bytes(range(256)) * (9 * MIB // 256)
    storage.put("src", b"source", {"mode": "1"})
    storage.put_marked("link", b"target", {"mode": "41471"})
    storage.put("big", big, {"mode": "2"})
    storage.copy("src", "kept", size=6)
    storage.copy("src", "replaced", {"mode": "3"}, size=6)
    storage.copy("link", "link2", size=6)
    storage.copy("big", "big-sized", size=len(big))
    storage.copy("big", "big-unsized")
    storage.copy("big", "big-unsized-meta", {"x": "y"})
    storage.copy("src", "src", {"mode": "4"})
    return [
        summary(storage.stat("link")),
        *(copy_summary(storage, key, source) for key, source in (
            ("kept", "src"), ("replaced", "src"), ("link2", "link"), ("big-sized", "big"),
            ("big-unsized", "big"), ("big-unsized-meta", "big"), ("src", "src"))),
        storage.read("replaced"),
        outcome(lambda: storage.copy("src", "src")),
        outcome(lambda: storage.copy("src", "src", size=6)),
        outcome(lambda: storage.copy("missing", "x")),
        outcome(lambda: storage.copy("missing", "x", size=3)),
        summary(storage.stat("x")),
    ]


def multipart(storage: Storage, _: Path) -> list[Any]:
    ids: dict[str, str] = {}

    def named(upload_id: str) -> str:
        return ids.setdefault(upload_id, f"upload {len(ids) + 1}")

    first = b"1" * (5 * MIB)
    upload_id = storage.create_multipart("mp", {"Mode": "5"})
    other = storage.create_multipart("other/mp")
    etag1 = storage.upload_part("mp", upload_id, 1, first)
    etag2 = storage.upload_part("mp", upload_id, 2, io.BytesIO(b"tail"))
    # (A part uploaded but left out of the completion: S3 and moto accept it, Ceph RGW
    # refuses the completion with InvalidPart; the uploader sends such a file afresh.)
    results = [
        named(upload_id), named(other), etag1, etag2,
        storage.list_parts("mp", upload_id),
        # (Initiated: moto gives one fixed time of 2010, so only its type is compared.)
        sorted((key, named(found), isinstance(when, float))
               for key, found, when in storage.list_multipart_uploads()),
        [(key, named(found)) for key, found, _ in storage.list_multipart_uploads("other/")],
        outcome(lambda: storage.complete_multipart("mp", upload_id, [(1, '"0000"')])),
        outcome(lambda: storage.complete_multipart("mp", upload_id, [(4, etag1)])),
        outcome(lambda: storage.complete_multipart("mp", upload_id, [])),
        # (Part 10,001: S3 and moto refuse it, Ceph RGW stores it; the fs never sends it.)
        # (Its answer's ETag: moto and S3 give it, this Ceph RGW gives none; HEAD has it.)
        isinstance(storage.complete_multipart("mp", upload_id, [(1, etag1), (2, etag2)]), str),
        summary(storage.stat("mp")),
        storage.read("mp", 5 * MIB - 2),
        storage.list_parts("mp", upload_id),
        # A repeated complete: moto (and S3 for a while) answers it again, Ceph RGW refuses
        # it (InvalidPart); either way nothing changes (the object is read again below).
        isinstance(refusal(lambda: storage.complete_multipart(
            "mp", upload_id, [(1, etag1), (2, etag2)])),
            (type(None), InvalidPartException, MissingUploadException)),
        storage.read("mp", 5 * MIB - 2),
        # S3 and RGW refuse it (NoSuchUpload, MissingUploadException here); moto answers
        # 500 (a moto bug): only "refused as a storage error" is common to all.
        isinstance(refusal(lambda: storage.upload_part("mp", upload_id, 1, b"late")),
                   QarnotGenericException),
        outcome(lambda: storage.abort_multipart("mp", upload_id)),  # completed: no error
        outcome(lambda: storage.abort_multipart("other/mp", other)),
        storage.list_parts("other/mp", other),
        storage.list_multipart_uploads(),
    ]
    tiny = storage.create_multipart("tiny")
    parts = [(number, storage.upload_part("tiny", tiny, number, b"x")) for number in (1, 2)]
    results.append(outcome(lambda: storage.complete_multipart("tiny", tiny, parts)))
    storage.abort_multipart("tiny", tiny)
    storage.put_marked("marked", b"link target", {"Mode": "41471"})
    return [*results, summary(storage.stat("marked")), storage.list_multipart_uploads()]


def transfers(storage: Storage, folder_path: Path) -> list[Any]:
    small = folder_path / "small"
    small.write_bytes(b"small file")
    large = folder_path / "large"
    large.write_bytes(bytes(range(256)) * (PART_SIZE // 256 + 5))
    storage.upload("small", small, {"mode": "6"})
    storage.upload("large", large, {"mode": "7"})
    storage.upload("stream", io.BytesIO(large.read_bytes()))
    storage.upload("stream-small", io.BytesIO(b"abc"))
    target = folder_path / "out" / "deep" / "large"
    storage.download("large", target)
    storage.download("small", folder_path / "out" / "small", size=10)
    return [
        *(summary(storage.stat(key)) for key in ("small", "large", "stream", "stream-small")),
        target.read_bytes() == large.read_bytes(),
        (folder_path / "out" / "small").read_bytes(),
        outcome(lambda: storage.download("missing", folder_path / "out" / "missing")),
        outcome(lambda: storage.download("missing", folder_path / "out" / "m2", size=3)),
        sorted(path.name for path in (folder_path / "out").rglob("*")),
    ]


def deletes(storage: Storage, _: Path) -> list[Any]:
    for key in ("a", "b", "c/d"):
        storage.put(key, b"x")
    storage.delete("a")
    storage.delete("never-existed")
    storage.delete_many(["b", "nope", "c/d"])
    return [storage.first_keys("", 10), summary(storage.stat("a"))]


SCENARIOS: list[Scenario] = [objects, chunked_reads, listings, many_keys, copies, multipart,
                             transfers, deletes]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_the_memstore_answers_as_the_bucket(scenario: Scenario, bucket: Bucket,
                                             tmp_path: Path) -> None:
    (tmp_path / "bucket").mkdir()
    (tmp_path / "memstore").mkdir()
    expected = scenario(bucket, tmp_path / "bucket")
    actual = scenario(MemStore(bucket.name), tmp_path / "memstore")
    assert len(actual) == len(expected)
    for index, (mine, theirs) in enumerate(zip(actual, expected, strict=True)):
        assert mine == theirs, f"answer {index} of {scenario.__name__}"

"""How many requests each filesystem call costs (the "Speed" issue), counted, not timed.

Every S3 request the core sends is recorded through a botocore event hook on the test's
client, so each test states its budget as request counts: a listing is one LIST per page
and no HEAD per entry, a lookup after a listing is free, a missing name is asked once,
``rm -r`` of N files is about N/1000 DeleteObjects. Also: the read-ahead's request
pattern and memory bound, the link mark that lets listings skip HEADs, and the memory of
a cache holding 100,000 entries.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memstore import MemStore

from qarnotfs.bucket import Bucket
from qarnotfs.exceptions import PreconditionFailedException, QarnotGenericException
from qarnotfs.fs.attrs import Attributes
from qarnotfs.fs.errors import FsError, errno_for
from qarnotfs.fs.metacache import MetaCache, Node
from qarnotfs.fs.readcache import ReadCache
from qarnotfs.fs.reader import MAXIMUM_AHEAD, MAXIMUM_PIECE, Reader
from qarnotfs.objects import ObjectInfo, ObjectRead, split_chunks

if TYPE_CHECKING:
    from fs_helpers import FakeClock, MakeFs
    from mypy_boto3_s3 import S3Client

    from qarnotfs.connection import Connection

pytest_plugins = ("fs_helpers",)
CREATE = os.O_CREAT | os.O_WRONLY


class Requests:
    """The S3 operations sent by one client since the last :meth:`take`."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.seen.append((model.name, params))

    def take(self) -> Counter[str]:
        counted = Counter(name for name, _ in self.seen)
        self.seen.clear()
        return counted


@pytest.fixture
def requests(connection: Connection) -> Iterator[Requests]:
    recorder = Requests()
    # Fired once per API call (not per retry), with the call's own parameters.
    connection.s3.meta.events.register("before-parameter-build.s3", recorder.record)
    yield recorder
    connection.s3.meta.events.unregister("before-parameter-build.s3", recorder.record)


def populate(s3_client: S3Client, bucket_name: str, keys: list[str], body: bytes) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3_client.put_object(Bucket=bucket_name, Key=key, Body=body),
                      keys))


def write_file(fs: Any, path: str, data: bytes) -> None:
    fh = fs.create(path, stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, data, 0)
    fs.release(fh)


def test_ls_l_of_a_big_folder_is_one_list_per_page_and_lookups_are_free(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests) -> None:
    count = 1001  # two pages
    names = [f"f{index:04d}" for index in range(count)]
    populate(s3_client, bucket_name, [f"big/{name}" for name in names], b"tiny")
    fs = make_fs()
    requests.take()
    assert fs.getattr("/big").is_dir
    assert requests.take() == {"GetObject": 1, "ListObjectsV2": 1}, "one round trip"
    entries = dict(fs.readdir("/big"))
    assert sorted(entries) == [".", "..", *names]
    assert all(entries[name].size == 4 for name in names)
    assert requests.take() == {"ListObjectsV2": 1}, \
        "a LIST per page, no HEAD per small file; the first page is the lookup's, kept"
    for name in names:
        assert fs.getattr(f"/big/{name}").size == 4
    with pytest.raises(FsError) as missing:
        fs.getattr("/big/absent")
    assert missing.value.errno == errno.ENOENT
    assert requests.take() == {}, "lookups after a listing are answered from it"


def test_a_folder_lookup_s_page_serves_its_listing_for_a_second_if_unchanged(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests,
        clock: FakeClock) -> None:
    """``ls -l dir``: the lookup of ``dir`` lists its first page, which the listing that
    follows within a second uses; not later, and not once the mount changed the folder."""
    populate(s3_client, bucket_name, ["d/a", "d/b", "e/a", "f/a"], b"x")
    fs = make_fs()
    requests.take()
    assert fs.getattr("/d").is_dir
    assert [name for name, _ in fs.readdir("/d")][2:] == ["a", "b"]
    assert requests.take() == {"GetObject": 1, "ListObjectsV2": 1}, "one LIST for both"
    assert fs.getattr("/e").is_dir
    clock.advance(1.5)
    assert [name for name, _ in fs.readdir("/e")][2:] == ["a"]
    assert requests.take() == {"GetObject": 1, "ListObjectsV2": 2}, "a page is kept 1 s"
    populate(s3_client, bucket_name, ["f/b"], b"x")
    assert fs.getattr("/f").is_dir
    fs.unlink("/f/a")
    fs.fsyncdir("/f")
    assert [name for name, _ in fs.readdir("/f")][2:] == ["b"], "listed anew after the unlink"


def test_negative_lookups_are_cached(make_fs: MakeFs, requests: Requests) -> None:
    fs = make_fs()
    requests.take()
    for _ in range(3):
        with pytest.raises(FsError):
            fs.getattr("/nothing/here")
    assert requests.take() == {"GetObject": 1, "ListObjectsV2": 1}, "asked once"


def test_a_tree_is_listed_by_its_first_page(make_fs: MakeFs, s3_client: S3Client,
                                            bucket_name: str, requests: Requests) -> None:
    keys = [f"tree/d{index % 5}/f{index:03d}" for index in range(100)]
    populate(s3_client, bucket_name, keys, b"y" * 100)
    s3_client.put_object(Bucket=bucket_name, Key="tree/d0/", Body=b"",
                         Metadata={"mode": str(stat.S_IFDIR | 0o700)})
    fs = make_fs()
    fs.getattr("/tree")
    requests.take()
    walked = {name for name, _ in fs.readdir("/tree")} - {".", ".."}
    for folder in sorted(walked):
        assert len(fs.readdir(f"/tree/{folder}")) == 2 + 20
    heads = [params["Key"] for name, params in requests.seen if name == "HeadObject"]
    assert requests.take() == {"HeadObject": 1}, \
        "find: one LIST, the lookup's (its first page, kept for the listing that follows)"
    assert heads == ["tree/d0/"], "only the folder that has a marker is HEADed"
    assert fs.getattr("/tree/d0").mode == stat.S_IFDIR | 0o700
    assert fs.getattr("/tree/d1").mode == stat.S_IFDIR | 0o755


def test_links_are_marked_so_listings_need_no_head_per_small_file(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests) -> None:
    s3fs_link = {"mode": str(stat.S_IFLNK | 0o777)}
    s3_client.put_object(Bucket=bucket_name, Key="d/s3fs-link", Body=b"small",
                         Metadata=s3fs_link)
    s3_client.put_object(Bucket=bucket_name, Key="d/small", Body=b"small")
    make_fs().symlink("small", "/d/ours")
    etag = s3_client.head_object(Bucket=bucket_name, Key="d/ours")["ETag"]
    assert etag.endswith('-1"'), "qarnotfs writes its links as one multipart part"

    fs = make_fs()  # a remount: only the bucket knows
    fs.getattr("/d")
    requests.take()
    listed = dict(fs.readdir("/d"))
    assert [params["Key"] for name, params in requests.seen if name == "HeadObject"] \
        == ["d/ours"], "only the marked candidate is HEADed"
    assert listed["ours"].is_link and fs.readlink("/d/ours") == "small"
    assert listed["s3fs-link"].is_file, "an unmarked link is a file by default"
    assert listed["small"].is_file
    scanning = make_fs(symlink_scan="small")
    listed = dict(scanning.readdir("/d"))
    assert listed["s3fs-link"].is_link and listed["ours"].is_link and listed["small"].is_file

    # The mark survives what copies objects: a rename, a folder rename, chown -h.
    fs.rename("/d/ours", "/d/moved")
    fs.chown("/d/moved", 1234, -1)
    fs.rename("/d", "/e")
    again = make_fs()
    assert again.getattr("/e/moved").is_link and again.getattr("/e/moved").uid == 1234
    assert again.readlink("/e/moved") == "small"
    assert dict(again.readdir("/e"))["moved"].is_link


def test_rm_r_batches_deletes_and_keeps_the_order_of_requests(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests) -> None:
    count = 300
    populate(s3_client, bucket_name, [f"gone/f{index:03d}" for index in range(count)], b"w")
    s3_client.put_object(Bucket=bucket_name, Key="gone/", Body=b"")
    fs = make_fs(delete_delay=600)  # batches leave only when a request needs them out
    names = [name for name, _ in fs.readdir("/gone")][2:]
    requests.take()
    for name in names[:-1]:
        fs.getattr(f"/gone/{name}")
        fs.unlink(f"/gone/{name}")
    assert requests.take() == {}, "unlink sends nothing by itself"
    assert len(s3_client.list_objects_v2(Bucket=bucket_name)["Contents"]) == count + 1
    fs.unlink(f"/gone/{names[-1]}")
    # The last one checks whether the folder still has a key (to keep it): the batch first.
    assert requests.take() == {"DeleteObjects": 1, "ListObjectsV2": 1}
    fs.rmdir("/gone")
    assert requests.take() == {"ListObjectsV2": 1, "DeleteObject": 1}
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket_name)

    # A name written again after its unlink is never deleted by the late batch.
    write_file(fs, "/again", b"first")
    fs.unlink("/again")
    write_file(fs, "/again", b"second")
    fs.shutdown()  # sends anything still queued
    assert s3_client.get_object(Bucket=bucket_name, Key="again")["Body"].read() == b"second"


def test_emptiness_checks_ask_for_two_keys(make_fs: MakeFs, s3_client: S3Client,
                                           bucket_name: str, requests: Requests) -> None:
    populate(s3_client, bucket_name, [f"full/f{index:04d}" for index in range(30)], b"x")
    fs = make_fs()
    fs.getattr("/full")
    requests.take()
    with pytest.raises(FsError) as refused:
        fs.rmdir("/full")
    assert refused.value.errno == errno.ENOTEMPTY
    assert [(name, params.get("MaxKeys")) for name, params in requests.seen] \
        == [("ListObjectsV2", 2)]


def test_folder_rename_copies_with_one_request_per_key(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests) -> None:
    count = 40
    populate(s3_client, bucket_name, [f"src/f{index:02d}" for index in range(count)], b"z" * 10)
    fs = make_fs()
    fs.getattr("/src")
    requests.take()
    fs.rename("/src", "/dst")
    counted = requests.take()
    assert counted["CopyObject"] == count and counted["HeadObject"] <= 1, counted
    assert counted["DeleteObjects"] == 1 and "DeleteObject" not in counted


class FakeBucket:
    """Answers ranged reads with zeros and remembers them."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, int]] = []

    def get(self, key: str, offset: int, length: int, *, unless_etag: str = "",
            only_etag: str = "") -> ObjectRead:
        self.reads.append((offset, length))
        return ObjectRead(ObjectInfo(key, offset + length, only_etag, datetime.now()),
                          bytes(length))

    def read_chunks(self, key: str, offset: int, length: int, *, only_etag: str = "",
                    chunk_size: int = 1 << 20) -> list[bytes]:
        return split_chunks(self.get(key, offset, length, only_etag=only_etag).data, offset,
                            chunk_size)


def test_sequential_reads_grow_the_pieces_and_fetch_ahead() -> None:
    size = 256 << 20
    bucket = FakeBucket()
    with ThreadPoolExecutor(8) as pool:
        reader = Reader(bucket, pool)  # type: ignore[arg-type]
        for offset in range(0, size, 128 << 10):
            assert len(reader.read("k", "", 128 << 10, offset, size)) == 128 << 10
            held = sum(p.end - p.start for p in reader._pieces)
            assert held <= (MAXIMUM_AHEAD + 2) * MAXIMUM_PIECE, "memory per file bounded"
    assert sum(length for _, length in bucket.reads) == size, "every byte fetched once"
    assert len(bucket.reads) <= size // MAXIMUM_PIECE + 4, "few requests (as boto3 makes)"
    # Fetch-ahead runs in threads, so the order of requests varies; the pieces must tile
    # the object exactly, with no gap and no overlap.
    pieces = sorted(bucket.reads)
    assert all(offset + length == following for (offset, length), (following, _)
               in itertools.pairwise(pieces))


def test_the_pieces_of_a_sequential_read_line_up_with_the_kernel_s_reads() -> None:
    """After the open's 64 KiB, the pieces soon end on MiB multiples, so the kernel's
    aligned 1 MiB reads are each answered with one held chunk: no copy, no join."""
    size = 40 << 20
    bucket = FakeBucket()
    with ThreadPoolExecutor(4) as pool:
        reader = Reader(bucket, pool)  # type: ignore[arg-type]
        reader.prime("k", "", bytes(64 << 10), size)
        answers = [reader.read("k", "", 1 << 20, offset, size)
                   for offset in range(0, size, 1 << 20)]
    assert all(len(answer) == 1 << 20 for answer in answers)
    pieces = sorted(bucket.reads)
    assert pieces[0][0] == 64 << 10, "the open's bytes are not fetched again"
    assert all((offset + length) % (1 << 20) == 0 for offset, length in pieces)
    held = {id(chunk) for piece in reader._pieces for chunk in piece.data.result()}
    assert id(answers[-1]) in held, "an aligned read is a held chunk itself"


def test_with_the_read_cache_a_file_read_from_its_start_grows_from_its_first_block(
        tmp_path: Path) -> None:
    """The lookup's 64 KiB end inside a block, so they are not held; the first piece is
    then as big as the piece that would have followed them (no GET of one lone block)."""
    size = 40 << 20
    bucket = FakeBucket()
    cache = ReadCache(tmp_path / "blocks", 1 << 30)
    with ThreadPoolExecutor(4) as pool:
        reader = Reader(bucket, pool, cache=cache)  # type: ignore[arg-type]
        reader.prime("k", "e", bytes(64 << 10), size)
        for offset in range(0, size, 1 << 20):
            assert len(reader.read("k", "e", 1 << 20, offset, size)) == 1 << 20
    cache.close()
    assert sorted(bucket.reads)[:2] == [(0, 1 << 20), (1 << 20, 4 << 20)]


def test_small_and_random_reads_fetch_little() -> None:
    bucket = FakeBucket()
    reader = Reader(bucket)  # type: ignore[arg-type]
    assert reader.read("small", "", 128 << 10, 0, 4096) == bytes(4096)
    assert bucket.reads == [(0, 4096)], "a small file is one GET"
    bucket.reads.clear()
    for offset in (50 << 20, 10 << 20, 90 << 20):
        reader.read("big", "", 4096, offset, 100 << 20)
    assert all(length == 256 << 10 for _, length in bucket.reads), "a seek starts small"


CONTENT = bytes(range(251)) * 2900  # 711 KiB: pieces of 256 KiB, then 1 MiB


@settings(max_examples=100, deadline=None)
@given(reads=st.lists(st.tuples(st.integers(0, len(CONTENT) + 10), st.integers(1, 300_000)),
                      min_size=1, max_size=20),
       prime=st.sampled_from([0, 1, 65_536, len(CONTENT)]))
def test_reads_across_chunks_and_pieces_give_the_objects_bytes(
        reads: list[tuple[int, int]], prime: int) -> None:
    """Pieces are held in chunks (of an odd size here): a read within one chunk, across
    chunks, across pieces (the open's, then growing ones fetched ahead), or past the end,
    gets exactly the object's bytes."""
    store = MemStore()
    etag = store.put("k", CONTENT)
    with ThreadPoolExecutor(4) as pool:
        reader = Reader(store, pool, chunk_size=65_537)
        if prime:
            reader.prime("k", etag, CONTENT[:prime], len(CONTENT))
        for offset, size in reads:
            got = reader.read("k", etag, size, offset, len(CONTENT))
            assert got == CONTENT[offset:offset + size], (offset, size)
        reader.forget()


def test_a_cache_of_100000_entries_stays_small() -> None:
    cache = MetaCache(ttl=60, negative_ttl=5, maxsize=100_000)
    attrs = Attributes(stat.S_IFREG | 0o644, 100, 0, 0, 1, 1, 1)
    tracemalloc.start()
    try:
        for folder in range(100):
            children = {f"file-{index:05d}": Node(attrs) for index in range(1000)}
            cache.learn_listing(f"/folder-{folder:03d}", children, cache.generation())
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cache.get("/folder-099/file-00999") is not None
    # Measured: about 45 MiB traced, 55 MB of RSS (one copy per entry, shared by the
    # entries map and its listing).
    assert current < 100 * 1024 * 1024, f"{current / 2**20:.0f} MiB for 100,000 entries"


def test_the_kernel_keeps_its_page_cache_only_while_the_object_is_unchanged(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, clock: FakeClock) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="data", Body=b"version 1")
    fs = make_fs()

    def opened_keeps_cache() -> bool:
        fh = fs.open("/data", os.O_RDONLY)
        try:
            return fs.page_cache(fh).keep
        finally:
            fs.release(fh)

    assert not opened_keeps_cache(), "first open: nothing cached to keep"
    assert opened_keeps_cache(), "same ETag: the pages stay"
    s3_client.put_object(Bucket=bucket_name, Key="data", Body=b"version 2")
    assert not opened_keeps_cache(), "changed by another machine: pages dropped at once"
    assert opened_keeps_cache()
    write_file(fs, "/data", b"version 3")
    assert not opened_keeps_cache(), "written through the mount: pages dropped"


def test_a_first_page_inside_a_big_sub_folder_still_lists_everything(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests) -> None:
    inside = [f"top/a/f{index:04d}" for index in range(1001)]
    populate(s3_client, bucket_name, [*inside, "top/b/x", "top/z"], b"k")
    fs = make_fs()
    fs.getattr("/top")
    requests.take()
    assert [name for name, _ in fs.readdir("/top")] == [".", "..", "a", "b", "z"]
    # The first page (the lookup's, kept), then the rest delimited; "a" and "b" were not
    # listed whole by the first page, so they may have a marker: HEADed.
    assert requests.take() == {"ListObjectsV2": 1, "HeadObject": 2}
    assert [name for name, _ in fs.readdir("/top/b")] == [".", "..", "x"]
    assert len(fs.readdir("/top/a")) == 2 + 1001
    assert requests.take() == {"ListObjectsV2": 1 + 2}, "each listed on its own"


def test_fsyncdir_sends_queued_deletes_and_reports_their_failure(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests,
        monkeypatch: pytest.MonkeyPatch) -> None:
    populate(s3_client, bucket_name, ["d/a", "d/b", "d/c"], b"x")
    fs = make_fs(delete_delay=600)
    fs.readdir("/d")
    fs.unlink("/d/a")
    requests.take()
    fs.fsyncdir("/d")
    assert requests.take() == {"DeleteObjects": 1}
    assert s3_client.list_objects_v2(Bucket=bucket_name, Prefix="d/a").get("KeyCount") == 0

    def refuse(self: Bucket, keys: object) -> None:
        raise QarnotGenericException("AccessDenied: deletes are refused")

    monkeypatch.setattr(Bucket, "delete_many", refuse)  # the failure, injected
    fs.unlink("/d/b")
    with pytest.raises(QarnotGenericException):
        fs.fsyncdir("/d")
    # Nothing is lost: the refused delete leaves the object where it was.
    assert s3_client.get_object(Bucket=bucket_name, Key="d/b")["Body"].read() == b"x"


def test_a_delete_delay_of_zero_deletes_before_unlink_returns(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests) -> None:
    populate(s3_client, bucket_name, ["d/a", "d/b"], b"x")
    fs = make_fs(delete_delay=0)
    fs.getattr("/d/a")
    requests.take()
    fs.unlink("/d/a")
    assert requests.take()["DeleteObject"] == 1
    assert s3_client.list_objects_v2(Bucket=bucket_name, Prefix="d/a").get("KeyCount") == 0


def read_whole(fs: Any, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        size = fs.getattr(path, fh).size
        return fs.read(fh, size + 1, 0)
    finally:
        fs.release(fh)


def test_a_cold_small_file_costs_one_get(make_fs: MakeFs, s3_client: S3Client,
                                         bucket_name: str, requests: Requests) -> None:
    bodies = {f"data/f{index:02d}": os.urandom(4096) for index in range(20)}
    for key, data in bodies.items():
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=data,
                             Metadata={"mode": str(stat.S_IFREG | 0o640)})
    fs = make_fs()
    requests.take()
    assert fs.getattr("/data").is_dir  # what the kernel looks up first
    for key, data in bodies.items():
        assert fs.getattr(f"/{key}").mode == stat.S_IFREG | 0o640, "exact lookups"
        assert read_whole(fs, f"/{key}") == data
    fs.namespace.ahead.settle()
    assert requests.take() == {"GetObject": 21, "ListObjectsV2": 2}, \
        "by default a lookup is a GET of the first bytes (the folder's, missing, then a LIST \
of its keys), and the open that follows sends nothing; the files read in order are \
fetched ahead (siblings.py), once each, after one LIST of the folder's names"

    fs = make_fs(lookups="listed")
    requests.take()
    assert fs.getattr("/data").is_dir
    for key, data in bodies.items():
        fs.getattr(f"/{key}")
        assert read_whole(fs, f"/{key}") == data
    fs.namespace.ahead.settle()
    assert requests.take() == {"ListObjectsV2": 1, "GetObject": 20}, \
        "listed lookups: one LIST for the folder (its names serve the fetches ahead), then \
one GET per file"
    assert fs.getattr("/data/f00").mode == stat.S_IFREG | 0o640, "the GET told the mode"


def test_an_open_sees_the_object_as_it_is_then(make_fs: MakeFs, s3_client: S3Client,
                                               bucket_name: str, requests: Requests) -> None:
    """Close-to-open: whatever the cache holds, an open reads all of the object as it is
    at that moment (never the new one cut at the old size), at no extra request."""
    s3_client.put_object(Bucket=bucket_name, Key="f", Body=b"old")
    fs = make_fs()  # cache_ttl 60 s: the cached size stays "3" all along
    assert read_whole(fs, "/f") == b"old"
    requests.take()
    fh = fs.open("/f", os.O_RDONLY)
    assert fs.page_cache(fh).keep, "unchanged: the kernel keeps the pages it has"
    fs.release(fh)
    assert [params.get("IfNoneMatch") for name, params in requests.seen] \
        == [s3_client.head_object(Bucket=bucket_name, Key="f")["ETag"]], \
        "and the open cost one conditional GET (a 304, no bytes)"
    requests.take()
    longer = os.urandom(300_000)
    s3_client.put_object(Bucket=bucket_name, Key="f", Body=longer)
    fh = fs.open("/f", os.O_RDONLY)
    assert fs.page_cache(fh).bypass and not fs.page_cache(fh).keep, \
        "the kernel's size is stale: its page cache must not cut the reads"
    assert fs.read(fh, len(longer) + 1, 0) == longer
    assert fs.getattr("/f", fh).size == len(longer)
    fs.release(fh)
    assert fs.getattr("/f").size == len(longer), "stat learns the new size"
    s3_client.put_object(Bucket=bucket_name, Key="f", Body=b"new")
    assert read_whole(fs, "/f") == b"new"
    s3_client.delete_object(Bucket=bucket_name, Key="f")
    with pytest.raises(FsError) as deleted:
        fs.open("/f", os.O_RDONLY)
    assert deleted.value.errno == errno.ENOENT


def test_an_object_replaced_while_read_is_never_mixed(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    first, second = b"a" * (3 << 20), b"b" * (3 << 20)
    s3_client.put_object(Bucket=bucket_name, Key="big", Body=first)
    fs = make_fs(read_workers=1)
    fh = fs.open("/big", os.O_RDONLY)
    assert fs.read(fh, 4096, 0) == b"a" * 4096
    s3_client.put_object(Bucket=bucket_name, Key="big", Body=second)
    with pytest.raises(PreconditionFailedException) as stale:
        for offset in range(4096, len(first), 128 << 10):
            assert fs.read(fh, 128 << 10, offset) == b"a" * (128 << 10), \
                "bytes of the replacement read through a handle of the original"
    assert errno_for(stale.value) == errno.ESTALE
    fs.release(fh)
    assert read_whole(fs, "/big") == second, "the next open reads the new object"


def test_a_lookup_s_first_bytes_stand_for_the_object_one_second(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests,
        clock: FakeClock) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="f", Body=b"v1")
    fs = make_fs()
    assert fs.getattr("/f").size == 2
    requests.take()
    assert read_whole(fs, "/f") == b"v1"
    assert requests.take() == {}, "the open right after the lookup used its GET"
    clock.advance(fs.options.cache_ttl + 1)
    assert fs.getattr("/f").size == 2
    clock.advance(2)  # the lookup's bytes are no longer fresh
    s3_client.put_object(Bucket=bucket_name, Key="f", Body=b"v2, longer")
    requests.take()
    assert read_whole(fs, "/f") == b"v2, longer"
    assert requests.take() == {"GetObject": 1}, "checked again (conditionally)"


def test_a_lookup_s_first_bytes_stand_for_the_open_of_a_big_file(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests) -> None:
    body = os.urandom(3 << 20)
    s3_client.put_object(Bucket=bucket_name, Key="big", Body=body)
    fs = make_fs(read_cache_size=0)
    assert fs.getattr("/big").size == len(body)
    requests.take()
    fh = fs.open("/big", os.O_RDONLY)
    assert requests.take() == {}, "the open right after the lookup used its GET"
    try:
        assert fs.read(fh, 1 << 20, 0) == body[:1 << 20]
        assert fs.read(fh, 2 << 20, 1 << 20) == body[1 << 20:]
    finally:
        fs.release(fh)
    assert requests.take()["GetObject"] <= 3


def test_a_lookup_by_name_asks_the_folder_rule_only_when_the_key_is_missing(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="x", Body=b"file x")
    s3_client.put_object(Bucket=bucket_name, Key="x/y", Body=b"file y")
    s3_client.put_object(Bucket=bucket_name, Key="f", Body=b"file f")
    s3_client.put_object(Bucket=bucket_name, Key="d/z", Body=b"file z")
    fs = make_fs()
    requests.take()
    assert not fs.getattr("/f").is_dir
    assert requests.take() == {"GetObject": 1}, "a file: one GET"
    assert fs.getattr("/d").is_dir
    assert requests.take() == {"GetObject": 1, "ListObjectsV2": 1}, "a folder: GET, then LIST"
    assert not fs.getattr("/x").is_dir, "a file and a folder by name: the file, by name"
    listed = {name: attrs.is_dir for name, attrs in fs.readdir("/")}
    assert listed["x"], "the listing shows the folder, which wins"

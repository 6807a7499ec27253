"""Units of the filesystem core that need no server: the key rule, s3fs-compatible
attributes, the errno table and the metadata cache."""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import sqlite3
import stat
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fakeclock import FakeClock

from qarnotfs.exceptions import (
    MissingBucketException,
    MissingObjectException,
    QarnotGenericException,
    StorageTimeout,
    StorageUnreachableException,
    UnauthorizedException,
)
from qarnotfs.fs.attrs import (
    Attributes,
    Defaults,
    dir_attributes,
    encode_metadata,
    format_time,
    is_symlink,
    may_be_symlink,
    object_attributes,
    parse_time,
)
from qarnotfs.fs.collector import freeze_startup_objects
from qarnotfs.fs.errors import FsError, errno_for
from qarnotfs.fs.journal import _SCHEMA, JOURNAL_NAME, Journal, read_entries
from qarnotfs.fs.keys import KeyMapper, is_within, normalize, parent_of, split_path
from qarnotfs.fs.metacache import MetaCache, Node
from qarnotfs.objects import Listing, ObjectInfo

WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
DEFAULTS = Defaults(uid=1000, gid=100, umask=0o022, time_ns=7)


def info(key: str, size: int = 1, metadata: dict[str, str] | None = None) -> ObjectInfo:
    return ObjectInfo(key=key, size=size, e_tag='"x"', last_modified=WHEN, metadata=metadata)


# -- keys ----------------------------------------------------------------------------------


def test_paths_map_to_keys_under_the_prefix() -> None:
    mapper = KeyMapper("data/set")
    assert mapper.file_key("/a/b.txt") == "data/set/a/b.txt"
    assert mapper.dir_prefix("/a") == "data/set/a/"
    assert mapper.dir_prefix("/") == "data/set/"
    assert mapper.path_of("data/set/a/b") == "/a/b"
    assert mapper.path_of("other/x") is None
    assert mapper.path_of("data/set/a//b") is None
    assert KeyMapper("").file_key("/x") == "x"
    assert normalize("/a/b/") == "/a/b" and normalize("/") == "/"
    assert parent_of("/a/b") == "/a" and parent_of("/a") == "/"
    assert is_within("/a/b", "/a") and is_within("/a", "/a") and not is_within("/ab", "/a")
    assert is_within("/x", "/")


@pytest.mark.parametrize(("path", "code"), [
    ("relative", errno.EINVAL), ("/a/./b", errno.EINVAL), ("/a/../b", errno.EINVAL),
    ("/" + "x" * 256, errno.ENAMETOOLONG), ("/" + "é" * 128, errno.ENAMETOOLONG),
    ("/bad\udcff", errno.EINVAL), ("/nul\0", errno.EINVAL),
])
def test_bad_paths_are_refused(path: str, code: int) -> None:
    with pytest.raises(FsError) as caught:
        split_path(path)
    assert caught.value.errno == code


def test_keys_over_1024_bytes_are_refused() -> None:
    mapper = KeyMapper("p" * 900)
    assert mapper.file_key("/" + "x" * 122)  # 900 + 1 + 122 = 1023
    with pytest.raises(FsError) as caught:
        mapper.dir_prefix("/" + "x" * 123)
    assert caught.value.errno == errno.ENAMETOOLONG
    with pytest.raises(FsError):
        mapper.file_key("/" + "x" * 124)


def test_one_rule_for_keys_that_cannot_be_names(caplog: pytest.LogCaptureFixture) -> None:
    mapper = KeyMapper("")
    listing = Listing(
        objects=[info("d/"), info("d/ok"), info("d/x"), info("d/" + "n" * 256), info("d/.")],
        prefixes=["d/x/", "d//", "d/../", "d/sub/"],
    )
    with caplog.at_level(logging.WARNING):
        entries = mapper.entries("d/", listing)
        mapper.entries("d/", listing)
    assert set(entries.files) == {"ok"}
    assert entries.folders == {"x", "sub"}
    assert entries.marker is not None and entries.marker.key == "d/"
    assert caplog.text.count("'d/x' is hidden") == 1, "warned once per key"
    assert "folder has the same name" in caplog.text
    assert "'d//'" in caplog.text and "'d/../'" in caplog.text


# -- attributes ----------------------------------------------------------------------------


def test_times_as_s3fs_writes_them() -> None:
    assert format_time(1_600_000_000_000_000_000) == "1600000000"
    assert format_time(1_600_000_000_000_000_001) == "1600000000.000000001"
    assert parse_time("1600000000") == 1_600_000_000 * 10**9
    assert parse_time("1600000000.5") == 1_600_000_000_500_000_000
    assert parse_time(" 12.000000001 ") == 12_000_000_001
    assert parse_time("soon") is None and parse_time(None) is None


def test_metadata_round_trip() -> None:
    attrs = Attributes(mode=stat.S_IFREG | 0o640, size=3, uid=5, gid=6, atime_ns=1,
                       mtime_ns=2_000_000_000_5, ctime_ns=3)
    metadata = encode_metadata(attrs)
    assert metadata["mode"] == str(stat.S_IFREG | 0o640)
    decoded = object_attributes(info("k", 3, metadata), DEFAULTS)
    assert decoded == attrs


def test_objects_without_metadata_get_the_defaults() -> None:
    attrs = object_attributes(info("k", 10), DEFAULTS)
    assert attrs.mode == stat.S_IFREG | 0o644
    assert (attrs.uid, attrs.gid, attrs.size) == (1000, 100, 10)
    assert attrs.mtime_ns == int(WHEN.timestamp()) * 10**9 == attrs.ctime_ns
    implicit = dir_attributes(DEFAULTS)
    assert implicit.mode == stat.S_IFDIR | 0o755 and implicit.mtime_ns == 7
    assert Defaults(0, 0, umask=0o077).file_mode == stat.S_IFREG | 0o600


def test_the_type_rule() -> None:
    link_mode = {"mode": str(stat.S_IFLNK | 0o777)}
    assert is_symlink(5, link_mode)
    assert not is_symlink(0, link_mode) and not is_symlink(4096, link_mode)
    assert not is_symlink(5, None) and not is_symlink(5, {"mode": "x"})
    assert object_attributes(info("l", 5, link_mode), DEFAULTS).mode == stat.S_IFREG | 0o777
    small = replace(DEFAULTS, symlink_scan="small")
    assert object_attributes(info("l", 5, link_mode), small).mode == stat.S_IFLNK | 0o777
    marked = replace(info("l", 5, link_mode), e_tag='"0123456789abcdef0123456789abcdef-1"')
    assert object_attributes(marked, DEFAULTS).mode == stat.S_IFLNK | 0o777
    assert may_be_symlink(5, marked.e_tag, "marked") and not may_be_symlink(5, '"x"', "marked")
    assert may_be_symlink(5, '"x"', "small") and not may_be_symlink(4096, marked.e_tag, "small")
    old_s3fs_dir = {"mode": str(stat.S_IFDIR | 0o750)}
    assert object_attributes(info("d", 0, old_s3fs_dir), DEFAULTS).mode == stat.S_IFREG | 0o750
    fifo = {"mode": str(stat.S_IFIFO | 0o600)}
    assert object_attributes(info("f", 0, fifo), DEFAULTS).mode == stat.S_IFREG | 0o600
    marker = dir_attributes(DEFAULTS, info("d/", 0, {"mode": str(stat.S_IFDIR | 0o700)}))
    assert marker.mode == stat.S_IFDIR | 0o700


def test_to_stat() -> None:
    attrs = Attributes(mode=stat.S_IFREG | 0o644, size=1025, uid=1, gid=2,
                       atime_ns=1_500_000_000, mtime_ns=2_000_000_000, ctime_ns=3)
    st = attrs.to_stat()
    assert st["st_size"] == 1025 and st["st_blocks"] == 3 and st["st_nlink"] == 1
    assert st["st_atime"] == 1.5 and st["st_mtime_ns"] == 2_000_000_000
    assert st["st_mode"] == stat.S_IFREG | 0o644


# -- errno table ---------------------------------------------------------------------------


def test_errno_table(caplog: pytest.LogCaptureFixture) -> None:
    assert errno_for(FsError(errno.ENOTEMPTY)) == errno.ENOTEMPTY
    assert errno_for(MissingObjectException("k")) == errno.ENOENT
    assert errno_for(UnauthorizedException("no")) == errno.EACCES
    with caplog.at_level(logging.ERROR):
        assert errno_for(MissingBucketException("gone")) == errno.EIO
    assert "gone" in caplog.text
    assert errno_for(StorageUnreachableException("refused")) == errno.EIO
    assert errno_for(StorageTimeout("read timeout")) == errno.ETIMEDOUT
    assert errno_for(QarnotGenericException("500")) == errno.EIO
    assert errno_for(OSError(errno.ENOSPC, "full")) == errno.ENOSPC
    assert errno_for(ValueError("bug")) == errno.EIO
    assert "ENOTEMPTY" in str(FsError(errno.ENOTEMPTY, "/d"))


# -- cache ---------------------------------------------------------------------------------


def node(size: int = 1) -> Node:
    return Node(Attributes(stat.S_IFREG | 0o644, size, 0, 0, 0, 0, 0), exact=True)


def test_cache_ttls_with_an_injected_clock() -> None:
    clock = FakeClock()
    cache = MetaCache(ttl=10, negative_ttl=2, maxsize=100, timer=clock)
    cache.put("/a", node(3))
    cache.remove("/gone")
    assert cache.get("/a") == node(3) and cache.is_missing("/gone")
    clock.advance(3)
    assert cache.get("/a") is not None and not cache.is_missing("/gone")
    clock.advance(8)
    assert cache.get("/a") is None


def test_cache_patches_listings_with_own_changes() -> None:
    cache = MetaCache(ttl=10, negative_ttl=2, maxsize=100, timer=FakeClock())
    cache.put_listing("/d", {"x": node(1)})
    assert cache.get("/d/x") == node(1)
    cache.put("/d/y", node(2))
    listing = cache.listing("/d")
    assert listing is not None and set(listing) == {"x", "y"}
    cache.remove("/d/x")
    listing = cache.listing("/d")
    assert listing is not None and set(listing) == {"y"} and cache.is_missing("/d/x")
    listing["z"] = node(3)  # callers get copies
    assert set(cache.listing("/d") or {}) == {"y"}
    cache.put_listing("/d/sub", {"deep": node()})
    cache.remove("/d/sub", tree=True)
    assert cache.get("/d/sub/deep") is None and cache.listing("/d/sub") is None
    cache.put("/d/s", Node(dir_attributes(Defaults(uid=0, gid=0))))
    assert cache.subfolders("/d") == 1 and cache.subfolders("/d/s") is None
    cache.forget("/d/y")
    cache.forget("/d/s")
    assert cache.get("/d/y") is None and cache.listing("/d") == {}
    assert cache.subfolders("/d") == 0, "the folder count follows every patch"


def test_cache_disabled_by_a_zero_ttl_and_bounded_by_size() -> None:
    cache = MetaCache(ttl=0, negative_ttl=0, maxsize=100)
    cache.put("/a", node())
    cache.remove("/b")
    assert cache.get("/a") is None and not cache.is_missing("/b")
    small = MetaCache(ttl=10, negative_ttl=10, maxsize=3, timer=FakeClock())
    for index in range(10):
        small.put(f"/f{index}", node())
    assert sum(small.get(f"/f{i}") is not None for i in range(10)) == 3
    assert small.get("/f9") is not None, "least recently used entries go first"


def test_observations_older_than_own_changes_are_dropped() -> None:
    cache = MetaCache(ttl=10, negative_ttl=10, maxsize=100, timer=FakeClock())
    before = cache.generation()
    cache.put("/d/new", node(5))  # our own upload, while a LIST of /d was in flight
    cache.learn_listing("/d", {"old": node()}, before)  # that LIST did not see it
    assert cache.listing("/d") is None, "the stale listing is not cached"
    cache.learn("/d/new", node(1), before)
    assert cache.get("/d/new") == node(5)
    cache.learn_missing("/d/new", before)
    assert not cache.is_missing("/d/new")
    cache.remove("/tree", tree=True)
    cache.learn("/tree/a/b", node(), before)  # a HEAD under a folder we just removed
    assert cache.get("/tree/a/b") is None
    after = cache.generation()
    cache.learn_listing("/d", {"new": node(5)}, after)
    cache.learn("/other", node(2), after)
    assert cache.listing("/d") is not None and cache.get("/other") == node(2)


def test_a_journal_an_older_mount_left_gets_the_extended_attributes_column(
        tmp_path: Path) -> None:
    """A crashed mount of an older version left a journal without ``xattr``: status reads
    it as is, and the next mount adds the column and recovers its entries."""
    old_schema = _SCHEMA.replace("    xattr TEXT NOT NULL DEFAULT '',\n", "")
    assert old_schema != _SCHEMA
    with contextlib.closing(sqlite3.connect(tmp_path / JOURNAL_NAME)) as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO entries (staged, path, key, bucket, prefix, state, mode, uid,"
                   " gid, mtime_ns, updated) VALUES ('s', '/f', 'f', 'b', '', 'dirty', 33188,"
                   " 0, 0, 5, 1.0)")
        db.commit()
    assert [(e.path, e.xattr) for e in read_entries(tmp_path)] == [("/f", "")]
    journal = Journal(tmp_path)
    try:
        [entry] = journal.entries()
        journal.update(entry.id, xattr="%7B%7D")
        assert [e.xattr for e in journal.entries()] == ["%7B%7D"]
    finally:
        journal.close()


def test_the_read_ahead_is_found_by_mountinfo_and_left_alone_where_it_cannot_be_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from qarnotfs.fs import readahead

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        f"90 22 0:41 / {tmp_path}/a\\040b rw - fuse.qarnotfs bucket rw\n"
        f"91 90 0:42 / {tmp_path}/a\\040b rw - fuse.qarnotfs other rw\n")
    monkeypatch.setattr(readahead, "MOUNTINFO", mountinfo)
    monkeypatch.setattr(readahead, "BDI", tmp_path / "bdi")
    assert readahead.mount_device(f"{tmp_path}/a b") == "0:42", "the top mount"
    assert readahead.mount_device(f"{tmp_path}/elsewhere") is None
    (tmp_path / "bdi" / "0:42").mkdir(parents=True)
    with caplog.at_level(logging.INFO):
        assert readahead.widen_read_ahead(f"{tmp_path}/a b", 1 << 20)
        assert (tmp_path / "bdi" / "0:42" / "read_ahead_kb").read_text() == "1024\n"
        monkeypatch.setattr(Path, "write_text", _refuse_write)  # sysfs, to a user
        assert not readahead.widen_read_ahead(f"{tmp_path}/a b", 1 << 20)
    assert "read-ahead stays the kernel's" in caplog.text


def _refuse_write(self: Path, *args: object, **kwargs: object) -> int:
    raise PermissionError(errno.EACCES, "Permission denied", str(self))


class _Later:
    """An executor that runs what it is given when told (the test decides when)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Any, tuple[Any, ...]]] = []

    def submit(self, function: Any, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.waiting.append((lambda: future.set_result(function(*args)), ()))
        return future

    def run(self) -> None:
        while self.waiting:
            task, _ = self.waiting.pop(0)
            task()


def test_files_are_fetched_ahead_only_while_opened_in_order() -> None:
    from qarnotfs.fs.siblings import MAXIMUM_WINDOW, SiblingReadAhead

    files = {f"f{index:02d}": 100 for index in range(40)}
    files["f05"] = 1 << 30  # too big to fetch ahead
    listed: list[str] = []
    fetched: list[str] = []
    pool = _Later()

    def list_files(folder: str) -> dict[str, int]:
        listed.append(folder)
        return files

    now = [0.0]
    ahead = SiblingReadAhead(pool, 65536, list_files, fetched.append,  # type: ignore[arg-type]
                             clock=lambda: now[0])

    def open_and_run(name: str) -> list[str]:
        fetched.clear()
        ahead.opened(f"/d/{name}")
        pool.run()
        return [path.rsplit("/", 1)[1] for path in fetched]

    assert open_and_run("f00") == [] and listed == []
    assert open_and_run("f01") == [] and listed == ["/d"], "the names, once the 2nd opens"
    assert open_and_run("f02") == ["f03", "f04"]
    assert open_and_run("f03") == ["f06", "f07"], "f04 was sent, f05 is too big"
    assert open_and_run("f04") == [f"f{index:02d}" for index in range(8, 13)]
    windows = [len(open_and_run(f"f{index:02d}")) for index in range(5, 12)]
    assert max(windows) <= MAXIMUM_WINDOW
    assert open_and_run("f30") == [], "out of order: stopped"
    assert open_and_run("f31") == ["f32", "f33"], "in order again: started again"
    assert listed == ["/d"], "the names are asked once"
    now[0] += 61
    assert open_and_run("f32") == [] and listed == ["/d", "/d"], "and again after a minute"
    assert open_and_run("f33") == ["f34", "f35", "f36", "f37"], "the order went on"
    ahead.opened("/e/x")
    ahead.opened("/e/y")
    pool.run()
    assert listed == ["/d", "/d", "/e"]


def test_start_up_objects_are_frozen_and_later_garbage_is_still_collected() -> None:
    class Cycle:
        other: Cycle

    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 1000  # the interpreter and qarnotfs
        made = Cycle()
        made.other = made
        del made
        assert gc.collect() >= 1, "a cycle made after the freeze is collected"
    finally:
        gc.unfreeze()

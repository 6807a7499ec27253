"""The filesystem core over a real S3 server: each semantic, checked in the core, in the
bucket (raw client) and after a "remount" (a fresh Filesystem on the same bucket)."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fs_calls import write_file

from qarnotfs.exceptions import QarnotGenericException
from qarnotfs.fs.core import RENAME_EXCHANGE, RENAME_NOREPLACE, Filesystem
from qarnotfs.fs.errors import FsError
from qarnotfs.fs.staging import staged_copies

if TYPE_CHECKING:
    from fs_helpers import FakeClock, MakeFs
    from mypy_boto3_s3 import S3Client

    from qarnotfs.bucket import Bucket

pytest_plugins = ("fs_helpers",)

CREATE = os.O_WRONLY | os.O_CREAT


def recorded(calls: list[str], name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """``original``, noting ``name`` in ``calls`` at each call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return original(*args, **kwargs)

    return call


def read_file(fs: Filesystem, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        chunks = []
        offset = 0
        while chunk := fs.read(fh, 65536, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        fs.release(fh)


def names(fs: Filesystem, path: str) -> list[str]:
    return [name for name, _ in fs.readdir(path) if name not in (".", "..")]


def keys(s3_client: S3Client, bucket_name: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket_name)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def body(s3_client: S3Client, bucket_name: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket_name, Key=key)["Body"].read()


def metadata(s3_client: S3Client, bucket_name: str, key: str) -> dict[str, str]:
    return s3_client.head_object(Bucket=bucket_name, Key=key)["Metadata"]


def fails_with(code: int, call: object, *args: object) -> None:
    with pytest.raises(FsError) as caught:
        call(*args)  # type: ignore[operator]
    assert caught.value.errno == code, f"{errno.errorcode[caught.value.errno]} != " \
        f"{errno.errorcode[code]}"


# -- files ---------------------------------------------------------------------------------


def test_create_write_close_uploads_with_metadata(make_fs: MakeFs, s3_client: S3Client,
                                                  bucket_name: str) -> None:
    fs = make_fs()
    fh = fs.create("/hello.txt", stat.S_IFREG | 0o640, CREATE)
    assert fs.write(fh, b"hello ", 0) == 6
    assert fs.write(fh, b"world", 6) == 5
    assert keys(s3_client, bucket_name) == [], "nothing is uploaded before close"
    assert fs.getattr("/hello.txt").size == 11
    assert fs.pending_uploads() == ["/hello.txt"]
    fs.flush(fh)
    fs.release(fh)
    assert fs.pending_uploads() == []
    assert body(s3_client, bucket_name, "hello.txt") == b"hello world"
    meta = metadata(s3_client, bucket_name, "hello.txt")
    assert int(meta["mode"]) == stat.S_IFREG | 0o640
    assert int(meta["uid"]) == os.getuid() and int(meta["gid"]) == os.getgid()
    mtime = fs.getattr("/hello.txt").mtime_ns
    assert meta["mtime"] == f"{mtime // 10**9}.{mtime % 10**9:09d}"
    again = make_fs()
    assert again.getattr("/hello.txt").size == 11, "a listing tells the size"
    assert read_file(again, "/hello.txt") == b"hello world"
    attrs = again.getattr("/hello.txt")
    assert (attrs.mode, attrs.size, attrs.mtime_ns) == (stat.S_IFREG | 0o640, 11, mtime), \
        "the open's GET told the metadata"


def test_exclusive_create_without_writes_leaves_an_empty_object(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    fs = make_fs()
    fh = fs.create("/empty", stat.S_IFREG | 0o644, CREATE | os.O_EXCL)
    fs.flush(fh)
    fs.release(fh)
    assert body(s3_client, bucket_name, "empty") == b""
    fails_with(errno.EEXIST, fs.create, "/empty", 0o644, CREATE | os.O_EXCL)
    assert make_fs().getattr("/empty").size == 0


def test_open_modes_trunc_append_rdwr(make_fs: MakeFs, s3_client: S3Client,
                                      bucket_name: str) -> None:
    fs = make_fs()
    write_file(fs, "/f", b"0123456789")
    fh = fs.open("/f", os.O_RDWR)
    assert fs.read(fh, 4, 2) == b"2345"
    fs.write(fh, b"AB", 8)
    fs.write(fh, b"XY", 12)  # past the end: a hole of zeros
    assert fs.read(fh, 100, 0) == b"01234567AB\0\0XY"
    fs.release(fh)
    assert body(s3_client, bucket_name, "f") == b"01234567AB\0\0XY"
    fh = fs.open("/f", os.O_WRONLY | os.O_APPEND)
    fs.write(fh, b"++", 0)  # O_APPEND writes at the end whatever the offset
    fs.release(fh)
    assert body(s3_client, bucket_name, "f") == b"01234567AB\0\0XY++"
    fh = fs.open("/f", os.O_WRONLY | os.O_TRUNC)
    assert fs.getattr("/f").size == 0
    fs.write(fh, b"new", 0)
    fs.release(fh)
    assert read_file(make_fs(), "/f") == b"new"


def test_read_only_open_reads_ranges_from_the_bucket(make_fs: MakeFs, s3_client: S3Client,
                                                     bucket_name: str) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    s3_client.put_object(Bucket=bucket_name, Key="big", Body=data)
    fs = make_fs()
    fh = fs.open("/big", os.O_RDONLY)
    assert fs.read(fh, 100, 5_000_000) == b""
    assert fs.read(fh, 10, len(data) - 5) == data[-5:]
    assert fs.read(fh, 4096, 1000) == data[1000:5096]
    out = bytearray()
    while chunk := fs.read(fh, 128 * 1024, len(out)):
        out += chunk
    fs.release(fh)
    assert bytes(out) == data
    with pytest.raises(FsError) as caught:
        fs.write(fh, b"x", 0)
    assert caught.value.errno == errno.EBADF
    fh = fs.open("/big", os.O_RDONLY)
    fails_with(errno.EBADF, fs.write, fh, b"x", 0)
    fs.release(fh)


def test_truncate_by_path_and_by_handle(make_fs: MakeFs, s3_client: S3Client,
                                        bucket_name: str) -> None:
    fs = make_fs()
    write_file(fs, "/t", b"abcdef")
    fs.truncate("/t", 3)
    assert fs.getattr("/t").size == 3
    assert body(s3_client, bucket_name, "t") == b"abc"
    fs.truncate("/t", 5)
    assert body(s3_client, bucket_name, "t") == b"abc\0\0"
    fh = fs.open("/t", os.O_RDWR)
    fs.truncate("/t", 1, fh)
    assert fs.getattr("/t").size == 1 and fs.getattr("/t", fh).size == 1
    fs.truncate("/t", 2)  # by path while open: seen through the handle at once
    assert fs.getattr("/t", fh).size == 2
    fs.release(fh)
    assert body(s3_client, bucket_name, "t") == b"a\0"
    fails_with(errno.EINVAL, fs.truncate, "/t", -1)
    fs.mkdir("/dir", 0o755)
    fails_with(errno.EISDIR, fs.truncate, "/dir", 0)
    fails_with(errno.ENOENT, fs.truncate, "/missing", 0)


def test_unlink(make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    fs = make_fs()
    write_file(fs, "/gone", b"x")
    fs.unlink("/gone")  # the delete is batched (deletes.py): sent within delete_delay
    deadline = time.monotonic() + 10
    while keys(s3_client, bucket_name) and time.monotonic() < deadline:
        time.sleep(0.01)  # a poll interval, the deadline bounds it
    assert keys(s3_client, bucket_name) == []
    fails_with(errno.ENOENT, fs.getattr, "/gone")
    fails_with(errno.ENOENT, fs.unlink, "/gone")
    fs.mkdir("/d", 0o755)
    fails_with(errno.EISDIR, fs.unlink, "/d")


def test_unlinked_open_file_stays_usable_and_is_never_uploaded(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    fs = make_fs(delete_delay=0)  # unlinks delete at once: the bucket is checked below
    write_file(fs, "/reader", b"still here")
    reader = fs.open("/reader", os.O_RDONLY)
    writer = fs.create("/writer", stat.S_IFREG | 0o644, CREATE)
    fs.write(writer, b"draft", 0)
    fs.unlink("/reader")
    fs.unlink("/writer")
    assert keys(s3_client, bucket_name) == []
    assert fs.read(reader, 100, 0) == b"still here"
    assert fs.getattr("/", None).is_dir and fs.getattr("", reader).nlink == 0
    fs.write(writer, b" more", 5)
    assert fs.read(writer, 100, 0) == b"draft more"
    fs.flush(writer)
    fs.release(writer)
    fs.release(reader)
    assert keys(s3_client, bucket_name) == []
    assert names(fs, "/") == []
    # The name is free again, for a new file.
    write_file(fs, "/writer", b"new")
    assert body(s3_client, bucket_name, "writer") == b"new"


def test_two_handles_share_the_staged_bytes(make_fs: MakeFs, s3_client: S3Client,
                                            bucket_name: str) -> None:
    fs = make_fs()
    write_file(fs, "/shared", b"aaaa")
    reader = fs.open("/shared", os.O_RDONLY)
    assert fs.read(reader, 4, 0) == b"aaaa"
    writer = fs.open("/shared", os.O_RDWR)
    fs.write(writer, b"bb", 1)
    assert fs.read(reader, 4, 0) == b"abba"
    fs.flush(reader)  # any close(2) uploads what is dirty
    assert body(s3_client, bucket_name, "shared") == b"abba"
    fs.release(writer)
    fs.release(reader)


# -- libfuse's ".fuse_hidden" names for unlinked open files ---------------------------------
# With hard_remove off, libfuse unlinks an open file by renaming it to a hidden name in its
# folder (after a getattr that must be ENOENT), stats it by that name, and unlinks that name
# after the last close (lib/fuse.c: hide_node, fuse_do_release).

HIDDEN = "/d/.fuse_hidden0000000200000001"


@pytest.fixture
def sent(bucket: Bucket) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every S3 call of the filesystems' client: (operation, parameters)."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.append((model.name, params))

    events = bucket.connection.s3.meta.events
    events.register("before-parameter-build.s3", record)
    yield calls
    events.unregister("before-parameter-build.s3", record)
    assert not [call for call in calls if ".fuse_hidden" in repr(call)], \
        "a .fuse_hidden name reached the bucket"


def test_rename_to_a_hidden_name_unlinks_an_open_file_and_keeps_it_local(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        sent: list[tuple[str, dict[str, Any]]]) -> None:
    fs = make_fs()
    fs.mkdir("/d", 0o755)
    write_file(fs, "/d/f", b"content")
    fh = fs.open("/d/f", os.O_RDWR)
    fs.fsyncdir("/d")
    sent.clear()
    fails_with(errno.ENOENT, fs.getattr, HIDDEN)  # libfuse's probe of the name
    assert sent == [], "a hidden name cannot be in the bucket: no request"
    fs.rename("/d/f", HIDDEN)
    fs.fsyncdir("/d")  # the delete is queued, as unlink queues it
    assert keys(s3_client, bucket_name) == ["d/"]
    assert names(fs, "/d") == []
    fails_with(errno.ENOENT, fs.getattr, "/d/f")
    sent.clear()
    attributes = fs.getattr(HIDDEN)
    assert (attributes.size, attributes.nlink, stat.S_ISREG(attributes.mode)) == (7, 0, True)
    fs.write(fh, b"C", 0)
    fs.truncate(HIDDEN, 5, fh)
    assert fs.read(fh, 100, 0) == b"Conte"
    assert fs.getattr(HIDDEN).size == 5
    fs.flush(fh)
    fs.fsync(fh, False)
    assert sent == [], "nothing of it is uploaded, copied or looked up"
    fs.rmdir("/d")  # the hidden file does not count
    assert keys(s3_client, bucket_name) == []
    assert fs.read(fh, 100, 0) == b"Conte", "its handle still reads"
    sent.clear()
    fs.release(fh)
    # Until libfuse unlinks the hidden name (right after the last release), the kernel may
    # still open the inode by it (an editor's atomic save racing a reader).
    assert fs.getattr(HIDDEN).nlink == 0
    fs.unlink(HIDDEN)  # libfuse's, after the last release
    ghost = fs.open(HIDDEN, os.O_RDONLY)  # a lookup made before may still open it
    assert fs.read(ghost, 100, 0) == b"Conte" and fs.getattr(HIDDEN).nlink == 0
    fs.release(ghost)
    assert sent == []
    staging = fs.staging_root
    fs.shutdown()  # (or 30 s, or 64 newer ones) the ghost goes
    assert staged_copies(staging) == []
    assert names(make_fs(), "/") == []


def test_unlink_of_a_hidden_name_drops_the_file_without_a_request(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        sent: list[tuple[str, dict[str, Any]]]) -> None:
    fs = make_fs()
    fs.mkdir("/d", 0o755)
    fh = fs.create("/d/new", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"draft", 0)
    fs.rename("/d/new", HIDDEN)
    sent.clear()
    fs.unlink(HIDDEN)  # libfuse unlinks hidden names left at unmount
    assert sent == []
    fails_with(errno.ENOENT, fs.getattr, HIDDEN)
    assert fs.read(fh, 100, 0) == b"draft"
    fs.release(fh)
    assert keys(s3_client, bucket_name) == ["d/"]
    assert fs.pending_uploads() == [] and staged_copies(fs.staging_root) == []


def test_rename_onto_an_open_file_hides_it_first(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        sent: list[tuple[str, dict[str, Any]]]) -> None:
    """libfuse's order when the target is open: rename(target, hidden), then the rename."""
    fs = make_fs()
    fs.mkdir("/d", 0o755)
    write_file(fs, "/d/new", b"new")
    write_file(fs, "/d/target", b"old")
    fh = fs.open("/d/target", os.O_RDONLY)
    fs.rename("/d/target", HIDDEN)
    fs.rename("/d/new", "/d/target")
    assert keys(s3_client, bucket_name) == ["d/", "d/target"]
    assert body(s3_client, bucket_name, "d/target") == b"new"
    assert fs.read(fh, 100, 0) == b"old" and fs.getattr(HIDDEN).nlink == 0
    assert names(fs, "/d") == ["target"]
    fs.rename("/d", "/e")  # the hidden file moves with its folder, as in libfuse's tree
    moved = "/e/" + HIDDEN.rsplit("/", 1)[1]
    assert fs.getattr(moved).size == 3 and names(fs, "/e") == ["target"]
    fs.release(fh)
    fs.unlink(moved)  # libfuse's, after the last release
    assert fs.getattr(moved).nlink == 0, "openable a little longer by its hidden name"
    assert names(fs, "/e") == ["target"]
    assert keys(s3_client, bucket_name) == ["e/", "e/target"]


def test_names_starting_with_fuse_hidden_are_reserved(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Users cannot make them (EINVAL, nothing lost); keys others made are not shown."""
    s3_client.put_object(Bucket=bucket_name, Key="o/.fuse_hidden_s3fs", Body=b"theirs")
    fs = make_fs()
    fs.mkdir("/d", 0o755)
    write_file(fs, "/d/kept", b"kept")
    fails_with(errno.EINVAL, fs.create, "/d/.fuse_hiddenmine", stat.S_IFREG | 0o644, CREATE)
    fails_with(errno.EINVAL, fs.mkdir, "/d/.fuse_hidden", 0o755)
    fails_with(errno.EINVAL, fs.symlink, "kept", "/d/.fuse_hiddenlink")
    fails_with(errno.EINVAL, fs.rename, "/d/kept", HIDDEN)  # not open: a user's rename
    fh = fs.open("/d/kept", os.O_RDONLY)
    fails_with(errno.EINVAL, fs.rename, "/d/kept", "/.fuse_hidden0000000200000001")
    fs.rename("/d/kept", HIDDEN)
    fails_with(errno.EINVAL, fs.rename, HIDDEN, "/d/back")  # no name back once unlinked
    fs.release(fh)
    fs.unlink(HIDDEN)  # libfuse's, after the last release
    fails_with(errno.ENOENT, fs.rename, HIDDEN, "/d/back")
    fs.fsyncdir("/d")
    assert keys(s3_client, bucket_name) == ["d/", "o/.fuse_hidden_s3fs"]
    with caplog.at_level(logging.WARNING, logger="qarnotfs.fs.keys"):
        assert names(fs, "/o") == []
    assert "'o/.fuse_hidden_s3fs' is hidden from the mount" in caplog.text
    fails_with(errno.ENOENT, fs.getattr, "/o/.fuse_hidden_s3fs")
    fails_with(errno.ENOTEMPTY, fs.rmdir, "/o")  # hidden keys are never lost by rmdir
    assert keys(s3_client, bucket_name) == ["d/", "o/.fuse_hidden_s3fs"]


# -- folders -------------------------------------------------------------------------------


def test_mkdir_rmdir_and_markers(make_fs: MakeFs, s3_client: S3Client,
                                 bucket_name: str) -> None:
    fs = make_fs()
    fs.mkdir("/a", 0o750)
    fs.mkdir("/a/b", 0o755)
    assert keys(s3_client, bucket_name) == ["a/", "a/b/"]
    assert int(metadata(s3_client, bucket_name, "a/")["mode"]) == stat.S_IFDIR | 0o750
    fails_with(errno.EEXIST, fs.mkdir, "/a", 0o755)
    fails_with(errno.ENOENT, fs.mkdir, "/nope/x", 0o755)
    write_file(fs, "/file", b"")
    fails_with(errno.ENOTDIR, fs.mkdir, "/file/x", 0o755)
    fails_with(errno.ENOTEMPTY, fs.rmdir, "/a")
    fails_with(errno.ENOTDIR, fs.rmdir, "/file")
    fails_with(errno.EBUSY, fs.rmdir, "/")
    again = make_fs()
    assert names(again, "/") == ["a", "file"]
    assert names(again, "/a") == ["b"]
    assert again.getattr("/a").mode == stat.S_IFDIR | 0o750
    again.rmdir("/a/b")
    again.rmdir("/a")
    assert keys(s3_client, bucket_name) == ["file"]
    fails_with(errno.ENOENT, again.getattr, "/a")


def test_implicit_folders_and_keeping_a_folder_after_its_last_file(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="x/y/z.txt", Body=b"z")
    fs = make_fs()
    assert fs.getattr("/x").is_dir and fs.getattr("/x/y").is_dir
    assert names(fs, "/x/y") == ["z.txt"]
    fs.unlink("/x/y/z.txt")
    # POSIX: the folder stays until rmdir; the mount writes its marker to keep it.
    assert keys(s3_client, bucket_name) == ["x/y/"]
    assert names(make_fs(), "/x") == ["y"]
    fs.rmdir("/x/y")
    assert keys(s3_client, bucket_name) == ["x/"]
    fs.rmdir("/x")
    assert keys(s3_client, bucket_name) == []


def test_rmdir_counts_hidden_keys(make_fs: MakeFs, s3_client: S3Client,
                                  bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="d/", Body=b"")
    s3_client.put_object(Bucket=bucket_name, Key="d//hidden", Body=b"h")
    fs = make_fs()
    assert names(fs, "/d") == []
    fails_with(errno.ENOTEMPTY, fs.rmdir, "/d")
    assert "d//hidden" in keys(s3_client, bucket_name)


def test_readdir_uses_one_listing_and_heads_only_small_objects_and_folders(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    big = b"x" * 5000
    for index in range(5):
        s3_client.put_object(Bucket=bucket_name, Key=f"dir/big{index}", Body=big)
    s3_client.put_object(Bucket=bucket_name, Key="dir/small", Body=b"s")
    s3_client.put_object(Bucket=bucket_name, Key="dir/sub/inner", Body=b"i")
    fs = make_fs()
    heads: list[str] = []
    original = fs.bucket.stat

    def counting_stat(key: str) -> Any:
        heads.append(key)
        return original(key)

    monkeypatch.setattr(fs.bucket, "stat", counting_stat)
    assert fs.getattr("/dir").is_dir
    heads.clear()
    entries = dict(fs.readdir("/dir"))
    assert sorted(entries) == [".", "..", *[f"big{i}" for i in range(5)], "small", "sub"]
    # "small" is no link candidate (not marked, see attrs.py) and "sub/" was listed
    # whole without a marker: nothing to HEAD (test_30_core_speed covers the rest).
    assert heads == [], "no HEAD for unmarked small objects nor marker-less folders"
    assert entries["big0"].size == 5000 and entries["big0"].mode == stat.S_IFREG | 0o644
    assert entries["sub"].mode == stat.S_IFDIR | 0o755
    heads.clear()
    for name in ("big0", "small", "sub"):
        fs.getattr(f"/dir/{name}")
    assert heads == [], "getattr after readdir is served from the cache"


def test_s3fs_metadata_and_symlinks_written_by_others(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="owned", Body=b"x" * 10, Metadata={
        "mode": str(stat.S_IFREG | 0o600), "uid": "1234", "gid": "5678",
        "mtime": "1600000000.5", "atime": "1500000000"})
    s3_client.put_object(Bucket=bucket_name, Key="link", Body=b"owned",
                         Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    s3_client.put_object(Bucket=bucket_name, Key="bad", Body=b"b",
                         Metadata={"mode": "rwx", "mtime": "yesterday"})
    s3_client.put_object(Bucket=bucket_name, Key="d/", Body=b"",
                         Metadata={"mode": str(stat.S_IFDIR | 0o700), "uid": "42"})
    # s3fs writes links with a plain PUT: they show as links with symlink_scan="small".
    for fs in (make_fs(symlink_scan="small"), make_fs(symlink_scan="small")):
        # by listing first, then by lookup first
        if len(fs.cache.listing("/") or {}) == 0 and fs is not None:
            listed = dict(fs.readdir("/"))
            assert listed["link"].is_link and listed["owned"].mode == stat.S_IFREG | 0o600
        owned = fs.getattr("/owned")
        assert (owned.uid, owned.gid, owned.mode) == (1234, 5678, stat.S_IFREG | 0o600)
        assert owned.mtime_ns == 1_600_000_000_500_000_000
        assert owned.atime_ns == 1_500_000_000 * 10**9
        assert fs.getattr("/link").mode == stat.S_IFLNK | 0o777
        assert fs.readlink("/link") == "owned"
        assert fs.getattr("/bad").mode == stat.S_IFREG | 0o644
        directory = fs.getattr("/d")
        assert (directory.mode, directory.uid) == (stat.S_IFDIR | 0o700, 42)
    fails_with(errno.EINVAL, fs.readlink, "/owned")


def test_symlink(make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    fs = make_fs()
    fs.symlink("../target with spaces", "/l")
    assert fs.readlink("/l") == "../target with spaces"
    assert body(s3_client, bucket_name, "l") == b"../target with spaces"
    assert int(metadata(s3_client, bucket_name, "l")["mode"]) == stat.S_IFLNK | 0o777
    fails_with(errno.EEXIST, fs.symlink, "x", "/l")
    fails_with(errno.ENAMETOOLONG, fs.symlink, "x" * 4096, "/long")
    fails_with(errno.ELOOP, fs.open, "/l", os.O_RDONLY)
    again = make_fs()
    assert dict(again.readdir("/"))["l"].is_link
    assert again.readlink("/l") == "../target with spaces"
    again.rename("/l", "/m")
    assert again.readlink("/m") == "../target with spaces"
    assert make_fs().getattr("/m").is_link


def test_hard_links_are_refused(make_fs: MakeFs) -> None:
    fs = make_fs()
    write_file(fs, "/a", b"a")
    fails_with(errno.EPERM, fs.link, "/a", "/b")


# -- rename --------------------------------------------------------------------------------


def test_rename_file_keeps_content_and_metadata(make_fs: MakeFs, s3_client: S3Client,
                                                bucket_name: str) -> None:
    fs = make_fs()
    write_file(fs, "/a", b"content", mode=0o600)
    write_file(fs, "/b", b"old")
    fs.rename("/a", "/b")  # replaces
    assert keys(s3_client, bucket_name) == ["b"]
    assert body(s3_client, bucket_name, "b") == b"content"
    assert int(metadata(s3_client, bucket_name, "b")["mode"]) == stat.S_IFREG | 0o600
    fails_with(errno.ENOENT, fs.getattr, "/a")
    assert fs.getattr("/b").size == 7
    fs.rename("/b", "/b")  # to itself: nothing happens
    assert keys(s3_client, bucket_name) == ["b"]
    write_file(fs, "/c", b"c")
    fails_with(errno.EEXIST, fs.rename, "/c", "/b", RENAME_NOREPLACE)
    fails_with(errno.EINVAL, fs.rename, "/c", "/b", RENAME_EXCHANGE)
    fails_with(errno.ENOENT, fs.rename, "/missing", "/x")
    fails_with(errno.ENOENT, fs.rename, "/c", "/nofolder/x")
    again = make_fs()
    assert read_file(again, "/b") == b"content"
    assert again.getattr("/b").mode == stat.S_IFREG | 0o600


def test_rename_open_dirty_file_uploads_under_the_new_name(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    fs = make_fs()
    fh = fs.create("/draft", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"v1", 0)
    fs.rename("/draft", "/final")
    assert keys(s3_client, bucket_name) == ["final"]
    fs.write(fh, b"v2", 2)
    fs.flush(fh)
    fs.release(fh)
    assert keys(s3_client, bucket_name) == ["final"]
    assert body(s3_client, bucket_name, "final") == b"v1v2"


def test_rename_folder_with_children_and_open_files(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    fs = make_fs()
    fs.mkdir("/src", 0o755)
    fs.mkdir("/src/sub", 0o755)
    for index in range(12):
        write_file(fs, f"/src/sub/f{index}", f"file {index}".encode())
    s3_client.put_object(Bucket=bucket_name, Key="src/implicit/deep", Body=b"deep")
    fh = fs.create("/src/open", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"staged", 0)
    fs.rename("/src", "/dst")
    fs.write(fh, b"!", 6)
    fs.release(fh)
    expected = sorted(["dst/", "dst/sub/", "dst/implicit/deep", "dst/open",
                       *[f"dst/sub/f{i}" for i in range(12)]])
    assert keys(s3_client, bucket_name) == expected
    assert body(s3_client, bucket_name, "dst/open") == b"staged!"
    fails_with(errno.ENOENT, fs.getattr, "/src")
    again = make_fs()
    assert names(again, "/dst") == ["implicit", "open", "sub"]
    assert read_file(again, "/dst/sub/f11") == b"file 11"


def test_rename_folder_posix_rules(make_fs: MakeFs, s3_client: S3Client,
                                   bucket_name: str) -> None:
    fs = make_fs()
    fs.mkdir("/a", 0o755)
    write_file(fs, "/a/f", b"f")
    fs.mkdir("/empty", 0o755)
    fs.mkdir("/full", 0o755)
    write_file(fs, "/full/x", b"x")
    write_file(fs, "/file", b"")
    fails_with(errno.EINVAL, fs.rename, "/a", "/a/inside")
    fails_with(errno.ENOTEMPTY, fs.rename, "/a", "/full")
    fails_with(errno.ENOTDIR, fs.rename, "/a", "/file")
    fails_with(errno.EISDIR, fs.rename, "/file", "/a")
    fails_with(errno.EBUSY, fs.rename, "/", "/x")
    fs.rename("/a", "/empty")  # onto an empty folder: replaces it
    assert names(fs, "/") == ["empty", "file", "full"]
    assert names(fs, "/empty") == ["f"]
    assert keys(s3_client, bucket_name) == ["empty/", "empty/f", "file", "full/", "full/x"]


def test_moving_the_last_file_out_keeps_the_folder(make_fs: MakeFs, s3_client: S3Client,
                                                   bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="only/file", Body=b"1")
    fs = make_fs()
    fs.rename("/only/file", "/file")
    assert keys(s3_client, bucket_name) == ["file", "only/"]


# -- attributes ----------------------------------------------------------------------------


def test_chmod_chown_utimens_stored_as_s3fs_does(make_fs: MakeFs, s3_client: S3Client,
                                                 bucket_name: str, clock: FakeClock) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="f", Body=b"data",
                         Metadata={"qarnot-sha1": "keepme"})
    fs = make_fs()
    fs.chmod("/f", 0o600)
    fs.chown("/f", 1000, -1)
    fs.utimens("/f", 1_000_000_000_123, 2_000_000_000_000_000_456)
    meta = metadata(s3_client, bucket_name, "f")
    assert meta["qarnot-sha1"] == "keepme", "metadata that is not ours survives"
    assert int(meta["mode"]) == stat.S_IFREG | 0o600
    assert (meta["uid"], meta["gid"]) == ("1000", str(os.getgid()))
    assert meta["mtime"] == "2000000000.000000456"
    assert meta["atime"] == "1000.000000123"
    assert body(s3_client, bucket_name, "f") == b"data"
    fs.utimens("/f", None, 5 * 10**9)  # atime omitted
    for view in (fs, make_fs()):
        assert read_file(view, "/f") == b"data"  # a remount learns metadata at open
        attrs = view.getattr("/f")
        assert (attrs.mode, attrs.uid, attrs.mtime_ns) == (stat.S_IFREG | 0o600, 1000, 5 * 10**9)
        assert attrs.atime_ns == 1_000_000_000_123
    fs.mkdir("/d", 0o755)
    fs.chmod("/d", 0o700)
    s3_client.put_object(Bucket=bucket_name, Key="implicit/child", Body=b"")
    clock.advance(fs.options.negative_ttl + 1)  # the root's listing was cached before
    fs.chmod("/implicit", 0o711)
    again = make_fs()
    assert again.getattr("/d").mode == stat.S_IFDIR | 0o700
    assert again.getattr("/implicit").mode == stat.S_IFDIR | 0o711
    fs.chmod("/", 0o700)  # accepted, not stored (no object holds the root)
    fails_with(errno.ENOENT, fs.chmod, "/missing", 0o600)


def test_chmod_of_an_open_file_goes_with_its_upload(make_fs: MakeFs, s3_client: S3Client,
                                                    bucket_name: str) -> None:
    fs = make_fs()
    fh = fs.create("/f", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"x", 0)
    fs.chmod("/f", 0o640)
    fs.utimens("/f", None, 7 * 10**9)
    assert fs.getattr("/f").mode == stat.S_IFREG | 0o640
    fs.release(fh)
    meta = metadata(s3_client, bucket_name, "f")
    assert int(meta["mode"]) == stat.S_IFREG | 0o640 and meta["mtime"] == "7"


def test_caller_owns_new_files(make_fs: MakeFs, s3_client: S3Client,
                               bucket_name: str) -> None:
    fs = make_fs()
    with fs.with_caller(1001, 1002):
        write_file(fs, "/mine", b"")
        fs.mkdir("/dir", 0o755)
    assert metadata(s3_client, bucket_name, "mine")["uid"] == "1001"
    assert metadata(s3_client, bucket_name, "dir/")["gid"] == "1002"
    write_file(fs, "/default", b"")
    assert metadata(s3_client, bucket_name, "default")["uid"] == str(os.getuid())


def test_statfs_is_consistent(make_fs: MakeFs) -> None:
    figures = make_fs(statfs_total_bytes=1 << 40, statfs_total_inodes=1000).statfs()
    assert figures["f_blocks"] * figures["f_frsize"] == 1 << 40
    assert figures["f_bfree"] <= figures["f_blocks"] and figures["f_bavail"] <= figures["f_bfree"]
    assert figures["f_files"] == 1000 and figures["f_ffree"] <= 1000
    assert figures["f_namemax"] == 255


# -- names ---------------------------------------------------------------------------------


def test_unrepresentable_keys_are_hidden_with_a_warning(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        caplog: pytest.LogCaptureFixture) -> None:
    long_name = "n" * 256
    for key in ("ok", "a//b", "dot/./x", "dots/../x", long_name, "x", "x/y", "dir/."):
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=b"k")
    fs = make_fs()
    with caplog.at_level(logging.WARNING, logger="qarnotfs.fs.keys"):
        assert names(fs, "/") == ["a", "dir", "dot", "dots", "ok", "x"]
        assert names(fs, "/a") == []
        assert names(fs, "/dot") == [] and names(fs, "/dots") == [] and names(fs, "/dir") == []
    assert fs.getattr("/x").is_dir, "a folder wins over a file of the same name"
    assert names(fs, "/x") == ["y"]
    hidden = caplog.text
    for key in ("'a//'", "'dot/./'", "'dots/../'", long_name, "'x'", "'dir/.'"):
        assert key in hidden
    assert len(keys(s3_client, bucket_name)) == 8, "hidden keys are left alone"


def test_name_limits(make_fs: MakeFs) -> None:
    fs = make_fs()
    fails_with(errno.ENAMETOOLONG, fs.create, "/" + "n" * 256, 0o644, CREATE)
    fails_with(errno.ENAMETOOLONG, fs.getattr, "/" + "é" * 128)
    fs.mkdir("/" + "n" * 255, 0o755)
    deep = "/" + "/".join(["d" * 200] * 6)
    fails_with(errno.ENAMETOOLONG, fs.mkdir, deep, 0o755)
    fails_with(errno.EINVAL, fs.create, "/bad\udcff", 0o644, CREATE)


def test_prefix_mount(make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="outside", Body=b"o")
    s3_client.put_object(Bucket=bucket_name, Key="pre/inside", Body=b"i")
    s3_client.put_object(Bucket=bucket_name, Key="pre2/not-mine", Body=b"n")
    fs = make_fs(prefix="pre")
    assert names(fs, "/") == ["inside"]
    write_file(fs, "/new", b"n")
    fs.mkdir("/d", 0o755)
    assert keys(s3_client, bucket_name) == ["outside", "pre/d/", "pre/inside", "pre/new",
                                            "pre2/not-mine"]


# -- read-only, failures, cache ------------------------------------------------------------


def test_read_only_mount_refuses_every_change(make_fs: MakeFs, s3_client: S3Client,
                                              bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="f", Body=b"f")
    s3_client.put_object(Bucket=bucket_name, Key="d/", Body=b"")
    fs = make_fs(read_only=True)
    assert read_file(fs, "/f") == b"f"
    for call, args in [(fs.create, ("/n", 0o644, CREATE)), (fs.open, ("/f", os.O_RDWR)),
                       (fs.open, ("/f", os.O_WRONLY)), (fs.truncate, ("/f", 0)),
                       (fs.unlink, ("/f",)), (fs.mkdir, ("/m", 0o755)), (fs.rmdir, ("/d",)),
                       (fs.rename, ("/f", "/g")), (fs.symlink, ("f", "/l")),
                       (fs.chmod, ("/f", 0o600)), (fs.chown, ("/f", 1, 1)),
                       (fs.utimens, ("/f", 1, 1)), (fs.link, ("/f", "/h"))]:
        fails_with(errno.EROFS, call, *args)
    assert keys(s3_client, bucket_name) == ["d/", "f"]


def test_failed_upload_keeps_the_staged_copy_and_retries(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    fs = make_fs()
    real_upload = fs.bucket.upload

    def broken(*args: object, **kwargs: object) -> None:
        raise QarnotGenericException("injected: storage full")

    monkeypatch.setattr(fs.bucket, "upload", broken)
    fh = fs.create("/precious", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"do not lose me", 0)
    with caplog.at_level(logging.ERROR):
        fails_with(errno.EIO, fs.flush, fh)
    assert "precious" in caplog.text and "injected: storage full" in caplog.text
    assert fs.pending_uploads() == ["/precious"]
    staged = staged_copies(tmp_path / "staging")
    assert len(staged) == 1 and staged[0].read_bytes() == b"do not lose me"
    assert stat.S_IMODE(staged[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(staged[0].parent.stat().st_mode) == 0o700
    fs.release(fh)  # the last close fails too: still kept, still dirty
    assert fs.pending_uploads() == ["/precious"]
    assert fs.getattr("/precious").size == 14
    assert "precious" in names(fs, "/")
    assert keys(s3_client, bucket_name) == []
    monkeypatch.setattr(fs.bucket, "upload", real_upload)
    fh = fs.open("/precious", os.O_RDONLY)
    assert fs.read(fh, 100, 0) == b"do not lose me"
    fs.fsync(fh, False)  # the retry
    fs.release(fh)
    assert body(s3_client, bucket_name, "precious") == b"do not lose me"
    assert fs.pending_uploads() == []
    assert staged_copies(tmp_path / "staging") == []


def test_shutdown_uploads_pending_files(make_fs: MakeFs, s3_client: S3Client,
                                        bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs()
    real_upload = fs.bucket.upload

    def broken(*args: object, **kwargs: object) -> None:
        raise QarnotGenericException("down")

    monkeypatch.setattr(fs.bucket, "upload", broken)
    fh = fs.create("/late", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"late", 0)
    fs.release(fh)  # release has no caller to tell: the failure is logged, the file kept
    assert fs.pending_uploads() == ["/late"]
    monkeypatch.setattr(fs.bucket, "upload", real_upload)
    fs.shutdown()
    assert body(s3_client, bucket_name, "late") == b"late"


def test_concurrent_writers_and_listers(make_fs: MakeFs, s3_client: S3Client,
                                        bucket_name: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fs = make_fs()
    fs.mkdir("/c", 0o755)

    def work(index: int) -> list[str]:
        write_file(fs, f"/c/f{index}", bytes([index]) * (index + 1))
        return names(fs, "/c")

    with ThreadPoolExecutor(8) as pool:
        listings = list(pool.map(work, range(24)))
    assert all(f"f{i}" in listing for i, listing in enumerate(listings))
    assert keys(s3_client, bucket_name) == sorted(["c/", *[f"c/f{i}" for i in range(24)]])
    again = make_fs()
    assert all(read_file(again, f"/c/f{i}") == bytes([i]) * (i + 1) for i in range(24))


def test_cache_hides_changes_by_others_until_its_ttl(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, clock: FakeClock) -> None:
    fs = make_fs(cache_ttl=10, negative_ttl=2)
    fails_with(errno.ENOENT, fs.getattr, "/other")
    s3_client.put_object(Bucket=bucket_name, Key="other", Body=b"12345")
    fails_with(errno.ENOENT, fs.getattr, "/other")  # negative entry
    clock.advance(3)
    assert fs.getattr("/other").size == 5, "the negative TTL is shorter"
    fs.unlink("/other")
    fs.fsyncdir("/")  # the delete reaches the bucket before the other client's put
    assert names(fs, "/") == []
    s3_client.put_object(Bucket=bucket_name, Key="other", Body=b"12345")
    assert names(fs, "/") == []  # cached listing
    fails_with(errno.ENOENT, fs.getattr, "/other")  # answered by the cached listing
    clock.advance(3)
    assert names(fs, "/") == [], "a listing lives as long as positive entries"
    assert fs.getattr("/other").size == 5, \
        "but vouches for a missing name only as long as a negative answer would"
    assert names(fs, "/") == ["other"], "and what a lookup finds joins it"
    clock.advance(10)
    assert fs.getattr("/other").size == 5
    s3_client.put_object(Bucket=bucket_name, Key="other", Body=b"1234567")
    assert fs.getattr("/other").size == 5
    clock.advance(10)
    assert fs.getattr("/other").size == 7
    assert names(fs, "/") == ["other"]
    write_file(fs, "/mine", b"m")  # our own change: seen at once despite the cache
    assert names(fs, "/") == ["mine", "other"]
    fs.unlink("/other")
    assert names(fs, "/") == ["mine"]


def test_no_cache_sees_everything_at_once(make_fs: MakeFs, s3_client: S3Client,
                                          bucket_name: str) -> None:
    fs = make_fs(cache_ttl=0, negative_ttl=0)
    assert names(fs, "/") == []
    s3_client.put_object(Bucket=bucket_name, Key="now", Body=b"1")
    assert names(fs, "/") == ["now"] and fs.getattr("/now").size == 1


def test_bad_handles(make_fs: MakeFs) -> None:
    fs = make_fs()
    fails_with(errno.EBADF, fs.read, 999, 1, 0)
    fails_with(errno.EBADF, fs.release, 999)
    fails_with(errno.ENOENT, fs.open, "/missing", os.O_RDONLY)
    fs.mkdir("/d", 0o755)
    fails_with(errno.EISDIR, fs.open, "/d", os.O_RDONLY)
    write_file(fs, "/f", b"")
    fails_with(errno.ENOTDIR, fs.readdir, "/f")
    fails_with(errno.EINVAL, fs.readdir, "/d/../d")


def test_open_for_writing_transfers_nothing_until_the_first_write(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="big", Body=b"b" * 100_000)
    fs = make_fs()
    transfers: list[str] = []
    for name in ("download", "upload"):
        original = getattr(fs.bucket, name)
        monkeypatch.setattr(fs.bucket, name, recorded(transfers, name, original))
    fh = fs.open("/big", os.O_WRONLY)  # what touch(1) does, then utimens
    fs.utimens("/big", None, 10**9)
    fs.flush(fh)
    fs.release(fh)
    assert transfers == []
    assert metadata(s3_client, bucket_name, "big")["mtime"] == "1"
    fh = fs.open("/big", os.O_RDWR)
    assert fs.read(fh, 3, 0) == b"bbb"  # read from the bucket, not staged
    fs.write(fh, b"X", 1)
    assert transfers == ["download"]
    assert fs.read(fh, 3, 0) == b"bXb"
    fs.release(fh)
    assert transfers == ["download", "upload"]
    assert body(s3_client, bucket_name, "big")[:3] == b"bXb"


def test_failed_folder_rename_undoes_its_copies(make_fs: MakeFs, s3_client: S3Client,
                                                bucket_name: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(6):
        s3_client.put_object(Bucket=bucket_name, Key=f"src/f{index}", Body=b"%d" % index)
    fs = make_fs()
    real_copy = fs.bucket.copy

    def flaky(source: str, destination: str, metadata: object = None, **options: object) \
            -> None:
        if destination == "dst/f3":
            raise QarnotGenericException("injected: InternalError")
        real_copy(source, destination, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(fs.bucket, "copy", flaky)
    with pytest.raises(QarnotGenericException):
        fs.rename("/src", "/dst")
    assert keys(s3_client, bucket_name) == [f"src/f{i}" for i in range(6)]
    fails_with(errno.ENOENT, fs.getattr, "/dst")
    assert names(fs, "/src") == [f"f{i}" for i in range(6)]
    monkeypatch.setattr(fs.bucket, "copy", real_copy)
    fs.rename("/src", "/dst")
    assert keys(s3_client, bucket_name) == [f"dst/f{i}" for i in range(6)]


def test_full_staging_disk_is_enospc_and_keeps_what_fitted(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from qarnotfs.fs.staging import StagedFile

    fs = make_fs()
    fh = fs.create("/f", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"fits", 0)
    real_write = StagedFile.write

    def full(self: StagedFile, data: bytes, offset: int) -> int:
        real_write(self, data[:2], offset)  # part of it lands, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(StagedFile, "write", full)
    with caplog.at_level(logging.ERROR):
        fails_with(errno.ENOSPC, fs.write, fh, b"more", 4)
    assert "is full (No space left on device)" in caplog.text
    assert fs.getattr("/f").size == 6, "the size is what the staged copy holds"
    monkeypatch.setattr(StagedFile, "write", real_write)
    fs.release(fh)
    assert body(s3_client, bucket_name, "f") == b"fitsmo"


def test_a_listing_in_flight_cannot_hide_our_own_upload(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs()
    fs.mkdir("/d", 0o755)
    fs.cache.clear()
    real_list = fs.bucket.list_page

    def slow_list(prefix: str) -> object:
        listing = real_list(prefix)  # taken before the upload below
        monkeypatch.setattr(fs.bucket, "list_page", real_list)
        write_file(fs, "/d/new", b"uploaded while listing")
        return listing

    monkeypatch.setattr(fs.bucket, "list_page", slow_list)
    names(fs, "/d")
    assert names(fs, "/d") == ["new"]
    assert fs.getattr("/d/new").size == 22


def test_no_request_after_our_own_upload(make_fs: MakeFs, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs()
    fs.mkdir("/d", 0o755)
    calls: list[str] = []
    for name in ("stat", "list_folder", "has_objects_under", "read"):
        original = getattr(fs.bucket, name)
        monkeypatch.setattr(fs.bucket, name, recorded(calls, name, original))
    write_file(fs, "/d/f", b"12345")
    fs.symlink("f", "/d/l")
    assert fs.getattr("/d/f").size == 5 and fs.getattr("/d/l").is_link
    assert names(fs, "/d") == ["f", "l"]
    assert calls == [], "the mount knows what it wrote"


# -- the staging journal and background retries (see also tests/test_70_crash.py) ----------


def tmp_staging(fs: Filesystem) -> Path:
    """The staging directory the filesystem's own folder is in."""
    return fs.staging_root.parent


def test_journal_records_each_dirty_file_until_it_is_in_the_bucket(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    from qarnotfs.fs.journal import read_entries

    s3_client.put_object(Bucket=bucket_name, Key="old", Body=b"v1")
    etag = s3_client.head_object(Bucket=bucket_name, Key="old")["ETag"].strip('"')
    fs = make_fs()
    new = fs.create("/new", stat.S_IFREG | 0o600, CREATE)
    [entry] = read_entries(fs.staging_root)  # recorded at create, before any byte
    assert (entry.path, entry.key, entry.state, entry.base_etag, entry.mode & 0o777) == \
        ("/new", "new", "dirty", None, 0o600)
    old = fs.open("/old", os.O_WRONLY)
    assert len(read_entries(fs.staging_root)) == 1  # opening is not dirtying
    fs.write(old, b"v2", 0)
    bases = {e.path: e.base_etag for e in read_entries(fs.staging_root)}
    assert bases == {"/new": None, "/old": etag}  # what a recovery compares with
    fs.release(new)
    fs.release(old)
    assert read_entries(fs.staging_root) == []
    assert body(s3_client, bucket_name, "old") == b"v2"
    assert staged_copies(tmp_staging(fs)) == []


def test_failed_upload_is_retried_in_the_background(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mounting import wait_until

    from qarnotfs.fs.journal import read_entries

    fs = make_fs(retry_first_delay=0.01)
    real_upload = fs.bucket.upload
    failures = [3]

    def flaky(*args: object, **kwargs: object) -> None:
        if failures[0]:
            failures[0] -= 1
            raise QarnotGenericException("injected: try again")
        real_upload(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fs.bucket, "upload", flaky)
    fh = fs.create("/later", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"eventually", 0)
    fails_with(errno.EIO, fs.flush, fh)  # the caller is told, once
    fs.release(fh)  # nobody touches the file again
    wait_until(lambda: "later" in keys(s3_client, bucket_name), timeout=10,
               message="the background retry")
    assert body(s3_client, bucket_name, "later") == b"eventually"
    assert failures == [0]
    wait_until(lambda: fs.pending_uploads() == [], timeout=10, message="nothing pending")
    assert read_entries(fs.staging_root) == []
    assert staged_copies(tmp_staging(fs)) == []


def test_two_live_filesystems_of_one_bucket_use_separate_staging_slots(
        make_fs: MakeFs) -> None:
    first, second = make_fs(), make_fs()
    assert first.staging_root != second.staging_root
    assert second.staging_root.name == f"{first.staging_root.name}.1"


MIB = 1 << 20


def failing_part(fs: Filesystem, monkeypatch: pytest.MonkeyPatch, bad: int) -> list[int]:
    """Make part ``bad`` of every multipart upload fail; returns the part numbers sent."""
    real = fs.bucket.upload_part
    sent: list[int] = []

    def upload_part(key: str, upload_id: str, number: int, data: bytes) -> str:
        if number == bad:
            raise QarnotGenericException(f"injected: part {number} refused")
        sent.append(number)
        return real(key, upload_id, number, data)

    monkeypatch.setattr(fs.bucket, "upload_part", upload_part)
    return sent


def fail_part_two(fs: Filesystem, monkeypatch: pytest.MonkeyPatch) \
        -> tuple[int, bytes, list[int]]:
    """Write /big (11 MiB, parts of 5 MiB) and fail its close with part 2 refused; then
    let every part through. Returns the handle, the data and the parts sent from now on."""
    sent_before = failing_part(fs, monkeypatch, bad=2)
    data = os.urandom(11 * MIB)
    fh = fs.create("/big", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, data, 0)
    fails_with(errno.EIO, fs.flush, fh)
    assert sorted(sent_before) == [1, 3]
    monkeypatch.undo()
    return fh, data, failing_part(fs, monkeypatch, bad=0)


def test_failed_multipart_upload_resumes_with_the_missing_parts_only(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs(part_size=5 * MIB, retry_first_delay=3600)  # no background retry here
    fh, data, sent = fail_part_two(fs, monkeypatch)
    [upload] = s3_client.list_multipart_uploads(Bucket=bucket_name)["Uploads"]
    fs.fsync(fh, False)
    assert sent == [2]  # parts 1 and 3 were not sent again
    fs.release(fh)
    assert body(s3_client, bucket_name, "big") == data
    assert "Uploads" not in s3_client.list_multipart_uploads(Bucket=bucket_name)
    assert upload["Key"] == "big"


def test_a_file_changed_after_a_failure_resends_only_the_parts_that_changed(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs(part_size=5 * MIB, retry_first_delay=3600)
    fh, data, sent = fail_part_two(fs, monkeypatch)
    [upload] = s3_client.list_multipart_uploads(Bucket=bucket_name)["Uploads"]
    stored = {part["PartNumber"] for part in s3_client.list_parts(
        Bucket=bucket_name, Key="big", UploadId=upload["UploadId"]).get("Parts", [])}
    fs.write(fh, b"changed", 0)
    fs.release(fh)
    # Part 1 changed, part 2 was missing; part 3 is the same, so it is not sent again if
    # the server had it (under load, the failure of part 2 may have cut it short).
    assert sorted(sent) == ([1, 2] if 3 in stored else [1, 2, 3])
    assert body(s3_client, bucket_name, "big") == b"changed" + data[7:]
    assert "Uploads" not in s3_client.list_multipart_uploads(Bucket=bucket_name)


def test_new_attributes_after_a_failure_start_a_new_upload_and_abort_the_old_one(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # An upload's metadata is fixed when it is created: a chmod needs a new upload.
    fs = make_fs(part_size=5 * MIB, retry_first_delay=3600)
    fh, data, sent = fail_part_two(fs, monkeypatch)
    [old] = s3_client.list_multipart_uploads(Bucket=bucket_name)["Uploads"]
    fs.chmod("/big", 0o600)
    fs.release(fh)
    assert sorted(sent) == [1, 2, 3]
    assert body(s3_client, bucket_name, "big") == data
    head = s3_client.head_object(Bucket=bucket_name, Key="big")
    assert int(head["Metadata"]["mode"]) & 0o777 == 0o600
    assert "Uploads" not in s3_client.list_multipart_uploads(Bucket=bucket_name), old


def test_a_new_filesystem_takes_over_what_a_stopped_one_left_in_another_slot(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mounting import wait_until

    def broken(*args: object, **kwargs: object) -> None:
        raise QarnotGenericException("injected: down")

    first, second = make_fs(), make_fs()
    left_behind = second.staging_root
    monkeypatch.setattr(second.bucket, "upload", broken)
    fh = second.create("/kept", stat.S_IFREG | 0o644, CREATE)
    second.write(fh, b"left by the second mount", 0)
    second.release(fh)  # the last close fails: logged, kept, retried
    second.shutdown()  # one last try fails too: the slot stays, with its journal
    assert [p.read_bytes() for p in staged_copies(left_behind)] == [b"left by the second mount"]
    first.shutdown()
    monkeypatch.undo()
    third = make_fs(retry_first_delay=0.01)
    assert third.staging_root == first.staging_root  # slot 0, free again
    assert not left_behind.exists()  # its entry was adopted, the slot removed
    wait_until(lambda: "kept" in keys(s3_client, bucket_name), timeout=10,
               message="the adopted file to be uploaded")
    assert body(s3_client, bucket_name, "kept") == b"left by the second mount"


def test_an_upload_created_just_before_a_crash_is_aborted_by_the_next_mount(
        bucket: Bucket, s3_client: S3Client, bucket_name: str, tmp_path: Path) -> None:
    # The crash window: CreateMultipartUpload answered, its id not journaled yet. The
    # journal's intent, written before the request, is what identifies the upload later.
    from qarnotfs.fs.journal import BestEffortJournal, Journal
    from qarnotfs.fs.uploader import Uploader

    (tmp_path / "staging").mkdir(mode=0o700)
    journal = Journal(tmp_path / "staging")
    uploader = Uploader(bucket, BestEffortJournal(journal), part_size=8 << 20, workers=2)
    journal.intend_upload("pre/big")
    bucket.create_multipart("pre/big", {})  # ... and the process dies here
    s3_client.create_multipart_upload(Bucket=bucket_name, Key="pre/theirs")  # not ours

    uploader.clean_orphans("pre/")

    left = [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket_name)["Uploads"]]
    assert left == ["pre/theirs"], "only the crashed upload of ours is aborted"
    assert journal.intents() == [], "each intent is settled once"


def test_a_finished_upload_leaves_no_intent(make_fs: MakeFs, bucket: Bucket,
                                            bucket_name: str, s3_client: S3Client) -> None:
    fs = make_fs()
    fh = fs.create("/big", 0o644, os.O_WRONLY)
    fs.write(fh, b"x" * (9 << 20), 0)
    fs.flush(fh)
    fs.release(fh)
    journal = fs._staging.journal  # what a crash now would leave behind
    assert journal.intents() == []
    assert s3_client.head_object(Bucket=bucket_name, Key="big")["ContentLength"] == 9 << 20


def test_journal_checkpoint_makes_a_failed_upload_durable(
        make_fs: MakeFs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A power cut cannot be staged here: what is checked is that a failed upload fsyncs
    # the staged copy and its folder, and checkpoints the journal into its main file
    # (SQLite fsyncs the log, then that file), which alone then holds the entry.
    import shutil
    import sqlite3

    fs = make_fs(retry_first_delay=3600)

    def broken(*args: object, **kwargs: object) -> None:
        raise QarnotGenericException("injected: down")

    monkeypatch.setattr(fs.bucket, "upload", broken)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fh = fs.create("/only-copy", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"the only version", 0)
    assert synced == []  # nothing is forced to disk while all goes well
    fails_with(errno.EIO, fs.flush, fh)
    [staged] = staged_copies(fs.staging_root)
    assert synced == [str(staged), str(fs.staging_root)]
    alone = tmp_path / "journal-alone.sqlite3"
    shutil.copyfile(fs.staging_root / "journal.sqlite3", alone)  # without its -wal
    with sqlite3.connect(alone) as db:
        assert db.execute("SELECT path, retries FROM entries").fetchall() == [("/only-copy", 1)]
    monkeypatch.undo()
    fs.release(fh)

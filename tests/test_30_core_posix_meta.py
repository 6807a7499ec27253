"""Special files, extended attributes, metadata other tools wrote, and Content-Type, in the
core over a real S3 server: checked in the core, in the bucket (raw client), and after a
"remount" (a fresh Filesystem on the same bucket)."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, Any

import test_30_core_speed as speed
from fs_calls import crashed, write_file
from mounting import wait_until
from test_30_core import body, fails_with, keys, metadata
from test_30_core_speed import Requests, populate

if TYPE_CHECKING:
    from fs_helpers import MakeFs
    from mypy_boto3_s3 import S3Client

    from qarnotfs.bucket import Bucket

pytest_plugins = ("fs_helpers",)
requests = speed.requests  # the fixture counting the requests a client sends

# What s3fs-fuse writes for {"user.a": b"\x00\xff", "user.text": b"hello"}: the JSON object
# of base64 values, URL-encoded with upper-case hex (s3fs's urlEncodePath).
S3FS_XATTR = "%7B%22user.a%22%3A%22AP8%3D%22%2C%22user.text%22%3A%22aGVsbG8%3D%22%7D"
FIFO, SOCKET, CHAR, BLOCK = stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK


def head(s3_client: S3Client, bucket_name: str, key: str) -> dict[str, Any]:
    return dict(s3_client.head_object(Bucket=bucket_name, Key=key))


def test_special_files_are_marked_empty_objects_with_their_type_in_the_mode(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    fs = make_fs()
    fs.mkdir("/d", 0o755)
    made = {"fifo": (FIFO | 0o640, 0), "sock": (SOCKET | 0o755, 0),
            "chr": (CHAR | 0o600, os.makedev(1, 3)), "blk": (BLOCK | 0o660, os.makedev(8, 1))}
    for name, (mode, device) in made.items():
        fs.mknod(f"/d/{name}", mode, device)
    fs.mknod("/d/plain", stat.S_IFREG | 0o644, 0)
    fails_with(errno.EEXIST, fs.mknod, "/d/fifo", FIFO | 0o644, 0)
    fails_with(errno.EINVAL, fs.mknod, "/d/dir", stat.S_IFDIR | 0o755, 0)

    for name, (mode, device) in made.items():
        answer = head(s3_client, bucket_name, f"d/{name}")
        assert answer["ContentLength"] == 0 and answer["ETag"].endswith('-1"'), name
        assert int(answer["Metadata"]["mode"]) == mode, name
        assert answer["Metadata"].get("rdev", "0") == str(device), name
    plain = head(s3_client, bucket_name, "d/plain")
    assert "-" not in plain["ETag"] and int(plain["Metadata"]["mode"]) == stat.S_IFREG | 0o644

    again = make_fs()
    listing = dict(again.readdir("/d"))
    for name, (mode, device) in made.items():
        for attrs in (listing[name], make_fs().getattr(f"/d/{name}")):
            assert (attrs.mode, attrs.rdev, attrs.size) == (mode, device, 0), name
    assert listing["plain"].is_file

    # chmod, utimens and rename rewrite them with their mark: still special afterwards.
    again.chmod("/d/fifo", 0o600)
    again.utimens("/d/chr", 1_000_000_000, 2_000_000_000)
    again.rename("/d/blk", "/d/blk2")
    again.rename("/d", "/e")
    fresh = dict(make_fs().readdir("/e"))
    assert fresh["fifo"].mode == FIFO | 0o600
    assert (fresh["chr"].mode, fresh["chr"].rdev, fresh["chr"].mtime_ns) == \
        (CHAR | 0o600, os.makedev(1, 3), 2_000_000_000)
    assert (fresh["blk2"].mode, fresh["blk2"].rdev) == (BLOCK | 0o660, os.makedev(8, 1))
    again.unlink("/e/sock")
    again.fsyncdir("/e")
    assert keys(s3_client, bucket_name) == ["e/", "e/blk2", "e/chr", "e/fifo", "e/plain"]


def test_a_listing_heads_only_the_marked_empty_objects(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests) -> None:
    populate(s3_client, bucket_name, [f"d/empty{index:02d}" for index in range(30)], b"")
    make_fs().mknod("/d/fifo", FIFO, 0)
    fs = make_fs()
    fs.getattr("/d")
    requests.take()
    listed = dict(fs.readdir("/d"))
    assert [params["Key"] for name, params in requests.seen if name == "HeadObject"] \
        == ["d/fifo"], "empty files cost no HEAD, the FIFO one"
    assert listed["fifo"].mode == FIFO and listed["empty07"].is_file
    requests.take()
    fails_with(errno.ENODATA, fs.getxattr, "/d/fifo", "user.none")
    assert requests.take() == {}, "what the listing's HEAD told is cached"


def test_special_files_written_by_s3fs_need_symlink_scan_small(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    """s3fs writes a FIFO with a plain PUT: with the default scan a listing cannot tell it
    from an empty file (both show as files, listing and lookup alike); with "small" every
    empty object is HEADed and it is a FIFO."""
    s3_client.put_object(Bucket=bucket_name, Key="fifo", Body=b"",
                         Metadata={"mode": str(FIFO | 0o644), "uid": "0", "gid": "0"})
    default = make_fs()
    assert stat.S_ISREG(dict(default.readdir("/"))["fifo"].mode)
    assert stat.S_ISREG(make_fs().getattr("/fifo").mode)
    assert dict(make_fs(symlink_scan="small").readdir("/"))["fifo"].mode == FIFO | 0o644
    assert make_fs(symlink_scan="small").getattr("/fifo").mode == FIFO | 0o644


def test_extended_attributes_are_stored_as_s3fs_stores_them(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    fs = make_fs()
    write_file(fs, "/f", b"content")
    fs.mkdir("/d", 0o755)
    for path in ("/f", "/d"):
        fs.setxattr(path, "user.a", b"\x00\xff", 0)
        fs.setxattr(path, "user.text", b"hello", 0)
    for key in ("f", "d/"):
        assert metadata(s3_client, bucket_name, key)["xattr"] == S3FS_XATTR, key
    assert body(s3_client, bucket_name, "f") == b"content"

    again = make_fs()
    for path in ("/f", "/d"):
        assert again.listxattr(path) == ["user.a", "user.text"]
        assert again.getxattr(path, "user.a") == b"\x00\xff"
        fails_with(errno.ENODATA, again.getxattr, path, "user.missing")
        fails_with(errno.EEXIST, again.setxattr, path, "user.a", b"x", os.XATTR_CREATE)
        fails_with(errno.ENODATA, again.setxattr, path, "user.new", b"x", os.XATTR_REPLACE)
        again.setxattr(path, "user.a", b"replaced", os.XATTR_REPLACE)
        again.setxattr(path, "user.empty", b"", os.XATTR_CREATE)
        again.removexattr(path, "user.text")
        fails_with(errno.ENODATA, again.removexattr, path, "user.text")
    fresh = make_fs()
    for path in ("/f", "/d"):
        assert fresh.listxattr(path) == ["user.a", "user.empty"]
        assert (fresh.getxattr(path, "user.a"), fresh.getxattr(path, "user.empty")) == \
            (b"replaced", b"")
        fresh.removexattr(path, "user.a")
        fresh.removexattr(path, "user.empty")
    for key in ("f", "d/"):
        assert "xattr" not in metadata(s3_client, bucket_name, key), "the last one goes"
    assert make_fs().listxattr("/f") == []


def test_extended_attributes_limits_and_name_spaces(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    fs = make_fs()
    write_file(fs, "/f", b"x")
    fs.setxattr("/f", "user.big", b"v" * 1200, 0)
    fails_with(errno.ENOSPC, fs.setxattr, "/f", "user.more", b"w" * 600, 0)
    assert make_fs().listxattr("/f") == ["user.big"], "a refused change changes nothing"
    for name in ("system.posix_acl_access", "security.selinux"):
        fails_with(errno.EOPNOTSUPP, fs.setxattr, "/f", name, b"x", 0)
        fails_with(errno.EOPNOTSUPP, fs.getxattr, "/f", name)
    fails_with(errno.EOPNOTSUPP, fs.setxattr, "/", "user.a", b"x", 0)
    fails_with(errno.ENOENT, fs.setxattr, "/missing", "user.a", b"x", 0)
    assert fs.listxattr("/") == []
    fails_with(errno.EROFS, make_fs(read_only=True).setxattr, "/f", "user.a", b"x", 0)


def test_extended_attributes_written_by_s3fs_and_on_a_file_being_written(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="s3fs", Body=b"from s3fs",
                         Metadata={"mode": str(stat.S_IFREG | 0o644), "xattr": S3FS_XATTR})
    fs = make_fs()
    assert fs.listxattr("/s3fs") == ["user.a", "user.text"]
    assert fs.getxattr("/s3fs", "user.text") == b"hello"
    # cp --preserve=xattr sets them through the descriptor it is writing: they go with the
    # upload at close, and a later rewrite of the content keeps them.
    fh = fs.create("/new", 0o644, os.O_WRONLY | os.O_CREAT)
    fs.write(fh, b"data", 0)
    fs.setxattr("/new", "user.copied", b"\x01\x02", 0)
    assert fs.getxattr("/new", "user.copied") == b"\x01\x02"
    fs.flush(fh)
    fs.release(fh)
    write_file(make_fs(), "/new", b"rewritten")
    assert make_fs().getxattr("/new", "user.copied") == b"\x01\x02"
    assert body(s3_client, bucket_name, "new") == b"rewritten"


def test_extended_attributes_of_a_file_being_written_survive_a_crash(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    """Set on a file still staged (never uploaded), then kill -9: the next mount's
    recovery uploads the file with them, and with its mode."""
    fs = make_fs()
    fh = fs.create("/new", 0o644, os.O_WRONLY | os.O_CREAT)
    fs.write(fh, b"data", 0)
    fs.setxattr("/new", "user.a", b"\x00\xff", 0)
    fs.setxattr("/new", "user.text", b"hello", 0)
    fs.chmod("/new", 0o600)
    crashed(fs)  # the file never closed, never uploaded
    assert keys(s3_client, bucket_name) == []
    recovered = make_fs(retry_first_delay=0.01)
    wait_until(lambda: recovered.pending_uploads() == [], timeout=30,
               message="the recovered file to be uploaded")
    stored = metadata(s3_client, bucket_name, "new")
    assert stored["xattr"] == S3FS_XATTR, "stored as s3fs stores them"
    assert int(stored["mode"]) == stat.S_IFREG | 0o600
    assert body(s3_client, bucket_name, "new") == b"data"
    again = make_fs()
    assert again.getxattr("/new", "user.a") == b"\x00\xff"
    assert again.listxattr("/new") == ["user.a", "user.text"]


def test_attribute_changes_keep_metadata_other_tools_wrote(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    for key in ("folder/", "file"):
        s3_client.put_object(Bucket=bucket_name, Key=key, Body=b"",
                             Metadata={"foreign": "keepme", "mode": "16877"
                                       if key.endswith("/") else "33188"})
    fs = make_fs()
    for path in ("/folder", "/file"):
        fs.chmod(path, 0o700)
        fs.chown(path, 123, 456)
        fs.utimens(path, 1_000_000_000, 1_000_000_000)
        fs.setxattr(path, "user.a", b"1", 0)
    for key in ("folder/", "file"):
        stored = metadata(s3_client, bucket_name, key)
        assert stored["foreign"] == "keepme", key
        assert (stored["uid"], stored["gid"], stored["mtime"]) == ("123", "456", "1")
        assert int(stored["mode"]) & 0o7777 == 0o700 and "xattr" in stored
    again = make_fs()
    assert again.getattr("/folder").mode == stat.S_IFDIR | 0o700
    assert again.getxattr("/folder", "user.a") == b"1"


def test_content_type_is_guessed_on_upload_and_kept(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, bucket: Bucket) -> None:
    fs = make_fs()
    write_file(fs, "/page.html", b"<p>hi</p>")
    write_file(fs, "/notes.txt", b"notes")
    write_file(fs, "/noext", b"?")
    fs.mkdir("/d", 0o755)

    def content_type(key: str) -> str:
        return str(head(s3_client, bucket_name, key)["ContentType"])

    assert content_type("page.html") == "text/html"
    assert content_type("notes.txt") == "text/plain"
    assert content_type("noext") == "binary/octet-stream"  # S3's default
    fs.chmod("/page.html", 0o600)  # a copy onto itself that replaces the metadata
    fs.setxattr("/notes.txt", "user.a", b"1", 0)
    assert content_type("page.html") == "text/html"
    assert content_type("notes.txt") == "text/plain"
    fs.rename("/page.html", "/d/moved.html")
    fs.rename("/d", "/e")
    assert content_type("e/moved.html") == "text/html"
    s3_client.put_object(Bucket=bucket_name, Key="custom.txt", Body=b"x",
                         ContentType="text/plain; charset=utf-8")
    make_fs().chmod("/custom.txt", 0o600)
    assert content_type("custom.txt") == "text/plain; charset=utf-8", "another tool's kept"
    bucket.add_string("a,b\n", "table.csv")  # the SDK's API, which the CLI uses
    assert content_type("table.csv") == "text/csv"

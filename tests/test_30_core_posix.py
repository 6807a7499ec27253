"""The core's POSIX view beyond what the bucket stores: inode numbers kept across renames
(also libfuse's rename of an open file that is unlinked) and folder times that follow
their entries without a request (SEMANTICS.md, *Inode numbers* and *Folder times*)."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

import pytest
import test_30_core_speed as speed
from fs_calls import write_file
from test_30_core_speed import Requests

from qarnotfs.fs.errors import FsError

if TYPE_CHECKING:
    from fs_helpers import MakeFs
    from mypy_boto3_s3 import S3Client

pytest_plugins = ("fs_helpers",)
requests = speed.requests  # the fixture counting the requests a client sends


def test_numbers_follow_renames_and_an_unlinked_open_file(make_fs: MakeFs) -> None:
    fs = make_fs()
    fs.mkdir("/d", 0o755)
    write_file(fs, "/d/f", b"x")
    write_file(fs, "/g", b"y")
    folder, file, other = fs.inode("/d"), fs.inode("/d/f"), fs.inode("/g")
    assert fs.inodes_of("/d", [".", "..", "f"]) == [folder, fs.inode("/"), file]
    fs.rename("/d", "/e")
    assert (fs.inode("/e"), fs.inode("/e/f")) == (folder, file)
    with pytest.raises(FsError) as refused:
        fs.rename("/g", "/e")  # a file onto a folder: refused, nothing changes
    assert refused.value.errno == errno.EISDIR and fs.inode("/g") == other
    fh = fs.open("/g", os.O_RDONLY)
    fs.rename("/g", "/.fuse_hidden0000000000000001")  # libfuse: unlink of an open file
    assert fs.inode(None, fh) == other
    fs.release(fh)
    entries = len(fs.inodes)
    fs.unlink("/.fuse_hidden0000000000000001")  # libfuse, after the last close
    assert len(fs.inodes) == entries - 1, "no entry is kept for a name that is gone"


def test_folder_times_change_in_the_view_without_a_request(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str) -> None:
    fs = make_fs()
    fs.mkdir("/d", 0o755)
    stored = s3_client.head_object(Bucket=bucket_name, Key="d/")["Metadata"]
    last = fs.getattr("/d")
    for change in (lambda: write_file(fs, "/d/f", b""), lambda: fs.mkdir("/d/s", 0o755),
                   lambda: fs.symlink("f", "/d/l"), lambda: fs.rename("/d/f", "/d/g"),
                   lambda: fs.unlink("/d/g"), lambda: fs.rmdir("/d/s")):
        change()
        now = fs.getattr("/d")
        assert now.mtime_ns > last.mtime_ns and now.ctime_ns > last.ctime_ns
        assert next(a for n, a in fs.readdir("/") if n == "d").mtime_ns == now.mtime_ns
        last = now
    assert s3_client.head_object(Bucket=bucket_name, Key="d/")["Metadata"] == stored
    assert make_fs().getattr("/d").mtime_ns < last.mtime_ns, "another mount: stored times"
    fs.utimens("/d", None, 1_000_000_000)  # an explicit time wins over the view's
    assert fs.getattr("/d").mtime_ns == 1_000_000_000
    assert stat.S_ISDIR(fs.getattr("/d").mode)


def test_a_folder_link_count_is_two_plus_its_subfolders_when_listed(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, requests: Requests) -> None:
    """st_nlink of a folder is 2 + its sub-folders, as on ext4, wherever the mount holds
    its listing, following mkdir, rmdir and renames in and out; 1 ("unknown", as btrfs
    and s3fs say) where it does not, which costs no request."""
    fs = make_fs()
    fs.mkdir("/a", 0o755)
    fs.mkdir("/b", 0o755)
    links = lambda path: fs.getattr(path).nlink  # noqa: E731
    assert (links("/a"), links("/b")) == (2, 2), "a new folder is known empty"
    fs.mkdir("/a/s", 0o755)
    write_file(fs, "/a/f", b"x")
    fs.symlink("f", "/a/l")
    assert links("/a") == 3, "files and links are no sub-folders"
    fs.rename("/a/s", "/b/s")
    assert (links("/a"), links("/b")) == (2, 3), "a folder moved out and in"
    fs.rename("/b/s", "/b/t")
    fs.mkdir("/b/t/u", 0o755)
    assert (links("/b"), links("/b/t")) == (3, 3)
    fs.rename("/b/t", "/a/t")  # a folder moved with what it holds
    fs.rmdir("/a/t/u")
    assert (links("/a"), links("/b")) == (3, 2)
    fs.rmdir("/a/t")
    assert links("/a") == 2
    fs.readdir("/")
    assert links("/") == 4

    # Another mount: a folder it has not listed says 1, without asking the bucket.
    s3_client.put_object(Bucket=bucket_name, Key="c/x/y/file", Body=b"")  # no markers
    s3_client.put_object(Bucket=bucket_name, Key="c/z/", Body=b"")
    other = make_fs()
    other.getattr("/c")
    requests.take()
    assert other.getattr("/c").nlink == 1
    assert requests.take() == {}, "a folder's stat never lists it"
    listed = dict(other.readdir("/c"))
    assert other.getattr("/c").nlink == 4 and listed["."].nlink == 4
    assert (listed["x"].nlink, listed["z"].nlink) == (3, 2), "the listing's tree counts"
    assert other.getattr("/c/x/y").nlink == 2

"""Units: s3fs's extended attribute encoding, the type rule for special files, the
metadata a change of attributes writes back, and the Content-Type guess."""

from __future__ import annotations

import errno
import logging
import stat
from datetime import datetime, timezone

import pytest

from qarnotfs.bucket import content_type_args
from qarnotfs.fs import xattrs
from qarnotfs.fs.attrs import (
    Attributes,
    Defaults,
    merged_metadata,
    needs_head,
    object_attributes,
    object_type,
)
from qarnotfs.fs.errors import FsError
from qarnotfs.objects import ObjectInfo

MARKED = '"0123456789abcdef0123456789abcdef-1"'
PLAIN = '"d41d8cd98f00b204e9800998ecf8427e"'
FIFO = stat.S_IFIFO | 0o644


def test_xattr_encoding_is_s3fs_s_byte_for_byte() -> None:
    # s3fs-fuse 1.90 wrote exactly this for setfattr -n user.a -v 0x00ff, -n user.text -v hello.
    stored = "%7B%22user.a%22%3A%22AP8%3D%22%2C%22user.text%22%3A%22aGVsbG8%3D%22%7D"
    values = {"user.text": b"hello", "user.a": b"\x00\xff"}
    assert xattrs.encode(values) == stored
    assert xattrs.decode(stored) == values
    assert xattrs.encode({}) == "" and xattrs.decode("") == {}
    odd = {"user.été": b"", "user.x/y": bytes(range(256))}
    assert xattrs.decode(xattrs.encode(odd)) == odd
    assert "/" in xattrs.encode(odd) and "%C3%A9" in xattrs.encode(odd)


def test_xattr_values_that_are_not_s3fs_s_format_are_ignored_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert xattrs.decode("not json") == {}
        assert xattrs.decode("%5B%5D") == {}  # a JSON list
        assert xattrs.decode("%7B%22user.a%22%3A%22%21%21%22%7D") == {}  # not base64
    assert len([r for r in caplog.records if "s3fs's format" in r.getMessage()]) == 3


def errno_of(call: object, *args: object) -> int:
    with pytest.raises(FsError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.errno


def test_xattr_flags_name_spaces_and_room() -> None:
    raw = xattrs.with_value("", "user.a", b"1", 0)
    assert errno_of(xattrs.with_value, raw, "user.a", b"2", xattrs.XATTR_CREATE) == errno.EEXIST
    assert errno_of(xattrs.with_value, raw, "user.b", b"2", xattrs.XATTR_REPLACE) \
        == errno.ENODATA
    assert xattrs.value(xattrs.with_value(raw, "user.a", b"2", xattrs.XATTR_REPLACE),
                        "user.a") == b"2"
    assert errno_of(xattrs.without, raw, "user.b") == errno.ENODATA
    assert xattrs.without(raw, "user.a") == ""
    for name in ("security.capability", "system.posix_acl_access", "other.x"):
        assert errno_of(xattrs.value, raw, name) == errno.EOPNOTSUPP
    from_s3fs = xattrs.encode({"user.a": b"1", "security.selinux": b"label"})
    assert xattrs.names(from_s3fs) == ["user.a"], "unsupported names are kept, not listed"
    assert "security.selinux" in xattrs.decode(xattrs.with_value(from_s3fs, "user.b", b"", 0))
    xattrs.require_room({"k": "v" * 2047})
    assert errno_of(xattrs.require_room, {"k": "v" * 2048}) == errno.ENOSPC


def test_special_files_need_the_mark_unless_the_scan_is_small() -> None:
    mode = {"mode": str(FIFO)}
    assert object_type(0, mode, MARKED, "marked") == stat.S_IFIFO
    assert object_type(0, mode, PLAIN, "marked") == stat.S_IFREG
    assert object_type(0, mode, PLAIN, "small") == stat.S_IFIFO
    assert object_type(5, mode, MARKED, "small") == stat.S_IFREG, "a FIFO holds nothing"
    assert object_type(5, {"mode": str(stat.S_IFLNK | 0o777)}, MARKED, "marked") == \
        stat.S_IFLNK
    assert object_type(0, {"mode": str(stat.S_IFLNK | 0o777)}, MARKED, "marked") == \
        stat.S_IFREG, "an empty link target is no link"
    assert object_type(0, {"mode": str(stat.S_IFDIR | 0o755)}, MARKED, "small") == \
        stat.S_IFREG, "a folder is a key ending in /"
    assert needs_head(0, MARKED, "marked") and not needs_head(0, PLAIN, "marked")
    assert needs_head(0, PLAIN, "small") and not needs_head(4096, MARKED, "small")


def test_a_device_s_number_comes_from_rdev() -> None:
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    device = {"mode": str(stat.S_IFCHR | 0o600), "rdev": "259"}
    info = ObjectInfo("dev", 0, MARKED, when, metadata=device)
    attrs = object_attributes(info, Defaults(0, 0))
    assert (attrs.mode, attrs.rdev, attrs.to_stat()["st_rdev"]) == \
        (stat.S_IFCHR | 0o600, 259, 259)
    plain = ObjectInfo("file", 0, PLAIN, when, metadata=device)
    assert object_attributes(plain, Defaults(0, 0)).rdev == 0, "a regular file has none"


def test_metadata_written_back_keeps_other_tools_keys_and_drops_removed_ones() -> None:
    attrs = Attributes(stat.S_IFREG | 0o600, 0, 1, 2, 0, 0, 0)
    stored = {"foreign": "keepme", "mode": "33188", "xattr": "%7B%7D", "rdev": "5",
              "sha1-hash": "abc"}
    written = merged_metadata(stored, attrs)
    assert written["foreign"] == "keepme" and written["sha1-hash"] == "abc"
    assert written["mode"] == str(stat.S_IFREG | 0o600)
    assert "xattr" not in written and "rdev" not in written


def test_content_type_is_guessed_from_the_name_or_kept() -> None:
    assert content_type_args("a/page.html") == {"ContentType": "text/html"}
    assert content_type_args("a/noext") == {} and content_type_args("dir.txt/") == {}
    assert content_type_args("x.txt", "text/plain; charset=utf-8") == \
        {"ContentType": "text/plain; charset=utf-8"}

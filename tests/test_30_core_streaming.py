"""Early parts (streaming.py): a large file's parts go to the bucket while it is written,
so that close waits only for the tail. Checked in the core against a real server: which
parts are sent when (the storage's own ListParts before close), what the object holds
after close, and that a write, truncate, chmod, utimens or unlink during the writing
loses nothing and leaves no unfinished upload behind."""

from __future__ import annotations

import os
import stat
import threading
from typing import TYPE_CHECKING, Any

import pytest
from mounting import wait_until

from qarnotfs.fs.core import Filesystem

if TYPE_CHECKING:
    from fs_helpers import MakeFs
    from mypy_boto3_s3 import S3Client

pytest_plugins = ("fs_helpers",)

MIB = 1 << 20
PART = 5 * MIB  # the smallest part S3 accepts: the tests stay small
CREATE = os.O_WRONLY | os.O_CREAT


class SentParts:
    """The part numbers the storage acknowledged, in order, and those sent by close."""

    def __init__(self, fs: Filesystem, monkeypatch: pytest.MonkeyPatch) -> None:
        self.numbers: list[int] = []
        self.closing = False
        self.during_close: list[int] = []
        self._lock = threading.Lock()
        real = fs.bucket.upload_part

        def upload_part(key: str, upload_id: str, number: int, data: bytes) -> str:
            closing = self.closing  # when the request started
            etag = real(key, upload_id, number, data)
            with self._lock:
                self.numbers.append(number)
                if closing:
                    self.during_close.append(number)
            return etag

        monkeypatch.setattr(fs.bucket, "upload_part", upload_part)

    def wait_for(self, *numbers: int) -> None:
        wait_until(lambda: sorted(self.numbers) == sorted(numbers), timeout=30,
                   message=f"parts {numbers} to be sent while the file is open")

    def close(self, fs: Filesystem, fh: int) -> None:
        self.closing = True
        fs.release(fh)


def write_in_chunks(fs: Filesystem, fh: int, data: bytes, chunk: int = MIB,
                    start: int = 0) -> None:
    for offset in range(0, len(data), chunk):
        fs.write(fh, data[offset:offset + chunk], start + offset)


def written_in_runs(make_fs: MakeFs, monkeypatch: pytest.MonkeyPatch, path: str,
                    parts: int, mode: int = 0o644) -> tuple[Filesystem, SentParts, int, bytes]:
    """A file of ``parts`` whole parts and 1 MiB more, written front to back and left
    open once the whole parts were sent: (fs, sent parts, handle, data)."""
    fs = make_fs(part_size=PART)
    sent = SentParts(fs, monkeypatch)
    data = os.urandom(parts * PART + MIB)
    fh = fs.create(path, stat.S_IFREG | mode, CREATE)
    write_in_chunks(fs, fh, data)
    sent.wait_for(*range(1, parts + 1))
    return fs, sent, fh, data


def body(s3_client: S3Client, bucket_name: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket_name, Key=key)["Body"].read()


def uploads(s3_client: S3Client, bucket_name: str) -> list[Any]:
    return list(s3_client.list_multipart_uploads(Bucket=bucket_name).get("Uploads", []))


def test_parts_go_while_the_file_is_written_and_close_sends_the_tail(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs, sent, fh, data = written_in_runs(make_fs, monkeypatch, "/big", 3, mode=0o640)
    [upload] = uploads(s3_client, bucket_name)  # the storage holds them before close
    held = s3_client.list_parts(Bucket=bucket_name, Key="big", UploadId=upload["UploadId"])
    assert [part["PartNumber"] for part in held["Parts"]] == [1, 2, 3]
    assert "big" not in [o["Key"] for o in
                         s3_client.list_objects_v2(Bucket=bucket_name).get("Contents", [])]

    sent.close(fs, fh)

    assert sent.during_close == [4]  # only the tail
    assert body(s3_client, bucket_name, "big") == data
    metadata = s3_client.head_object(Bucket=bucket_name, Key="big")["Metadata"]
    assert int(metadata["mode"]) == stat.S_IFREG | 0o640
    assert "mtime" not in metadata  # its LastModified stands for it (SEMANTICS.md)
    assert uploads(s3_client, bucket_name) == []
    assert fs.getattr("/big").size == len(data)


def test_a_part_written_again_after_it_was_sent_is_sent_again_by_close(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs, sent, fh, data = written_in_runs(make_fs, monkeypatch, "/patched", 2)
    fs.write(fh, b"HEADER", 0)  # a writer going back to fill in a header
    sent.close(fs, fh)
    assert sorted(sent.during_close) == [1, 3]
    assert body(s3_client, bucket_name, "patched") == b"HEADER" + data[6:]
    assert uploads(s3_client, bucket_name) == []


def test_random_writes_send_nothing_early(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs(part_size=PART)
    sent = SentParts(fs, monkeypatch)
    data = os.urandom(3 * PART)
    fh = fs.create("/random", stat.S_IFREG | 0o644, CREATE)
    for offset in reversed(range(0, len(data), MIB)):  # back to front: no run is a part
        fs.write(fh, data[offset:offset + MIB], offset)
    item = fs.items.get("/random")
    assert item is not None
    stream = item.stream
    assert stream is not None and stream.parts() == {} and stream.in_flight() == []
    assert uploads(s3_client, bucket_name) == []
    sent.close(fs, fh)
    assert sorted(sent.during_close) == [1, 2, 3]
    assert body(s3_client, bucket_name, "random") == data


def test_a_file_truncated_to_one_part_after_parts_went_is_one_put(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs, sent, fh, data = written_in_runs(make_fs, monkeypatch, "/shrunk", 2)
    fs.truncate("/shrunk", MIB, fh)
    sent.close(fs, fh)
    assert sent.during_close == []
    assert body(s3_client, bucket_name, "shrunk") == data[:MIB]
    fs.shutdown()  # aborts the upload given up
    assert uploads(s3_client, bucket_name) == []


def test_a_file_unlinked_while_its_parts_go_leaves_no_object_and_no_upload(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs, sent, fh, data = written_in_runs(make_fs, monkeypatch, "/gone", 2)
    fs.unlink("/gone")
    assert fs.read(fh, 10, PART) == data[PART:PART + 10]  # its handle still reads
    sent.close(fs, fh)
    assert sent.during_close == []
    fs.shutdown()
    assert s3_client.list_objects_v2(Bucket=bucket_name).get("Contents", []) == []
    assert uploads(s3_client, bucket_name) == []


def test_attributes_set_while_parts_go_reach_the_object(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What cp -p does: write, then fchmod and futimens, then close.
    fs, sent, fh, data = written_in_runs(make_fs, monkeypatch, "/kept-times", 2)
    fs.chmod("/kept-times", 0o600)
    fs.utimens("/kept-times", 1_500_000_000 * 10**9, 1_600_000_000 * 10**9)
    sent.close(fs, fh)
    assert sent.during_close == [3]
    assert body(s3_client, bucket_name, "kept-times") == data
    metadata = s3_client.head_object(Bucket=bucket_name, Key="kept-times")["Metadata"]
    assert int(metadata["mode"]) == stat.S_IFREG | 0o600
    assert float(metadata["mtime"]) == 1_600_000_000
    fs.shutdown()
    again = make_fs(part_size=PART)  # a remount
    attrs = again.getattr("/kept-times")
    assert (attrs.mode & 0o777, attrs.mtime_ns) == (0o600, 1_600_000_000 * 10**9)


def test_a_part_that_fails_early_is_sent_by_close(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from qarnotfs.exceptions import QarnotGenericException

    fs = make_fs(part_size=PART)
    real = fs.bucket.upload_part
    refused: list[int] = []

    def upload_part(key: str, upload_id: str, number: int, data: bytes) -> str:
        if number == 2 and not refused:
            refused.append(number)
            raise QarnotGenericException("injected: part 2 refused once")
        return real(key, upload_id, number, data)

    monkeypatch.setattr(fs.bucket, "upload_part", upload_part)
    data = os.urandom(3 * PART + MIB)
    fh = fs.create("/flaky", stat.S_IFREG | 0o644, CREATE)
    write_in_chunks(fs, fh, data)
    fs.release(fh)
    assert refused == [2]
    assert body(s3_client, bucket_name, "flaky") == data
    assert uploads(s3_client, bucket_name) == []

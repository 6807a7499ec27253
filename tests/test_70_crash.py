"""Crash safety: the staging journal, recovery after kill -9, resumed multipart uploads,
conflicts, background retries, ``qarnotfs status`` and what ``qarnotfs unmount`` waits for.

Every test uses a real kernel mount (``tests/mounting.py``) whose requests go through
:class:`faultproxy.FaultProxy`, which makes uploads fail or hang so a kill -9 lands at a
chosen moment. The moment is found by polling the mount's journal (SQLite, read with the
sqlite3 module as any reader would), never by sleeping. After the kill the stale mount is
cleared with ``fusermount3 -uz`` and the same bucket is mounted again with the same staging
folder; the bucket is then checked directly with boto3.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, payload
from mounting import Mount, bucket_bytes, bucket_keys, is_mounted, qarnotfs, wait_until

from qarnotfs.fs import status
from qarnotfs.fs.journal import JOURNAL_NAME, Entry, read_entries
from qarnotfs.fs.mount import UsageError, parse_o_options
from qarnotfs.fs.staging import slot_name, staged_copies

pytestmark = [pytest.mark.timeout(180), pytest.mark.mount]

MIB = 1024 * 1024
PART = 8 * MIB
FAIL_FAST = ("--retries", "0", "--connect-timeout", "2", "--read-timeout", "5")
NO_CACHE = ("--cache-ttl", "0", "--negative-ttl", "0", "--attr-timeout", "0",
            "--entry-timeout", "0")


@pytest.fixture
def env(s3_env: dict[str, str], proxy: FaultProxy) -> dict[str, str]:
    return {**s3_env, "QARNOT_STORAGE_URL": proxy.url}


class Mounts:
    """Successive mounts of one bucket on one mount point, sharing a staging folder."""

    def __init__(self, bucket: str, env: dict[str, str], tmp_path: Path) -> None:
        self.bucket = bucket
        self.env = env
        self.workdir = tmp_path / "w"
        self.workdir.mkdir()
        self.mountpoint = tmp_path / "mnt"
        self.current: Mount | None = None

    @property
    def slot(self) -> Path:
        return self.workdir / "staging" / slot_name(self.bucket, "")

    def start(self, *options: str) -> Mount:
        self.current = Mount(self.bucket, self.mountpoint, self.env, self.workdir,
                             [*NO_CACHE, *options]).start()
        return self.current

    def kill(self) -> None:
        """kill -9 the serving process, then clear the dead mount as an admin would."""
        assert self.current is not None and self.current.pid is not None
        os.kill(self.current.pid, signal.SIGKILL)
        assert status.wait_for_exit(self.current.pid, 30)
        subprocess.run(["fusermount3", "-uz", os.fspath(self.mountpoint)], check=True,
                       capture_output=True, timeout=30)
        assert not is_mounted(self.mountpoint)
        self.current.pid = None

    def entries(self) -> list[Entry]:
        return read_entries(self.slot)

    def part_numbers(self) -> list[int]:
        """The parts the journal records as acknowledged by the storage."""
        with contextlib.closing(sqlite3.connect(self.slot / JOURNAL_NAME)) as db:
            return sorted(row[0] for row in db.execute("SELECT number FROM parts"))

    def log(self) -> str:
        return self.current.log_text() if self.current else ""

    def cleanup(self) -> None:
        if self.current is not None:
            self.current.cleanup()


@pytest.fixture
def mounts(bucket_name: str, env: dict[str, str], tmp_path: Path) -> Iterator[Mounts]:
    made = Mounts(bucket_name, env, tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


def refusing_uploads(mounts: Mounts, proxy: FaultProxy) -> Mount:
    """A mount that gives up fast, on a storage that refuses every PUT (500)."""
    mount = mounts.start(*FAIL_FAST)
    proxy.inject("status", match=r"^PUT ", status=500, code="InternalError")
    return mount


WRITER = """
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
data = sys.stdin.buffer.read(int(sys.argv[3]))
view = memoryview(data)
while view:
    view = view[os.write(fd, view):]
print("written", flush=True)
if sys.argv[2] == "close":
    try:
        os.close(fd)
        print("closed", flush=True)
    except OSError as error:
        print(errno.errorcode[error.errno], flush=True)
else:
    sys.stdin.buffer.read()  # keep it open until killed
"""


def start_writer(path: Path, data: bytes, then: str) -> subprocess.Popen[bytes]:
    """A process writing ``data`` to ``path``, then closing it (``then="close"``) or
    keeping it open; it prints "written" once the bytes are in the mount."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, os.fspath(path), then,
                                str(len(data))],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write(data)
    if then == "close":
        process.stdin.close()
    else:
        process.stdin.flush()
    return process


def write_and_close(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through the mount; the outcome of close ("closed"/errno)."""
    process = start_writer(path, data, "close")
    assert process.stdout is not None
    out = process.stdout.read().decode().split()
    process.wait(timeout=120)
    assert out[0] == "written", out
    return out[1]


def no_multipart_uploads(client: Any, bucket: str) -> bool:
    return not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


# -- recovery after kill -9 --------------------------------------------------------------


def test_file_open_when_killed_is_uploaded_by_the_next_mount(
        mounts: Mounts, s3_client: Any, bucket_name: str) -> None:
    data = payload(700_000, "open")
    mounts.start()
    writer = start_writer(mounts.mountpoint / "unsaved.bin", data, "keep open")
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"written\n"
        [entry] = mounts.entries()  # journaled before the first byte was written
        assert (entry.path, entry.key, entry.state, entry.base_etag) == \
            ("/unsaved.bin", "unsaved.bin", "dirty", None)
        assert (entry.bucket, entry.prefix, entry.mode & 0o777) == (bucket_name, "", 0o640)
        mounts.kill()
    finally:
        writer.kill()
        writer.wait(timeout=30)
    assert "unsaved.bin" not in bucket_keys(s3_client, bucket_name)
    [kept] = staged_copies(mounts.workdir / "staging")
    assert kept.read_bytes() == data and kept.stat().st_mode & 0o777 == 0o600
    assert mounts.slot.stat().st_mode & 0o777 == 0o700
    assert (mounts.slot / JOURNAL_NAME).stat().st_mode & 0o777 == 0o600
    assert {p.stat().st_mode & 0o777 for p in mounts.slot.iterdir()} == {0o600}  # -wal, -shm

    mount = mounts.start()
    wait_until(lambda: "unsaved.bin" in bucket_keys(s3_client, bucket_name), timeout=30,
               message="the recovered file to be uploaded")
    assert bucket_bytes(s3_client, bucket_name, "unsaved.bin") == data
    head = s3_client.head_object(Bucket=bucket_name, Key="unsaved.bin")
    assert int(head["Metadata"]["mode"]) & 0o777 == 0o640
    wait_until(lambda: not mounts.entries(), timeout=10, message="the journal to empty")
    assert (mount.mountpoint / "unsaved.bin").read_bytes() == data
    assert staged_copies(mounts.workdir / "staging") == []
    assert "not uploaded; uploading them now: /unsaved.bin" in mount.log_text()
    mount.stop()  # a clean unmount removes the staging folder and its journal
    assert not mounts.slot.exists()


def test_failed_close_then_kill_is_uploaded_by_the_next_mount(
        mounts: Mounts, proxy: FaultProxy, s3_client: Any, bucket_name: str) -> None:
    data = payload(300_000, "failed close")
    refusing_uploads(mounts, proxy)
    assert write_and_close(mounts.mountpoint / "report.txt", data) == "EIO"
    wait_until(lambda: any(e.retries >= 2 for e in mounts.entries()), timeout=30,
               message="a background retry to fail too")
    [entry] = mounts.entries()
    assert entry.state == "uploading" and "InternalError" in (entry.last_error or "")
    mounts.kill()
    proxy.clear()

    mounts.start()
    wait_until(lambda: "report.txt" in bucket_keys(s3_client, bucket_name), timeout=30,
               message="the recovered file to be uploaded")
    assert bucket_bytes(s3_client, bucket_name, "report.txt") == data
    wait_until(lambda: not mounts.entries(), timeout=10, message="the journal to empty")


def test_interrupted_multipart_upload_resumes_without_resending_parts(
        mounts: Mounts, proxy: FaultProxy, s3_client: Any, bucket_name: str) -> None:
    data = payload(2 * PART + 3 * MIB, "multipart")
    mounts.start("--retries", "0", "--read-timeout", "60")
    proxy.inject("delay", match=r"^PUT .*partNumber=2\b", seconds=float("inf"))
    writer = start_writer(mounts.mountpoint / "big.bin", data, "close")
    try:
        wait_until(lambda: mounts.part_numbers() == [1, 3], timeout=60,
                   message="parts 1 and 3 to be acknowledged while part 2 hangs")
        [entry] = mounts.entries()
        assert entry.state == "uploading" and entry.upload_id
        mounts.kill()
    finally:
        writer.kill()
        writer.wait(timeout=30)
    proxy.clear()
    assert "big.bin" not in bucket_keys(s3_client, bucket_name)

    mounts.start()
    wait_until(lambda: "big.bin" in bucket_keys(s3_client, bucket_name), timeout=60,
               message="the resumed upload to complete")
    assert bucket_bytes(s3_client, bucket_name, "big.bin") == data
    assert proxy.count("forward", r"^PUT .*partNumber=1\b") == 1
    assert proxy.count("forward", r"^PUT .*partNumber=3\b") == 1
    assert proxy.count("forward", r"^PUT .*partNumber=2\b") == 1  # only the missing one
    assert proxy.count("forward", r"^POST [^?]*\?uploads") == 1  # the same upload, resumed
    assert proxy.count("forward", r"^GET [^?]*\?.*uploadId=") >= 1  # ListParts
    assert "resuming the upload of 'big.bin': 2 of 3 parts already sent" in mounts.log()
    wait_until(lambda: no_multipart_uploads(s3_client, bucket_name), timeout=10,
               message="no multipart upload left")


def test_parts_sent_while_the_file_was_written_survive_a_kill(
        mounts: Mounts, proxy: FaultProxy, s3_client: Any, bucket_name: str) -> None:
    data = payload(2 * PART + 3 * MIB, "streamed")
    mounts.start()
    writer = start_writer(mounts.mountpoint / "big.bin", data, "keep open")
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"written\n"
        # The writer holds the file open: these parts went while it was being written.
        wait_until(lambda: mounts.part_numbers() == [1, 2], timeout=60,
                   message="parts 1 and 2 to be sent before the file is closed")
        [upload] = s3_client.list_multipart_uploads(Bucket=bucket_name)["Uploads"]
        assert upload["Key"] == "big.bin"
        mounts.kill()
    finally:
        writer.kill()
        writer.wait(timeout=30)
    assert "big.bin" not in bucket_keys(s3_client, bucket_name)

    mounts.start()
    wait_until(lambda: "big.bin" in bucket_keys(s3_client, bucket_name), timeout=60,
               message="the recovered file to be uploaded")
    assert bucket_bytes(s3_client, bucket_name, "big.bin") == data
    for number in (1, 2, 3):  # each part crossed the network once, over two mounts
        assert proxy.count("forward", rf"^PUT .*partNumber={number}\b") == 1
    assert proxy.count("forward", r"^POST [^?]*\?uploads") == 1
    assert "resuming the upload of 'big.bin': 2 of 3 parts already sent" in mounts.log()
    head = s3_client.head_object(Bucket=bucket_name, Key="big.bin")
    assert int(head["Metadata"]["mode"]) & 0o777 == 0o640
    wait_until(lambda: no_multipart_uploads(s3_client, bucket_name), timeout=10,
               message="no multipart upload left")


@pytest.mark.parametrize("existed", [True, False], ids=["changed", "appeared"])
def test_object_changed_while_the_mount_was_dead_keeps_both(
        mounts: Mounts, proxy: FaultProxy, s3_client: Any, bucket_name: str,
        existed: bool) -> None:
    if existed:
        s3_client.put_object(Bucket=bucket_name, Key="doc.txt", Body=b"version 1\n")
    refusing_uploads(mounts, proxy)
    assert write_and_close(mounts.mountpoint / "doc.txt", b"local edit\n") == "EIO"
    [entry] = mounts.entries()
    assert (entry.base_etag is not None) == existed
    mounts.kill()
    proxy.clear()
    s3_client.put_object(Bucket=bucket_name, Key="doc.txt", Body=b"someone else's\n")

    mounts.start()
    conflict = re.compile(r"^doc\.txt\.qarnotfs-conflict-\d{8}T\d{6}Z-[\w-]+$")

    def conflict_copy() -> list[str]:
        return [k for k in bucket_keys(s3_client, bucket_name) if conflict.match(k)]

    wait_until(lambda: bool(conflict_copy()), timeout=30, message="the conflict copy")
    [name] = conflict_copy()
    assert bucket_bytes(s3_client, bucket_name, name) == b"local edit\n"
    assert bucket_bytes(s3_client, bucket_name, "doc.txt") == b"someone else's\n"
    assert f"keeping both, the local version goes to '{name}'" in mounts.log()
    assert sorted(os.listdir(mounts.mountpoint)) == sorted(["doc.txt", name])
    wait_until(lambda: not mounts.entries(), timeout=10, message="the journal to empty")


def test_unchanged_object_is_overwritten_without_conflict(
        mounts: Mounts, proxy: FaultProxy, s3_client: Any, bucket_name: str) -> None:
    s3_client.put_object(Bucket=bucket_name, Key="doc.txt", Body=b"version 1\n")
    refusing_uploads(mounts, proxy)
    assert write_and_close(mounts.mountpoint / "doc.txt", b"version 2\n") == "EIO"
    mounts.kill()
    proxy.clear()
    mounts.start()
    wait_until(lambda: bucket_bytes(s3_client, bucket_name, "doc.txt") == b"version 2\n",
               timeout=30, message="the recovered version")
    wait_until(lambda: not mounts.entries(), timeout=10, message="the journal to empty")
    assert bucket_keys(s3_client, bucket_name) == {"doc.txt"}


# -- background retry, status, unmount ---------------------------------------------------


def test_failed_close_reaches_the_bucket_by_background_retry_and_status_shows_it(
        mounts: Mounts, proxy: FaultProxy, s3_client: Any, bucket_name: str,
        env: dict[str, str]) -> None:
    mount = mounts.start(*FAIL_FAST)
    proxy.inject("status", match=r"^PUT ", status=503, code="SlowDown")
    first, second = payload(100_000, "a"), payload(250_000, "b")
    assert write_and_close(mount.mountpoint / "a.txt", first) == "EIO"
    assert write_and_close(mount.mountpoint / "b.txt", second) == "EIO"
    wait_until(lambda: all(e.retries >= 2 for e in mounts.entries()), timeout=30,
               message="background retries to have failed too")

    result = qarnotfs("status", mount.mountpoint, env=env, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{mount.mountpoint}\t{bucket_name}\tpid {mount.pid}"), lines
    assert lines[1].strip() == "2 pending upload(s), 350000 bytes:", lines
    pending = {line.split("\t")[0].strip(): line for line in lines[2:]}
    assert set(pending) == {"/a.txt", "/b.txt"}, lines
    assert "\t100000 bytes\tuploading\tretries " in pending["/a.txt"]
    assert "last error:" in pending["/b.txt"] and "SlowDown" in pending["/b.txt"]

    proxy.clear()  # the endpoint recovers: nobody touches the files
    wait_until(lambda: {"a.txt", "b.txt"} <= bucket_keys(s3_client, bucket_name),
               timeout=60, message="the background retries to upload both files")
    assert bucket_bytes(s3_client, bucket_name, "a.txt") == first
    assert bucket_bytes(s3_client, bucket_name, "b.txt") == second
    wait_until(lambda: staged_copies(mounts.workdir / "staging") == [], timeout=10,
               message="the staged copies to be freed")
    result = qarnotfs("status", mount.mountpoint, env=env, check=True)
    assert "no pending uploads" in result.stdout


def test_unmount_says_what_it_waits_for_and_the_next_mount_finishes(
        mounts: Mounts, proxy: FaultProxy, s3_client: Any, bucket_name: str,
        env: dict[str, str]) -> None:
    mount = refusing_uploads(mounts, proxy)
    data = payload(3 * MIB, "unmount")
    assert write_and_close(mount.mountpoint / "late.bin", data) == "EIO"
    result = qarnotfs("unmount", mount.mountpoint, "--timeout", "60", env=env)
    assert result.returncode == 1, result.stderr  # issue 14: what was not uploaded is named
    assert "waiting for 1 upload(s) (3.0 MiB): late.bin" in result.stderr
    assert "1 upload(s) (3.0 MiB): late.bin could not be uploaded" in result.stderr
    assert "waiting for 1 upload(s) (3.0 MiB): late.bin" in mount.log_text()
    assert [p.read_bytes() == data for p in staged_copies(mounts.workdir / "staging")] == [True]
    proxy.clear()
    mounts.start()
    wait_until(lambda: "late.bin" in bucket_keys(s3_client, bucket_name), timeout=30,
               message="the next mount to upload what the last one kept")
    assert bucket_bytes(s3_client, bucket_name, "late.bin") == data


def test_status_of_a_folder_that_is_not_a_mount_is_an_error(
        env: dict[str, str], tmp_path: Path) -> None:
    result = qarnotfs("status", tmp_path, env=env)
    assert result.returncode == 1
    assert "is not a live qarnotfs mount" in result.stderr


def test_deleting_a_pending_file_stops_its_retries(
        mounts: Mounts, proxy: FaultProxy, s3_client: Any, bucket_name: str,
        env: dict[str, str]) -> None:
    mount = refusing_uploads(mounts, proxy)
    assert write_and_close(mount.mountpoint / "gone.txt", b"x" * 1000) == "EIO"
    os.unlink(mount.mountpoint / "gone.txt")
    assert mounts.entries() == []
    assert staged_copies(mounts.workdir / "staging") == []
    proxy.clear()
    result = qarnotfs("unmount", mount.mountpoint, env=env)  # nothing left to upload
    assert result.returncode == 0 and "waiting" not in result.stderr, result.stderr
    assert "gone.txt" not in bucket_keys(s3_client, bucket_name)
    assert not mounts.slot.exists()


# -- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("connect_timeout=2.5,read_timeout=30,retries=0",
     {"connect_timeout": 2.5, "read_timeout": 30.0, "retries": 0}),
    ("retries=7", {"retries": 7}),
])
def test_timeout_and_retry_mount_options(spec: str, expected: dict[str, Any]) -> None:
    assert parse_o_options([spec]) == (expected, [])


@pytest.mark.parametrize("spec", ["retries=-1", "connect_timeout=soon", "read_timeout=-3"])
def test_bad_timeout_and_retry_mount_options_are_clear_errors(spec: str) -> None:
    with pytest.raises(UsageError, match=r"invalid value for \w+"):
        parse_o_options([spec])

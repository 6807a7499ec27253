"""Write-back against namespace changes (writeback.py, claims.py): the cases of issue #10,
each pinned in the core on a real server, with the storage held or failed on purpose.

Every test here failed on the core before the redesign (one mount-wide lock, the upload
lifecycle spread over core/uploader/streaming). Holding a request is done with a gate
(:class:`Gate`): the call blocks until the test opens it, so "while an upload is under
way" is a fact of the test, not a timing.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fs_calls import crashed, write_file
from mounting import wait_until

from qarnotfs.exceptions import QarnotGenericException
from qarnotfs.fs.errors import FsError
from qarnotfs.fs.journal import read_entries
from qarnotfs.fs.staging import staged_copies
from qarnotfs.fs.uploader import RetryQueue

if TYPE_CHECKING:
    from fs_helpers import MakeFs
    from mypy_boto3_s3 import S3Client

    from qarnotfs.fs.core import Filesystem

pytest_plugins = ("fs_helpers",)

MIB = 1 << 20
PART = 5 * MIB
CREATE = os.O_WRONLY | os.O_CREAT
UNRELATED_DEADLINE = 20.0
"""Seconds the unrelated operations get while another file's request hangs: far more
than they take (a few requests on loopback), far less than never."""


class Gate:
    """Wraps a storage call: matching calls block until :meth:`open`; ``entered`` is set
    when the first one is blocked."""

    def __init__(self, real: Callable[..., Any], matches: Callable[..., bool]) -> None:
        self.real = real
        self.matches = matches
        self.entered = threading.Event()
        self._open = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.matches(*args, **kwargs) and not self._open.is_set():
            self.entered.set()
            assert self._open.wait(60), "the test never opened the gate"
        return self.real(*args, **kwargs)

    def open(self) -> None:
        self._open.set()


def gate(fs: Filesystem, monkeypatch: pytest.MonkeyPatch, method: str,
         key: str | None = None) -> Gate:
    held = Gate(getattr(fs.bucket, method),
                lambda *args, **kwargs: key is None or args[0] == key)
    monkeypatch.setattr(fs.bucket, method, held)
    return held


def keys(s3_client: S3Client, bucket_name: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket_name)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def body(s3_client: S3Client, bucket_name: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket_name, Key=key)["Body"].read()


def multipart_uploads(s3_client: S3Client, bucket_name: str) -> list[str]:
    answer = s3_client.list_multipart_uploads(Bucket=bucket_name)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


def read_all(fs: Filesystem, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        return fs.read(fh, 1 << 30, 0)
    finally:
        fs.release(fh)


def write_in_order(fs: Filesystem, fh: int, data: bytes, start: int = 0) -> None:
    for offset in range(0, len(data), MIB):
        fs.write(fh, data[offset:offset + MIB], start + offset)


def streamed_parts(fs: Filesystem, path: str) -> None:
    """Wait until the early parts of ``path`` sent so far are acknowledged."""
    item = fs.items.get(path)
    assert item is not None and item.stream is not None and item.stream.started()
    wait(item.stream.in_flight())


def fails_with(code: int, call: Callable[..., Any], *args: Any) -> None:
    with pytest.raises(FsError) as caught:
        call(*args)
    assert caught.value.errno == code, errno.errorcode[caught.value.errno]


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:  # handed to the test
            logging.getLogger(__name__).exception("in a test thread")
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


# -- case 1: an O_TRUNC open after early parts ----------------------------------------------


@pytest.mark.parametrize("writer", ["second descriptor", "first writer goes on"])
def test_o_trunc_open_after_early_parts_gives_zeros_not_old_bytes(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, writer: str) -> None:
    fs = make_fs(part_size=PART)
    old = os.urandom(4 * PART)
    fh = fs.create("/big", stat.S_IFREG | 0o644, CREATE)
    write_in_order(fs, fh, old)
    streamed_parts(fs, "/big")  # parts 1-3 are in the bucket's upload
    tail = os.urandom(PART)
    second = fs.open("/big", os.O_WRONLY | os.O_TRUNC)
    if writer == "second descriptor":
        fs.write(second, tail, 3 * PART)
    else:
        fs.write(fh, tail, 3 * PART)
    fs.release(second)
    fs.release(fh)
    expected = bytes(3 * PART) + tail
    assert body(s3_client, bucket_name, "big") == expected
    assert read_all(make_fs(), "/big") == expected
    assert multipart_uploads(s3_client, bucket_name) == []


# -- case 2: a folder rename while a background upload of a file in it runs -----------------


def failed_close(fs: Filesystem, monkeypatch: pytest.MonkeyPatch, path: str,
                 data: bytes) -> None:
    """Write ``path``; its close fails (EIO) so that its upload is retried later."""
    real = fs.bucket.upload
    monkeypatch.setattr(fs.bucket, "upload", lambda *a, **k: (_ for _ in ()).throw(
        QarnotGenericException("injected: storage down")))
    fh = fs.create(path, stat.S_IFREG | 0o644, CREATE | os.O_TRUNC)
    fs.write(fh, data, 0)
    fails_with(errno.EIO, fs.flush, fh)
    fs.release(fh)
    monkeypatch.setattr(fs.bucket, "upload", real)


def test_folder_rename_during_a_background_retry_keeps_the_new_content(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs(retry_first_delay=3600)  # the test runs the retry itself
    fs.mkdir("/d", 0o755)
    write_file(fs, "/d/big", b"old content")
    failed_close(fs, monkeypatch, "/d/big", b"new content")
    held = gate(fs, monkeypatch, "upload", "d/big")
    item = fs.items.get("/d/big")
    assert item is not None
    retry, retry_errors = in_thread(lambda: fs.writeback.upload(item))
    assert held.entered.wait(30)
    rename, rename_errors = in_thread(lambda: fs.rename("/d", "/d2"))
    rename.join(1.0)
    assert rename.is_alive(), "the rename waits for the upload under way in its folder"
    held.open()
    retry.join(30)
    rename.join(30)
    assert not retry_errors and not rename_errors
    assert keys(s3_client, bucket_name) == ["d2/", "d2/big"]
    assert body(s3_client, bucket_name, "d2/big") == b"new content"
    assert read_entries(fs.staging_root) == [] and staged_copies(fs.staging_root) == []


def test_background_retry_after_a_folder_rename_goes_to_the_new_key(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs(retry_first_delay=3600)
    fs.mkdir("/d", 0o755)
    write_file(fs, "/d/big", b"old content")
    failed_close(fs, monkeypatch, "/d/big", b"new content")
    fs.rename("/d", "/d2")  # while the upload waits for its retry
    item = fs.items.get("/d2/big")
    assert item is not None and item.key == "d2/big"
    assert [entry.key for entry in read_entries(fs.staging_root)] == ["d2/big"]
    fs.writeback.upload(item)
    assert keys(s3_client, bucket_name) == ["d2/", "d2/big"]
    assert body(s3_client, bucket_name, "d2/big") == b"new content"
    assert read_all(make_fs(), "/d2/big") == b"new content"


def test_unlink_during_a_background_retry_sends_nothing_after_it(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs(retry_first_delay=3600)
    failed_close(fs, monkeypatch, "/f", b"doomed")
    item = fs.items.get("/f")
    assert item is not None
    fs.unlink("/f")
    fs.writeback.upload(item)  # a retry that comes late
    fs.fsyncdir("/")
    assert keys(s3_client, bucket_name) == []
    assert read_entries(fs.staging_root) == []


# -- case 3: two crashed mounts of one bucket both left a version of one file ---------------


def test_two_crashed_mounts_with_one_file_keep_both_versions(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = make_fs(), make_fs()
    failed_close(first, monkeypatch, "/f", b"first, older")
    failed_close(second, monkeypatch, "/f", b"second, newer")
    for fs in (first, second):
        crashed(fs)
    third = make_fs(retry_first_delay=0.01)
    wait_until(lambda: len(keys(s3_client, bucket_name)) == 2, timeout=30,
               message="both versions to be uploaded")
    names = keys(s3_client, bucket_name)
    assert names[0] == "f" and names[1].startswith("f.qarnotfs-conflict-")
    assert body(s3_client, bucket_name, "f") == b"second, newer"
    assert body(s3_client, bucket_name, names[1]) == b"first, older"
    wait_until(lambda: third.pending_uploads() == [], message="nothing pending")


# -- cases 4 and 5: a request hanging on one file never stalls another ----------------------


def unrelated_work(fs: Filesystem) -> None:
    """Operations on other paths: each must complete while file A's request hangs."""
    assert read_all(fs, "/cached") == b"cached"
    fs.mkdir("/other", 0o755)
    write_file(fs, "/other/new", b"new")
    fs.chmod("/cached", 0o600)
    fs.rename("/other/new", "/other/renamed")
    fs.unlink("/other/renamed")
    assert [name for name, _ in fs.readdir("/")][2:] == ["a", "cached", "other"]


def assert_unrelated_work_completes(fs: Filesystem) -> None:
    worker, errors = in_thread(lambda: unrelated_work(fs))
    worker.join(UNRELATED_DEADLINE)
    assert not worker.is_alive(), "an operation on an unrelated file waited for file A"
    assert not errors, errors


def test_a_hung_upload_stalls_nothing_but_its_own_file(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs()
    write_file(fs, "/cached", b"cached")
    held = gate(fs, monkeypatch, "upload", "a")
    fh = fs.create("/a", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"stuck", 0)
    close, close_errors = in_thread(lambda: fs.release(fh))
    assert held.entered.wait(30)
    touch, touch_errors = in_thread(lambda: fs.utimens("/a", None, 0))  # waits for "a" only
    assert_unrelated_work_completes(fs)
    held.open()
    for thread in (close, touch):
        thread.join(30)
    assert not close_errors and not touch_errors
    assert body(s3_client, bucket_name, "a") == b"stuck"


def test_unlink_of_an_open_file_downloads_without_stalling_others(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs()
    write_file(fs, "/cached", b"cached")
    write_file(fs, "/a", b"read after the unlink")
    reader = fs.open("/a", os.O_RDONLY)
    held = gate(fs, monkeypatch, "download", "a")
    unlink, unlink_errors = in_thread(lambda: fs.unlink("/a"))
    assert held.entered.wait(30)
    assert_unrelated_work_completes(fs)
    held.open()
    unlink.join(30)
    assert not unlink_errors
    assert fs.read(reader, 100, 0) == b"read after the unlink"
    fs.release(reader)
    fs.fsyncdir("/")
    assert "a" not in keys(s3_client, bucket_name)


# -- case 7: unlink has no ENOSPC ------------------------------------------------------------


def full_staging_disk(fs: Filesystem, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(label: str) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fs._staging, "new_path", full)
    monkeypatch.setattr(fs._staging, "new_file", full)


@pytest.mark.parametrize("how", ["unlink", "rename over it"])
def test_removing_an_open_file_on_a_full_staging_disk_still_removes_it(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str) -> None:
    fs = make_fs()
    write_file(fs, "/open", b"being read")
    write_file(fs, "/other", b"the new one")
    reader = fs.open("/open", os.O_RDONLY)
    full_staging_disk(fs, monkeypatch)
    with caplog.at_level(logging.ERROR):
        if how == "unlink":
            fs.unlink("/open")
        else:
            fs.rename("/other", "/open")
    assert "will read EIO" in caplog.text
    fails_with(errno.EIO, fs.read, reader, 100, 0)
    fs.release(reader)
    fs.fsyncdir("/")
    expected = [] if how == "unlink" else ["open"]
    assert [k for k in keys(s3_client, bucket_name) if k != "other"] == expected
    if how != "unlink":
        assert body(s3_client, bucket_name, "open") == b"the new one"


# -- cases 8 and 9: no multipart upload is left behind ----------------------------------------


@pytest.mark.parametrize("change", ["unlink", "rename"])
def test_giving_up_a_streamed_file_aborts_its_upload_at_once(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str, change: str) -> None:
    fs = make_fs(part_size=PART)
    fh = fs.create("/big", stat.S_IFREG | 0o644, CREATE)
    write_in_order(fs, fh, os.urandom(3 * PART))
    streamed_parts(fs, "/big")
    assert multipart_uploads(s3_client, bucket_name) == ["big"]
    if change == "unlink":
        fs.unlink("/big")
    else:
        fs.rename("/big", "/moved")
    wait_until(lambda: multipart_uploads(s3_client, bucket_name) == [], timeout=30,
               message="the given-up upload to be aborted while the mount runs")
    fs.release(fh)
    if change == "rename":
        assert len(body(s3_client, bucket_name, "moved")) == 3 * PART


def test_an_upload_replaced_after_a_failed_close_is_aborted(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = make_fs(part_size=PART, retry_first_delay=3600)
    real = fs.bucket.complete_multipart
    failures = [1]

    def frozen(*args: Any, **kwargs: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise QarnotGenericException("injected: storage frozen")
        return real(*args, **kwargs)

    monkeypatch.setattr(fs.bucket, "complete_multipart", frozen)
    fh = fs.create("/big", stat.S_IFREG | 0o644, CREATE)
    write_in_order(fs, fh, os.urandom(3 * PART))
    fails_with(errno.EIO, fs.flush, fh)
    write_in_order(fs, fh, os.urandom(3 * PART), start=3 * PART)  # the writer goes on
    streamed_parts(fs, "/big")
    fs.release(fh)
    assert s3_client.head_object(Bucket=bucket_name, Key="big")["ContentLength"] == 6 * PART
    wait_until(lambda: multipart_uploads(s3_client, bucket_name) == [], timeout=30,
               message="the replaced upload to be aborted")
    fs.shutdown()
    assert multipart_uploads(s3_client, bucket_name) == []


# -- case 10: no phantom pending upload after a full disk ------------------------------------


def test_a_full_disk_cannot_leave_a_committed_entry_in_the_journal(
        make_fs: MakeFs, s3_client: S3Client, bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from qarnotfs.fs.journal import RESERVE_NAME, SQLITE_FULL, Journal

    fs = make_fs()
    fh = fs.create("/big", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"what fitted", 0)
    reserve = fs.staging_root / RESERVE_NAME
    assert reserve.stat().st_size > 0
    real_transaction = Journal._transaction
    full = [True]

    def transaction(self: Journal) -> Any:
        if full[0] and reserve.exists():  # the disk is full until the reserve is freed
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = SQLITE_FULL  # type: ignore[attr-defined]
            raise error
        return real_transaction(self)

    monkeypatch.setattr(Journal, "_transaction", transaction)
    fs.release(fh)
    assert body(s3_client, bucket_name, "big") == b"what fitted"
    assert read_entries(fs.staging_root) == [], "no pending upload is left in the journal"
    assert fs.pending_uploads() == []
    monkeypatch.undo()
    write_file(fs, "/next", b"room again")  # the reserve is made again when there is room
    assert reserve.exists()


# -- case 11 ----------------------------------------------------------------------------------


def test_a_retry_already_due_is_announced_as_now_not_in_the_past() -> None:
    busy = threading.Event()
    release = threading.Event()

    def attempt(item: str) -> None:
        busy.set()
        release.wait(30)

    queue: RetryQueue[str] = RetryQueue(attempt, first_delay=10.0)
    try:
        queue.schedule("blocking", now=True)
        assert busy.wait(30)
        queue.schedule("waiting", now=True)  # due now, but the thread is busy
        assert queue.schedule("waiting") >= 0.0
    finally:
        release.set()
        queue.stop()


# -- claims ------------------------------------------------------------------------------------


def test_claims_exclude_only_what_overlaps() -> None:
    from qarnotfs.fs.claims import PathClaims, one, tree

    claims = PathClaims()
    entered = threading.Event()

    def take(path: str) -> None:
        with claims.hold(one(path)):
            entered.set()

    with ThreadPoolExecutor(2) as pool:
        with claims.hold(tree("/d")):
            pool.submit(take, "/e/f").result(10)  # unrelated: does not wait
            entered.clear()
            inside = pool.submit(take, "/d/f")
            assert not entered.wait(0.5), "a claim inside a held tree waits"
            with claims.hold(one("/d/g")):  # the holder's own thread is never blocked
                pass
        inside.result(10)
    assert entered.is_set() and claims.busy() == []


# -- files past 10,000 parts -------------------------------------------------------------------


def test_a_file_that_outgrows_the_parts_limit_is_sent_with_larger_parts(
        make_memfs: MakeFs, memstore: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 10,000-part limit, scaled down to 3 parts of 64 KiB (an 80 GiB file here is out of
    reach): the early parts went with the base size; at close the file is past the limit,
    so that upload is aborted and the file goes with parts large enough."""
    from qarnotfs.fs import storage, streaming

    monkeypatch.setattr(storage, "MAX_PARTS", 3)
    monkeypatch.setattr(streaming, "MAX_PARTS", 3)
    monkeypatch.setattr(storage, "MIB", 64 * 1024)  # part sizes grow by 64 KiB steps
    memstore._min_part_size = 1
    sizes: list[int] = []
    real = memstore.upload_part

    def upload_part(key: str, upload_id: str, number: int, data: Any) -> str:
        body = data if isinstance(data, bytes) else data.read()
        sizes.append(len(body))
        return str(real(key, upload_id, number, body))

    monkeypatch.setattr(memstore, "upload_part", upload_part)
    fs = make_memfs(part_size=64 * 1024)
    data = os.urandom(5 * 64 * 1024 + 100)
    fh = fs.create("/huge", stat.S_IFREG | 0o644, CREATE)
    write_in_order(fs, fh, data)
    # The early parts go in the background: the close must come after one went.
    wait_until(lambda: 64 * 1024 in sizes, message="an early part with the base size")
    fs.release(fh)
    assert memstore.contents()["huge"] == data
    assert max(sizes) == 2 * 64 * 1024, "then the whole file in 3 larger parts"
    wait_until(lambda: memstore.uploads() == {}, message="the first upload aborted")

"""The filesystem core on the in-memory store (``make_memfs``): the same core as on a
server, with the store's contents checked directly and faults injected by its hooks.

A few tests of ``test_30_core.py`` that need only a filesystem run here unchanged; the
others are their counterparts, checking the store where those check the server.
"""

from __future__ import annotations

import errno
import stat
from typing import TYPE_CHECKING

import pytest
import test_30_core as on_a_server
from mounting import wait_until
from test_30_core import CREATE, fails_with, names, read_file, write_file

from qarnotfs.exceptions import QarnotGenericException
from qarnotfs.fs.journal import read_entries

if TYPE_CHECKING:
    from fs_helpers import MakeFs
    from memstore import MemStore

pytest_plugins = ("fs_helpers",)


@pytest.mark.parametrize("test", [
    on_a_server.test_hard_links_are_refused,
    on_a_server.test_statfs_is_consistent,
    on_a_server.test_name_limits,
    on_a_server.test_bad_handles,
], ids=lambda test: test.__name__)
def test_the_server_tests_that_need_only_a_filesystem(test: object,
                                                      make_memfs: MakeFs) -> None:
    test(make_memfs)  # type: ignore[operator]


def test_create_write_close_uploads_with_metadata(make_memfs: MakeFs,
                                                  memstore: MemStore) -> None:
    fs = make_memfs()
    fh = fs.create("/hello.txt", stat.S_IFREG | 0o640, CREATE)
    assert fs.write(fh, b"hello ", 0) == 6
    assert fs.write(fh, b"world", 6) == 5
    assert memstore.contents() == {}, "nothing is uploaded before close"
    assert fs.pending_uploads() == ["/hello.txt"]
    fs.flush(fh)
    fs.release(fh)
    stored = memstore.object("hello.txt")
    assert stored is not None and stored.data == b"hello world"
    assert int(stored.metadata["mode"]) == stat.S_IFREG | 0o640
    mtime = fs.getattr("/hello.txt").mtime_ns
    assert stored.metadata["mtime"] == f"{mtime // 10**9}.{mtime % 10**9:09d}"
    again = make_memfs()
    assert again.getattr("/hello.txt").size == 11, "a listing tells the size"
    assert read_file(again, "/hello.txt") == b"hello world"
    assert again.getattr("/hello.txt").mode == stat.S_IFREG | 0o640, "the open's GET tells"


def test_rename_folder_with_children_and_an_open_file(make_memfs: MakeFs,
                                                      memstore: MemStore) -> None:
    fs = make_memfs()
    fs.mkdir("/src", 0o755)
    fs.mkdir("/src/sub", 0o755)
    for index in range(12):
        write_file(fs, f"/src/sub/f{index}", f"file {index}".encode())
    memstore.put("src/implicit/deep", b"deep")  # written by another client
    fh = fs.create("/src/open", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"staged", 0)
    fs.rename("/src", "/dst")
    fs.write(fh, b"!", 6)
    fs.release(fh)
    assert sorted(memstore.contents()) == sorted([
        "dst/", "dst/sub/", "dst/implicit/deep", "dst/open",
        *[f"dst/sub/f{index}" for index in range(12)]])
    assert memstore.contents()["dst/open"] == b"staged!"
    fails_with(errno.ENOENT, fs.getattr, "/src")
    assert names(make_memfs(), "/dst") == ["implicit", "open", "sub"]


def test_no_request_after_our_own_upload(make_memfs: MakeFs, memstore: MemStore) -> None:
    fs = make_memfs()
    fs.mkdir("/d", 0o755)
    memstore.faults.take()
    write_file(fs, "/d/f", b"12345")
    fs.symlink("f", "/d/l")
    assert fs.getattr("/d/f").size == 5 and fs.getattr("/d/l").is_link
    assert names(fs, "/d") == ["f", "l"]
    assert memstore.faults.take() == {"upload": 1, "put_marked": 1}, \
        "the mount knows what it wrote"


def test_rm_r_batches_deletes_and_keeps_the_order_of_requests(
        make_memfs: MakeFs, memstore: MemStore) -> None:
    for index in range(300):
        memstore.put(f"gone/f{index:03d}", b"w")
    fs = make_memfs(delete_delay=600)  # batches leave only when a request needs them
    listed = names(fs, "/gone")
    memstore.faults.take()
    for name in listed[:-1]:
        fs.unlink(f"/gone/{name}")
    assert memstore.faults.take() == {}, "unlink sends nothing by itself"
    fs.unlink(f"/gone/{listed[-1]}")
    # The last one checks whether the folder still has a key (to keep it with a marker):
    # the batch goes first.
    assert [method for method, _ in memstore.faults.log] == ["delete_many",
                                                             "has_objects_under", "put"]
    assert sorted(memstore.contents()) == ["gone/"]


def test_a_refused_batch_is_fsyncdirs_error_and_loses_nothing(
        make_memfs: MakeFs, memstore: MemStore) -> None:
    for key in ("d/a", "d/b"):
        memstore.put(key, b"x")
    fs = make_memfs(delete_delay=600)
    names(fs, "/d")
    memstore.faults.fail("delete_many", QarnotGenericException("AccessDenied"))
    fs.unlink("/d/a")
    with pytest.raises(QarnotGenericException):
        fs.fsyncdir("/d")
    assert memstore.contents()["d/a"] == b"x"


def test_failed_upload_is_retried_in_the_background(make_memfs: MakeFs,
                                                    memstore: MemStore) -> None:
    fs = make_memfs(retry_first_delay=0.01)
    failures = memstore.faults.fail("upload", QarnotGenericException("try again"), times=3)
    fh = fs.create("/later", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"eventually", 0)
    fails_with(errno.EIO, fs.flush, fh)  # the caller is told, once
    fs.release(fh)
    wait_until(lambda: "later" in memstore.contents(), timeout=10,
               message="the background retry")
    assert memstore.contents()["later"] == b"eventually"
    assert failures.fired == 3
    wait_until(lambda: fs.pending_uploads() == [], timeout=10, message="nothing pending")
    assert read_entries(fs.staging_root) == []


def test_a_hung_upload_holds_its_close_only(make_memfs: MakeFs, memstore: MemStore) -> None:
    """What the store's gate gives the write-back tests: a request held for as long as
    the test wants, the rest of the mount going on meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    fs = make_memfs()
    write_file(fs, "/cached", b"cached")
    gate = memstore.faults.hang("upload", key="stuck")
    fh = fs.create("/stuck", stat.S_IFREG | 0o644, CREATE)
    fs.write(fh, b"stuck", 0)
    with ThreadPoolExecutor(1) as pool:
        closing = pool.submit(fs.flush, fh)
        assert gate.wait_entered(5)
        assert read_file(fs, "/cached") == b"cached"
        fs.mkdir("/elsewhere", 0o755)
        assert not closing.done()
        gate.release()
        closing.result(timeout=10)
    fs.release(fh)
    assert memstore.contents()["stuck"] == b"stuck"

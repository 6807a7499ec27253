"""The storage layer without a server: the Storage Protocol's shape, the part-size rule,
the in-memory store's fault hooks, and OrderedStorage's ordering of requests.

What the in-memory store answers is checked against a real server in
``test_20_storage_conformance.py``; here it is the ground the other checks stand on.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from memstore import Gate, MemStore

import qarnotfs.fs as fs_package
from qarnotfs.bucket import Bucket
from qarnotfs.exceptions import MissingObjectException, QarnotGenericException
from qarnotfs.fs.deletes import OrderedStorage
from qarnotfs.fs.storage import MIB, PART_SIZE, PART_SIZE_LIMIT, Storage, part_size_for

MEMBERS = sorted(name for name in vars(Storage) if not name.startswith("_"))


def _typed(bucket: Bucket, store: MemStore, ordered: OrderedStorage) -> list[Storage]:
    """Never called: mypy checks that each of the three is a Storage as it is."""
    return [bucket, store, ordered]


# -- the Protocol ----------------------------------------------------------------------


def test_the_protocol_has_the_calls_the_filesystem_makes() -> None:
    source = "".join(path.read_text() for path in Path(fs_package.__file__).parent.glob("*.py"))
    called = set(re.findall(r"\b_?(?:bucket|storage)\.(?!py\b)([a-z_]+)", source))
    assert called <= set(MEMBERS), "fs/ calls what the Protocol does not declare"
    declared = set(MEMBERS)
    assert declared == {
        "abort_multipart", "complete_multipart", "connection", "copy", "create_multipart",
        "delete", "delete_many", "download", "first_keys", "has_objects_under",
        "iter_objects", "list_folder", "list_multipart_uploads", "list_page", "list_parts",
        "get", "name", "put", "put_marked", "read", "read_chunks", "stat", "upload",
        "upload_part"}


def _parameters(function: Callable[..., Any]) -> list[tuple[str, Any, Any, Any]]:
    return [(p.name, p.kind, p.default, p.annotation)
            for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("implementation", [Bucket, MemStore, OrderedStorage])
def test_every_call_has_the_signature_of_the_bucket(implementation: type) -> None:
    for name in MEMBERS:
        declared = inspect.getattr_static(Storage, name)
        actual = inspect.getattr_static(implementation, name)
        if isinstance(declared, property):
            assert isinstance(actual, property), name
            continue
        if name == "delete" and implementation is Bucket:
            # The Bucket's delete() without a key deletes the bucket (the SDK's call): the
            # Protocol leaves that form out, so only the key is declared.
            assert [parameter[0] for parameter in _parameters(actual)] == ["self", "key"]
            continue
        assert _parameters(actual) == _parameters(declared), name
        assert inspect.signature(actual).return_annotation \
            == inspect.signature(declared).return_annotation, name


def test_parts_are_8_mib_up_to_80_gib_then_grow_by_whole_mib() -> None:
    assert part_size_for(0) == PART_SIZE
    assert part_size_for(PART_SIZE_LIMIT) == PART_SIZE  # exactly 10,000 parts of 8 MiB
    assert part_size_for(PART_SIZE_LIMIT + 1) == 9 * MIB
    for size in (PART_SIZE_LIMIT + 1, 80 << 30, 100 << 30, 5 << 40):
        part = part_size_for(size)
        assert part % MIB == 0
        assert -(-size // part) <= 10_000
        assert -(-size // (part - MIB)) > 10_000, "the smallest whole MiB that fits"


# -- the in-memory store's fault hooks -------------------------------------------------


def test_a_failure_on_the_nth_call_leaves_the_store_untouched() -> None:
    store = MemStore()
    fault = store.faults.fail("put", QarnotGenericException("refused"), nth=2)
    store.put("a", b"1")
    with pytest.raises(QarnotGenericException, match="refused"):
        store.put("b", b"2")
    store.put("c", b"3")
    assert store.contents() == {"a": b"1", "c": b"3"}
    assert (fault.matched, fault.fired) == (3, 1)


def test_a_failure_for_one_key_or_a_predicate_at_most_some_times() -> None:
    store = MemStore()
    store.put("d/x", b"x")
    store.faults.fail("read", MissingObjectException, key="d/x", times=2)
    store.faults.fail("*", QarnotGenericException, key=lambda key: key.startswith("bad/"))
    for _ in range(2):
        with pytest.raises(MissingObjectException, match="injected"):
            store.read("d/x")
    assert store.read("d/x") == b"x", "the third call goes through"
    with pytest.raises(QarnotGenericException):
        store.stat("bad/one")
    with pytest.raises(QarnotGenericException):
        store.copy("d/x", "bad/copy")  # either key of a copy matches
    assert store.stat("good") is None
    assert set(store.contents()) == {"d/x"}


def test_a_failure_after_the_call_took_effect_is_a_lost_reply() -> None:
    store = MemStore()
    store.faults.fail("put", QarnotGenericException("reply lost"), after=True)
    with pytest.raises(QarnotGenericException):
        store.put("k", b"written")
    assert store.contents() == {"k": b"written"}


def test_a_delay_slows_only_the_matching_calls() -> None:
    store = MemStore()
    store.faults.delay("stat", 0.2, key="slow")
    started = time.monotonic()
    store.stat("fast")
    assert time.monotonic() - started < 0.2
    store.stat("slow")
    assert time.monotonic() - started >= 0.2


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    results: list[object] = []

    def run() -> None:
        try:
            results.append(call())
        except BaseException as error:  # handed to the test
            results.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def test_a_hung_call_holds_only_itself_until_released() -> None:
    store = MemStore()
    store.put("held", b"data")
    gate = store.faults.hang("read", key="held")
    thread, results = _in_thread(lambda: store.read("held"))
    assert gate.wait_entered(5)
    # Every other call, even on the same key, goes on while the read is held.
    store.put("other", b"o")
    assert store.stat("held") is not None
    assert store.read("other") == b"o"
    assert thread.is_alive() and results == []
    gate.release()
    thread.join(5)
    assert results == [b"data"]
    assert store.read("held") == b"data", "a released gate stays open"


def test_a_gate_nobody_releases_fails_the_call_instead_of_the_suite() -> None:
    store = MemStore()
    gate = store.faults.hang("stat", timeout=0.05)
    with pytest.raises(AssertionError, match="not released"):
        store.stat("k")
    assert isinstance(gate, Gate) and gate.entered.is_set()


def test_calls_are_counted_and_logged_in_order_and_hooks_can_be_removed() -> None:
    store = MemStore()
    fault = store.faults.fail("delete", QarnotGenericException)
    store.put("a", b"")
    with pytest.raises(QarnotGenericException):
        store.delete("a")
    store.faults.remove(fault)
    store.delete("a")
    store.delete_many(iter(["x", "y"]))
    assert store.faults.count("delete") == 2
    assert store.faults.log == [("put", ("a",)), ("delete", ("a",)), ("delete", ("a",)),
                                ("delete_many", ("x", "y"))]
    assert store.faults.take() == {"put": 1, "delete": 2, "delete_many": 1}
    assert store.faults.take() == {} and store.faults.log == []
    store.faults.fail("*", QarnotGenericException)
    store.faults.clear()
    store.put("b", b"")


def test_the_store_is_consistent_under_concurrent_calls() -> None:
    store = MemStore()
    threads = 8
    rounds = 200

    def work(worker: int) -> None:
        for index in range(rounds):
            key = f"w{worker}/{index}"
            store.put(key, key.encode())
            assert store.read(key) == key.encode()
            upload_id = store.create_multipart(f"m{worker}")
            etag = store.upload_part(f"m{worker}", upload_id, 1, key.encode())
            store.complete_multipart(f"m{worker}", upload_id, [(1, etag)])

    pool = [threading.Thread(target=work, args=(worker,)) for worker in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert len(store.contents()) == threads * rounds + threads
    assert store.uploads() == {}
    assert store.faults.count("put") == threads * rounds
    assert store.faults.count("complete_multipart") == threads * rounds


# -- OrderedStorage --------------------------------------------------------------------


@pytest.fixture
def store() -> MemStore:
    store = MemStore()
    for key in ("queued", "other", "d/", "d/x"):
        store.put(key, b"v")
    store.faults.take()
    return store


@pytest.fixture
def ordered(store: MemStore) -> Iterator[OrderedStorage]:
    ordered = OrderedStorage(store, delay=600)  # batches leave only when a call needs them
    yield ordered
    ordered.close()


def _upload(storage: Storage, folder: Path) -> None:
    local = folder / "local"
    local.write_bytes(b"local")
    storage.upload("new", local)


EVERY_CALL: dict[str, Callable[[Storage, Path], object]] = {
    "stat": lambda s, _: s.stat("other"),
    "read": lambda s, _: s.read("other"),
    "get": lambda s, _: s.get("other", 0, 1),
    "read_chunks": lambda s, _: s.read_chunks("other", 0, 1),
    "put": lambda s, _: s.put("new", b"n"),
    "put_marked": lambda s, _: s.put_marked("new", b"n"),
    "upload": _upload,
    "download": lambda s, folder: s.download("other", folder / "got"),
    "copy": lambda s, _: s.copy("other", "new"),
    "delete_many": lambda s, _: s.delete_many(["other"]),
    "first_keys": lambda s, _: s.first_keys("", 2),
    "has_objects_under": lambda s, _: s.has_objects_under("d/"),
    "iter_objects": lambda s, _: list(s.iter_objects()),
    "list_folder": lambda s, _: s.list_folder(""),
    "list_page": lambda s, _: s.list_page(""),
    "create_multipart": lambda s, _: s.create_multipart("new"),
    "upload_part": lambda s, _: s.upload_part("new", s.create_multipart("new"), 1, b"p"),
    "list_parts": lambda s, _: s.list_parts("new", "no-such-upload"),
    "complete_multipart": lambda s, _: s.complete_multipart("new", "no-such-upload",
                                                            [(1, '"x"')]),
    "abort_multipart": lambda s, _: s.abort_multipart("new", "no-such-upload"),
    "list_multipart_uploads": lambda s, _: s.list_multipart_uploads(),
}
"""One call of each request the Storage makes (every member but name, connection, delete)."""


def test_every_request_is_in_the_table() -> None:
    assert set(EVERY_CALL) == set(MEMBERS) - {"name", "connection", "delete"}


@pytest.mark.parametrize("method", sorted(EVERY_CALL))
def test_a_queued_delete_is_sent_before_any_later_request(
        store: MemStore, ordered: OrderedStorage, tmp_path: Path, method: str) -> None:
    ordered.delete("queued")
    assert store.faults.log == [], "a delete alone sends nothing"
    refused = method == "complete_multipart"  # of an upload that does not exist
    with pytest.raises(QarnotGenericException) if refused else contextlib.nullcontext():
        EVERY_CALL[method](ordered, tmp_path)
    assert store.faults.log[0] == ("delete_many", ("queued",))
    # The memstore serves read_chunks as the GET it is (faults on "get" reach readers).
    assert store.faults.log[-1][0] == ("get" if method == "read_chunks" else method)
    assert "queued" not in store.contents()


def test_deletes_are_batched_and_a_key_written_again_is_kept(
        store: MemStore, ordered: OrderedStorage) -> None:
    for key in ("queued", "other", "d/x"):
        ordered.delete(key)
    ordered.put("other", b"again")
    ordered.close()
    assert store.faults.log == [("delete_many", ("queued", "other", "d/x")),
                                ("put", ("other",))]
    assert store.contents() == {"d/": b"v", "other": b"again"}


def test_delete_now_sends_the_queue_then_deletes_before_returning(
        store: MemStore, ordered: OrderedStorage) -> None:
    ordered.delete("queued")
    ordered.delete_now("d/")
    assert store.faults.log == [("delete_many", ("queued",)), ("delete", ("d/",))]
    assert sorted(store.contents()) == ["d/x", "other"]


def test_a_delay_of_zero_deletes_at_once(store: MemStore) -> None:
    ordered = OrderedStorage(store, delay=0)
    try:
        ordered.delete("queued")
        assert store.faults.log == [("delete", ("queued",))]
    finally:
        ordered.close()


def test_the_batch_leaves_by_itself_after_the_delay(store: MemStore) -> None:
    sent = store.faults.hang("delete_many")
    sent.release()  # an open gate: it only tells when the batch arrives
    ordered = OrderedStorage(store, delay=0.01)
    try:
        ordered.delete("queued")
        assert sent.wait_entered(5)
        assert "queued" not in store.contents()
    finally:
        ordered.close()


def test_a_request_waits_for_the_batch_in_flight(store: MemStore, ordered: OrderedStorage) -> None:
    gate = store.faults.hang("delete_many")
    ordered.delete("queued")
    flushing, _ = _in_thread(ordered.flush)
    assert gate.wait_entered(5)
    reading, results = _in_thread(lambda: ordered.read("other"))
    reading.join(0.2)
    assert reading.is_alive(), "the read went out before the delete it follows"
    gate.release()
    flushing.join(5)
    reading.join(5)
    assert results == [b"v"]
    assert [method for method, _ in store.faults.log] == ["delete_many", "read"]


def test_only_fsyncdirs_flush_raises_a_refused_batch(
        store: MemStore, ordered: OrderedStorage, caplog: pytest.LogCaptureFixture) -> None:
    store.faults.fail("delete_many", QarnotGenericException("AccessDenied"), times=2)
    ordered.delete("queued")
    with caplog.at_level(logging.ERROR, logger="qarnotfs.fs.deletes"):
        assert ordered.stat("other") is not None, "another call goes on"
    assert "'queued'" in caplog.text
    ordered.delete("d/x")
    with pytest.raises(QarnotGenericException, match="AccessDenied"):
        ordered.flush(raise_errors=True)
    assert sorted(store.contents()) == ["d/", "d/x", "other", "queued"], "nothing is lost"
    ordered.flush(raise_errors=True)  # nothing left queued: the refused keys are not resent


def test_the_name_and_limits_are_the_storages(store: MemStore, ordered: OrderedStorage) -> None:
    assert ordered.name == store.name
    assert ordered.connection.max_concurrency == store.connection.max_concurrency

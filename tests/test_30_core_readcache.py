"""The read path of the core on the in-memory store, requests counted: the local read
cache (a second read sends no GET, in this mount or the next; a changed object is never
served stale) and the read budget shared by a mount's handles."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import TYPE_CHECKING

from test_30_core import read_file

from qarnotfs.fs.prefetch import FIRST_BYTES
from qarnotfs.fs.reader import INITIAL_PIECE, ReadBudget

if TYPE_CHECKING:
    from fakeclock import FakeClock
    from fs_helpers import MakeFs
    from memstore import MemStore

    from qarnotfs.fs.core import Filesystem

pytest_plugins = ("fs_helpers",)

MIB = 1 << 20


def content(size: int, seed: bytes = b"") -> bytes:
    """``size`` bytes that differ from block to block (and with ``seed``)."""
    digest = hashlib.sha512(seed).digest()
    step = len(digest)
    return b"".join(hashlib.sha512(digest + i.to_bytes(8, "big")).digest()
                    for i in range(0, size, step))[:size]


def gets(memstore: MemStore) -> int:
    """GETs that brought bytes since the last call (a 304 brings none)."""
    counted = memstore.faults.take()
    return counted["get"] + counted["read"] - counted["get unchanged"]


def got(memstore: MemStore) -> int:
    """Bytes the GETs brought since the last call."""
    return memstore.faults.take()["get bytes"]


def written(*filesystems: Filesystem) -> None:
    """Wait for the cache's writer thread to have written what was read until now."""
    for fs in filesystems:
        assert fs._read_cache is not None
        fs._read_cache.drain()


def read_at(fs: Filesystem, path: str, offset: int, size: int) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        return fs.read(fh, size, offset)
    finally:
        fs.release(fh)


def test_a_second_read_sends_no_get_in_this_mount_or_the_next(
        make_memfs: MakeFs, memstore: MemStore) -> None:
    data = content(5 * MIB + 12345)  # whole blocks and a tail
    memstore.put("data.bin", data)
    fs = make_memfs()
    assert read_file(fs, "/data.bin") == data
    assert gets(memstore) > 0
    written(fs)
    assert read_file(fs, "/data.bin") == data
    assert read_at(fs, "/data.bin", 3 * MIB + 7, 100_000) == data[3 * MIB + 7:][:100_000]
    assert gets(memstore) == 0
    fs.shutdown()

    again = make_memfs()  # a remount: a new core, the same cache folder
    assert read_file(again, "/data.bin") == data
    assert read_at(again, "/data.bin", len(data) - 10, 4096) == data[-10:]
    assert got(memstore) <= FIRST_BYTES, \
        "only the remount's lookup GETs bytes (its first 64 KiB, which tell the metadata)"


def test_a_changed_object_is_read_anew_never_stale(
        make_memfs: MakeFs, memstore: MemStore, clock: FakeClock) -> None:
    old, new = content(3 * MIB, b"old"), content(3 * MIB, b"new")
    memstore.put("data.bin", old)
    fs = make_memfs()
    assert read_file(fs, "/data.bin") == old
    memstore.put("data.bin", new)  # another client replaces it: same size, new ETag
    clock.advance(fs.options.cache_ttl + 1)
    memstore.faults.take()
    assert read_file(fs, "/data.bin") == new
    assert gets(memstore) > 0
    written(fs)  # its blocks are in the cache before the next mount reads
    next_mount = make_memfs()
    assert read_file(next_mount, "/data.bin") == new  # the next mount too
    assert got(memstore) <= FIRST_BYTES, "from the cache but for its lookup's first bytes"
    written(fs, next_mount)
    assert read_file(fs, "/data.bin") == new
    assert gets(memstore) == 0  # the new version is cached now


def test_partly_cached_pieces_are_fetched_whole(make_memfs: MakeFs,
                                                memstore: MemStore) -> None:
    data = content(4 * MIB)
    memstore.put("data.bin", data)
    fs = make_memfs()
    assert read_at(fs, "/data.bin", MIB + 5, 10) == data[MIB + 5:MIB + 15]
    # The lookup's first bytes stand for the open's GET (less than a block: not cached).
    assert gets(memstore) == 2, "the lookup's first bytes, block 1"
    written(fs)
    assert read_file(fs, "/data.bin") == data  # the first block was not cached
    assert read_at(fs, "/data.bin", MIB + 5, 10) == data[MIB + 5:MIB + 15]
    assert gets(memstore) > 0


def test_without_the_cache_every_read_sends_gets(make_memfs: MakeFs,
                                                 memstore: MemStore) -> None:
    data = content(2 * MIB)
    memstore.put("data.bin", data)
    fs = make_memfs(read_cache_size=0)
    for _ in range(2):
        assert read_file(fs, "/data.bin") == data
        assert gets(memstore) > 0


class _WatchedBudget(ReadBudget):
    """A ReadBudget that records every take: how much, whether forced, and the total
    it left (the peak itself depends on when dropped pieces' GETs end, so the rule is
    checked take by take instead)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.takes: list[tuple[int, bool, int]] = []

    def take(self, size: int, must: bool) -> bool:
        taken = super().take(size, must)
        if taken:
            self.takes.append((size, must, self.used))
        return taken


def test_the_read_budget_is_shared_by_every_handle_of_a_mount(
        make_memfs: MakeFs, memstore: MemStore) -> None:
    data = content(24 * MIB)
    memstore.put("data.bin", data)
    budget = 4 * MIB
    fs = make_memfs(read_budget=budget, read_cache_size=0)
    watched = fs._read_budget = _WatchedBudget(budget)
    handles = 16
    errors: list[str] = []

    def sequential_reader(number: int) -> None:
        fh = fs.open("/data.bin", os.O_RDONLY)
        try:
            offset = number * MIB
            for _ in range(64):
                chunk = fs.read(fh, 128 << 10, offset)
                if chunk != data[offset:offset + (128 << 10)]:
                    errors.append(f"handle {number} at {offset}")
                offset = (offset + len(chunk)) % len(data)
        finally:
            fs.release(fh)

    threads = [threading.Thread(target=sequential_reader, args=(n,)) for n in range(handles)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    # Pieces fetched ahead only ever fit in the budget; beyond it, a read gets only the
    # piece it needs now, at the smallest size.
    ahead = [(size, used) for size, must, used in watched.takes if not must]
    forced = [size for size, must, _ in watched.takes if must]
    assert ahead and all(used <= budget for _, used in ahead)
    assert forced and max(forced) <= INITIAL_PIECE, max(forced)
    assert sum(size for size, _ in ahead) > budget  # the budget was in fact spent and reused
    fs._read_pool.shutdown(wait=True)  # the GETs of dropped pieces end
    assert watched.used == 0  # every closed handle gave back  # every closed handle gave back


def test_a_block_served_from_the_cache_is_not_written_again(
        make_memfs: MakeFs, memstore: MemStore) -> None:
    """An open served by a cached block (its GET a 304) puts nothing: the block's file is
    the one written at the first read, not a new one renamed over it."""
    data = content(100_000)  # one block, more than a lookup's GET
    memstore.put("one-block.bin", data)
    fs = make_memfs()
    assert read_file(fs, "/one-block.bin") == data
    written(fs)
    assert fs._read_cache is not None
    blocks = sorted(p for p in fs._read_cache.folder.glob("??/*"))
    assert len(blocks) == 1
    first = blocks[0].stat().st_ino
    gets(memstore)
    for _ in range(3):
        assert read_file(fs, "/one-block.bin") == data
    written(fs)
    assert gets(memstore) == 0
    assert [p.stat().st_ino for p in fs._read_cache.folder.glob("??/*")] == [first]


def test_a_file_that_fits_in_a_lookup_s_get_is_not_cached(
        make_memfs: MakeFs, memstore: MemStore) -> None:
    """Its bytes come whole with the GET that checks it: a block would save no request."""
    data = content(FIRST_BYTES)
    memstore.put("small.txt", data)
    fs = make_memfs()
    assert read_file(fs, "/small.txt") == data
    written(fs)
    assert fs._read_cache is not None
    assert not list(fs._read_cache.folder.glob("??/*"))
    assert gets(memstore) == 1, "the lookup's GET, which the open used"
    again = make_memfs()  # a remount: the same, with nothing to look up in the cache
    assert read_file(again, "/small.txt") == data
    assert gets(memstore) == 1

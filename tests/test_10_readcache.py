"""The local read cache on its own (qarnotfs/fs/readcache.py): bound, LRU eviction,
sharing between processes, damaged blocks, a full disk, private files."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fakeclock import FakeClock

from qarnotfs.fs import readcache
from qarnotfs.fs.readcache import INDEX_NAME, ReadCache, cache_folder, open_read_cache

BLOCK = 1024


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def block(number: int, size: int = BLOCK) -> bytes:
    return bytes([number % 251]) * size


def make(folder: Path, blocks: int, clock: FakeClock) -> ReadCache:
    return ReadCache(folder, blocks * BLOCK, block_size=BLOCK, clock=clock)


def block_files(folder: Path) -> list[Path]:
    return [p for p in folder.glob("??/*") if p.is_file()]


def test_a_block_is_served_by_key_and_etag_and_survives_a_reopen(
        tmp_path: Path, clock: FakeClock) -> None:
    cache = make(tmp_path / "c", 10, clock)
    cache.put("k", "etag1", 0, block(1))
    cache.put("k", "etag1", 1, block(2, 10))  # the object's tail
    assert cache.get("k", "etag1", 0, BLOCK) == block(1)
    assert cache.get("k", "etag2", 0, BLOCK) is None  # another version of the object
    assert cache.get("other", "etag1", 0, BLOCK) is None
    cache.close()
    again = make(tmp_path / "c", 10, clock)  # the next mount
    assert again.get("k", "etag1", 1, 10) == block(2, 10)
    assert again.total() == BLOCK + 10
    again.close()


def test_the_bound_evicts_the_least_recently_used_blocks(
        tmp_path: Path, clock: FakeClock) -> None:
    cache = make(tmp_path / "c", 3, clock)
    for number in range(3):
        cache.put("k", "e", number, block(number))
        clock.advance(2)
    assert cache.get("k", "e", 0, BLOCK) == block(0)  # 0 is now the most recently used
    clock.advance(2)
    cache.put("k", "e", 3, block(3))
    assert cache.get("k", "e", 1, BLOCK) is None  # the least recently used went
    for number in (0, 2, 3):
        assert cache.get("k", "e", number, BLOCK) == block(number)
    assert cache.total() == 3 * BLOCK
    assert len(block_files(tmp_path / "c")) == 3
    cache.put("k", "e", 9, block(9, 4 * BLOCK))  # bigger than the whole bound: not kept
    assert cache.total() == 3 * BLOCK
    cache.close()


def test_damaged_blocks_are_misses_and_are_dropped(tmp_path: Path, clock: FakeClock) -> None:
    cache = make(tmp_path / "c", 10, clock)
    cache.put("k", "e", 0, block(7))
    cache.put("k", "e", 1, block(8))
    first, second = sorted(block_files(tmp_path / "c"), key=lambda p: p.name[-1])
    first.write_bytes(block(7)[:-1])  # truncated
    second.write_bytes(block(9))  # same length, other bytes
    assert cache.get("k", "e", 0, BLOCK) is None
    assert cache.get("k", "e", 1, BLOCK) is None
    assert cache.get("k", "e", 1, BLOCK - 1) is None  # asked with another length
    cache.drain()  # the writer thread drops them
    assert cache.total() == 0 and not block_files(tmp_path / "c")
    cache.put("k", "e", 0, block(7))  # kept again after a fresh read
    assert cache.get("k", "e", 0, BLOCK) == block(7)
    cache.close()


def test_files_and_folders_are_private(tmp_path: Path, clock: FakeClock) -> None:
    folder = cache_folder(tmp_path / "blocks", "http://127.0.0.1:1", "my bucket")
    assert folder != cache_folder(tmp_path / "blocks", "http://127.0.0.1:2", "my bucket")
    cache = open_read_cache(tmp_path / "blocks", "http://127.0.0.1:1", "my bucket", 10 * BLOCK)
    assert cache is not None
    cache.put("k", "e", 0, block(1))
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert (folder / INDEX_NAME).exists()
    cache.close()
    assert open_read_cache(tmp_path / "blocks", "x", "b", 0) is None  # 0: no cache


SHARER = """
import sys
from qarnotfs.fs.readcache import ReadCache
folder, start = sys.argv[1], int(sys.argv[2])
cache = ReadCache(folder, 20 * 1024, block_size=1024)
for number in range(start, start + 200):
    cache.put("k", "e", number, bytes([number % 251]) * 1024)
    for back in range(max(0, number - 5), number):
        data = cache.get("k", "e", back, 1024)
        assert data is None or data == bytes([back % 251]) * 1024, back
cache.close()
"""


def test_two_processes_share_one_cache_within_its_bound(tmp_path: Path,
                                                        clock: FakeClock) -> None:
    folder = tmp_path / "shared"
    make(folder, 20, clock).close()
    writers = [subprocess.Popen([sys.executable, "-c", SHARER, os.fspath(folder), str(start)])
               for start in (0, 100)]  # overlapping blocks: both put 100-199
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    cache = make(folder, 20, clock)
    files = block_files(folder)
    assert cache.total() == sum(p.stat().st_size for p in files) <= 20 * BLOCK
    assert len(files) == 20
    served = [n for n in range(300) if cache.get("k", "e", n, BLOCK) == block(n)]
    assert len(served) == 20, served  # every row has its file, with its bytes
    assert not list((folder / "tmp").iterdir())  # no temporary file left behind
    cache.close()


def test_a_full_disk_stops_caching_with_one_log_line(
        small_tmpfs: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    size = 256 * BLOCK
    cache = ReadCache(small_tmpfs / "c", 1 << 30, block_size=size, clock=clock)
    with caplog.at_level(logging.WARNING, logger=readcache.__name__):
        for number in range(16):  # 4 MiB into 2 MiB: the disk fills up
            cache.put("k", "e", number, block(number, size))
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    kept = [n for n in range(16) if cache.get("k", "e", n, size) == block(n, size)]
    assert kept and len(kept) < 16
    assert not list((small_tmpfs / "c" / "tmp").iterdir())  # the half-written one is gone
    clock.advance(readcache.FULL_PAUSE + 1)  # after the pause, it tries again (and fails)
    with caplog.at_level(logging.WARNING, logger=readcache.__name__):
        cache.put("k", "e", 100, block(1, size))
    assert len([r for r in caplog.records if "is full" in r.getMessage()]) == 2
    cache.close()


def test_a_quota_refusal_is_a_full_disk_too(tmp_path: Path, clock: FakeClock,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    cache = make(tmp_path / "c", 10, clock)

    def over_quota(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(tempfile, "mkstemp", over_quota)
    with caplog.at_level(logging.WARNING, logger=readcache.__name__):
        for number in range(5):
            cache.put("k", "e", number, block(number))
    assert len([r for r in caplog.records if "is full" in r.getMessage()]) == 1
    assert cache.total() == 0
    cache.close()


def _put_soon_in_a_thread(cache: ReadCache, number: int) -> threading.Thread:
    thread = threading.Thread(target=cache.put_soon, args=("k", "e", number, block(number)))
    thread.start()
    return thread


def test_a_reader_faster_than_the_writer_waits_for_room_and_every_block_is_kept(
        tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readcache, "BACKLOG", 2 * BLOCK)
    monkeypatch.setattr(readcache, "BACKLOG_WAIT", 3600.0)
    cache = make(tmp_path / "c", 10, clock)
    with cache._write_lock:  # the writer thread cannot write: the backlog fills
        for number in range(2):
            cache.put_soon("k", "e", number, block(number))
        third = _put_soon_in_a_thread(cache, 2)
        third.join(timeout=0.2)
        assert third.is_alive(), "no room: the third block waits (it is not dropped)"
    third.join(timeout=30)
    assert not third.is_alive()
    cache.drain()
    assert [cache.get("k", "e", n, BLOCK) for n in range(3)] == [block(n) for n in range(3)]
    cache.close()


def test_a_stuck_writer_costs_one_wait_then_blocks_are_dropped_at_once(
        tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readcache, "BACKLOG", BLOCK)
    monkeypatch.setattr(readcache, "BACKLOG_WAIT", 0.05)
    cache = make(tmp_path / "c", 10, clock)
    with cache._write_lock:
        cache.put_soon("k", "e", 0, block(0))
        cache.put_soon("k", "e", 1, block(1))  # waits 0.05 s, then is dropped
        monkeypatch.setattr(readcache, "BACKLOG_WAIT", 3600.0)
        third = _put_soon_in_a_thread(cache, 2)
        third.join(timeout=30)
        assert not third.is_alive(), "while the writer is stuck, no block waits again"
    cache.drain()
    assert cache.get("k", "e", 0, BLOCK) == block(0)
    assert cache.get("k", "e", 1, BLOCK) is None and cache.get("k", "e", 2, BLOCK) is None
    cache.put_soon("k", "e", 3, block(3))  # caught up: blocks are kept again
    cache.drain()
    assert cache.get("k", "e", 3, BLOCK) == block(3)
    cache.close()


def test_reads_never_wait_for_another_process_s_write_transaction(
        tmp_path: Path, clock: FakeClock) -> None:
    """A mount stopped inside its transaction on a shared cache (SIGSTOP): this one's
    writer waits for SQLite's lock, but its reads are served meanwhile."""
    cache = make(tmp_path / "c", 10, clock)
    cache.put("k", "e", 0, block(0))
    other = sqlite3.connect(tmp_path / "c" / INDEX_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock
    try:
        cache.put_soon("k", "e", 1, block(1))  # the writer thread waits for it
        clock.advance(60)  # so the read below also wants to write the block's last use
        reads = ThreadPoolExecutor(1)
        answer = reads.submit(cache.get, "k", "e", 0, BLOCK)
        assert answer.result(timeout=10) == block(0), "a read waited for the writer"
        reads.shutdown()
    finally:
        other.execute("ROLLBACK")
        other.close()
    cache.drain()
    assert cache.get("k", "e", 1, BLOCK) == block(1), "the block is written once free"
    cache.close()


# -- one bound for the whole cache folder (cachefolders.py) ----------------------------------


def bucket_blocks(base: Path, bucket: str, blocks: int, clock: FakeClock,
                  last_used: float) -> Path:
    """The folder of a bucket read before (``blocks`` blocks), last used at ``last_used``."""
    folder = cache_folder(base, "http://storage", bucket)
    cache = ReadCache(folder, 100 * BLOCK, block_size=BLOCK, clock=clock)
    for number in range(blocks):
        cache.put("k", "e", number, block(number))
    cache.close()
    used_at(folder, last_used)
    return folder


def used_at(folder: Path, when: float) -> None:
    for index in folder.glob(f"{INDEX_NAME}*"):
        os.utime(index, (when, when))


def test_the_bound_holds_for_the_whole_folder_unused_buckets_going_oldest_first(
        tmp_path: Path, clock: FakeClock) -> None:
    base = tmp_path / "blocks"
    oldest = bucket_blocks(base, "oldest", 3, clock, last_used=1000)
    older = bucket_blocks(base, "older", 3, clock, last_used=2000)
    recent = bucket_blocks(base, "recent", 3, clock, last_used=3000)
    not_a_cache = base / "notes"  # --read-cache-dir may hold the user's own folders
    not_a_cache.mkdir()
    (not_a_cache / INDEX_NAME).write_bytes(b"mine")
    left_aside = base / ".removed-gone-0123456789abcdef-42"  # by a remover that died
    left_aside.mkdir()
    mine = ReadCache(cache_folder(base, "http://storage", "mine"), 7 * BLOCK,
                     block_size=BLOCK, clock=clock)
    mine.trim_others_soon().join()
    # 9 blocks for a bound of 7: the least recently used bucket goes, and that is enough.
    assert not oldest.exists()
    assert older.exists() and recent.exists() and not_a_cache.exists()
    assert not left_aside.exists()
    assert [p.name for p in base.iterdir() if p.name.startswith(".")] == []
    mine.close()


def test_a_folder_in_use_by_another_mount_is_never_removed(
        tmp_path: Path, clock: FakeClock) -> None:
    base = tmp_path / "blocks"
    busy = bucket_blocks(base, "busy", 3, clock, last_used=1000)
    idle = bucket_blocks(base, "idle", 3, clock, last_used=2000)
    other_mount = ReadCache(busy, 100 * BLOCK, block_size=BLOCK, clock=clock)
    used_at(busy, 1000)  # still the least recently used
    mine = ReadCache(cache_folder(base, "http://storage", "mine"), 2 * BLOCK,
                     block_size=BLOCK, clock=clock)
    mine.trim_others_soon().join()
    assert busy.exists() and not idle.exists()
    assert other_mount.get("k", "e", 0, BLOCK) == block(0)
    other_mount.close()
    mine.trim_others_soon().join()  # the next mount: nobody uses it any more
    assert not busy.exists()
    mine.close()


TRIMMER = """
import random, sys
from qarnotfs.fs.readcache import ReadCache, cache_folder
base, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
for round in range(60):
    folder = cache_folder(base, "http://storage", f"bucket{rng.randrange(8)}")
    # Room for 64 blocks: the 240 put in all make trims, and a block just put is never
    # the least recently used of its folder.
    cache = ReadCache(folder, 64 * 1024, block_size=1024)
    key, data = f"{seed}-{round}", bytes([seed]) * 1024
    cache.put(key, "e", 0, data)
    trimmer = cache.trim_others_soon()
    assert cache.get(key, "e", 0, 1024) == data, "lost while another process trimmed"
    trimmer.join()
    assert cache.get(key, "e", 0, 1024) == data, "lost to this process's own trim"
    cache.close()
"""


def test_processes_opening_and_trimming_at_once_never_lose_a_folder_in_use(
        tmp_path: Path) -> None:
    """Mounts of different buckets (and of the same) starting together: each trims the
    others' folders while they open theirs; none loses a block of the folder it holds
    (nor fails to open: SQLite's change to WAL mode does not wait for a busy index)."""
    base = tmp_path / "blocks"
    processes = [subprocess.Popen([sys.executable, "-c", TRIMMER, os.fspath(base), str(seed)])
                 for seed in (1, 2, 3, 4)]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0, 0]
    assert not [p for p in base.iterdir() if p.name.startswith(".")]
    left = 0
    for folder in base.iterdir():
        cache = ReadCache(folder, 64 * BLOCK, block_size=BLOCK)
        left += cache.total()
        cache.close()
    assert left < 4 * 60 * 1024, "folders were trimmed"
